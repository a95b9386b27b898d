import math

import pytest
import torch
import torch.nn as nn

from captum_paths import Blur, SampAttribution
from captum_paths.attr._core.samp import default_features_per_step, select_salient_groups
from captum_paths.baselines import gaussian_blur


def linear_model(weight):
    """f(x) = <w, x> per example: every path method gives w * (x_end - x_start) exactly."""

    def forward(x):
        return (x * weight).flatten(1).sum(1)

    return forward


@pytest.fixture
def linear_setup():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 3, 6, 6, generator=g, dtype=torch.float64)
    x = torch.rand(4, 3, 6, 6, generator=g, dtype=torch.float64)
    return w, x


def smooth_cnn():
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.Softplus(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, 3),
        )
        .double()
        .eval()
    )


# ----------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("momentum", [None, 0.5, 0.9])
@pytest.mark.parametrize("eta", [None, 0.1, 0.02])
def test_linear_model_gives_weight_times_displacement(linear_setup, eta, momentum):
    w, x = linear_setup
    samp = SampAttribution(linear_model(w))
    blurred = gaussian_blur(x, 11, 5.0)
    expected = {
        "deletion": w * (x - 0.0),
        "insertion": w * (x - blurred),
        "both": w * x + w * (x - blurred),
    }
    for direction, want in expected.items():
        attr, delta = samp.attribute(
            x, direction=direction, eta=eta, momentum=momentum, features_per_step=5, return_convergence_delta=True
        )
        torch.testing.assert_close(attr, want, rtol=0, atol=1e-12)
        assert delta.abs().max() < 1e-10


def test_linear_model_with_baseline_tensor_and_custom_blur(linear_setup):
    w, x = linear_setup
    baseline = torch.full((3, 6, 6), 0.3, dtype=torch.float64)
    attr = SampAttribution(linear_model(w)).attribute(
        x, baselines=baseline, insertion_start=Blur(3, 1.0), features_per_step=0.1
    )
    torch.testing.assert_close(attr, w * (x - 0.3) + w * (x - gaussian_blur(x, 3, 1.0)), rtol=0, atol=1e-12)


