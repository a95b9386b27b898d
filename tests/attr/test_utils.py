import numpy as np
import pytest
import torch
from captum._utils.common import _expand_additional_forward_args, _expand_target

from captum_paths.attr._utils.captum_compat import gradients_and_scores, target_scores
from captum_paths.attr._utils.features import feature_groups, flatten_inputs, group_sum, unflatten_inputs
from captum_paths.attr._utils.progress import chunk_slices
from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target
from captum_paths.attr._utils.validation import check_generator
from captum_paths.baselines import (
    Blur,
    Constant,
    GaussianNoise,
    Mean,
    Uniform,
    gaussian_blur,
    resolve_baselines,
    rise_gaussian_kernel,
)

# ------------------------------------------------------------------------------------- blur


def test_rise_kernel_is_a_normalised_gaussian_when_the_window_holds_its_tails():
    k = rise_gaussian_kernel(41, 2.0, dtype=torch.float64)
    r = torch.arange(41, dtype=torch.float64) - 20
    g1 = torch.exp(-(r**2) / (2 * 2.0**2)) * (r.abs() <= 8)  # scipy truncates at 4 sigma, per axis
    g = g1[:, None] * g1[None, :]
    torch.testing.assert_close(k, g / g.sum(), rtol=1e-10, atol=1e-14)


def test_rise_kernel_folds_tails_back_like_scipy_reflect():
    """RISE's 11 / 5 kernel: scipy's reflect boundary folds the tails in; still sums to one."""
    k = rise_gaussian_kernel(11, 5.0, dtype=torch.float64)
    assert abs(float(k.sum()) - 1) < 1e-12
    torch.testing.assert_close(k, k.flip(0))
    torch.testing.assert_close(k, k.t())
    # 1-D factor by hand: the sampled Gaussian of radius 20, each tap folded into [0, 10] by reflection
    radius = int(4 * 5.0 + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / 5.0) ** 2)
    taps /= taps.sum()
    row = np.zeros(11)
    for offset, weight in zip(range(-radius, radius + 1), taps):
        i = 5 + offset
        while not 0 <= i < 11:  # scipy 'reflect': (d c b a | a b c d | d c b a)
            i = -i - 1 if i < 0 else 2 * 11 - i - 1
        row[i] += weight
    torch.testing.assert_close(k, torch.as_tensor(np.outer(row, row)), rtol=1e-10, atol=1e-12)


def test_gaussian_blur_matches_a_direct_zero_padded_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 7, 6, generator=g, dtype=torch.float64)
    k = rise_gaussian_kernel(5, 1.5, dtype=torch.float64)
    out = gaussian_blur(x, 5, 1.5)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    direct = torch.zeros_like(x)
    for i in range(7):
        for j in range(6):
            direct[:, :, i, j] = (padded[:, :, i : i + 5, j : j + 5] * k).sum((-1, -2))
    torch.testing.assert_close(out, direct)


