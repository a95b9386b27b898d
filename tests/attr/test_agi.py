"""AdversarialGradientIntegration: its maths (the contract is tested in test_contract.py)."""

import warnings

import pytest
import torch
from captum._utils.gradient import compute_gradients

from captum_paths.attr import AdversarialGradientIntegration
from captum_paths.attr._core.agi import (
    agi_term,
    all_false_classes,
    random_false_classes,
    sign_step,
    spaced_false_classes,
    top_false_classes,
)

EPS = 0.05


# ---------------------------------------------------------------------------------------- models
class Linear(torch.nn.Module):
    """``f(x) = W flatten(x) + b``: every gradient is a row of ``W``."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(weight), torch.nn.Parameter(bias)

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


class Recording(torch.nn.Module):
    """Wraps a model and keeps every input row it is called on."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen, self.calls = model, [], 0

    def forward(self, x):
        self.seen.append(x.detach().clone())
        self.calls += 1
        return self.model(x)


def small_mlp(n_in=16, n_out=6, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(n_in, 12), torch.nn.Tanh(), torch.nn.Linear(12, n_out)
    ).double()


def reference_agi(model, x0, true_class, classes, epsilon, n_iterations, score, early_stop, step_from, clamp):
    """The reference computation written plainly for one example (1, ...): one chain after the other, one
    autograd call per gradient, no batching (AGI_main.py's loop; LPI's with score="logit", no stop)."""
    total = torch.zeros_like(x0)
    for t in classes:
        if t == true_class:
            continue
        z, chain = x0.clone(), torch.zeros_like(x0)
        for _ in range(n_iterations):
            z.requires_grad_(True)
            out = model(z)
            if early_stop and int(out.argmax(1)) == t:
                break
            s = torch.softmax(out, 1) if score == "softmax" else out
            g_adv = torch.autograd.grad(s[0, t], z, retain_graph=True)[0]
            g_true = torch.autograd.grad(s[0, true_class], z)[0]
            base = x0 if step_from == "input" else z.detach()
            new = base + epsilon * g_adv.sign()
            if clamp is not None:
                new = new.clamp(*clamp)
            chain += -g_true * (new - base)
            z = new.detach()
        total += chain
    return total


# ---------------------------------------------------------------------------------------- pure maths
def test_sign_step_and_term():
    base = torch.tensor([[0.0, 0.5, 0.98, 0.3]])
    grad = torch.tensor([[-1.0, 2.0, 3.0, 0.0]])
    torch.testing.assert_close(sign_step(base, grad, 0.05, 0.0, 1.0), torch.tensor([[0.0, 0.55, 1.0, 0.3]]))
    torch.testing.assert_close(sign_step(base, grad, 0.05), torch.tensor([[-0.05, 0.55, 1.03, 0.3]]))
    new = sign_step(base, grad, 0.05, 0.0, 1.0)
    g_true = torch.tensor([[1.0, -2.0, 4.0, 5.0]])
    torch.testing.assert_close(agi_term(g_true, new, base), torch.tensor([[0.0, 0.1, -0.08, 0.0]]))


def test_spaced_classes_are_the_reference_ids():
    true = torch.tensor([50, 7])
    classes = spaced_false_classes(1000, 20, true)  # the paper's k = 20 on ImageNet: 0, 50, ..., 950
    assert classes.shape == (2, 20)
    assert classes[1].tolist() == list(range(0, 1000, 50))
    assert classes[0].tolist() == [-1 if c == 50 else c for c in range(0, 1000, 50)]  # the true class skipped
    assert spaced_false_classes(1000, 15, true)[1].tolist() == list(range(0, 999, 66))  # 16 ids, 0..990
    assert spaced_false_classes(10, 20, torch.tensor([3]))[0].tolist() == [0, 1, 2, -1, 4, 5, 6, 7, 8]


