"""GeometricallyGuidedIG: closed forms, reductions to known methods, batching, Captum conventions."""

import math

import pytest
import torch
import torch.nn as nn
from captum.attr import IntegratedGradients

from captum_paths import GeometricallyGuidedIG
from captum_paths.attr._core.geometrically_guided_ig import (
    interpolation_alphas,
    point_runs,
    trapezoid_weights,
)

# ----------------------------------------------------------------------------------------------------
# models with known gradients


class DiagonalQuadratic(nn.Module):
    """``out[:, t] = 0.5 * sum_d a[t, d] * (x_d - c[t, d])^2``: gradient ``a[t] * (x - c[t])``."""

    def __init__(self, a, c):
        super().__init__()
        self.a = nn.Parameter(a)
        self.c = nn.Parameter(c)

    def forward(self, x):
        flat = x.reshape(x.shape[0], 1, -1)
        return 0.5 * (self.a.unsqueeze(0) * (flat - self.c.unsqueeze(0)) ** 2).sum(dim=2)


def quadratic_gradients(a, c, x, baseline, n_steps, n_iterations, lr):
    """Every gradient of the ascent, in closed form: shape ``(n + 1, m, D)`` for one example.

    ``p <- p + lr * a * (p - c)`` gives ``p_j - c = (1 + lr a)^j (p_0 - c)``, so
    ``g_j = a * (1 + lr a)^j * (p_0 - c)``.
    """
    alphas = torch.linspace(0, 1, n_steps + 1, dtype=x.dtype).reshape(-1, 1, 1)
    p0 = (baseline + alphas * (x - baseline)).reshape(n_steps + 1, 1, -1)
    growth = (1 + lr * a) ** torch.arange(n_iterations, dtype=x.dtype).reshape(1, -1, 1)
    return a * growth * (p0 - c)


@pytest.fixture
def quadratic():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(3, 6, generator=gen, dtype=torch.float64)  # curvatures of both signs
    c = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    return DiagonalQuadratic(a, c)