def test_blur_rejects_bad_arguments():
    with pytest.raises(ValueError, match="klen"):
        rise_gaussian_kernel(0, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        rise_gaussian_kernel(3, -1.0)
    with pytest.raises(ValueError, match="N, C, H, W"):
        gaussian_blur(torch.zeros(3, 4), 3, 1.0)


# ------------------------------------------------------------------------------------- baselines


def test_resolve_baselines_forms():
    x = torch.rand(2, 3, 4, 4)
    z = torch.rand(2, 5)
    zeros, const = resolve_baselines((None, 0.5), (x, z))
    assert torch.equal(zeros, torch.zeros_like(x)) and torch.equal(const, torch.full_like(z, 0.5))
    (per_example,) = resolve_baselines(torch.ones(3, 4, 4), (x,))
    assert per_example.shape == x.shape
    (mean,) = resolve_baselines("mean", (x,))
    torch.testing.assert_close(mean[:, :, 0, 0], x.mean((2, 3)))
    (blur,) = resolve_baselines("blur", (x,))
    torch.testing.assert_close(blur, gaussian_blur(x, 11, 5.0))
    (custom,) = resolve_baselines(Blur(3, 1.0), (x,))
    torch.testing.assert_close(custom, gaussian_blur(x, 3, 1.0))
    (fn,) = resolve_baselines(lambda t: t * 2, (x,))
    torch.testing.assert_close(fn, x * 2)
    (c,) = resolve_baselines(Constant(2.0), (x,))
    assert torch.all(c == 2)


def test_random_baselines_are_seeded():
    x = torch.rand(2, 3, 4, 4)
    for spec in (Uniform(), GaussianNoise(0.1), "uniform", "gaussian"):
        a = resolve_baselines(spec, (x,), generator=torch.Generator().manual_seed(3))[0]
        b = resolve_baselines(spec, (x,), generator=torch.Generator().manual_seed(3))[0]
        c = resolve_baselines(spec, (x,), generator=torch.Generator().manual_seed(4))[0]
        assert torch.equal(a, b) and not torch.equal(a, c)
    u = resolve_baselines(Uniform(-1.0, 1.0), (x,), generator=torch.Generator().manual_seed(0))[0]
    assert u.min() >= -1 and u.max() < 1


@pytest.mark.parametrize(
    "spec, error, words",
    [
        (torch.zeros(3, 3, 4, 4), ValueError, "baselines"),
        (torch.zeros(2, 2, 4, 4), ValueError, "baselines"),
        ("median", ValueError, "unknown baseline"),
        (float("nan"), ValueError, "finite"),
        ([1, 2], TypeError, "baselines"),
        ((0.0, 0.0), ValueError, "tuple of 2"),
        (lambda t: 3, TypeError, "callable"),
    ],
)
def test_resolve_baselines_errors(spec, error, words):
    with pytest.raises(error, match=words):
        resolve_baselines(spec, (torch.rand(2, 3, 4, 4),))


def test_baseline_parameter_checks():
    with pytest.raises(ValueError, match="low"):
        Uniform(1.0, 0.0)
    with pytest.raises(ValueError, match="std"):
        GaussianNoise(0.0)
    with pytest.raises(ValueError, match="value"):
        Constant(float("inf"))
    assert Mean() == Mean() and Blur(3, 1) == Blur(3, 1.0) and Blur(3, 1) != Blur(5, 1)


# ------------------------------------------------------------------------------------- features


def test_default_groups_pixels_for_images_and_elements_otherwise():
    x = torch.zeros(2, 3, 2, 2)
    z = torch.zeros(2, 5)
    ids, n = feature_groups((x, z))
    assert n == 4 + 5 and ids.shape == (2, 12 + 5)
    image_ids = ids[0, :12].view(3, 2, 2)
    assert torch.equal(image_ids[0], image_ids[2]) and torch.equal(image_ids[0].flatten(), torch.arange(4))
    assert torch.equal(ids[0, 12:], torch.arange(4, 9))


def test_feature_mask_is_validated_and_broadcast():
    x = torch.zeros(2, 3, 2, 2)
    mask = torch.tensor([[0, 0], [1, 2]]).view(1, 1, 2, 2)
    ids, n = feature_groups((x,), mask)
    assert n == 3 and ids.shape == (2, 12) and torch.equal(ids[1, :4], torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError, match="contiguous"):
        feature_groups((x,), mask * 2)
    with pytest.raises(ValueError, match="broadcastable"):
        feature_groups((x,), torch.zeros(1, 1, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="non-negative"):
        feature_groups((x,), mask - 1)
    with pytest.raises(ValueError, match="1 tensor"):
        feature_groups((x, x), mask)


def test_flatten_round_trip_and_group_sum():
    x, z = torch.rand(3, 2, 2, 2), torch.rand(3, 4)
    flat = flatten_inputs((x, z))
    back = unflatten_inputs(flat, (x, z))
    assert torch.equal(back[0], x) and torch.equal(back[1], z)
    ids = torch.tensor([[0, 1, 1, 2]])
    torch.testing.assert_close(
        group_sum(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), ids, 4), torch.tensor([[1.0, 5.0, 4.0, 0.0]])
    )


# ------------------------------------------------------------------------------------- compat


def test_target_scores_errors_name_the_target():
    out = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="out of range"):
        target_scores(out, 3, 4)
    with pytest.raises(ValueError, match="out of range"):
        target_scores(out, [0, 1, 2, 5], 4)
    with pytest.raises(ValueError, match="one score per example"):
        target_scores(out, None, 4)
    with pytest.raises(ValueError, match="indices"):
        target_scores(out, (1, 2), 4)
    torch.testing.assert_close(
        target_scores(torch.arange(12.0).view(4, 3), torch.tensor([0, 1, 2, 0]), 4), torch.tensor([0.0, 4.0, 8.0, 9.0])
    )