def test_all_top_random_classes():
    true = torch.tensor([2, 0])
    assert all_false_classes(4, true).tolist() == [[0, 1, 3], [1, 2, 3]]
    outputs = torch.tensor([[0.1, 0.5, 9.0, 0.3], [5.0, 1.0, 2.0, 3.0]])
    assert top_false_classes(outputs, 2, true).tolist() == [[1, 3], [3, 2]]
    assert top_false_classes(outputs, 9, true).shape == (2, 3)
    draws = random_false_classes(10, 3, torch.arange(10), torch.Generator().manual_seed(1))
    for true_class, row in enumerate(draws.tolist()):
        assert len(set(row)) == 3 and true_class not in row and all(0 <= c < 10 for c in row)
    # one example at a time from one generator gives the batch's classes
    gen = torch.Generator().manual_seed(1)
    single = torch.cat([random_false_classes(10, 3, torch.tensor([i]), gen) for i in range(10)])
    assert torch.equal(single, draws)
    counts = torch.bincount(random_false_classes(5, 1, torch.zeros(4000, dtype=torch.long)).flatten(), minlength=5)
    assert counts[0] == 0 and counts[1:].min() > 850  # uniform over the 4 false classes


# ---------------------------------------------------------------------------------------- closed forms
def _linear_case():
    torch.manual_seed(3)
    weight = torch.randn(4, 6, dtype=torch.float64)
    bias = torch.tensor([3.0, 0.0, -0.2, -8.0], dtype=torch.float64)
    x = torch.rand(3, 6, dtype=torch.float64) * 0.9 + 0.05
    return Linear(weight, bias), weight, bias, x


def _closed_form_linear(weight, bias, x, true_class, epsilon, n_iterations, step_from):
    """AGI on ``Wx + b`` with score="logit", early stop, clamp [0, 1], by hand: every gradient of class c is
    ``W_c``, so every step moves by ``epsilon * sign(W_t)`` from its base point."""
    total = torch.zeros_like(x)
    for t in range(weight.shape[0]):
        if t == true_class:
            continue
        direction, z, k = epsilon * weight[t].sign(), x, 0
        while k < n_iterations and int((weight @ z + bias).argmax()) != t:
            k += 1
            z = ((x if step_from == "input" else z) + direction).clamp(0, 1)
        # reference: k terms, each -W_y * (clamp(x + eps sign W_t) - x); cumulative: they telescope
        end = (x + direction).clamp(0, 1)
        total += -weight[true_class] * ((end - x) * k if step_from == "input" else (z - x))
    return total


@pytest.mark.parametrize("step_from", ["input", "current"])
def test_closed_form_on_a_linear_model(step_from):
    model, weight, bias, x = _linear_case()
    agi = AdversarialGradientIntegration(model)
    for n_iterations in (1, 4, 30):
        got = agi.attribute(
            x, target=0, n_iterations=n_iterations, false_classes="all", score="logit", step_from=step_from
        )
        expected = torch.stack([_closed_form_linear(weight, bias, xi, 0, EPS, n_iterations, step_from) for xi in x])
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    # some chains of this case stop early, some run to the end (the closed form covers both branches)
    z = (x[:1] + 30 * EPS * weight[1].sign()).clamp(0, 1)
    assert int((z @ weight.T + bias).argmax()) == 1


