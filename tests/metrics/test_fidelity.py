"""mu-fidelity: Quantus given the same subsets, closed forms, the definition, seeding, grids, errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metric_models import LinearClasses, LinearScore, small_cnn
from scipy.stats import spearmanr

from captum_paths.metrics import mu_fidelity
from captum_paths.metrics._core.fidelity import _drawer, grid_feature_mask, subset_count


def _linear(seed=0, n=3, shape=(2, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((1,) + shape, generator=g, dtype=torch.float64)
    x = torch.rand((n,) + shape, generator=g, dtype=torch.float64)
    return LinearScore(w), x, w


def _input_x_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    out = model(x).gather(1, y.reshape(-1, 1)).sum()
    (grad,) = torch.autograd.grad(out, x)
    return (grad * x).detach()


# ------------------------------------------------------------------------------------------------- Quantus
def _quantus_scores(monkeypatch, model, x, y, a, nr_runs, subset_size):
    """Quantus's FaithfulnessCorrelation on numpy copies, and the subsets it drew (N, nr_runs, k)."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 on numpy >= 2.4
    quantus = pytest.importorskip("quantus")
    drawn = []
    choice = np.random.choice

    def recording_choice(*args, **kwargs):
        out = choice(*args, **kwargs)
        drawn.append(np.array(out))
        return out

    monkeypatch.setattr(np.random, "choice", recording_choice)
    np.random.seed(0)
    metric = quantus.FaithfulnessCorrelation(
        nr_runs=nr_runs, subset_size=subset_size, return_aggregate=False, disable_warnings=True
    )
    scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(), device="cpu")
    assert len(drawn) == nr_runs * len(x)  # one draw per run and image, runs outermost
    subsets = np.stack(drawn).reshape(nr_runs, len(x), subset_size).transpose(1, 0, 2)
    return np.asarray(scores, dtype=np.float64), torch.from_numpy(subsets.copy())


@pytest.mark.parametrize("case", ["digits", "rgb"])
def test_equals_quantus_faithfulness_correlation_given_the_same_subsets(case, monkeypatch, digits):
    if case == "digits":  # real digits, an untrained CNN (no training: the test stays fast)
        model = small_cnn(seed=0, channels=1, dtype=torch.float32)
        x = digits.x_test[:5].float()
        y = model(x).argmax(1)
    else:  # three channels: Quantus draws channel elements, not pixels
        model = small_cnn(seed=1, channels=3, dtype=torch.float32)
        x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        y = model(x).argmax(1)
    a = _input_x_gradient(model, x, y)
    expected, subsets = _quantus_scores(monkeypatch, model, x, y, a, nr_runs=30, subset_size=20)
    black = lambda t: t.flatten(1).amin(1).reshape(-1, 1, 1, 1)  # noqa: E731  (Quantus's "black")
    per_element = torch.arange(x[0].numel()).reshape(x.shape[1:])
    got = mu_fidelity(model, x, a, baselines=black, target=y, feature_mask=per_element, subsets=subsets)
    assert got.shape == (len(x),)
    assert np.isfinite(expected).all() and np.ptp(expected) > 0.01 and expected.max() < 0.99  # informative
    np.testing.assert_allclose(got.double().numpy(), expected, atol=2e-4, rtol=0)
    bool_members = torch.zeros(len(x), 30, x[0].numel(), dtype=torch.bool).scatter_(-1, subsets, True)
    again = mu_fidelity(model, x, a, baselines=black, target=y, feature_mask=per_element, subsets=bool_members)
    torch.testing.assert_close(again, got)


# ------------------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"sampling": "bernoulli", "subset_size": 0.3, "correlation": "spearman"},
        {"subset_size": 7, "n_subsets": 15},
        {"grid_size": 3, "n_subsets": 20},
    ],
)
def test_exact_attribution_of_a_linear_model_has_correlation_one(kwargs):
    model, x, w = _linear()
    b = 0.3
    exact = w * (x - b)
    got = mu_fidelity(model, x, exact, baselines=b, generator=0, **kwargs)
    torch.testing.assert_close(got, torch.ones(3, dtype=x.dtype), atol=1e-10, rtol=0)
    negated = mu_fidelity(model, x, -exact, baselines=b, generator=0, **kwargs)
    torch.testing.assert_close(negated, -torch.ones(3, dtype=x.dtype), atol=1e-10, rtol=0)
    wrong_baseline = mu_fidelity(model, x, w * x, baselines=b, generator=0, **kwargs)  # w x != w (x - b)
    assert bool((wrong_baseline < 1 - 1e-6).all())


def test_follows_its_definition_on_a_nonlinear_model_with_explicit_subsets():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 6, generator=g, dtype=torch.float64)
    attr = torch.randn(2, 6, generator=g, dtype=torch.float64)
    model = lambda t: torch.stack([(t**2).sum(1), t[:, 0] * t[:, 1] - t[:, 5]], 1)  # noqa: E731
    subsets = torch.rand(2, 12, 6, generator=g) < 0.4
    got = mu_fidelity(model, x, attr, baselines=0.5, target=1, subsets=subsets, correlation="spearman")
    for i in range(2):
        perturbed = torch.where(subsets[i], torch.tensor(0.5, dtype=x.dtype), x[i])
        drops = model(x[i : i + 1])[:, 1] - model(perturbed)[:, 1]
        sums = (attr[i] * subsets[i]).sum(1)
        assert got[i].item() == pytest.approx(spearmanr(sums.numpy(), drops.numpy()).statistic, abs=1e-12)


def test_undefined_correlation_is_nan_unless_replaced():
    x = torch.rand(2, 5, dtype=torch.float64)
    constant = lambda t: torch.ones(t.shape[0], 1, dtype=t.dtype)  # noqa: E731
    assert bool(mu_fidelity(constant, x, x, generator=0).isnan().all())
    assert mu_fidelity(constant, x, x, generator=0, nan_to=0.0).tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------------------- randomness, batching
