"""ROAD: the noisy linear imputer's system and solver, its noise, and the ROAD curves."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from metric_models import LinearClasses

from captum_paths.metrics import ROADResult, noisy_linear_impute, road
from captum_paths.metrics._core import road as road_module
from captum_paths.metrics._core.road import (
    conjugate_gradient,
    dense_imputation_system,
    imputation_operator,
    imputation_rhs,
    inbound_weight_sums,
    neighbour_kernel,
    neighbour_sum,
    removed_pixel_counts,
    road_ranks,
)


def _random_masks(b, h, w, share, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g) < share


def _blob_masks(b, h, w, share, seed=0):
    """Large connected holes (smoothed random fields thresholded): the slow case for CG."""
    g = torch.Generator().manual_seed(seed)
    field = F.avg_pool2d(torch.rand(b, 1, h, w, generator=g, dtype=torch.float64), 7, 1, 3)
    threshold = field.flatten(1).quantile(1 - share, dim=1).reshape(-1, 1, 1, 1)
    return field >= threshold


# ------------------------------------------------------------------------------------- pure pieces
def test_kernel_is_the_official_weights():
    k = neighbour_kernel()
    assert k.sum().item() == pytest.approx(1.0)
    assert k[1, 1] == 0 and k[0, 1] == k[1, 0] == k[2, 1] == k[1, 2] == pytest.approx(1 / 6)
    assert k[0, 0] == k[0, 2] == k[2, 0] == k[2, 2] == pytest.approx(1 / 12)


def test_neighbour_sum_equals_zero_padded_convolution():
    v = torch.randn(3, 2, 7, 9, dtype=torch.float64)
    ref = F.conv2d(v.reshape(6, 1, 7, 9), neighbour_kernel().reshape(1, 1, 3, 3), padding=1).reshape(3, 2, 7, 9)
    torch.testing.assert_close(neighbour_sum(v), ref)


def test_inbound_weight_sums_interior_edge_corner():
    s = inbound_weight_sums(4, 5)
    assert s[1:-1, 1:-1].eq(1).all()
    assert s[0, 2].item() == pytest.approx(2 / 3) and s[2, 0].item() == pytest.approx(2 / 3)
    assert s[0, 0].item() == pytest.approx(5 / 12) and s[-1, -1].item() == pytest.approx(5 / 12)


def test_dense_system_by_hand_on_a_3x3():
    image = torch.arange(9, dtype=torch.float64).reshape(1, 3, 3)
    removed = torch.zeros(3, 3, dtype=torch.bool)
    removed[0, 0] = removed[1, 1] = True  # corner and centre, diagonal neighbours
    a, b, index = dense_imputation_system(image, removed)
    assert index.tolist() == [0, 4]
    torch.testing.assert_close(a, torch.tensor([[5 / 12, -1 / 12], [-1 / 12, 1.0]], dtype=torch.float64))
    corner = (1 + 3) / 6  # kept orthogonal neighbours of (0, 0): values 1 and 3
    centre = (1 + 3 + 5 + 7) / 6 + (2 + 6 + 8) / 12
    torch.testing.assert_close(b[:, 0], torch.tensor([corner, centre], dtype=torch.float64))


def test_matrix_free_operator_and_rhs_equal_the_dense_system():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 6, 7, generator=g, dtype=torch.float64)
    removed = torch.rand(6, 7, generator=g) < 0.5
    a, b, index = dense_imputation_system(image, removed)
    v = torch.zeros(6 * 7, dtype=torch.float64)
    v[index] = torch.randn(index.numel(), generator=g, dtype=torch.float64)
    av = imputation_operator(v.reshape(6, 7), removed, inbound_weight_sums(6, 7)).reshape(-1)
    torch.testing.assert_close(av[index], a @ v[index])
    assert av[~removed.reshape(-1)].eq(0).all()
    rhs = imputation_rhs(image, removed).reshape(2, -1)
    torch.testing.assert_close(rhs[:, index].T, b)
    torch.testing.assert_close(a, a.T)
    assert torch.linalg.eigvalsh(a).min() > 0


def test_conjugate_gradient_solves_independent_spd_systems():
    g = torch.Generator().manual_seed(2)
    m = torch.randn(5, 8, 8, generator=g, dtype=torch.float64)
    a = m @ m.transpose(1, 2) + 8 * torch.eye(8, dtype=torch.float64)
    b = torch.randn(5, 8, generator=g, dtype=torch.float64)
    b[3] = 0  # a zero right-hand side is solved by 0 at once
    inv_diag = 1 / torch.diagonal(a, dim1=1, dim2=2)

    def apply_a(v, matrices):  # the running systems' matrices, compacted with their iterates
        return (matrices @ v.unsqueeze(-1)).squeeze(-1)

    x, converged = conjugate_gradient(apply_a, b, inv_diag, 1e-12, 100, operands=(a,))
    assert converged.all()
    torch.testing.assert_close(x, torch.linalg.solve(a, b), atol=1e-9, rtol=0)
    assert x[3].eq(0).all()
    _, stopped = conjugate_gradient(apply_a, b, inv_diag, 1e-12, 1, operands=(a,))
    assert not stopped[[0, 1, 2, 4]].any()


def test_removed_pixel_counts_truncate_like_the_official_code():
    assert removed_pixel_counts([0.1, 0.29, 0.5, 0.9], 100).tolist() == [10, 28, 50, 90]  # int(100 * 0.29) = 28


def test_road_ranks_sum_channels_and_jitter_breaks_ties():
    attr = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    attr[0, 0, 1, 1], attr[0, 1, 1, 1], attr[0, 0, 0, 1] = 1.0, 2.0, 2.5  # pixel 3 sums to 3, pixel 1 to 2.5
    assert road_ranks(attr, torch.zeros(2, 2)).tolist() == [[2, 1, 3, 0]]  # ties 0, 2 by index
    jitter = torch.tensor([[0.0, 0.0], [1e-4, 0.0]])
    assert road_ranks(attr, jitter).tolist() == [[3, 1, 2, 0]]


# ----------------------------------------------------------------------------------------- the imputer
def test_affine_image_is_reproduced_exactly_without_noise():
    # the weights are symmetric and sum to 1, so an affine image is its own weighted neighbour mean
    # wherever all 8 neighbours are inside the image: keep the border, remove interior pixels
    h = w = 12
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    image = torch.stack([0.3 + 0.05 * yy - 0.02 * xx, 1.0 - 0.01 * yy + 0.04 * xx]).unsqueeze(0)
    masks = _blob_masks(1, h, w, 0.6)
    masks[..., 0, :] = masks[..., -1, :] = masks[..., :, 0] = masks[..., :, -1] = False
    assert masks.sum() > 30
    out = noisy_linear_impute(image, masks, noise_std=0.0)
    torch.testing.assert_close(out, image, atol=1e-9, rtol=0)


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("masks_fn", [_random_masks, _blob_masks])
def test_equals_a_dense_solve_of_the_official_system(share, masks_fn):
    g = torch.Generator().manual_seed(3)
    images = torch.rand(4, 2, 14, 14, generator=g, dtype=torch.float64)
    masks = masks_fn(4, 14, 14, share, seed=4)
    out = noisy_linear_impute(images, masks, noise_std=0.0)
    for i in range(4):
        a, b, index = dense_imputation_system(images[i], masks[i, 0])
        reference = torch.linalg.solve(a, b).T
        assert (out[i].reshape(2, -1)[:, index] - reference).abs().max() < 1e-6
        assert torch.equal(out[i][:, ~masks[i, 0]], images[i][:, ~masks[i, 0]])  # kept pixels untouched


def test_float32_solver_and_solver_batches(monkeypatch):
    g = torch.Generator().manual_seed(5)
    images = torch.rand(6, 2, 14, 14, generator=g, dtype=torch.float64)
    masks = torch.cat([_blob_masks(3, 14, 14, 0.9, seed=6), _random_masks(3, 14, 14, 0.5, seed=6)])
    whole = noisy_linear_impute(images, masks, noise_std=0.0)
    single = noisy_linear_impute(images, masks, noise_std=0.0, dtype=torch.float32)
    assert single.dtype == torch.float64
    assert 0 < (single - whole).abs().max() < 1e-4  # float32 CG: about 2e-5 at its default rtol 1e-6
    # float32 images are solved in float32 unless asked otherwise
    as_float = noisy_linear_impute(images.float(), masks, noise_std=0.0)
    torch.testing.assert_close(as_float, single.float(), atol=1e-6, rtol=0)
    precise = noisy_linear_impute(images.float(), masks, noise_std=0.0, dtype=torch.float64)
    torch.testing.assert_close(precise, whole.float(), atol=1e-6, rtol=0)
    # solver batches of one image (2 systems) each: the same systems, the same iterates
    monkeypatch.setattr(road_module, "_CG_BATCH_CELLS", 2 * 16 * 16)
    assert torch.equal(noisy_linear_impute(images, masks, noise_std=0.0), whole)


def test_noise_law_reproducibility_and_global_rng_untouched():
    images = torch.rand(3, 3, 16, 16)
    masks = _random_masks(3, 16, 16, 0.5)
    clean = noisy_linear_impute(images, masks, noise_std=0.0)
    state = torch.get_rng_state()
    a = noisy_linear_impute(images, masks, noise_std=0.5, generator=7)
    b = noisy_linear_impute(images, masks, noise_std=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b)
    c = noisy_linear_impute(images, masks, noise_std=0.5, generator=8)
    assert not torch.equal(a, c)
    noise = (a - clean)[masks.expand_as(images)] / 0.5
    assert noise.numel() > 1000 and abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1) < 0.1
    assert torch.equal(a[~masks.expand_as(images)], images[~masks.expand_as(images)])
    # the noise is torch.randn((C, n_removed)) per image, like the official randn_like(res.t())
    g = torch.Generator().manual_seed(7)
    first = torch.randn((3, int(masks[0].sum())), generator=g)
    torch.testing.assert_close((a - clean)[0][:, masks[0, 0]], 0.5 * first)


def test_batched_equals_one_image_at_a_time():
    images = torch.rand(5, 1, 20, 20, dtype=torch.float64)
    masks = torch.cat([_blob_masks(3, 20, 20, 0.7), _random_masks(2, 20, 20, 0.2)])
    batched = noisy_linear_impute(images, masks, generator=11)
    g = torch.Generator().manual_seed(11)
    single = torch.cat([noisy_linear_impute(images[i : i + 1], masks[i : i + 1], generator=g) for i in range(5)])
    torch.testing.assert_close(batched, single, atol=1e-7, rtol=0)


def test_nothing_removed_returns_the_images():
    images = torch.rand(2, 1, 5, 5)
    out = noisy_linear_impute(images, torch.zeros(2, 5, 5, dtype=torch.bool), generator=0)
    assert torch.equal(out, images) and out is not images


def test_imputer_errors():
    images = torch.rand(2, 1, 5, 5)
    ok = torch.zeros(2, 1, 5, 5, dtype=torch.bool)
    with pytest.raises(TypeError, match="`masks` must be a bool tensor, True where a pixel is removed"):
        noisy_linear_impute(images, ok.to(torch.uint8))
    with pytest.raises(ValueError, match=r"`masks` must have shape \(2, 1, 5, 5\)"):
        noisy_linear_impute(images, ok[:1])
    with pytest.raises(ValueError, match=r"removes every pixel of image\(s\) \[1\]"):
        noisy_linear_impute(images, torch.stack([ok[0], ~ok[1]]))
    with pytest.raises(ValueError, match="`images` contains non-finite"):
        noisy_linear_impute(images.clone().fill_(float("nan")), ok)
    with pytest.raises(ValueError, match="`images` must be a \\(B, C, H, W\\) tensor"):
        noisy_linear_impute(images[0], ok[0])
    with pytest.raises(ValueError, match="`noise_std` must be a finite number >= 0"):
        noisy_linear_impute(images, ok, noise_std=-1.0)
    with pytest.raises(ValueError, match="`rtol`"):
        noisy_linear_impute(images, ok, rtol=0.0)
    with pytest.raises(ValueError, match="`dtype` must be None, torch.float64 or torch.float32, got torch.float16"):
        noisy_linear_impute(images, ok, dtype=torch.float16)
    with pytest.raises(TypeError, match="`generator`"):
        noisy_linear_impute(images, ok, generator="seed")


def test_non_convergence_warns():
    images = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="did not reach `rtol`"):
        noisy_linear_impute(images, _blob_masks(1, 16, 16, 0.8), noise_std=0.0, max_iter=2)


# --------------------------------------------------------------------------------------------------- ROAD
class _Bright(nn.Module):
    """Two classes: logit 0 = total brightness of the left half, logit 1 = a constant threshold."""

    def __init__(self, threshold):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].flatten(1).sum(1)
        return torch.stack([left, torch.full_like(left, self.threshold)], 1)


def _bright_left_images(n=4, size=12):
    g = torch.Generator().manual_seed(5)
    x = 0.05 * torch.rand(n, 1, size, size, generator=g, dtype=torch.float64)
    x[..., 3:9, 1:5] = 1.0  # a bright patch in the left half: the evidence for class 0
    return x


def test_morf_of_a_perfect_attribution_destroys_the_class_and_lerf_keeps_it():
    x = _bright_left_images()
    model = _Bright(threshold=6.0)  # the patch alone has brightness 24: class 0 is predicted
    assert model(x).argmax(1).eq(0).all()
    perfect = (x > 0.5).to(x.dtype)  # exactly the patch
    reverse = 1 - perfect
    kwargs = dict(target=0, percentages=(0.2, 0.5, 0.9), order="both", generator=0, return_curves=True)
    good = road(model, x, perfect, **kwargs)
    bad = road(model, x, reverse, **kwargs)
    assert isinstance(good, ROADResult) and good.morf.shape == (4, 3)
    # int(0.2 * 144) = 28 >= 24: MoRF removes the whole patch, filled from the dark surround (left-half
    # brightness < 6): class 0 is lost; LeRF removes background only (at 0.9, 15 patch pixels stay)
    assert good.morf.eq(0).all() and good.lerf.eq(1).all()
    assert bad.morf.eq(1).all()
    torch.testing.assert_close(good.combined, (good.lerf - good.morf) / 2)
    torch.testing.assert_close(good.value, good.combined.mean(1))
    assert (good.value > bad.value).all()


def test_logit_curve_equals_the_model_on_our_own_imputation():
    x = _bright_left_images(n=3)
    model = _Bright(threshold=6.0)
    attr = torch.rand(x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    res = road(model, x, attr, target=0, percentages=(0.3,), order="lerf", score="logit", generator=3, jitter=0.0,
               return_curves=True)  # fmt: skip
    ranks = road_ranks(attr, torch.zeros(12, 12))
    removed = (ranks >= 144 - int(144 * 0.3)).reshape(3, 1, 12, 12)
    g = torch.Generator().manual_seed(3)
    g.manual_seed(3)
    torch.randn((12, 12), generator=g, dtype=torch.float64)  # the (zero-scaled) jitter draw comes first
    expected = model(noisy_linear_impute(x, removed, generator=g))[:, 0]
    torch.testing.assert_close(res.lerf[:, 0], expected)
    assert res.morf is None and res.combined is None
    torch.testing.assert_close(res.value, res.lerf.mean(1))


def test_batching_and_channel_summed_maps_do_not_change_the_result():
    model = LinearClasses(3 * 8 * 8, 4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 8, 8, generator=g, dtype=torch.float64)
    attr = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    labels = model(x).argmax(1)
    kwargs = dict(target=labels, order="both", score="softmax", generator=1, return_curves=True)
    full = road(model, x, attr, max_examples_per_batch=None, **kwargs)
    chunked = road(model, x, attr, max_examples_per_batch=3, **kwargs)
    summed = road(model, x, attr.sum(1, keepdim=True), max_examples_per_batch=7, **kwargs)
    for other in (chunked, summed):
        torch.testing.assert_close(other.morf, full.morf, atol=1e-6, rtol=0)
        torch.testing.assert_close(other.lerf, full.lerf, atol=1e-6, rtol=0)
    accuracy = road(model, x, attr, target=labels.tolist(), generator=1)
    assert accuracy.shape == (5,) and ((accuracy >= 0) & (accuracy <= 1)).all()


def test_empty_batch_returns_empty_without_calling_the_model():
    def never(_):
        raise AssertionError("the model must not be called")

    x = torch.rand(0, 1, 6, 6)
    assert road(never, x, x, target=[]).shape == (0,)
    res = road(never, x, x, target=0, order="both", return_curves=True)
    assert res.value.shape == (0,) and res.morf.shape == (0, 7)


def test_road_errors_before_any_model_pass():
    def never(_):
        raise AssertionError("the model must not be called")

    x = torch.rand(2, 1, 6, 6)
    cases = [
        (TypeError, "`inputs` must be one \\(N, C, H, W\\) image tensor", dict(inputs=(x,))),
        (ValueError, "`attributions` must be a tensor of shape", dict(attributions=torch.rand(2, 2, 6, 6))),
        (ValueError, "`attributions` contains non-finite", dict(attributions=torch.full_like(x, float("inf")))),
        (ValueError, "`inputs` contains non-finite", dict(inputs=torch.full_like(x, float("nan")))),
        (ValueError, "`percentages` must lie in the open interval", dict(percentages=(0.5, 1.0))),
        (ValueError, "`percentages` must not be empty", dict(percentages=())),
        (ValueError, "`order` must be 'morf', 'lerf' or 'both'", dict(order="MoRF")),
        (ValueError, "`score`='accuracy' needs `target`", dict(target=None)),
        (ValueError, "`score` must be", dict(score="prob")),
        (ValueError, "`max_examples_per_batch` must be a positive int", dict(max_examples_per_batch=0)),
        (TypeError, "`imputer` must be callable", dict(imputer="linear")),
        (ValueError, "`jitter` must be a finite number >= 0", dict(jitter=-1.0)),
        (ValueError, "`target` list must have one entry per example", dict(target=[0])),
    ]
    for error, message, change in cases:
        kwargs = dict(forward_func=never, inputs=x, attributions=x, target=0) | change
        with pytest.raises(error, match=message.replace("every entry of ", "")):
            road(**kwargs)


def test_a_bad_imputer_output_is_reported():
    x = torch.rand(2, 1, 6, 6)
    with pytest.raises(ValueError, match="`imputer` must return a tensor of the images' shape"):
        road(lambda t: t.flatten(1), x, x, target=0, imputer=lambda im, m, generator=None: im[:, :, :3])
