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
    _, path = SampAttribution(model).attribute(
        images, target=1, features_per_step=8, return_path=True, insertion_start="zeros"
    )
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


# ------------------------------------------------------------------- readable figures (issue 15)


def _colorbar_axes(fig):
    return {ax.get_label(): ax for ax in fig.axes if ax.get_label().startswith("colorbar:")}


def test_grid_draws_unsigned_columns_on_a_sequential_scale_from_zero_with_colour_bars(images):
    g = torch.Generator().manual_seed(1)
    attrs = {"signed": torch.randn(2, 1, 8, 8, generator=g), "saliency": torch.rand(2, 1, 8, 8, generator=g)}
    fig, axes = plot_attribution_grid(images, attrs)
    signed_im, unsigned_im = axes[0, 1].get_images()[0], axes[1, 2].get_images()[0]
    assert signed_im.cmap.name == "RdWhGn" and signed_im.norm.vmin == -1 and signed_im.norm.vmax == 1
    assert unsigned_im.cmap.name == "Purples" and unsigned_im.norm.vmin == 0 and unsigned_im.norm.vmax == 1
    assert np.asarray(unsigned_im.get_array()).min() >= 0
    bars = _colorbar_axes(fig)
    assert set(bars) == {"colorbar:signed", "colorbar:unsigned"}
    assert "against" in " ".join(t.get_text() for t in bars["colorbar:signed"].get_xticklabels())
    assert bars["colorbar:unsigned"].get_xlim()[0] == 0
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "Unsigned columns" in caption and "saliency" in caption
    # forced signed: the unsigned column borrows the diverging map; no colour bar on request
    fig, axes = plot_attribution_grid(images, attrs, signed={"saliency": True}, colorbar=False)
    assert axes[0, 2].get_images()[0].cmap.name == "RdWhGn" and not _colorbar_axes(fig)


def test_curves_legend_outside_the_axis_says_n_and_band():
    fr = np.linspace(0, 1, 6)
    per_example = np.stack([1 - fr, 0.5 * (1 - fr), 0.2 * (1 - fr), 0.9 * (1 - fr)])
    fig, ax = plot_insertion_deletion_curves(
        {"A": (fr, per_example), "B": (fr, per_example[:2])}, band="iqr", use_pyplot=False
    )
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # clear of the data
    assert "interquartile" in legend.get_title().get_text()
    assert "n = " not in legend.get_title().get_text()  # the curves disagree on N: not claimed
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx(np.percentile(per_example[:, 0], 75))
    assert band[:, 1].min() == pytest.approx(0.0)
    # the benchmark's aggregated curves: mean and std, N given; a band on chosen methods only
    summary = {"fractions": fr, "mean": 1 - fr, "std": np.full(6, 0.1)}
    _, ax = plot_insertion_deletion_curves(
        {"A": summary, "B": dict(summary, std=None)}, n_images=7, band_methods=["A"], use_pyplot=False
    )
    assert len(ax.collections) == 1 and "n = 7 images" in ax.get_legend().get_title().get_text()
    with pytest.raises(ValueError, match="iqr"):
        plot_insertion_deletion_curves({"A": summary}, band="iqr", use_pyplot=False)


def test_method_styles_tell_neighbours_and_up_to_thirty_methods_apart():
    from captum_paths.visualization import method_styles

    styles = list(method_styles([f"m{i}" for i in range(30)]).values())
    pairs = {(s["color"], s["linestyle"]) for s in styles}
    assert len(pairs) == 30
    assert all(a["color"] != b["color"] and a["linestyle"] != b["linestyle"] for a, b in zip(styles, styles[1:]))


def _fake_results(names, n_images=5):
    fr = np.linspace(0, 1, 4).tolist()
    kinds = ("samp_deletion", "samp_insertion", "rise_deletion", "rise_insertion")
    curve = {"fractions": fr, "mean": [1.0, 0.5, 0.2, 0.1], "std": [0.1] * 4}
    return {
        "methods": {n: {"label": n.upper()} for n in names},
        "curves": {n: {k: curve for k in kinds} for n in names},
        "config": {"n_images": n_images},
    }


def test_benchmark_curves_figure_shows_both_protocols_a_selection_and_a_legend_outside():
    from captum_paths.benchmark.methods import METHOD_NAMES
    from captum_paths.benchmark.report import BAND_METHODS, CURVE_METHODS, _curves_figure

    fig = _curves_figure(_fake_results(METHOD_NAMES))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in axes]
    assert len(axes) == 4 and sum("SAMP protocol" in t for t in titles) == 2 and sum("RISE" in t for t in titles) == 2
    assert sum(t.startswith("Deletion") for t in titles) == 2 and sum(t.startswith("Insertion") for t in titles) == 2
    assert [line.get_label() for line in axes[0].get_lines()] == [n.upper() for n in CURVE_METHODS]
    assert all(len(ax.collections) == len(BAND_METHODS) for ax in axes)  # bands on the headline pair
    suptitle = fig._suptitle.get_text()
    assert "5 test images" in suptitle and f"of {len(METHOD_NAMES)} methods" in suptitle
    fig.canvas.draw()
    (legend,) = fig.legends
    assert legend.get_window_extent().x0 >= max(ax.get_window_extent().x1 for ax in axes)
    assert "n = 5 images" in legend.get_title().get_text() and "std" in legend.get_title().get_text()
    import matplotlib.pyplot as plt

    plt.close(fig)
    few = _curves_figure(_fake_results(["samp", "samp++", "ig"]))  # few methods: all shown, all banded
    assert "all 3 methods" in few._suptitle.get_text() and len(few.axes[0].collections) == 3
    plt.close(few)