def test_seeded_reproducible_batch_independent_and_global_rng_untouched():
    model = LinearClasses(25, 4)
    x = torch.rand(5, 25, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    for sampling, size in (("fixed", 0.2), ("bernoulli", 0.2)):
        state = torch.get_rng_state()
        a = mu_fidelity(model, x, attr, target=1, generator=7, sampling=sampling, subset_size=size)
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
        b = mu_fidelity(
            model, x, attr, target=1, sampling=sampling, subset_size=size, generator=torch.Generator().manual_seed(7)
        )
        c = mu_fidelity(model, x, attr, target=1, generator=7, sampling=sampling, subset_size=size,
                        max_examples_per_batch=7)  # fmt: skip
        assert torch.equal(a, b)
        torch.testing.assert_close(a, c, atol=1e-12, rtol=0)  # same draws, other chunks
        first = mu_fidelity(model, x[:1], attr[:1], target=1, generator=7, sampling=sampling, subset_size=size)
        torch.testing.assert_close(first[0], a[0], atol=1e-12, rtol=0)  # draws go example by example
        other = mu_fidelity(model, x, attr, target=1, generator=8, sampling=sampling, subset_size=size)
        assert not torch.equal(a, other)


def test_bernoulli_removes_each_feature_with_the_given_probability():
    members = _drawer("bernoulli", 0.2, 2000, 10, torch.Generator().manual_seed(0), "cpu")(0, 2)
    freq = members.double().mean((0, 1))
    torch.testing.assert_close(freq, torch.full((10,), 0.2, dtype=torch.float64), atol=0.02, rtol=0)
    assert members.sum(-1).unique().numel() > 3  # the subset size varies
    fixed = _drawer("fixed", 0.25, 50, 10, torch.Generator().manual_seed(0), "cpu")(0, 3)
    assert bool((fixed.sum(-1) == 2).all())  # round(0.25 * 10) = 2 (banker's rounding of 2.5)


def test_subset_count():
    assert subset_count(224, 300) == 224
    assert subset_count(0.2, 256) == 51 and subset_count(1e-6, 10) == 1 and subset_count(1.0, 7) == 7
    for bad in (0, 301, 0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="subset_size"):
            subset_count(bad, 300)
    with pytest.raises(TypeError, match="subset_size"):
        subset_count("all", 300)


def test_grid_is_tensorflows_half_pixel_nearest_resize():
    for h, w, g in ((28, 28, 9), (16, 20, 9), (32, 32, 4)):
        cells = torch.arange(g * g, dtype=torch.float64).reshape(1, 1, g, g)
        resized = F.interpolate(cells, size=(h, w), mode="nearest-exact").long()
        assert torch.equal(grid_feature_mask(h, w, g), torch.unique(resized, return_inverse=True)[1])
    small = grid_feature_mask(8, 8, 9)  # more cells than pixels: empty cells dropped, ids contiguous
    assert small.unique().tolist() == list(range(64))


def test_grid_cells_move_together():
    model, x, w = _linear(shape=(2, 6, 6))
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    mask = grid_feature_mask(6, 6, 3)
    a = mu_fidelity(model, x, attr, grid_size=3, generator=4, n_subsets=10)
    b = mu_fidelity(model, x, attr, feature_mask=mask, generator=4, n_subsets=10)
    assert torch.equal(a, b)


def test_empty_batch_calls_no_model():
    def forbidden(t):
        raise AssertionError("the model must not be called for N = 0")

    out = mu_fidelity(forbidden, torch.zeros(0, 4), torch.zeros(0, 4), generator=0)
    assert out.shape == (0,)


def test_bad_input():
    model, x, w = _linear()
    exact = w * x
    cases = [
        ({"n_subsets": 1}, ValueError, "n_subsets"),
        ({"sampling": "grid"}, ValueError, "sampling"),
        ({"sampling": "bernoulli", "subset_size": 3}, TypeError, "subset_size"),
        ({"sampling": "bernoulli", "subset_size": 1.0}, ValueError, "subset_size"),
        ({"subset_size": 51}, ValueError, "subset_size"),
        ({"correlation": "kendall"}, ValueError, "correlation"),
        ({"correlation": lambda a, b: a}, ValueError, "correlation"),
        ({"nan_to": float("nan")}, ValueError, "nan_to"),
        ({"grid_size": 3, "feature_mask": torch.zeros(1, 5, 5, dtype=torch.long)}, ValueError, "grid_size"),
        ({"grid_size": 0}, ValueError, "grid_size"),
        ({"subsets": torch.zeros(3, 4, 7, dtype=torch.bool)}, ValueError, "subsets"),
        ({"subsets": torch.zeros(3, 1, 25, dtype=torch.bool)}, ValueError, "subsets"),
        ({"subsets": torch.tensor([[[0, 0], [1, 2]]] * 3)}, ValueError, "repeated"),
        ({"subsets": torch.tensor([[[0, 25], [1, 2]]] * 3)}, ValueError, "subsets"),
        ({"subsets": torch.zeros(3, 4)}, TypeError, "subsets"),
        ({"baselines": "median"}, ValueError, "baselines"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            mu_fidelity(model, x, exact, **kwargs)
    with pytest.raises(ValueError, match="grid_size"):
        mu_fidelity(LinearScore(torch.ones(1, 4)), torch.rand(2, 4), torch.rand(2, 4), grid_size=2)
    bad_x = x.clone()
    bad_x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs"):
        mu_fidelity(model, bad_x, exact)
    bad_a = exact.clone()
    bad_a[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="attributions"):
        mu_fidelity(model, x, bad_a)
