"""GuidedIG: PAIR saliency's toy properties, equality with PAIR's implementation, IDGI, the step's maths.

PAIR saliency 0.2.1 (test-only dependency) calls ``np.quantile(..., interpolation=...)``, which NumPy 2
removed: the oracle below runs its ``guided_ig_impl`` with that keyword mapped to ``method=``.
"""

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from captum.attr import IntegratedGradients

from captum_paths.attr import GuidedIG
from captum_paths.attr._core.guided_ig import (
    _BELOW_LAST,
    GuidedPath,
    guided_step_,
    guided_step_bounds,
    l1_isclose,
    lower_quantile,
    sorted_rows,
)

# tiny tensors: thread hand-offs cost more than the work (and the machine is shared)
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------------
# toy models of PAIR's guided_ig_test.py, as torch modules on (N, 2) inputs


class Linear2(nn.Module):  # 2 x1 + x2
    def forward(self, x):
        return 2 * x[:, 0] + x[:, 1]


class IndependentQuadratic(nn.Module):  # 2 x1^2 + x2^2
    def forward(self, x):
        return 2 * x[:, 0] ** 2 + x[:, 1] ** 2


class DependentQuadratic(nn.Module):  # (2 x1 + x2)^2
    def forward(self, x):
        return (2 * x[:, 0] + x[:, 1]) ** 2


def gig(model, x, baseline=None, **kwargs):
    x = torch.tensor(x, dtype=torch.float64)
    if baseline is not None:
        baseline = torch.tensor(baseline, dtype=torch.float64)
    return GuidedIG(model).attribute(x, baseline, **kwargs)


def test_pair_linear_is_ig_whatever_the_knobs():
    out = gig(Linear2(), [[10.0, 5.0], [10.0, 5.0]], [[-1.0, -3.0], [0.0, 0.0]], n_steps=10, fraction=0.1, max_dist=0.5)
    torch.testing.assert_close(out, torch.tensor([[22.0, 8.0], [20.0, 5.0]], dtype=torch.float64))
    default_baseline = gig(Linear2(), [[10.0, 5.0]], n_steps=10, fraction=0.1, max_dist=0.5)
    torch.testing.assert_close(default_baseline, torch.tensor([[20.0, 5.0]], dtype=torch.float64))


def test_pair_independent_quadratic_both_directions():
    out = gig(
        IndependentQuadratic(), [[3.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [3.0, 3.0]], n_steps=1000, fraction=0.1,
        max_dist=0.4,
    )  # fmt: skip
    expected = torch.tensor([[18.0, 9.0], [-18.0, -9.0]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0.01, atol=0)


def test_pair_dependent_quadratic():
    x = [[3.0, 3.0]] * 4
    model = DependentQuadratic()
    ig_like = torch.cat(
        [
            gig(model, x[:1], n_steps=1000, fraction=0.1, max_dist=0.0),  # no deviation: IG
            gig(model, x[:1], n_steps=1000, fraction=1.0, max_dist=0.5),  # every feature moves: IG
        ]
    )
    torch.testing.assert_close(ig_like, torch.tensor([[54.0, 27.0]] * 2, dtype=torch.float64), rtol=0.01, atol=0)
    unbounded = gig(model, x[:1], n_steps=1000, fraction=0.1, max_dist=1.0)  # x2 moves first: f(0, 3) = 9
    torch.testing.assert_close(unbounded, torch.tensor([[72.0, 9.0]], dtype=torch.float64), rtol=0.01, atol=0)
    bounded, delta = gig(model, x[:1], n_steps=1000, fraction=0.1, max_dist=0.2, return_convergence_delta=True)
    assert abs(float(bounded.sum()) - 81.0) < 0.1 and abs(float(delta)) < 0.1
    assert 55.0 < float(bounded[0, 0]) < 71.0 and 10.0 < float(bounded[0, 1]) < 26.0


# ----------------------------------------------------------------------------------------------------
# equality with PAIR saliency's implementation


@pytest.fixture(scope="module")
def pair_guided_ig():
    saliency = pytest.importorskip("saliency.core.guided_ig")
    quantile = np.quantile

    def numpy2_quantile(a, q, interpolation=None, **kwargs):  # the keyword NumPy 2 renamed
        return quantile(a, q, method=interpolation or "linear", **kwargs)

    def run(model, x, baseline, target, **kwargs):
        def grad_func(z):
            point = torch.tensor(z).unsqueeze(0).requires_grad_()
            out = model(point)
            out = out[0] if target is None else out[0, target]
            return torch.autograd.grad(out, point)[0][0].numpy()

        np.quantile = numpy2_quantile
        try:
            return saliency.guided_ig_impl(x.numpy(), baseline.numpy(), grad_func, **kwargs)
        finally:
            np.quantile = quantile

    return run


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)
    ).double()  # fmt: skip


