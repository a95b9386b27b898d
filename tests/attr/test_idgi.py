"""IDGI's maths: closed forms, completeness, the official formula re-derived, batching, the IG wrapper."""

import importlib.util
import os

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients

from captum_paths.attr import IDGI
from captum_paths.attr._core.idgi import idgi_rule, straight_line_idgi
from captum_paths.attr._utils.idgi import idgi_accumulate_, idgi_direction, idgi_segment

METHODS = ("riemann_left", "riemann_right", "riemann_trapezoid")
D = 6


class Quadratic(torch.nn.Module):
    """f(x) = 1/2 x^T A x + b^T x per row (one output), with closed-form gradient A x + b."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        m = torch.randn(D, D, generator=g, dtype=torch.float64)
        self.a = m + m.T
        self.b = torch.randn(D, generator=g, dtype=torch.float64)

    def forward(self, x):
        return 0.5 * ((x @ self.a) * x).sum(dim=1, keepdim=True) + x @ self.b[:, None]


def _mlp(seed=0, n_in=D, n_out=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, 7), torch.nn.Tanh(), torch.nn.Linear(7, n_out)).double()


def _numpy_idgi(gradients, predictions):
    """The official function's formula, re-derived: sum_j (P[j+1] - P[j]) G[j]^2 / sum(G[j]^2), j < len - 1."""
    total = np.zeros_like(gradients[0])
    for j in range(len(gradients) - 1):
        total += gradients[j] ** 2 * (predictions[j + 1] - predictions[j]) / np.sum(gradients[j] ** 2)
    return total


def _quadratic_expected(model, x, xb, n_steps, method):
    """IDGI of the quadratic from its analytic gradients and scores (no autograd), one example."""
    a, b = model.a.numpy(), model.b.numpy()
    t = np.arange(n_steps + 1) / n_steps
    points = xb[None] + t[:, None] * (x - xb)[None]
    grads = points @ a + b
    scores = 0.5 * np.einsum("ki,ij,kj->k", points, a, points) + points @ b
    u = grads**2 / (grads**2).sum(axis=1, keepdims=True)
    d = np.diff(scores)[:, None]
    weights = {"riemann_left": u[:-1], "riemann_right": u[1:], "riemann_trapezoid": (u[:-1] + u[1:]) / 2}[method]
    return (d * weights).sum(axis=0)


