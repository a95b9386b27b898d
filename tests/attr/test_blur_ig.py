"""BlurIG: PAIR saliency's toy properties, equality with PAIR's BlurIG, the blur's maths, IDGI, baselines."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import ndimage

from captum_paths.attr import BlurIG
from captum_paths.attr._core import blur_ig
from captum_paths.attr._core.blur_ig import (
    BlurLevels,
    _point_runs,
    blur_points,
    blur_rows,
    blur_sigmas,
    gaussian_blur_matrices,
    gaussian_blurs,
)

# tiny tensors: thread hand-offs cost more than the work (and the machine is shared)
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------
# PAIR's blur_ig_test.py toy: a 5x5 image, f = sum(sin(x)), so each pixel's attribution is known


class SinSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return torch.sin(x).flatten(1).sum(dim=1)


def toy_image():
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    x[0, 0, 1, 1], x[0, 0, 2, 2] = 0.7, 1.0
    return x


@pytest.mark.parametrize("n_steps, internal_batch_size, passes", [(4000, 1, 4000), (2001, 100, 21), (499, 500, 1)])
def test_pair_toy_each_pixel_gets_its_own_change(n_steps, internal_batch_size, passes):
    model, x = SinSum(), toy_image()
    out = BlurIG(model).attribute(x, max_sigma=10, n_steps=n_steps, internal_batch_size=internal_batch_size)
    fully_blurred = ndimage.gaussian_filter(x[0, 0].numpy(), sigma=10, mode="constant")
    expected = np.sin(x[0, 0].numpy()) - np.sin(fully_blurred)
    assert int((out != 0).sum()) == 25  # the blurred start gives every pixel something
    np.testing.assert_almost_equal(out[0, 0].numpy(), expected, decimal=2)
    assert len(model.calls) == passes


def test_completeness_and_delta():
    model, x = SinSum(), toy_image().repeat(2, 3, 1, 1)
    x[1] = x[1] * 0.5
    out, delta = BlurIG(model).attribute(x, max_sigma=10, n_steps=400, return_convergence_delta=True)
    blurred = torch.stack(
        [torch.from_numpy(ndimage.gaussian_filter(e.numpy(), (0, 10, 10), mode="constant")) for e in x]
    )
    torch.testing.assert_close(delta, out.flatten(1).sum(1) - (model(x) - model(blurred)), rtol=0, atol=1e-12)
    # not -> 0 with n_steps: the truncated kernel jumps where its radius int(4 sigma + 0.5) grows (PAIR's too)
    assert float(delta.abs().max()) < 0.03


# ----------------------------------------------------------------------------------------------------
# equality with PAIR saliency's BlurIG (HWC images; ours NCHW)


def pair_blur_ig(model, x, target, **kwargs):
    saliency = pytest.importorskip("saliency.core.blur_ig")

    def call_model(batch, call_model_args=None, expected_keys=None):
        points = torch.from_numpy(batch).permute(0, 3, 1, 2).requires_grad_()
        out = model(points)
        out = out if target is None else out[:, target]
        grads = torch.autograd.grad(out.sum(), points)[0]
        return {saliency.INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).numpy()}

    mask = saliency.BlurIG().GetMask(x.permute(1, 2, 0).numpy(), call_model, **kwargs)
    return torch.from_numpy(mask).permute(2, 0, 1)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.Tanh(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 3, 5)
    ).double()  # fmt: skip


class Quadratic(nn.Module):
    def __init__(self, n):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = torch.randn(n, generator=g, dtype=torch.float64)

    def forward(self, x):
        flat = x.flatten(1)
        return (flat @ self.w) ** 2 + (flat**2).sum(dim=1)


@pytest.mark.parametrize(
    "knobs",
    [
        dict(max_sigma=50.0, n_steps=20),  # the reference's blur range, fewer steps (PAIR's scipy blur is slow)
        dict(max_sigma=5.0, n_steps=30, grad_step=0.2),
        dict(max_sigma=10.0, n_steps=12, sqrt_spacing=True),
    ],
)
def test_equals_pair_on_a_cnn_and_a_quadratic(knobs):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 2, 11, 9, generator=g, dtype=torch.float64)
    pair_knobs = dict(
        max_sigma=knobs["max_sigma"], steps=knobs["n_steps"], grad_step=knobs.get("grad_step", 0.01),
        sqrt=knobs.get("sqrt_spacing", False),
    )  # fmt: skip
    for model, target in ((small_cnn(), [1, 4]), (Quadratic(2 * 11 * 9), None)):
        ours = BlurIG(model).attribute(x, target=target, internal_batch_size=7, **knobs)
        for i in range(2):
            ref = pair_blur_ig(model, x[i], None if target is None else target[i], **pair_knobs)
            torch.testing.assert_close(ours[i], ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))


def test_pair_default_knobs_on_one_small_image():
    x = torch.rand(1, 2, 7, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = nn.Sequential(nn.Flatten(), nn.Linear(84, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    ours = BlurIG(model).attribute(x, target=1)
    ref = pair_blur_ig(model, x[0], 1)
    torch.testing.assert_close(ours[0], ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))


def test_pair_sqrt_spacing_batch_bug_is_not_reproduced():
    """PAIR scales a whole batch by its last interval's width: wrong with sqrt spacing and batch_size > 1."""
    model = small_cnn()
    x = torch.rand(1, 2, 11, 9, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    knobs = dict(max_sigma=10.0, steps=12, sqrt=True)
    ours = BlurIG(model).attribute(x, target=0, max_sigma=10.0, n_steps=12, sqrt_spacing=True, internal_batch_size=5)
    right = pair_blur_ig(model, x[0], 0, batch_size=1, **knobs)
    buggy = pair_blur_ig(model, x[0], 0, batch_size=5, **knobs)
    torch.testing.assert_close(ours[0], right, rtol=1e-6, atol=1e-9)
    assert float((buggy - right).abs().max()) > 1e-3 * float(right.abs().max())


# ----------------------------------------------------------------------------------------------------
# the blur


@pytest.mark.parametrize("sigma", [0.0, 0.01, 0.2, 0.7, 1.0, 3.3, 50.0])
def test_blur_matrices_equal_scipy_zero_padded_filter(sigma):
    signal = np.random.default_rng(5).random((3, 13))
    matrix = gaussian_blur_matrices([sigma], 13)[0]
    expected = signal if sigma == 0 else ndimage.gaussian_filter1d(signal, sigma, axis=1, mode="constant")
    np.testing.assert_allclose((torch.from_numpy(signal) @ matrix.T).numpy(), expected, rtol=1e-12, atol=1e-15)


def test_blur_of_images_and_signals_equals_scipy():
    rng = np.random.default_rng(6)
    images = rng.random((2, 3, 9, 12))
    (blurred,) = gaussian_blurs(torch.from_numpy(images), [1.7])
    expected = ndimage.gaussian_filter(images, (0, 0, 1.7, 1.7), mode="constant")
    np.testing.assert_allclose(blurred.numpy(), expected, rtol=1e-12, atol=1e-15)
    signals = rng.random((2, 20))
    (blurred,) = gaussian_blurs(torch.from_numpy(signals), [2.5])
    np.testing.assert_allclose(blurred.numpy(), ndimage.gaussian_filter1d(signals, 2.5, mode="constant"), atol=1e-15)


def test_blur_derivative_is_the_forward_difference_and_near_the_analytic_one():
    x = torch.rand(1, 1, 15, 15, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    at, derivative = blur_rows(x, 2.0, 1e-4)
    torch.testing.assert_close(at, gaussian_blurs(x, [2.0])[0])
    central = (gaussian_blurs(x, [2.0 + 1e-5])[0] - gaussian_blurs(x, [2.0 - 1e-5])[0]) / 2e-5
    torch.testing.assert_close(derivative, central, rtol=1e-3, atol=1e-4)


def test_blur_points_equal_blur_rows_block_by_block():
    g = torch.Generator().manual_seed(12)
    sigmas = [50.0, 0.0, 0.4, 3.0]
    counts = [1, 1, 2, 1]
    row_sigma = [0, 1, 2, 2, 3]
    for x in (
        torch.rand(5, 2, 7, 9, generator=g, dtype=torch.float64),  # images
        torch.rand(5, 6, 8, generator=g, dtype=torch.float64),  # (N, A, B): both blurred
        torch.rand(5, 11, generator=g, dtype=torch.float64),  # signals
    ):
        points, derivatives = blur_points(x, sigmas, counts, 0.01)
        for r, s in enumerate(row_sigma):
            at, derivative = blur_rows(x[r : r + 1], sigmas[s], 0.01)
            torch.testing.assert_close(points[r : r + 1], at, rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(derivatives[r : r + 1], derivative, rtol=1e-9, atol=1e-11)


def test_level_matrices_built_in_groups_give_the_same_blurs(monkeypatch):
    """Groups of one, three or all levels (the budget), visited blurriest first: the same points and derivatives
    as :func:`blur_points` on the whole path, and each group is built once."""
    x = torch.rand(6, 2, 7, 9, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    sigmas = blur_sigmas(50.0, 8)
    visits = [[7, 6], [5], [4, 3, 2], [1, 0]]  # chunks of a path: blocks of 3, 3 and 2 rows
    counts = [[3, 3], [6], [2, 2, 2], [3, 3]]
    per_level = 2 * (7 * 7 + 9 * 9) * 8
    built = []
    build = blur_ig.gaussian_blur_matrices
    monkeypatch.setattr(
        blur_ig, "gaussian_blur_matrices", lambda levels, *a: built.append(len(levels)) or build(levels, *a)
    )
    for budget, groups in ((1, [2, 1, 3, 2]), (3 * per_level, [3, 3, 2]), (100 * per_level, [8])):
        levels = BlurLevels(sigmas, 0.01, x, budget=budget)
        built.clear()
        for chunk_levels, chunk_counts in zip(visits, counts):
            points, derivatives = levels.blur_blocks(x, chunk_levels, chunk_counts)
            expected = blur_points(x, [sigmas[lv] for lv in chunk_levels], chunk_counts, 0.01)
            built.pop(), built.pop()  # blur_points' own matrices (one build per size)
            torch.testing.assert_close(points, expected[0], rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(derivatives, expected[1], rtol=1e-9, atol=1e-11)
        assert built == [2 * g for g in groups for _ in (7, 9)]  # levels and levels + h, once per size


def test_blur_ig_does_not_depend_on_the_matrix_budget(monkeypatch):
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 7 * 9, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    x = torch.rand(3, 2, 7, 9, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    whole = BlurIG(model).attribute(x, target=1, n_steps=12, internal_batch_size=5)
    monkeypatch.setattr(blur_ig, "LEVEL_MATRIX_BUDGET", 1)
    torch.testing.assert_close(BlurIG(model).attribute(x, target=1, n_steps=12, internal_batch_size=5), whole)


def test_sigmas():
    assert blur_sigmas(50.0, 4) == [0.0, 12.5, 25.0, 37.5, 50.0]
    assert blur_sigmas(16.0, 4, sqrt_spacing=True) == [0.0, 2.0, 4.0**0.5 * 2**0.5, 12.0**0.5, 4.0]


def test_point_runs_go_from_blurred_to_sharp():
    runs = _point_runs(slice(2, 9), n_examples=3, n_steps=4)
    assert runs == [(3, slice(0, 1), slice(2, 3)), (2, slice(1, 4), slice(0, 3)), (1, slice(4, 7), slice(0, 3))]


# ----------------------------------------------------------------------------------------------------
# IDGI, batching, baselines, shapes


def test_idgi_closed_form_on_a_linear_model_and_exact_completeness():
    w = torch.linspace(-1, 1, 2 * 6 * 6, dtype=torch.float64)

    class Linear(nn.Module):
        def forward(self, x):
            return x.flatten(1) @ w

    x = torch.rand(3, 2, 6, 6, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    out, delta = BlurIG(Linear()).attribute(x, max_sigma=4.0, n_steps=9, idgi=True, return_convergence_delta=True,
                                            internal_batch_size=4)  # fmt: skip
    blurred = gaussian_blurs(x, [4.0])[0]
    change = (x - blurred).flatten(1) @ w
    torch.testing.assert_close(out.flatten(1), change[:, None] * w**2 / (w**2).sum(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(delta, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    _, delta = BlurIG(small_cnn()).attribute(x[:, :, :, :].repeat(1, 1, 2, 2)[:, :, :11, :9], target=3, idgi=True,
                                             n_steps=8, return_convergence_delta=True)  # fmt: skip
    torch.testing.assert_close(delta, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_batched_equals_one_at_a_time_and_chunking_does_not_matter():
    model = small_cnn()
    x = torch.rand(3, 2, 11, 9, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    target = torch.tensor([0, 2, 4])
    full = BlurIG(model).attribute(x, target=target, n_steps=10, max_sigma=6.0)
    chunked = BlurIG(model).attribute(x, target=target, n_steps=10, max_sigma=6.0, internal_batch_size=4)
    alone = torch.cat([BlurIG(model).attribute(x[i : i + 1], target=int(target[i]), n_steps=10, max_sigma=6.0)
                       for i in range(3)])  # fmt: skip
    torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(alone, full, rtol=1e-12, atol=1e-14)


def test_tuple_and_signal_inputs():
    """An additive model of an image and a signal: each part of the tuple equals its own run."""

    class Two(nn.Module):
        def forward(self, image, signal):
            return torch.tanh(image).flatten(1).sum(1) + (signal**2).sum(1)

    image = torch.rand(2, 1, 5, 6, dtype=torch.float64)
    signal = torch.rand(2, 7, dtype=torch.float64)
    knobs = dict(n_steps=30, max_sigma=3.0)
    (a_image, a_signal), delta = BlurIG(Two()).attribute((image, signal), return_convergence_delta=True, **knobs)
    alone_image = BlurIG(lambda x: torch.tanh(x).flatten(1).sum(1)).attribute(image, **knobs)
    alone_signal = BlurIG(lambda s: (s**2).sum(1)).attribute(signal, **knobs)
    torch.testing.assert_close(a_image, alone_image, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a_signal, alone_signal, rtol=1e-12, atol=1e-14)
    blurred = ndimage.gaussian_filter1d(signal.numpy(), 3.0, mode="constant")
    signal_change = (signal**2).sum(1) - torch.from_numpy(blurred**2).sum(1)
    assert delta.shape == (2,) and float((a_signal.sum(1) - signal_change).abs().max()) < 0.05


def test_baselines_must_be_none_and_inputs_need_an_axis():
    model = SinSum()
    for baselines in (0.0, "zeros", torch.zeros(1, 1, 5, 5)):
        with pytest.raises(ValueError, match="takes no `baselines`"):
            BlurIG(model).attribute(toy_image(), baselines)
    with pytest.raises(ValueError, match="blurs the last two dimensions"):
        BlurIG(model).attribute(torch.ones(3, dtype=torch.float64))
    assert model.calls == []


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(max_sigma=0.0), "max_sigma"), (dict(n_steps=0), "n_steps"), (dict(grad_step=-1.0), "grad_step"),
     (dict(sqrt_spacing=1), "sqrt_spacing"), (dict(idgi=None), "idgi")],
)  # fmt: skip
def test_bad_knobs_raise_before_any_pass(kwargs, match):
    model = SinSum()
    with pytest.raises((ValueError, TypeError), match=match):
        BlurIG(model).attribute(toy_image(), **kwargs)
    assert model.calls == []