class Quadratic(nn.Module):
    """``f(x) = (w . x)^2 + sum(a x^2)``: coupled features, smooth."""

    def __init__(self, n, seed=1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(n, generator=g, dtype=torch.float64)
        self.a = torch.rand(n, generator=g, dtype=torch.float64)

    def forward(self, x):
        flat = x.reshape(x.shape[0], -1)
        return (flat @ self.w) ** 2 + (self.a * flat**2).sum(dim=1)


@pytest.mark.parametrize(
    "knobs",
    [
        dict(n_steps=200, fraction=0.25, max_dist=0.02),  # PAIR's defaults
        dict(n_steps=25, fraction=0.5, max_dist=1.0),  # the SAMP authors' setting
        dict(n_steps=15, fraction=0.1, max_dist=0.2),
        dict(n_steps=10, fraction=0.0, max_dist=0.1),
    ],
)
def test_equals_pair_on_a_cnn(pair_guided_ig, knobs):
    model = small_cnn()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 8, 8, generator=g, dtype=torch.float64)
    x[0, :, :3] = 0.0  # a zero region: many exactly tied (zero) gradients at the start
    baselines = torch.rand(3, 2, 8, 8, generator=g, dtype=torch.float64) * 0.3
    baselines[1] = 0.0
    target = [0, 3, 4]
    ours = GuidedIG(model).attribute(x, baselines, target, internal_batch_size=2, **knobs)
    pair_knobs = dict(steps=knobs["n_steps"], fraction=knobs["fraction"], max_dist=knobs["max_dist"])
    for i in range(3):
        ref = torch.from_numpy(pair_guided_ig(model, x[i], baselines[i], target[i], **pair_knobs))
        torch.testing.assert_close(ours[i], ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))


