"""Sanity checks: randomisation and sigma-perturbation on the trained digits CNN."""

import copy

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency

from captum_paths.metrics import SanityCheckResult, model_randomization_check, sigma_perturbation_check
from captum_paths.metrics._core.sanity import (
    explanation_similarities,
    randomization_layers,
    saliency_maps,
    ssim_of_maps,
)


def _snapshot(model):
    return (
        copy.deepcopy(model.state_dict()),
        model.training,
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [p.requires_grad for p in model.parameters()],
    )


def _assert_untouched(model, snap):
    state, training, grads, req = snap
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training == training
    for p, g, r in zip(model.parameters(), grads, req):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
        assert p.requires_grad == r


@pytest.fixture(scope="module")
def batch(digits):
    return digits.x_test[:12], digits.y_test[:12]


def test_cascading_randomisation_similarity_falls_and_model_untouched(digits_cnn, batch):
    x, y = batch
    snap = _snapshot(digits_cnn)
    res = model_randomization_check(
        digits_cnn, Saliency, x, target=y, labels=y, generator=0, attribute_kwargs={"abs": False}
    )
    _assert_untouched(digits_cnn, snap)
    assert isinstance(res, SanityCheckResult)
    assert res.steps == ["original", "head", "features.3", "features.0"]
    assert res.spearman_abs.shape == (4, 12) and res.scores.shape == (4, 12)
    torch.testing.assert_close(res.spearman_abs[0], torch.ones(12, dtype=torch.float64))
    mean_sim = res.spearman_abs.mean(1)
    assert mean_sim[-1] < 0.5 < mean_sim[0]  # the fully random model explains differently
    assert mean_sim[1] < 0.9  # already the top layer alone changes the maps
    assert res.accuracy[0] > 0.8 and res.accuracy[-1] < 0.5
    assert res.ssim.shape == (4, 12) and torch.allclose(res.ssim[0], torch.ones(12, dtype=torch.float64))
    assert res.ssim[-1].mean() < res.ssim[0].mean() - 0.2
    torch.testing.assert_close(res.values, torch.arange(4, dtype=torch.float64))
    # the same seed gives the same check; the callable form equals the class form
    fn = lambda model, inputs, target: Saliency(model).attribute(inputs, target=target, abs=False)  # noqa: E731
    again = model_randomization_check(
        digits_cnn, fn, x, target=y, generator=torch.Generator().manual_seed(0), max_examples_per_batch=5
    )
    torch.testing.assert_close(again.spearman, res.spearman)
    assert again.accuracy is None


def test_independent_and_reset_parameters_modes(digits_cnn, batch):
    x, y = batch
    res = model_randomization_check(
        digits_cnn,
        Saliency,
        x,
        target=y,
        cascading=False,
        reinit="reset_parameters",
        layers=["head", "features.0"],
        generator=1,
    )
    assert res.steps == ["original", "head", "features.0"]
    assert bool((res.spearman_abs[1:].mean(1) < 0.9).all())
    other = model_randomization_check(
        digits_cnn,
        Saliency,
        x,
        target=y,
        cascading=False,
        reinit="reset_parameters",
        layers=["head", "features.0"],
        generator=1,
    )
    torch.testing.assert_close(other.pearson_abs, res.pearson_abs)


def test_sigma_perturbation_similarity_falls_with_noise(digits_cnn, batch):
    x, y = batch
    snap = _snapshot(digits_cnn)
    res = sigma_perturbation_check(
        digits_cnn,
        IntegratedGradients,
        x,
        labels=y,
        sigmas=[0.05, 1.0, 3.0],
        generator=0,
        attribute_kwargs={"n_steps": 8},
    )
    _assert_untouched(digits_cnn, snap)
    assert res.steps == ["original", "sigma=0.05", "sigma=1", "sigma=3"]
    sim = res.spearman.mean(1)
    assert sim[0] == pytest.approx(1.0) and sim[1] > 0.8 and sim[3] < sim[1]
    assert res.agreement[0] == 1.0 and res.agreement[3] < res.agreement[1]
    # target=None explained the model's own prediction: the recorded scores are its top softmax
    probs = torch.softmax(digits_cnn(x), 1).max(1).values.detach()
    torch.testing.assert_close(res.scores[0], probs)


def test_explanation_similarities_closed_form():
    a = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    sp_abs, sp, pe_abs = explanation_similarities(a, -a)
    assert (
        sp_abs.item() == pytest.approx(1.0) and sp.item() == pytest.approx(-1.0) and pe_abs.item() == pytest.approx(1.0)
    )


