"""GGIG Table 1 map-vs-input similarities: each measure's closed forms, scipy / skimage, the pipeline."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from captum_paths.metrics import map_input_similarity
from captum_paths.metrics._core.similarity import (
    mse,
    rescale_input,
    rescale_map,
    reverse_mse,
    spearman_similarity,
    ssim,
    weighted_jaccard,
)


def _maps(seed=0, shape=(3, 1, 9, 10)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64), torch.rand(shape, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------------------------- rescaling
def test_rescalings():
    x = torch.tensor([[-2.0, -1.0, 0.0, 0.5, 3.0]])
    assert rescale_input(x, "ggig").tolist() == [[0.0, 0.0, 0.5, 0.75, 1.0]]
    assert rescale_input(x, "minmax").tolist() == [[0.0, 0.2, 0.4, 0.5, 1.0]]
    assert rescale_input(x, "none").tolist() == x.tolist()
    a = torch.tensor([[-4.0, 1.0, 2.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])
    assert rescale_map(a, "max").tolist() == [[-2.0, 0.5, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]
    assert rescale_map(a, "abs_max").tolist() == [[1.0, 0.25, 0.5], [0.0, 0.0, 0.0], [0.5, 1.0, 0.5]]
    assert rescale_map(a, "minmax")[0].tolist() == [0.0, 5 / 6, 1.0]
    with pytest.raises(ValueError, match="input_scaling"):
        rescale_input(x, "zscore")
    with pytest.raises(ValueError, match="map_scaling"):
        rescale_map(a, "sum")


# ---------------------------------------------------------------------------------------------- measures
def test_identical_maps_score_one_everywhere():
    a, _ = _maps()
    for fn in (spearman_similarity, weighted_jaccard, ssim):
        torch.testing.assert_close(fn(a, a), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert mse(a, a).tolist() == [0.0, 0.0, 0.0]
    assert reverse_mse(mse(a, a)).tolist() == [1.0, 1.0, 1.0]


def test_spearman_closed_forms_and_scipy():
    a, b = _maps(1)
    torch.testing.assert_close(spearman_similarity(a, -a), -torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(spearman_similarity(a, a.exp()), torch.ones(3, dtype=torch.float64))  # monotone
    tied = (a * 4).floor()  # many ties: average ranks
    for i in range(3):
        expected = spearmanr(tied[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert spearman_similarity(tied, b)[i].item() == pytest.approx(expected, abs=1e-12)
    assert spearman_similarity(torch.ones(1, 5), torch.rand(1, 5)).isnan().all()


def test_weighted_jaccard_closed_forms():
    a = torch.tensor([[1.0, 0.0, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[0.5, 0.5, 0.5], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    got = weighted_jaccard(a, b)
    assert got[0].item() == pytest.approx(1.0 / 2.0)  # (0.5 + 0 + 0.5) / (1 + 0.5 + 0.5)
    assert got[1].item() == 0.0  # disjoint supports
    assert got[2].isnan()  # 0 / 0
    torch.testing.assert_close(weighted_jaccard(a[:2], b[:2]), weighted_jaccard(b[:2], a[:2]))  # symmetric
    assert weighted_jaccard(a[:1], a[:1] * 0.5).item() == pytest.approx(0.5)  # sum(c a) / sum(a)


def test_ssim_matches_skimage_and_its_closed_form():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a, b = _maps(2, shape=(2, 12, 11))
    for data_range in (1.0, 2.0):
        got = ssim(a, b, data_range=data_range)
        for i in range(2):
            ref = skimage_metrics.structural_similarity(a[i].numpy(), b[i].numpy(), data_range=data_range)
            assert got[i].item() == pytest.approx(ref, abs=1e-12)
    rgb_a, rgb_b = _maps(3, shape=(1, 3, 10, 10))
    ref = skimage_metrics.structural_similarity(rgb_a[0].numpy(), rgb_b[0].numpy(), data_range=2.0, channel_axis=0)
    assert ssim(rgb_a, rgb_b).item() == pytest.approx(ref, abs=1e-12)
    # constant images: only the luminance term is left, (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    c1 = (0.01 * 2.0) ** 2
    const = ssim(torch.full((1, 8, 8), 0.2, dtype=torch.float64), torch.full((1, 8, 8), 0.7, dtype=torch.float64))
    assert const.item() == pytest.approx((2 * 0.2 * 0.7 + c1) / (0.2**2 + 0.7**2 + c1), abs=1e-12)
    assert ssim(a[:, :5, :5], b[:, :5, :5]).isnan().all()  # smaller than the 7x7 window
    assert ssim(a, b, data_range=1.0).mean() < ssim(a, b, data_range=2.0).mean()  # larger C1, C2 pull towards 1


def test_mse_and_reverse_mse():
    a = torch.tensor([[0.0, 1.0], [0.5, 0.5], [1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    m = mse(a, b)
    assert m.tolist() == [0.5, 0.0, 1.0]
    assert reverse_mse(m).tolist() == [0.5, 1.0, 0.0]
    assert reverse_mse(m, max_mse=2.0).tolist() == [0.75, 1.0, 0.5]  # pooled over more methods
    assert reverse_mse(torch.zeros(2)).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="max_mse"):
        reverse_mse(m, max_mse=0.7)
    with pytest.raises(ValueError, match="mse_values"):
        reverse_mse(-m)


# ---------------------------------------------------------------------------------------------- pipeline
def _ggig_reference(x, a):
    """The GGIG authors' per-image recipe (as the reference notes describe it), with numpy/scipy/skimage."""
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rows = []
    for xi, ai in zip(x.numpy(), a.numpy()):
        d = (np.clip(xi[0], -1, 1) + 1) / 2
        g = ai[0] / ai[0].max()
        rows.append(
            (
                spearmanr(g.ravel(), d.ravel(), nan_policy="omit").statistic,
                np.minimum(g, d).sum() / np.maximum(g, d).sum(),
                skimage_metrics.structural_similarity(d, g, data_range=2.0),
                ((d - g) ** 2).sum() / d.size,
            )
        )
    return np.array(rows)