def test_tuple_inputs_and_additional_forward_args(linear_setup):
    w, x = linear_setup
    g = torch.Generator().manual_seed(1)
    v = torch.randn(1, 5, generator=g, dtype=torch.float64)
    z = torch.rand(4, 5, generator=g, dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)

    def forward(a, b, s, offset):
        return s * ((a * w).flatten(1).sum(1) + (b * v).sum(1)) + offset

    attr_x, attr_z = SampAttribution(forward).attribute(
        (x, z), additional_forward_args=(scale, 3.0), direction="deletion", features_per_step=4
    )
    torch.testing.assert_close(attr_x, scale.view(-1, 1, 1, 1) * w * x, rtol=0, atol=1e-12)
    torch.testing.assert_close(attr_z, scale.view(-1, 1) * v * z, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------- completeness


def test_completeness_on_smooth_cnn_shrinks_with_eta():
    """Momentum off: |delta| / |F(end) - F(start)| is below 2% at eta=0.01 and shrinks with eta."""
    model = smooth_cnn()
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samp = SampAttribution(model)
    out_x = model(x)[:, 1].detach()
    out_base = model(torch.zeros_like(x))[:, 1].detach()
    out_blur = model(gaussian_blur(x, 11, 5.0))[:, 1].detach()
    difference = (2 * out_x - out_base - out_blur).abs()
    errors = []
    for eta in (0.1, 0.01):
        attr, delta = samp.attribute(
            x, target=1, eta=eta, momentum=None, features_per_step=4, return_convergence_delta=True
        )
        # the delta is exactly sum(attr) - expected output difference
        torch.testing.assert_close(delta, attr.sum((1, 2, 3)) - (2 * out_x - out_base - out_blur))
        errors.append(float((delta.abs() / difference).mean()))
    assert errors[1] < 0.02
    assert errors[1] < errors[0] / 3


@pytest.mark.parametrize("momentum", [None, 0.5])
@pytest.mark.parametrize("eta", [None, 0.1, 0.02])
def test_trapezoid_is_exact_on_a_linear_model(linear_setup, eta, momentum):
    w, x = linear_setup
    attr, delta = SampAttribution(linear_model(w)).attribute(
        x, eta=eta, momentum=momentum, features_per_step=5, rule="trapezoid", return_convergence_delta=True
    )
    torch.testing.assert_close(attr, w * x + w * (x - gaussian_blur(x, 11, 5.0)), rtol=0, atol=1e-12)
    assert delta.abs().max() < 1e-10


@pytest.mark.parametrize("momentum", [None, 0.5])
def test_trapezoid_delta_is_smaller_and_shrinks_faster_on_a_smooth_cnn(momentum):
    """Same path (same choices), other quadrature: the trapezoid's gap is far below the left sum's and falls
    faster with eta (second order); under momentum it integrates the raw gradients, so it still shrinks."""
    model = smooth_cnn()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    samp = SampAttribution(model)
    f = lambda z: model(z)[:, 1].detach()  # noqa: E731
    expected = 2 * f(x) - f(torch.zeros_like(x)) - f(gaussian_blur(x, 11, 5.0))
    relative = {}
    for rule in ("left", "trapezoid"):
        for eta in (0.1, 0.01):
            attr, delta = samp.attribute(
                x, target=1, eta=eta, momentum=momentum, features_per_step=4, rule=rule, return_convergence_delta=True
            )
            torch.testing.assert_close(delta, attr.sum((1, 2, 3)) - expected)
            relative[rule, eta] = float((delta.abs() / expected.abs()).median())
    for eta in (0.1, 0.01):
        assert relative["trapezoid", eta] < relative["left", eta] / 10
    assert relative["trapezoid", 0.01] < relative["trapezoid", 0.1] / 30
    if momentum is None:
        assert relative["trapezoid", 0.1] / relative["trapezoid", 0.01] > relative["left", 0.1] / relative["left", 0.01]


def test_trapezoid_costs_one_pass_per_path_and_no_end_forward(linear_setup):
    w, x = linear_setup
    calls = []

    def forward(z):
        calls.append((z.shape[0], torch.is_grad_enabled()))
        return (z * w).flatten(1).sum(1)

    samp = SampAttribution(forward)
    samp.attribute(x, eta=None, features_per_step=6, return_convergence_delta=True)
    left = list(calls)
    calls.clear()
    samp.attribute(x, eta=None, features_per_step=6, rule="trapezoid", return_convergence_delta=True)
    assert all(grad for _, grad in calls)  # the end scores come from the last passes
    assert sum(b for b, _ in calls) == sum(b for b, g in left if g) + 2 * x.shape[0]
    # stopped by max_steps: one pass at the last point, then the end-point forward for the delta
    calls.clear()
    attr, delta = samp.attribute(
        x, eta=None, features_per_step=6, max_steps=2, rule="trapezoid", return_convergence_delta=True
    )
    assert [g for _, g in calls] == [True, True, True, False]
    f = lambda z: (z * w).flatten(1).sum(1)  # noqa: E731
    torch.testing.assert_close(
        delta, attr.flatten(1).sum(1) - (2 * f(x) - f(torch.zeros_like(x)) - f(gaussian_blur(x, 11, 5.0)))
    )


@pytest.mark.parametrize("rule", ["left", "trapezoid"])
def test_pixel_fast_path_agrees_with_generic_groups(rule):
    """Default pixel groups (gathered directly) against the same pixels under shuffled ids (generic group sums)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Flatten(), nn.Linear(4 * 36, 2)).double()
    x = torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    samp = SampAttribution(model)
    fast = samp.attribute(x, target=0, features_per_step=3, rule=rule)
    perm = torch.randperm(36, generator=torch.Generator().manual_seed(3))
    mask = perm.reshape(1, 1, 6, 6)
    generic = samp.attribute(x, target=0, features_per_step=3, rule=rule, feature_mask=mask)
    torch.testing.assert_close(fast, generic, rtol=1e-9, atol=1e-12)


def test_convergence_delta_is_reported_honestly_with_momentum(digits, digits_cnn64):
    x, y = digits.x_test[:3].double(), digits.y_test[:3]
    samp = SampAttribution(digits_cnn64)
    attr, delta = samp.attribute(x, target=y, return_convergence_delta=True)
    with torch.no_grad():
        f = lambda z: digits_cnn64(z).gather(1, y[:, None]).squeeze(1)  # noqa: E731
        expected = 2 * f(x) - f(torch.zeros_like(x)) - f(gaussian_blur(x, 11, 5.0))
    torch.testing.assert_close(delta, attr.sum((1, 2, 3)) - expected)


# ----------------------------------------------------------------------------------- greedy order


def test_select_salient_groups():
    projection = torch.tensor([[3.0, -1.0, 5.0, -4.0, 0.5]])
    unfinished = torch.tensor([[True, True, False, True, True]])
    up = select_salient_groups(projection, unfinished, 2, largest=True)
    down = select_salient_groups(projection, unfinished, 2, largest=False)
    assert up.tolist() == [[True, False, False, False, True]]  # group 2 is finished: never re-picked
    assert down.tolist() == [[False, True, False, True, False]]
    few_left = select_salient_groups(projection, torch.tensor([[False, False, False, True, False]]), 3, True)
    assert few_left.tolist() == [[False, False, False, True, False]]


@pytest.mark.parametrize("direction", ["deletion", "insertion"])
def test_first_step_moves_the_most_salient_pixels(linear_setup, direction):
    w, x = linear_setup
    s = 5
    attr = SampAttribution(linear_model(w)).attribute(
        x, direction=direction, features_per_step=s, eta=None, max_steps=1
    )
    # deletion: projection w * (0 - x), most negative first; insertion: w * (x - blur), largest first
    displacement = x if direction == "deletion" else x - gaussian_blur(x, 11, 5.0)
    saliency = (w * displacement).sum(1).flatten(1)
    expected = torch.zeros_like(saliency, dtype=torch.bool)
    expected.scatter_(1, saliency.topk(s, dim=1).indices, True)
    moved = attr.abs().sum(1).flatten(1) > 0
    assert torch.equal(moved, expected)


def test_feature_mask_moves_superpixels_together(linear_setup):
    w, x = linear_setup
    mask = (torch.arange(6).view(-1, 1) // 3 * 2 + torch.arange(6).view(1, -1) // 3).expand(1, 1, 6, 6)
    attr = SampAttribution(linear_model(w)).attribute(
        x, feature_mask=mask, direction="deletion", features_per_step=1, eta=None, max_steps=1
    )
    group_scores = torch.stack([(w * x * (mask == k)).flatten(1).sum(1) for k in range(4)], 1)
    best = group_scores.argmax(1)
    for i in range(x.shape[0]):
        inside = (mask[0] == best[i]).expand(3, 6, 6)
        torch.testing.assert_close(attr[i][inside], (w * x)[i][inside])
        assert torch.all(attr[i][~inside] == 0)


# ----------------------------------------------------------------------------------- path record


@pytest.mark.parametrize("rule", ["left", "trapezoid"])
def test_return_path_scores_and_fractions(digits, digits_cnn64, rule):
    x, y = digits.x_test[:2].double(), digits.y_test[:2]
    attr, path = SampAttribution(digits_cnn64).attribute(x, target=y, return_path=True, rule=rule)
    assert path.directions == ("deletion", "insertion")
    with torch.no_grad():
        f = lambda z: digits_cnn64(z).gather(1, y[:, None]).squeeze(1)  # noqa: E731
        blurred = gaussian_blur(x, 11, 5.0)
        torch.testing.assert_close(path.scores[:, 0, 0], f(x))
        torch.testing.assert_close(path.scores[:, 1, 0], f(blurred))
        last = path.lengths - 1
        torch.testing.assert_close(path.scores[:, 0].gather(1, last[:, :1]).squeeze(1), f(torch.zeros_like(x)))
        torch.testing.assert_close(path.scores[:, 1].gather(1, last[:, 1:]).squeeze(1), f(x))
    for i in range(2):
        for d in range(2):
            fr = path.fractions[i, d, : path.lengths[i, d]]
            assert fr[0] == 0 and abs(float(fr[-1]) - 1) < 1e-9 and torch.all(fr[1:] >= fr[:-1])
            assert torch.isnan(path.scores[i, d, path.lengths[i, d] :]).all()
    # snapshots: the first is the start point, the last the end point with the full attribution
    torch.testing.assert_close(path.snapshots[0][:, 1, 0], blurred)
    torch.testing.assert_close(path.snapshots[0][:, 1, -1], x)
    total = path.snapshot_attributions[0][:, 0, -1] + path.snapshot_attributions[0][:, 1, -1]
    torch.testing.assert_close(total, attr)


# ----------------------------------------------------------------------------------- batching etc.


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(baselines=torch.zeros(2, 3, 5, 5)), ValueError, "baselines"),
        (dict(insertion_start=torch.zeros(1, 2, 6, 6)), ValueError, "insertion_start"),
        (dict(features_per_step=0), ValueError, "features_per_step"),
        (dict(features_per_step=1.5), ValueError, "features_per_step"),
        (dict(eta=0.0), ValueError, "eta"),
        (dict(eta=-0.1), ValueError, "eta"),
        (dict(momentum=1.0), ValueError, "momentum"),
        (dict(momentum=-0.1), ValueError, "momentum"),
        (dict(direction="sideways"), ValueError, "direction"),
        (dict(rule="simpson"), ValueError, "rule"),
        (dict(rule=None), ValueError, "rule"),
        (dict(feature_mask=torch.zeros(1, 1, 5, 6, dtype=torch.long)), ValueError, "feature_mask"),
        (dict(feature_mask=torch.full((1, 1, 6, 6), 2)), ValueError, "contiguous"),
        (dict(feature_mask=torch.zeros(1, 1, 6, 6)), TypeError, "feature_mask"),
        (dict(target=7), ValueError, "target"),
        (dict(target=None), ValueError, "one score per example"),
    ],
)
def test_bad_input_is_rejected_before_any_work(linear_setup, kwargs, error, words):
    w, x = linear_setup
    calls = []

    def forward(z):
        calls.append(z.shape[0])
        return torch.stack([(z * w).flatten(1).sum(1)] * 3, 1)

    kwargs.setdefault("target", 0)
    with pytest.raises(error, match=words):
        SampAttribution(forward).attribute(x, **kwargs)
    assert len(calls) <= 1  # at most the first forward pass, which is where output errors surface


def test_default_features_per_step_is_the_papers_setting_at_its_sizes():
    assert default_features_per_step(28 * 28) == 10 and default_features_per_step(32 * 32) == 10
    assert default_features_per_step(224 * 224) == 224 * 16
    steps = [math.ceil(g / default_features_per_step(g)) for g in range(1000, 60000, 997)]
    assert max(steps) <= 103 and min(steps) >= 14
    assert all(a >= b - 1 for a, b in zip(steps, steps[1:]))  # the step count never grows with the size


def test_large_calls_warn_with_their_estimate(linear_setup, monkeypatch):
    from captum_paths.attr._core import base

    w, x = linear_setup
    monkeypatch.setattr(base, "LARGE_CALL_PASSES", 10)
    with pytest.warns(RuntimeWarning, match=r"estimated at [\d,]+ model passes.*show_progress=True"):
        SampAttribution(linear_model(w)).attribute(x, features_per_step=1, eta=None, max_steps=2)