# ------------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_steps", [1, 4, 23])
def test_quadratic_equals_closed_form(method, n_steps):
    model = Quadratic()
    x = torch.rand(3, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xb = torch.rand(3, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) - 0.5
    attr = IDGI(model).attribute(x, xb, n_steps=n_steps, method=method)
    for i in range(3):
        expected = _quadratic_expected(model, x[i].numpy(), xb[i].numpy(), n_steps, method)
        np.testing.assert_allclose(attr[i].numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_steps", [1, 3, 50])
def test_exponential_of_linear_is_output_change_along_w_squared(method, n_steps):
    """f = exp(w.x): every gradient is parallel to w, so IDGI = (f(x) - f(x')) w^2 / ||w||^2 for any n."""
    w = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25, -0.75], dtype=torch.float64)

    def model(x):
        return torch.exp(x @ w)

    x = torch.rand(4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    attr = IDGI(model).attribute(x, n_steps=n_steps, method=method)
    expected = (model(x) - 1.0)[:, None] * (w * w / (w * w).sum())[None]
    torch.testing.assert_close(attr, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_steps", [1, 2, 7, 64])
def test_completeness_for_any_n_steps(method, n_steps):
    model = _mlp()
    x = torch.randn(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    xb = torch.randn(5, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 1, 2, 1, 0])
    attr, delta = IDGI(model).attribute(x, xb, target, n_steps=n_steps, method=method, return_convergence_delta=True)
    with torch.no_grad():
        change = model(x).gather(1, target[:, None])[:, 0] - model(xb).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(attr.sum(dim=1), change, rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-12


def test_softmax_score_is_the_logit_rule_on_the_softmax_model():
    model = _mlp()
    x = torch.randn(4, D, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    attr, delta = IDGI(model).attribute(x, target=2, n_steps=9, score="softmax", return_convergence_delta=True)
    expected = IDGI(lambda z: torch.softmax(model(z), dim=1)).attribute(x, target=2, n_steps=9)
    torch.testing.assert_close(attr, expected, rtol=0, atol=0)
    assert delta.abs().max() < 1e-14
    with pytest.raises(ValueError, match="score='softmax' needs"):
        IDGI(lambda z: z.sum(dim=1)).attribute(x, n_steps=2, score="softmax")


# --------------------------------------------------------------------------------------- the official formula
def _path_gradients(model, x, xb, target, n_steps):
    """Gradients and scores at all n + 1 line points of one example, by plain autograd (float64 numpy)."""
    t = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)[:, None]
    points = (xb[None] + t * (x - xb)[None]).requires_grad_()
    scores = model(points)[:, target]
    (grads,) = torch.autograd.grad(scores.sum(), points)
    return grads.numpy(), scores.detach().numpy()


@pytest.mark.parametrize("n_steps", [1, 5, 50])
def test_left_rule_equals_official_formula(n_steps):
    model = _mlp(seed=1)
    x = torch.randn(3, D, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    xb = torch.randn(3, D, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    attr = IDGI(model).attribute(x, xb, target=1, n_steps=n_steps)
    for i in range(3):
        grads, scores = _path_gradients(model, x[i], xb[i], 1, n_steps)
        np.testing.assert_allclose(attr[i].numpy(), _numpy_idgi(list(grads), list(scores)), rtol=1e-10, atol=1e-13)
        for method in METHODS:
            reference = straight_line_idgi(torch.from_numpy(grads), torch.from_numpy(scores), method)
            ours = IDGI(model).attribute(x[i : i + 1], xb[i : i + 1], target=1, n_steps=n_steps, method=method)
            torch.testing.assert_close(ours[0], reference, rtol=1e-10, atol=1e-13)


@pytest.mark.skipif(
    not os.path.isfile(os.environ.get("IDGI_OFFICIAL", "")),
    reason="set IDGI_OFFICIAL to the official yangruo1226/IDGI idgi.py to run it side by side",
)
def test_left_rule_equals_official_code_side_by_side():
    spec = importlib.util.spec_from_file_location("official_idgi", os.environ["IDGI_OFFICIAL"])
    official = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official)
    model = _mlp(seed=2, n_in=12)
    x = torch.rand(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    for n_steps in (1, 10, 50):
        attr = IDGI(model).attribute(x, target=0, n_steps=n_steps)
        for i in range(4):
            grads, scores = _path_gradients(model, x[i], torch.zeros(12, dtype=torch.float64), 0, n_steps)
            np.testing.assert_allclose(attr[i].numpy(), official.IDGI(list(grads), list(scores)), rtol=1e-10)


# ------------------------------------------------------------------------------------- guard, batching, cost
def test_zero_gradient_segment_is_skipped_and_reported_by_delta():
    """f = (w.x)^2 has a zero gradient at the zero baseline: the first left segment carries no direction."""
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0, 3.0], dtype=torch.float64)

    def model(x):
        return (x @ w) ** 2

    x = torch.rand(2, D, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    for n_steps in (1, 2, 4):
        attr, delta = IDGI(model).attribute(x, n_steps=n_steps, return_convergence_delta=True)
        assert torch.isfinite(attr).all()
        first_segment = model(x / n_steps) - model(torch.zeros_like(x))
        torch.testing.assert_close(delta, -first_segment, rtol=1e-12, atol=1e-14)
        # the right rule never uses the baseline's gradient: complete
        _, delta = IDGI(model).attribute(x, n_steps=n_steps, method="riemann_right", return_convergence_delta=True)
        assert delta.abs().max() < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_batched_chunked_tuple_equal_one_at_a_time(method):
    torch.manual_seed(0)
    net = _mlp(seed=3, n_in=8)

    def model(a, b, scale):
        return net(torch.cat([a.flatten(1), b], dim=1)) * scale[:, None]

    a = torch.randn(5, 2, 3, dtype=torch.float64)
    b = torch.randn(5, 2, dtype=torch.float64)
    scale = torch.rand(5, dtype=torch.float64) + 0.5
    target = [0, 2, 1, 1, 0]
    idgi = IDGI(model)
    kwargs = dict(n_steps=6, method=method, return_convergence_delta=True)
    whole, delta = idgi.attribute((a, b), (0.1, -0.2), target, (scale,), **kwargs)
    for ibs in (1, 3, 7, 13, 1000):
        chunked, chunk_delta = idgi.attribute((a, b), (0.1, -0.2), target, (scale,), internal_batch_size=ibs, **kwargs)
        for c, w in zip(chunked, whole):
            torch.testing.assert_close(c, w, rtol=0, atol=1e-13)
        torch.testing.assert_close(chunk_delta, delta, rtol=0, atol=1e-13)
    for i in range(5):
        one, _ = idgi.attribute((a[i : i + 1], b[i : i + 1]), (0.1, -0.2), target[i], (scale[i : i + 1],), **kwargs)
        for o, w in zip(one, whole):
            torch.testing.assert_close(o[0], w[i], rtol=0, atol=1e-13)
    assert delta.abs().max() < 1e-12  # one norm across the tuple keeps completeness


@pytest.mark.parametrize("method, gradient_rows, forward_rows", [("riemann_left", 20, 4), ("riemann_trapezoid", 24, 0)])
def test_model_passes(method, gradient_rows, forward_rows):
    net, seen = _mlp(), {"grad": 0, "plain": 0}

    def model(x):
        seen["grad" if torch.is_grad_enabled() else "plain"] += x.shape[0]
        return net(x)

    IDGI(model).attribute(torch.randn(4, D, dtype=torch.float64), target=0, n_steps=5, method=method)
    assert seen == {"grad": gradient_rows, "plain": forward_rows}


def test_rule_orders_cover_each_segment_once():
    for method in METHODS:
        order, score_point, sign = idgi_rule(method, 5)
        visited = ([score_point] if score_point is not None else []) + list(order)
        assert sorted(visited) == list(range(6)) and visited == sorted(visited, reverse=sign < 0)


# ------------------------------------------------------------------------------------------------ IG wrapper
def test_wraps_captum_integrated_gradients():
    model = _mlp(seed=4)
    x = torch.randn(3, D, dtype=torch.float64)
    ig = IntegratedGradients(model)
    expected = IDGI(model).attribute(x, target=1, n_steps=8, method="riemann_right")
    for idgi in (IDGI(ig), IDGI.from_integrated_gradients(ig)):
        torch.testing.assert_close(idgi.attribute(x, target=1, n_steps=8, method="riemann_right"), expected)
    calls = []

    def counting_gradients(*args, **kwargs):
        calls.append(1)
        return IDGI(model).gradient_func(*args, **kwargs)

    ig.gradient_func = counting_gradients
    IDGI(ig).attribute(x, target=1, n_steps=4)
    assert calls  # the IG's swapped gradient function is used
    # the same total as IG's (both complete up to IG's quadrature error)
    idgi_sum = IDGI(ig).attribute(x, target=1, n_steps=4).sum(dim=1)
    ig_sum = IntegratedGradients(model).attribute(x, target=1, n_steps=200).sum(dim=1)
    torch.testing.assert_close(idgi_sum, ig_sum, rtol=1e-4, atol=1e-6)


def test_wrapper_refusals():
    model = _mlp()
    with pytest.raises(ValueError, match="multiply_by_inputs"):
        IDGI(IntegratedGradients(model, multiply_by_inputs=False))
    with pytest.raises(TypeError, match="LayerIntegratedGradients"):
        IDGI(LayerIntegratedGradients(model, model[0]))
    with pytest.raises(TypeError, match="integrated_gradients"):
        IDGI.from_integrated_gradients(model)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(method="gausslegendre"), "gausslegendre.*does not fit IDGI"),
        (dict(method="riemann_middle"), "riemann_middle.*does not fit IDGI"),
        (dict(method="simpson"), "`method` must be one of"),
        (dict(score="prob"), "`score` must be one of"),
        (dict(n_steps=0), "`n_steps` must be a positive int"),
    ],
)
def test_knob_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IDGI(_mlp()).attribute(torch.zeros(1, D, dtype=torch.float64), target=0, **kwargs)


# ------------------------------------------------------------------------------------------- the pure util
def test_direction_and_segment():
    g = (torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]]), torch.tensor([[2.0], [0.0], [4.0]]))
    u = idgi_direction(g)
    torch.testing.assert_close(u[0], torch.tensor([[1 / 9, 4 / 9], [0.0, 0.0], [9 / 25, 0.0]]))
    torch.testing.assert_close(u[1], torch.tensor([[4 / 9], [0.0], [16 / 25]]))
    d = torch.tensor([2.0, 5.0, -1.0])
    seg = idgi_segment(g, d)
    for s, ui in zip(seg, u):
        torch.testing.assert_close(s, ui * d[:, None])
    totals = (torch.ones(3, 2), torch.zeros(3, 1))
    idgi_accumulate_(totals, g, d)
    torch.testing.assert_close(totals[0], 1 + seg[0])
    assert g[0][0, 1] == 2.0  # inputs untouched