def test_gradients_and_scores_uses_one_pass_and_the_swappable_gradient_func():
    calls = []

    def forward(x):
        calls.append(1)
        return (x**2).sum(1, keepdim=True).repeat(1, 2)

    from captum_paths.attr._utils.captum_compat import compute_gradients

    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    grads, scores = gradients_and_scores(compute_gradients, forward, (x,), 1)
    assert len(calls) == 1
    torch.testing.assert_close(grads[0], 2 * x.detach())
    torch.testing.assert_close(scores, torch.tensor([5.0, 25.0]))


def test_subsets_and_chunks():
    idx = torch.tensor([2, 0])
    assert subset_target(3, idx, 4) == 3
    assert subset_target([5, 6, 7, 8], idx, 4) == [7, 5]
    assert torch.equal(subset_target(torch.tensor([5, 6, 7, 8]), idx, 4), torch.tensor([7, 5]))
    afa = subset_additional_forward_args((torch.arange(4), "x", torch.ones(2)), idx, 4)
    assert torch.equal(afa[0], torch.tensor([2, 0])) and afa[1] == "x" and afa[2].shape == (2,)
    assert chunk_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert chunk_slices(5, None) == [slice(0, 5)]


def test_check_generator():
    assert check_generator(None) is None
    g = check_generator(5)
    assert isinstance(g, torch.Generator) and g.initial_seed() == 5
    with pytest.raises(TypeError, match="generator"):
        check_generator("seed")


def test_summed_gradients_equal_captum_per_row_gradients(digits, digits_cnn64):
    from captum_paths.attr._utils.captum_compat import compute_gradients

    x = digits.x_test[:5].double().requires_grad_()
    target = digits.y_test[:5]
    ours, scores = gradients_and_scores(compute_gradients, digits_cnn64, (x,), target)
    captum = compute_gradients(digits_cnn64, (x,), target)
    torch.testing.assert_close(ours[0], captum[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(scores, digits_cnn64(x).gather(1, target[:, None]).squeeze(1).detach())


@pytest.mark.parametrize(
    "target",
    [None, 2, (1, 0), torch.tensor(1), torch.tensor([0, 2, 1]), [0, 1, 2], [(0, 1), (1, 1), (2, 0)]],
)
def test_subset_target_equals_captum_expansion(target):
    n, copies = 3, 4
    index = torch.arange(n * copies) % n
    ours = subset_target(target, index, n)
    captum = _expand_target(target, copies)
    if isinstance(captum, torch.Tensor):
        assert torch.equal(ours, captum)
    else:
        assert ours == captum


def test_subset_additional_forward_args_equals_captum_expansion():
    args = (torch.arange(6.0).reshape(3, 2), torch.tensor(2.0), "mode", 5)
    index = torch.arange(12) % 3
    ours = subset_additional_forward_args(args, index, 3)
    captum = _expand_additional_forward_args(args, 4)
    assert torch.equal(ours[0], captum[0]) and torch.equal(ours[1], captum[1])
    assert ours[2:] == captum[2:]
    assert subset_additional_forward_args(None, index, 3) is None