def test_pipeline_matches_the_ggig_recipe_on_normalised_digits(digits):
    x = (digits.x_test[:8].double() - 0.1307) / 0.3081
    g = torch.Generator().manual_seed(0)
    noisy = digits.x_test[:8].double() + 0.3 * torch.rand(x.shape, generator=g, dtype=torch.float64)
    maps = torch.cat([noisy[:4], torch.rand((4,) + x.shape[1:], generator=g, dtype=torch.float64)])
    got = map_input_similarity(x, maps, measures=("spearman", "weighted_jaccard", "ssim", "mse", "reverse_mse"))
    ref = _ggig_reference(x, maps)
    for j, name in enumerate(("spearman", "weighted_jaccard", "ssim", "mse")):
        np.testing.assert_allclose(got[name].numpy(), ref[:, j], atol=1e-12, rtol=0)
    np.testing.assert_allclose(got["reverse_mse"].numpy(), 1 - ref[:, 3] / ref[:, 3].max(), atol=1e-12, rtol=0)
    for name in ("spearman", "weighted_jaccard", "ssim", "reverse_mse"):  # stroke-like maps beat noise maps
        assert got[name][:4].min() > got[name][4:].max(), name


def test_pipeline_options_and_identity():
    x, _ = _maps(4)
    same = map_input_similarity(x, x, input_scaling="minmax", map_scaling="minmax", measures=MEASURES_ALL)
    for name in ("spearman", "weighted_jaccard", "ssim", "reverse_mse"):
        torch.testing.assert_close(same[name], torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert set(same) == set(MEASURES_ALL)
    flat = map_input_similarity(x.flatten(1), x.flatten(1), measures=("spearman",), input_scaling="none")
    assert list(flat) == ["spearman"] and flat["spearman"].shape == (3,)
    empty = map_input_similarity(torch.zeros(0, 1, 8, 8), torch.zeros(0, 1, 8, 8), measures=("spearman", "mse"))
    assert empty["spearman"].shape == (0,) and empty["mse"].shape == (0,)


MEASURES_ALL = ("spearman", "weighted_jaccard", "ssim", "reverse_mse", "mse")


def test_bad_input():
    x, a = _maps(5)
    with pytest.raises(ValueError, match="measures"):
        map_input_similarity(x, a, measures=("pearson",))
    with pytest.raises(TypeError, match="measures"):
        map_input_similarity(x, a, measures="ssim")
    with pytest.raises(ValueError, match="attributions"):
        map_input_similarity(x, a[:, :, :5])
    with pytest.raises(ValueError, match="ssim"):
        map_input_similarity(x.flatten(1), a.flatten(1))
    bad = a.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="attributions"):
        map_input_similarity(x, bad)
    with pytest.raises(ValueError, match="inputs"):
        map_input_similarity(bad, a)
    with pytest.raises(TypeError, match="inputs"):
        map_input_similarity(x.numpy(), a)
    with pytest.raises(ValueError, match="data_range"):
        ssim(x, a, data_range=0)