class CountingForward:
    """Wrap a model, counting forward calls and rows."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0

    def __call__(self, *args):
        self.calls += 1
        self.rows += args[0].shape[0]
        return self.model(*args)


def path_gradients(model, x, baseline, target, n_steps):
    """Plain straight-line gradients for one example, computed directly: ``(n + 1, *x.shape[1:])``."""
    alphas = torch.linspace(0, 1, n_steps + 1, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    points = (baseline + alphas * (x - baseline)).detach().requires_grad_()
    out = model(points)[:, target].sum()
    return torch.autograd.grad(out, points)[0]


# ----------------------------------------------------------------------------------------------------
# pure helpers


def test_interpolation_alphas_include_both_ends():
    alphas = interpolation_alphas(4)
    assert torch.equal(alphas, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))


def test_trapezoid_weights_match_authors_pairwise_mean():
    torch.manual_seed(0)
    values = torch.randn(8, 5, dtype=torch.float64)  # 8 points = n 7
    authors = ((values[:-1] + values[1:]) / 2).mean(0)
    weights = trapezoid_weights(7)
    assert weights.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close((weights[:, None] * values).sum(0), authors)


@pytest.mark.parametrize("n_examples,start,stop", [(3, 0, 12), (3, 2, 9), (4, 5, 6), (1, 0, 5), (5, 7, 23)])
def test_point_runs_cover_rows_in_repeat_order(n_examples, start, stop):
    seen = []
    for point, chunk_rows, examples in point_runs(slice(start, stop), n_examples):
        rows = range(start + chunk_rows.start, start + chunk_rows.stop)
        assert [r // n_examples for r in rows] == [point] * len(rows)
        assert [r % n_examples for r in rows] == list(range(examples.start, examples.stop))
        seen.extend(rows)
    assert seen == list(range(start, stop))


# ----------------------------------------------------------------------------------------------------
# closed forms and reductions


def test_quadratic_matches_closed_form_every_iteration(quadratic):
    x = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    baseline = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    targets = [2, 0]
    n, m, lr = 3, 4, 0.2
    ggig = GeometricallyGuidedIG(quadratic)
    attr_max = ggig.attribute(x, baselines=baseline, target=targets, n_steps=n, n_iterations=m, learning_rate=lr)
    attr_trap = ggig.attribute(
        x, baselines=baseline, target=targets, n_steps=n, n_iterations=m, learning_rate=lr, reduction="trapezoid"
    )
    for i, t in enumerate(targets):
        grads = quadratic_gradients(quadratic.a[t].detach(), quadratic.c[t].detach(), x[i], baseline[i], n, m, lr)
        torch.testing.assert_close(attr_max[i], grads.amax(dim=(0, 1)), rtol=1e-12, atol=1e-12)
        per_point = grads.amax(dim=1)
        expected = ((per_point[:-1] + per_point[1:]) / 2).mean(0)
        torch.testing.assert_close(attr_trap[i], expected, rtol=1e-12, atol=1e-12)


def test_one_ascent_step_is_the_analytic_update_and_max_picks_the_right_iteration():
    # f = 0.5 * (x_0^2 - x_1^2): gradient (x_0, -x_1). With the baseline equal to the input every point
    # is the input: g_0 = (x_0, -x_1), x <- x + lr * g_0, g_1 = gradient there.
    a = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    model = DiagonalQuadratic(a, torch.zeros_like(a))
    lr = 0.25
    ggig = GeometricallyGuidedIG(model)
    cases = [
        # x, g_0, g_1 = g(x + lr * g_0), expected max
        ((2.0, 3.0), (2.0, -3.0), (2.5, -2.25), (2.5, -2.25)),  # both maxima at iteration 1
        ((-2.0, -3.0), (-2.0, 3.0), (-2.5, 2.25), (-2.0, 3.0)),  # both at iteration 0
        ((2.0, -3.0), (2.0, 3.0), (2.5, 2.25), (2.5, 3.0)),  # feature 0 at iteration 1, feature 1 at 0
    ]
    for x, g0, g1, expected in cases:
        x = torch.tensor([x], dtype=torch.float64)
        one = ggig.attribute(x, baselines=x, target=0, n_steps=1, n_iterations=1, learning_rate=lr)
        assert torch.equal(one[0], torch.tensor(g0, dtype=torch.float64))
        step = x + lr * torch.tensor(g0, dtype=torch.float64)  # the analytic update
        assert torch.equal(a[0] * step[0], torch.tensor(g1, dtype=torch.float64))
        two = ggig.attribute(x, baselines=x, target=0, n_steps=1, n_iterations=2, learning_rate=lr)
        assert torch.equal(two[0], torch.tensor(expected, dtype=torch.float64))


def test_single_iteration_is_max_of_plain_path_gradients(digits, digits_cnn64):
    x = digits.x_test[:3].double()
    baseline = torch.full_like(x, 0.1)
    targets = [int(t) for t in digits.y_test[:3]]
    attr = GeometricallyGuidedIG(digits_cnn64).attribute(
        x, baselines=baseline, target=targets, n_steps=6, n_iterations=1
    )
    for i, t in enumerate(targets):
        expected = path_gradients(digits_cnn64, x[i : i + 1], baseline[i : i + 1], t, 6).amax(dim=0)
        torch.testing.assert_close(attr[i], expected, rtol=1e-12, atol=1e-14)


def test_trapezoid_single_iteration_times_inputs_is_captum_ig(digits, digits_cnn64):
    x = digits.x_test[:4].double()
    target = digits.y_test[:4]
    ggig = GeometricallyGuidedIG(digits_cnn64, multiply_by_inputs=True)
    assert ggig.multiplies_by_inputs and not GeometricallyGuidedIG(digits_cnn64).multiplies_by_inputs
    attr = ggig.attribute(x, target=target, n_steps=8, n_iterations=1, reduction="trapezoid")
    ig_attr = IntegratedGradients(digits_cnn64).attribute(x, target=target, n_steps=9, method="riemann_trapezoid")
    # Captum's trapezoid weights on k points are 1/k (ends 1/(2k)): they sum to (k-1)/k, not 1, a
    # constant factor 8/9 here; the proper trapezoid rule (weights summing to one) is ours
    # (Captum builds its alphas in float32: agreement to ~1e-8 relative)
    torch.testing.assert_close(attr * 8 / 9, ig_attr, rtol=1e-7, atol=1e-9)


def test_convergence_delta_matches_captum_definition(digits, digits_cnn64):
    x = digits.x_test[:3].double()
    target = digits.y_test[:3]
    ggig = GeometricallyGuidedIG(digits_cnn64)
    assert ggig.has_convergence_delta()
    attr, delta = ggig.attribute(
        x,
        baselines=0.2,
        target=target,
        n_steps=4,
        n_iterations=3,
        learning_rate=0.05,
        return_convergence_delta=True,
    )
    expected = ggig.compute_convergence_delta(attr, torch.full_like(x, 0.2), x, target=target)
    torch.testing.assert_close(delta, expected, rtol=1e-10, atol=1e-10)


def test_more_iterations_only_raise_the_maximum(digits, digits_cnn64):
    """The first gradients of m iterations are the m = 1 gradients: the max can only grow, and does."""
    x = digits.x_test[:2].double()
    target = digits.y_test[:2]
    one = GeometricallyGuidedIG(digits_cnn64).attribute(x, target=target, n_steps=3, n_iterations=1)
    many = GeometricallyGuidedIG(digits_cnn64).attribute(x, target=target, n_steps=3, n_iterations=5, learning_rate=0.5)
    assert (many >= one).all()  # a max over a superset of the gradients
    assert (many > one).any()


# ----------------------------------------------------------------------------------------------------
# batching, chunking, early stop


def test_forward_budget_is_points_times_iterations(quadratic):
    counting = CountingForward(quadratic)
    x = torch.randn(5, 6, dtype=torch.float64)
    GeometricallyGuidedIG(counting).attribute(
        x, target=1, n_steps=3, n_iterations=4, learning_rate=0.01, internal_batch_size=6
    )
    assert counting.rows == 5 * 4 * 4  # N * (n + 1) * m
    assert counting.calls == math.ceil(5 * 4 / 6) * 4


def test_tolerance_zero_stops_only_points_with_zero_gradient():
    # f = relu(w.x - 1): zero gradient (and a flat region) on the first half of the line from zeros
    torch.manual_seed(0)
    lin = nn.Linear(4, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0, -0.5, 1.5]]))
        lin.bias.fill_(-2.0)
    model = nn.Sequential(lin, nn.ReLU())
    x = torch.tensor([[1.0, 1.0, 0.5, 1.0], [0.5, 0.2, 0.1, 0.1]], dtype=torch.float64)
    counting = CountingForward(model)
    kwargs = dict(n_steps=4, n_iterations=6, learning_rate=0.1)
    plain = GeometricallyGuidedIG(counting).attribute(x, **kwargs)
    rows_plain, counting.rows = counting.rows, 0
    stopped = GeometricallyGuidedIG(counting).attribute(x, tolerance=0.0, **kwargs)
    assert torch.equal(plain, stopped)
    assert counting.rows < rows_plain
    # a huge tolerance stops every point after its first gradient: the m = 1 result
    first_only = GeometricallyGuidedIG(model).attribute(x, tolerance=1e9, **kwargs)
    assert torch.equal(first_only, GeometricallyGuidedIG(model).attribute(x, n_steps=4, n_iterations=1))


def test_tolerance_with_chunks_equals_unchunked(digits, digits_cnn64):
    x = digits.x_test[:3].double()
    target = digits.y_test[:3]
    ggig = GeometricallyGuidedIG(digits_cnn64)
    # the gradient norms of the points are about 3 to 6 here: with 5 some points stop, others climb on
    counting = CountingForward(digits_cnn64)
    kwargs = dict(target=target, n_steps=4, n_iterations=4, learning_rate=0.05)
    full = GeometricallyGuidedIG(counting).attribute(x, **kwargs)
    rows_full, counting.rows = counting.rows, 0
    stopped = GeometricallyGuidedIG(counting).attribute(x, tolerance=5.0, **kwargs)
    assert 3 * 5 < counting.rows < rows_full and not torch.equal(stopped, full)
    torch.testing.assert_close(
        ggig.attribute(x, internal_batch_size=4, tolerance=5.0, **kwargs), stopped, rtol=1e-10, atol=1e-13
    )


# ----------------------------------------------------------------------------------------------------
# Captum conventions


class TwoInputModel(nn.Module):
    """``f(x1, x2, scale) = scale * cnn(x1) + tanh(x2 @ W)``: tuple inputs and an extra argument."""

    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn
        self.w = nn.Parameter(torch.randn(5, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))

    def forward(self, x1, x2, scale):
        return scale.reshape(-1, 1) * self.cnn(x1) + torch.tanh(x2 @ self.w)


def test_tuple_inputs_and_additional_forward_args(digits, digits_cnn64):
    model = TwoInputModel(digits_cnn64)
    x1 = digits.x_test[:3].double()
    x2 = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    scale = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    target = digits.y_test[:3]
    kwargs = dict(n_steps=3, n_iterations=2, learning_rate=0.05)
    ggig = GeometricallyGuidedIG(model)
    attr = ggig.attribute((x1, x2), target=target, additional_forward_args=(scale,), **kwargs)
    assert isinstance(attr, tuple) and attr[0].shape == x1.shape and attr[1].shape == x2.shape
    for i in range(3):
        single = ggig.attribute(
            (x1[i : i + 1], x2[i : i + 1]), target=int(target[i]), additional_forward_args=(scale[i : i + 1],), **kwargs
        )
        torch.testing.assert_close(attr[0][i : i + 1], single[0], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(attr[1][i : i + 1], single[1], rtol=1e-10, atol=1e-13)
    chunked = ggig.attribute((x1, x2), target=target, additional_forward_args=(scale,), internal_batch_size=5, **kwargs)
    torch.testing.assert_close(chunked, attr, rtol=1e-10, atol=1e-13)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stays_on_device(quadratic):
    model = quadratic.cuda()
    x = torch.randn(2, 6, dtype=torch.float64, device="cuda")
    attr, delta = GeometricallyGuidedIG(model).attribute(
        x, target=0, n_steps=2, n_iterations=2, return_convergence_delta=True
    )
    assert attr.device == x.device and delta.device == x.device


# ----------------------------------------------------------------------------------------------------
# bad input: clear errors before any model evaluation


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(n_steps=0), ValueError, "n_steps"),
        (dict(n_steps=2.5), ValueError, "n_steps"),
        (dict(n_iterations=0), ValueError, "n_iterations"),
        (dict(learning_rate=0.0), ValueError, "learning_rate"),
        (dict(learning_rate=-1e-3), ValueError, "learning_rate"),
        (dict(learning_rate=float("nan")), ValueError, "learning_rate"),
        (dict(learning_rate=float("inf")), ValueError, "learning_rate"),
        (dict(reduction="mean"), ValueError, "reduction"),
        (dict(tolerance=-1.0), ValueError, "tolerance"),
        (dict(tolerance=float("nan")), ValueError, "tolerance"),
        (dict(baselines=torch.zeros(3, 5)), ValueError, "baselines"),
        (dict(baselines=torch.zeros(2, 6)), ValueError, "baselines"),
        (dict(baselines=(0.0, 0.0)), ValueError, "baselines"),
    ],
)
def test_bad_arguments_raise_before_any_forward(quadratic, kwargs, error, match):
    counting = CountingForward(quadratic)
    x = torch.randn(3, 6, dtype=torch.float64)
    kwargs = {"target": 0, **kwargs}
    with pytest.raises(error, match=match):
        GeometricallyGuidedIG(counting).attribute(x, **kwargs)
    assert counting.calls == 0


def test_bad_inputs_raise(quadratic):
    ggig = GeometricallyGuidedIG(quadratic)
    with pytest.raises(TypeError, match="inputs"):
        ggig.attribute([torch.zeros(1, 6)], target=0)
    with pytest.raises(TypeError, match="floating"):
        ggig.attribute(torch.zeros(1, 6, dtype=torch.long), target=0)
    with pytest.raises(ValueError, match="non-finite"):
        ggig.attribute(torch.full((1, 6), float("nan"), dtype=torch.float64), target=0)
    with pytest.raises(ValueError, match="target"):
        ggig.attribute(torch.zeros(1, 6, dtype=torch.float64), target=5, n_steps=1, n_iterations=1)
    with pytest.raises(ValueError, match="target"):  # several outputs, no target
        ggig.attribute(torch.zeros(1, 6, dtype=torch.float64), n_steps=1, n_iterations=1)
    with pytest.raises(TypeError, match="multiply_by_inputs"):
        GeometricallyGuidedIG(quadratic, multiply_by_inputs="yes")


def test_diverging_ascent_stops_with_an_error_naming_the_example():
    a = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    model = DiagonalQuadratic(a, torch.zeros_like(a))  # convex: the ascent grows by (1 + lr) a step
    x = torch.ones(1, 2, dtype=torch.float64)
    with pytest.raises(FloatingPointError, match=r"example\(s\) \[0\].*learning rate"):
        GeometricallyGuidedIG(model).attribute(x, target=0, n_steps=1, n_iterations=1100, learning_rate=1.0)