def test_cumulative_path_on_a_linear_model_sums_to_the_score_drop():
    """With step_from="current" the terms telescope: sum = sum_t f_y(x) - f_y(z_end_t), exactly for a linear f."""
    model, weight, bias, x = _linear_case()
    rec = Recording(model)
    got = AdversarialGradientIntegration(rec).attribute(
        x[:1], target=2, n_iterations=40, false_classes=[1], score="logit", step_from="current"
    )
    end = rec.seen[-1]  # the last point the chain reached
    drop = (model(x[:1]) - model(end))[0, 2]
    torch.testing.assert_close(got.sum(), drop, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------- the reference
@pytest.mark.parametrize(
    "settings",
    [
        dict(score="softmax", early_stop=True, step_from="input", n_iterations=15),  # AGI_main.py
        dict(score="logit", early_stop=False, step_from="input", n_iterations=6),  # the LPI copy
        dict(score="softmax", early_stop=True, step_from="current", n_iterations=15),  # the paper's path
    ],
)
def test_equals_the_reference_computation(settings):
    model = small_mlp()
    torch.manual_seed(1)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    got = AdversarialGradientIntegration(model).attribute(
        x, false_classes="spaced", n_false_classes=3, epsilon=0.1, **settings
    )
    ids = range(0, 5, 2)  # range(0, C - 1, C // k) with C = 6, k = 3
    expected = torch.cat(
        [reference_agi(model, x[i : i + 1], int(y[i]), ids, 0.1, clamp=(0, 1), **settings) for i in range(3)]
    )
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


def test_points_stay_in_the_epsilon_ball_and_the_valid_range():
    model = Recording(small_mlp())
    torch.manual_seed(2)
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, :2] = torch.tensor([0.0, 1.0])  # on the bounds: clamping must act
    agi = AdversarialGradientIntegration(model)
    agi.attribute(x, epsilon=0.2, n_iterations=8, false_classes="all", early_stop=False)
    points = torch.cat(model.seen)
    assert points.shape[0] == 1 + 5 * 8
    assert (points - x).abs().amax() <= 0.2 + 1e-12 and points.min() >= 0 and points.max() <= 1
    assert (points - x).abs().amax() > 0.2 - 1e-12  # it does reach the ball's surface
    model.seen.clear()
    agi.attribute(x, epsilon=0.2, n_iterations=8, false_classes="all", early_stop=False, step_from="current")
    points = torch.cat(model.seen)
    assert points.min() >= 0 and points.max() <= 1 and (points - x).abs().amax() > 0.2 + 1e-6  # cumulative
    # per-channel tensor bounds
    model.seen.clear()
    low, high = torch.full((1, 4, 4), 0.1, dtype=torch.float64), torch.full((1, 1, 4), 0.9, dtype=torch.float64)
    with pytest.warns(UserWarning, match="outside `clamp`"):
        agi.attribute(x, epsilon=0.2, n_iterations=3, false_classes="all", early_stop=False, clamp=(low, high))
    points = torch.cat(model.seen[2:])  # after the class pass and the pass at the input
    assert points.min() >= 0.1 - 1e-15 and points.max() <= 0.9 + 1e-15


# ---------------------------------------------------------------------------------------- batching, seeds
def small_cnn(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 10),
    ).double()


def test_batched_equals_one_at_a_time_and_chunked_equals_unchunked():
    model = small_cnn()
    torch.manual_seed(8)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 3, 5, 9, 2])
    agi = AdversarialGradientIntegration(model)
    kwargs = dict(n_iterations=6, n_false_classes=4, epsilon=0.1, false_classes="top")
    batched = agi.attribute(x, target=y, **kwargs)
    single = torch.cat([agi.attribute(x[i : i + 1], target=int(y[i]), **kwargs) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-9, atol=1e-12)
    for ibs in (1, 3, 7):
        torch.testing.assert_close(agi.attribute(x, target=y, internal_batch_size=ibs, **kwargs), batched)
    assert batched.abs().sum() > 0
    # some chains stopped early (the chunks were compacted) and some ran to the end
    rec = Recording(model)
    AdversarialGradientIntegration(rec).attribute(x, target=y, **kwargs)
    assert 1 + 5 * 4 < sum(p.shape[0] for p in rec.seen) < 5 + 5 * 4 * 6


def test_generator_reproducible_and_global_rng_untouched():
    model = small_mlp(n_out=10)
    torch.manual_seed(4)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    agi = AdversarialGradientIntegration(model)
    lpi = dict(false_classes="random", n_false_classes=1, n_iterations=5, score="logit", early_stop=False)
    state = torch.get_rng_state()
    first = agi.attribute(x, generator=7, **lpi)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(agi.attribute(x, generator=torch.Generator().manual_seed(7), **lpi), first)
    assert not torch.allclose(agi.attribute(x, generator=8, **lpi), first)
    # the draws are per example: one example at a time from one generator equals the batch
    gen = torch.Generator().manual_seed(7)
    single = torch.cat([agi.attribute(x[i : i + 1], generator=gen, **lpi) for i in range(4)])
    torch.testing.assert_close(single, first, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------- cost, options
def test_one_forward_per_chain_step_and_early_stop_skips_passes():
    model = Recording(small_mlp())
    torch.manual_seed(5)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 1])
    agi = AdversarialGradientIntegration(model)
    agi.attribute(x, target=y, false_classes=[2, 3, 4], n_iterations=5, early_stop=False)
    # one image to learn the number of classes, then 2 examples x 3 chains x 5 steps, one forward each
    assert sum(p.shape[0] for p in model.seen) == 1 + 2 * 3 * 5 and model.calls == 1 + 5
    # a chain whose class is already the argmax at the input stops before its first step: it adds nothing
    pred = int(small_mlp()(x[:1]).argmax())
    other = (pred + 1) % 6
    alone = agi.attribute(x[:1], target=other, false_classes=[pred], n_iterations=5)
    assert torch.equal(alone, torch.zeros_like(alone))


