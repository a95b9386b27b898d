"""Path visualisations: SAMP (Figure 3), ablation path (Figure 1), curves on one axis, the grid."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn as nn
from matplotlib.figure import Figure

from captum_paths import SampAttribution
from captum_paths.visualization import (
    plot_attribution_grid,
    plot_insertion_deletion_curves,
    plot_path_strip,
    visualize_ablation_path,
    visualize_samp_path,
)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_samp_path_figure_shows_snapshots_attributions_and_the_score_curve(images):
    model = TinyCNN().eval()
    _, path = SampAttribution(model).attribute(images, target=1, features_per_step=8, return_path=True, insertion_start="zeros")
    fig, axes = visualize_samp_path(path, example=1, direction="insertion", use_pyplot=False)
    n_snap = len(path.snapshot_fractions)
    assert isinstance(fig, Figure) and axes.shape == (3, n_snap)
    curve_ax = axes[-1, 0]
    line = curve_ax.get_lines()[0]
    length = int(path.lengths[1, 1])
    np.testing.assert_allclose(line.get_ydata(), path.scores[1, 1, :length].numpy(), rtol=1e-6)
    np.testing.assert_allclose(line.get_xdata(), path.fractions[1, 1, :length].numpy(), rtol=1e-6)
    # the snapshot strip shows the path points themselves (the last one is the input)
    shown = axes[0, -1].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(shown), images[1, 0].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="direction"):
        visualize_samp_path(path, direction="sideways", use_pyplot=False)
    with pytest.raises(ValueError, match="example"):
        visualize_samp_path(path, example=5, use_pyplot=False)


def test_ablation_path_figure_marks_where_the_class_is_lost(images):
    from captum_paths import AblationPath

    model = TinyCNN().eval()
    _, result = AblationPath(model).attribute(images, target=0, n_steps=5, n_iterations=2, return_path=True)
    fig, axes = visualize_ablation_path(result, example=0, n_masks=4, use_pyplot=False)
    assert axes.shape == (2, 4)
    strip = [np.asarray(ax.get_images()[0].get_array()) for ax in axes[0]]
    masks = result.masks[0].numpy()
    np.testing.assert_allclose(strip[0], masks[0])  # the input end: nothing ablated
    np.testing.assert_allclose(strip[-1], masks[-1])  # the baseline end: all ablated
    curve_ax = axes[-1, 0]
    np.testing.assert_allclose(curve_ax.get_lines()[0].get_ydata(), result.scores[0].numpy(), rtol=1e-6)
    t_lost = float(result.threshold_time[0])
    vlines = [line for line in curve_ax.get_lines() if "class lost" in (line.get_label() or "")]
    if np.isfinite(t_lost):
        assert len(vlines) == 1 and vlines[0].get_xdata()[0] == pytest.approx(t_lost)
    else:
        assert not vlines
    with pytest.raises(ValueError, match="n_masks"):
        visualize_ablation_path(result, n_masks=0, use_pyplot=False)


def test_path_strip_threshold_and_markers():
    points = np.random.default_rng(0).random((3, 5, 5))
    x = np.linspace(0, 1, 11)
    y = 1 - x
    fig, axes = plot_path_strip(
        points, [0, 0.5, 1], x, y, threshold=0.35, markers={"lost": 0.6}, points_are_masks=True, use_pyplot=False
    )
    ax = axes[-1, 0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "threshold" in labels and any(lab.startswith("lost") for lab in labels)
    first_below = [line for line in ax.get_lines() if line.get_label().startswith("_")]  # unlabelled crossing line
    assert any(np.allclose(line.get_xdata(), 0.7) for line in first_below)
    with pytest.raises(ValueError, match="must be non-empty and match"):
        plot_path_strip(points, [0, 1], x, y, points_are_masks=True, use_pyplot=False)


def test_curves_of_several_methods_on_one_axis():
    fr = torch.linspace(0, 1, 5)
    per_example = torch.stack([torch.linspace(1, 0, 5), torch.linspace(0.8, 0, 5)])
    auc = per_example.mean(1)
    fig, ax = plot_insertion_deletion_curves(
        {"A": (auc, per_example, fr), "B": (fr, torch.linspace(1, 0.5, 5))}, title="deletion", use_pyplot=False
    )
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == [f"A (AUC {float(auc.mean()):.3f})", "B"]
    np.testing.assert_allclose(lines[0].get_ydata(), per_example.mean(0).numpy(), rtol=1e-6)
    assert len(ax.collections) == 1  # a std band for the per-example curves only
    with pytest.raises(ValueError, match="empty"):
        plot_insertion_deletion_curves({}, use_pyplot=False)
    with pytest.raises(ValueError, match="fractions"):
        plot_insertion_deletion_curves({"A": (fr[:3], per_example)}, use_pyplot=False)


def test_attribution_grid(images):
    attrs = {"m1": torch.randn(2, 1, 8, 8), "zeros": torch.zeros(2, 1, 8, 8)}
    fig, axes = plot_attribution_grid(images, attrs, titles=["a", "b"])
    assert axes.shape == (2, 3) and axes[0, 1].get_title() == "m1"
    with pytest.raises(ValueError, match="shape"):
        plot_attribution_grid(images, {"bad": torch.zeros(2, 1, 4, 4)})


def test_grid_can_shift_nonnegative_maps_without_touching_signed_ones(images):
    offset = torch.full((2, 1, 8, 8), 0.5)
    offset[:, :, 0, 0] = 0.9
    signed = torch.randn(2, 1, 8, 8)
    _, raw = plot_attribution_grid(images, {"offset": offset, "signed": signed})
    _, shifted = plot_attribution_grid(images, {"offset": offset, "signed": signed}, shift_nonnegative=True)
    raw_off = np.asarray(raw[0, 1].get_images()[0].get_array())
    new_off = np.asarray(shifted[0, 1].get_images()[0].get_array())
    assert new_off[1, 1] == pytest.approx(0) and new_off[0, 0] > 0.9 * np.max(new_off)
    assert raw_off[1, 1] > 0.5 * np.max(raw_off)  # unshifted, the constant offset fills the scale
    np.testing.assert_allclose(
        np.asarray(raw[0, 2].get_images()[0].get_array()), np.asarray(shifted[0, 2].get_images()[0].get_array())
    )