def test_equals_pair_on_a_quadratic_model_with_equal_features(pair_guided_ig):
    model = Quadratic(12)
    x = torch.linspace(-1, 2, 24, dtype=torch.float64).reshape(2, 12)
    baselines = torch.zeros_like(x)
    baselines[1, :6] = x[1, :6]  # half the features already at the input: never move
    ours = GuidedIG(model).attribute(x, baselines, n_steps=40, fraction=0.3, max_dist=0.1)
    for i in range(2):
        ref = torch.from_numpy(pair_guided_ig(model, x[i], baselines[i], None, steps=40, fraction=0.3, max_dist=0.1))
        torch.testing.assert_close(ours[i], ref, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------------------------------
# reductions, completeness, IDGI, batching


def test_zero_max_dist_is_left_riemann_ig():
    model = small_cnn(3)
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    ours = GuidedIG(model).attribute(x, target=1, n_steps=16, max_dist=0.0)
    ig = IntegratedGradients(model).attribute(x, target=1, n_steps=16, method="riemann_left")
    torch.testing.assert_close(ours, ig, rtol=1e-9, atol=1e-12)


def test_completeness_on_a_smooth_model_improves_with_steps():
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    torch.manual_seed(5)
    x = torch.randn(3, 2, 9, dtype=torch.float64)
    deltas = [
        GuidedIG(model).attribute(x, n_steps=n, fraction=0.25, max_dist=0.1, return_convergence_delta=True)[1]
        for n in (20, 320)
    ]
    assert float(deltas[1].abs().max()) < 0.1 * float(deltas[0].abs().max())
    assert float(deltas[1].abs().max()) < 1e-2


def test_idgi_closed_form_on_a_linear_model_and_exact_completeness():
    w = torch.tensor([2.0, -1.0, 0.5, 0.0], dtype=torch.float64)

    class Linear(nn.Module):
        def forward(self, x):
            return x @ w

    x = torch.tensor([[1.0, 2.0, -3.0, 4.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    out, delta = GuidedIG(Linear()).attribute(x, n_steps=7, idgi=True, return_convergence_delta=True)
    # constant gradient w: every segment splits its score change by w^2 / ||w||^2
    expected = (x @ w)[:, None] * w**2 / (w**2).sum()
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(delta, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    _, delta = GuidedIG(small_cnn()).attribute(torch.rand(2, 2, 8, 8, dtype=torch.float64), target=2, idgi=True,
                                                n_steps=9, return_convergence_delta=True)  # fmt: skip
    torch.testing.assert_close(delta, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)


def test_example_equal_to_its_baseline_gets_zeros_without_model_passes():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return (x**2).sum(dim=1)

    x = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]], dtype=torch.float64)
    out, delta = GuidedIG(Counting()).attribute(x, n_steps=5, return_convergence_delta=True)
    assert out[1].abs().sum() == 0 and delta[1] == 0
    assert calls == [2] * 6  # 5 steps and the score at x, of the two other examples only
    alone = torch.cat([GuidedIG(Counting()).attribute(x[i : i + 1], n_steps=5) for i in (0, 2)])
    torch.testing.assert_close(out[[0, 2]], alone, rtol=0, atol=0)


def test_float32_inputs_keep_a_float64_path():
    model = small_cnn().float()
    x = torch.rand(2, 2, 8, 8, generator=torch.Generator().manual_seed(6))
    out, delta = GuidedIG(model).attribute(x, target=0, n_steps=30, max_dist=1.0, return_convergence_delta=True)
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and delta.shape == (2,)


# ----------------------------------------------------------------------------------------------------
# the small functions


def test_lower_quantile_is_numpy_lower_after_removing_the_smallest():
    g = torch.Generator().manual_seed(7)
    values = torch.rand(4, 37, generator=g, dtype=torch.float64)
    values[0, :10] = math.inf
    values[1] = math.inf
    values[2, :20] = 0.0  # ties
    values[3, 5:9] = values[3, 4]
    ranked = sorted_rows(values, out=np.empty((4, 37)))
    np.testing.assert_array_equal(ranked, np.sort(values.numpy(), axis=1))
    for removed in ([0, 0, 0, 0], [3, 0, 20, 9], [30, 36, 37, 37]):
        counts = np.array(removed)
        kept = np.where(np.arange(37) < counts[:, None], np.inf, ranked)  # the removed count as +inf
        for q in (0.0, 0.1, 0.25, 0.5, 0.99, 1.0):
            expected = np.quantile(kept, q, axis=1, method="lower")
            # +inf comes back as the row's largest value: the same features lie at or below it
            expected = np.where(np.isinf(expected), ranked[:, -1], expected)
            np.testing.assert_array_equal(lower_quantile(ranked, counts, q), expected)


def test_float32_ranking_orders_float32_magnitudes_as_float64_does():
    """Gradients of a float32 model rank in float32: the same order, the same thresholds (as float64), and
    the magnitudes of the features out of the step (the largest float64) rank last as +inf."""
    g = torch.Generator().manual_seed(8)
    values = torch.randn(3, 50, generator=g).abs().double()  # float32 numbers held in float64
    values[0, :7] = sys.float_info.max
    values[1, 10:20] = values[1, 3]  # ties
    values[2] = sys.float_info.max
    ranked64 = sorted_rows(values, out=np.empty((3, 50)))
    ranked32 = sorted_rows(values, out=np.empty((3, 50), dtype=np.float32))
    finite = ranked64 < sys.float_info.max
    np.testing.assert_array_equal(ranked32[finite], ranked64[finite])
    assert np.isposinf(ranked32[~finite]).all()
    for removed in ([0, 0, 0], [5, 12, 0], [43, 49, 50]):
        for q in (0.0, 0.25, 0.5, 1.0):
            t64 = np.minimum(lower_quantile(ranked64, np.array(removed), q), _BELOW_LAST)
            t32 = np.minimum(lower_quantile(ranked32, np.array(removed), q), _BELOW_LAST)
            assert t32.dtype == np.float64
            np.testing.assert_array_equal(t32, t64)


def test_gradients_wider_than_the_points_rank_in_float64():
    x = torch.rand(2, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    path = GuidedPath.start(x, torch.zeros_like(x), torch.float32)
    assert path.ranking.dtype == np.float32
    guided_step_(path, torch.rand(2, 6).float(), guided_step_bounds(0, 10, 0.02), 0.25)
    assert path.ranking.dtype == np.float32  # float32 gradients: float32 ranking
    guided_step_(path, torch.rand(2, 6, dtype=torch.float64), guided_step_bounds(1, 10, 0.02), 0.25)
    assert path.ranking.dtype == np.float64


def test_l1_isclose_is_math_isclose():
    pairs = [(1.0, 1.0 + 5e-10), (1.0, 1.0 + 2e-9), (0.0, 5e-10), (0.0, 2e-9), (1e6, 1e6 + 1e-3), (1e6, 1e6 + 1e-2)]
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    expected = [math.isclose(p[1], p[0], rel_tol=1e-9, abs_tol=1e-9) for p in pairs]
    assert l1_isclose(b, a).tolist() == expected


def test_step_bounds():
    b = guided_step_bounds(0, 4, 0.3)
    assert (b.alpha_lo, b.alpha_hi, b.remaining) == (0.0, 0.25 + 0.3, 0.75)
    b = guided_step_bounds(3, 4, 0.3)
    assert (b.alpha_lo, b.alpha_hi, b.remaining) == (1.0 - 0.3, 1.0, 0.0)


def test_step_reaches_its_l1_target_inside_the_band_moving_toward_the_input():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 50, generator=g, dtype=torch.float64)
    b = torch.randn(5, 50, generator=g, dtype=torch.float64)
    b[:, :5] = x[:, :5]  # features with D = 0
    path = GuidedPath.start(x, b)
    for step in range(6):
        before = path.point().clone()
        grads = torch.randn(5, 50, generator=g, dtype=torch.float64)
        grads[:, 10:20] = 0.0  # ties
        bounds = guided_step_bounds(step, 6, 0.15)
        attributions = torch.zeros_like(x)
        guided_step_(path, grads, bounds, 0.2, attributions)
        torch.testing.assert_close(attributions * (x - b), (path.point() - before) * grads, rtol=1e-12, atol=1e-12)
        l1 = (path.point() - x).abs().sum(dim=1)
        torch.testing.assert_close(l1, torch.from_numpy(path.l1_total * bounds.remaining), rtol=1e-9, atol=1e-9)
        progress = ((path.point() - b) / (x - b))[:, 5:]
        assert bool((progress >= bounds.alpha_lo - 1e-12).all() and (progress <= bounds.alpha_hi + 1e-12).all())
        assert bool(((path.point() - before) * (x - b) >= 0).all())  # only ever toward the input
    torch.testing.assert_close(path.point(), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_steps=0), "n_steps"),
        (dict(fraction=1.5), "fraction"),
        (dict(max_dist=-0.1), "max_dist"),
        (dict(idgi="yes"), "idgi"),
    ],
)
def test_bad_knobs_raise_before_any_pass(kwargs, match):
    def forward(x):
        raise AssertionError("no model pass expected")

    with pytest.raises((ValueError, TypeError), match=match):
        GuidedIG(forward).attribute(torch.ones(1, 2), **kwargs)