def test_swapped_gradient_func_gives_the_same_result():
    model = small_mlp()
    torch.manual_seed(6)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    agi = AdversarialGradientIntegration(model)
    kwargs = dict(false_classes="all", n_iterations=6, epsilon=0.1, internal_batch_size=4)
    expected = agi.attribute(x, **kwargs)
    calls = []

    def counting(*args, **kw):
        calls.append(1)
        return compute_gradients(*args, **kw)

    agi.gradient_func = counting
    torch.testing.assert_close(agi.attribute(x, **kwargs), expected, rtol=1e-12, atol=1e-15)
    assert len(calls) > 0


def test_target_none_is_the_prediction_and_tuple_inputs():
    model = small_mlp()
    torch.manual_seed(7)
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    agi = AdversarialGradientIntegration(model)
    pred = model(x).argmax(1)
    torch.testing.assert_close(agi.attribute(x, n_iterations=4), agi.attribute(x, target=pred, n_iterations=4))
    torch.testing.assert_close(
        agi.attribute(x, target=[(int(p),) for p in pred], n_iterations=4), agi.attribute(x, n_iterations=4)
    )

    def two_inputs(a, b):
        return model(torch.cat([a, b], dim=3))

    whole = agi.attribute(x, target=1, n_iterations=4)
    a, b = AdversarialGradientIntegration(two_inputs).attribute((x[..., :2], x[..., 2:]), target=1, n_iterations=4)
    torch.testing.assert_close(torch.cat([a, b], dim=3), whole)


def test_errors():
    model = small_mlp()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    agi = AdversarialGradientIntegration(model)
    assert not agi.has_convergence_delta()
    with pytest.raises(ValueError, match="has no baseline"):
        agi.attribute(x, baselines=0.0)
    with pytest.raises(ValueError, match="no completeness"):
        agi.attribute(x, return_convergence_delta=True)
    for bad in (dict(epsilon=0), dict(n_iterations=0), dict(n_false_classes=-1), dict(score="prob")):
        with pytest.raises(ValueError, match=f"`{next(iter(bad))}`"):
            agi.attribute(x, **bad)
    with pytest.raises(ValueError, match="`step_from`"):
        agi.attribute(x, step_from="x0")
    with pytest.raises(ValueError, match="`false_classes`"):
        agi.attribute(x, false_classes="best")
    with pytest.raises(TypeError, match="`early_stop`"):
        agi.attribute(x, early_stop=1)
    with pytest.raises(TypeError, match="`clamp`"):
        agi.attribute(x, clamp=(0, "1"))
    with pytest.raises(ValueError, match="low < high"):
        agi.attribute(x, clamp=(1, 0))
    with pytest.raises(ValueError, match="does not broadcast"):
        agi.attribute(x, clamp=(torch.zeros(3, dtype=torch.float64), 1.0))
    with pytest.raises(ValueError, match="outside the model's 6 outputs"):
        agi.attribute(x, target=6)
    with pytest.raises(ValueError, match=r"in \[0, 6\)"):
        agi.attribute(x, target=0, false_classes=[1, 6])
    with pytest.raises(ValueError, match="one row per example"):
        agi.attribute(x, false_classes=torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="true class"):
        agi.attribute(x, target=(0, 1))
    with pytest.raises(ValueError, match="needs a classifier"):
        AdversarialGradientIntegration(lambda t: t.sum((1, 2, 3))).attribute(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        agi.attribute(x, n_iterations=1)  # inputs inside [0, 1]: no warning
    with pytest.warns(UserWarning, match="outside `clamp`"):
        agi.attribute(x - 0.5, n_iterations=1)