def test_bad_input(digits_cnn, batch):
    x, y = batch
    with pytest.raises(ValueError, match="layers"):
        model_randomization_check(digits_cnn, Saliency, x, target=y, layers=["nope"])
    with pytest.raises(ValueError, match="sigmas"):
        sigma_perturbation_check(digits_cnn, Saliency, x, target=y, sigmas=[0.1, -1.0])
    with pytest.raises(TypeError, match="attribute_fn"):
        model_randomization_check(digits_cnn, "saliency", x, target=y)
    with pytest.raises(ValueError, match="reinit"):
        model_randomization_check(digits_cnn, Saliency, x, target=y, reinit="xavier")
    with pytest.raises(ValueError, match="attribute_fn"):
        model_randomization_check(digits_cnn, lambda m, i, t: i[:, :, :3], x, target=y)
    with pytest.raises(TypeError, match="model"):
        sigma_perturbation_check(lambda t: t, Saliency, x, target=y)
    assert randomization_layers(digits_cnn) == ["head", "features.3", "features.0"]


def _ssim_by_windows(a, b, win=7, c1=1e-4, c2=9e-4):
    """SSIM written window by window with numpy (sample statistics), for one pair of maps."""
    vals = []
    for i in range(a.shape[0] - win + 1):
        for j in range(a.shape[1] - win + 1):
            x, y = a[i : i + win, j : j + win].ravel(), b[i : i + win, j : j + win].ravel()
            cov = np.cov(x, y, ddof=1)
            vals.append(
                ((2 * x.mean() * y.mean() + c1) * (2 * cov[0, 1] + c2))
                / ((x.mean() ** 2 + y.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2))
            )
    return float(np.mean(vals))


def test_ssim_matches_a_window_by_window_computation():
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.rand(2, 9, 11, generator=g, dtype=torch.float64),
        torch.rand(2, 9, 11, generator=g, dtype=torch.float64),
    )
    b[1] = 0.7 * a[1] + 0.1
    got = ssim_of_maps(a, b)
    for i in range(2):
        assert got[i].item() == pytest.approx(_ssim_by_windows(a[i].numpy(), b[i].numpy()), abs=1e-12)
    torch.testing.assert_close(ssim_of_maps(a, a), torch.ones(2, dtype=torch.float64))
    assert torch.isnan(ssim_of_maps(a[:, :5, :5], b[:, :5, :5])).all()
    maps = saliency_maps(torch.tensor([[1.0, -4.0, 2.0, 0.0]]), (1, 1, 2, 2))
    torch.testing.assert_close(maps, torch.tensor([[[0.25, 1.0], [0.5, 0.0]]], dtype=torch.float64))


def test_tuple_inputs_and_forward_args():
    import torch.nn as nn

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 3), nn.Linear(4, 3)

        def forward(self, u, v, scale):
            return (self.a(u) + self.b(v)) * scale.reshape(-1, 1)

    torch.manual_seed(0)
    model = TwoInputs().eval()
    u, v, scale = torch.rand(5, 6), torch.rand(5, 4), torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0])
    res = model_randomization_check(
        model,
        Saliency,
        (u, v),
        target=1,
        additional_forward_args=scale,
        generator=0,
        max_examples_per_batch=2,
        attribute_kwargs={"abs": False},
    )
    assert res.steps == ["original", "b", "a"] and res.ssim is None
    torch.testing.assert_close(res.spearman[0], torch.ones(5, dtype=torch.float64))
    # a linear model's gradient is its weight row: randomising both layers decorrelates it
    assert res.spearman[-1].abs().mean() < 0.9


# ------------------------------------------------------------------------------------ bad input (issue 12)
@pytest.mark.parametrize("check", [model_randomization_check, sigma_perturbation_check])
def test_sanity_checks_bad_input_and_empty_batch(check):
    calls = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).double()
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    extra = {} if check is model_randomization_check else {"sigmas": [0.1, 0.2]}
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    x[1, 2, 1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"`inputs`\[0\] must be finite, got 1 NaN or infinite"):
        check(model, Saliency, x, target=0, **extra)
    empty = check(model, Saliency, torch.rand(0, 3, 2, 2, dtype=torch.float64), target=0, **extra)
    assert calls == []
    steps = 2 if check is model_randomization_check else 3  # original + one layer / two sigmas
    assert empty.spearman.shape == (steps, 0) and empty.scores.shape == (steps, 0) and len(empty.steps) == steps
    assert bool(torch.isnan(empty.agreement).all())

    def nan_method(m, inputs, target):
        return torch.full_like(inputs, float("nan"))

    with pytest.raises(ValueError, match="attributions returned by attribute_fn"):
        check(model, nan_method, torch.rand(2, 3, 2, 2, dtype=torch.float64), target=0, **extra)
