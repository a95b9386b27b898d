"""LocalPathIntegration's own maths: closed forms, the two estimators, reduction to IG, completeness in
expectation, and the check that the bank was fitted for the model. The Captum contract (target formats, tuple
inputs, NoiseTunnel, chunking, no mutation, gradient_func, generic bad input, progress) is in test_contract.py."""

import copy

import pytest
import torch
from captum.attr import IntegratedGradients

from captum_paths import LocalPathIntegration, ReferenceBank
from captum_paths.attr._core import local_path_integration as lpi_module
from captum_paths.attr._core.local_path_integration import (
    LPIOptions,
    draw_references_and_alphas,
    interpolate,
    lpi_passes,
    stratified_draws,
)
from captum_paths.attr._utils import progress as progress_module


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cnn_bank(digits, digits_cnn):
    return ReferenceBank(n_neighborhoods=3, n_references=5, random_state=0).fit(digits_cnn, digits.x_train)


@pytest.fixture(scope="module")
def uneven_bank(digits, digits_cnn64):
    """A bank whose neighbourhoods hold different numbers of references (few training examples)."""
    for n in (20, 15, 12, 10, 8):
        bank = ReferenceBank(n_neighborhoods=3, n_references=5, random_state=0).fit(
            digits_cnn64, digits.x_train[:n].double()
        )
        if len(set((bank.offsets_[1:] - bank.offsets_[:-1]).tolist())) > 1:
            return bank
    pytest.skip("no uneven bank found")


class Linear(torch.nn.Module):
    """f(x) = flatten(x) @ W: gradients are constant, so LPI has a closed form."""

    def __init__(self, n_in, n_out, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(n_in, n_out, generator=g, dtype=torch.float64))

    def forward(self, x):
        return x.reshape(len(x), -1) @ self.weight


@pytest.fixture(scope="module")
def x64(digits):
    return digits.x_train.double(), digits.x_test.double()


def _density_mean_reference(bank, g):
    lo, hi = int(bank.offsets_[g]), int(bank.offsets_[g + 1])
    p = bank.densities_[lo:hi].reshape(-1, 1, 1, 1)
    refs = bank.references_[0][lo:hi]
    mean = (p * refs).sum(0)
    return mean, ((p * (refs - mean) ** 2).sum(0)).sqrt()


# ------------------------------------------------------------------------------------ the draws
def test_sampled_draws_follow_the_densities_and_alpha_range():
    probs = torch.tensor([[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]], dtype=torch.float64)
    rows = torch.tensor([[0, 1, 0], [2, 3, 4]])
    hoods = torch.tensor([0, 1])
    ids, alphas = draw_references_and_alphas(
        hoods, probs, rows, 20000, 2, (0.25, 0.75), torch.Generator().manual_seed(0)
    )
    assert ids.shape == alphas.shape == (2, 40000)
    assert torch.equal(ids[:, ::2], ids[:, 1::2])  # the alphas of one reference are adjacent
    freq0 = torch.bincount(ids[0, ::2], minlength=5).double() / 20000
    freq1 = torch.bincount(ids[1, ::2], minlength=5).double() / 20000
    assert torch.allclose(freq0, torch.tensor([0.2, 0.8, 0, 0, 0], dtype=torch.float64), atol=0.015)
    assert torch.allclose(freq1, torch.tensor([0, 0, 0.5, 0.25, 0.25], dtype=torch.float64), atol=0.015)
    assert alphas.min() >= 0.25 and alphas.max() <= 0.75 and abs(float(alphas.mean()) - 0.5) < 0.005


def test_stratified_draws_use_every_reference_with_its_density():
    probs = torch.tensor([[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]], dtype=torch.float64)
    rows = torch.tensor([[0, 1, 0], [2, 3, 4]])
    options = LPIOptions(n_samples=5, n_alphas=2, alpha_range=(0.25, 0.75))
    draws = stratified_draws(torch.tensor([0, 1, 0]), probs, rows, options, torch.Generator().manual_seed(0))
    # neighbourhood 0: 2 references x ceil(5/2)=3 paths x 2 alphas; neighbourhood 1: 3 x 2 x 2
    assert draws.lengths.tolist() == [12, 12, 12] and draws.ref_ids.shape == (3, 12)
    assert draws.ref_ids[0].tolist() == [0] * 6 + [1] * 6
    assert draws.ref_ids[1].tolist() == [2] * 4 + [3] * 4 + [4] * 4
    assert torch.allclose(draws.weights.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-15)
    assert torch.allclose(draws.weights[0, :6], torch.full((6,), 0.2 / 6, dtype=torch.float64))
    assert draws.delta_lengths.tolist() == [2, 3, 2]
    assert torch.equal(draws.delta_weights[1], probs[1]) and torch.equal(draws.delta_ids[2], rows[0])
    assert draws.alphas.min() >= 0.25 and draws.alphas.max() <= 0.75
    assert not torch.equal(draws.alphas[0], draws.alphas[2])  # only the alphas are random
    # uneven neighbourhoods: padding past `lengths`, weights 0 there
    uneven = stratified_draws(torch.tensor([0, 1]), probs, rows, LPIOptions(n_samples=1), None)
    assert uneven.lengths.tolist() == [2, 3] and float(uneven.weights[0, 2]) == 0.0


def test_pass_counts_of_each_estimator():
    n_refs = torch.tensor([5, 4, 5])
    assert lpi_passes(n_refs, LPIOptions(n_samples=20, n_alphas=2, estimator="sampled"), False) == 3 * 40
    assert lpi_passes(n_refs, LPIOptions(n_samples=20, n_alphas=2, estimator="sampled"), True) == 3 * 60
    # stratified: R ceil(n_samples / R) n_alphas (+ R with the delta)
    assert lpi_passes(n_refs, LPIOptions(n_samples=7, n_alphas=2), False) == 2 * (5 * 2 * 2) + 4 * 2 * 2
    assert lpi_passes(n_refs, LPIOptions(n_samples=3), True) == (5 + 5) * 2 + (4 + 4)


def test_interpolate():
    starts = torch.tensor([[0.0, 0.0], [1.0, 1.0], [4.0, 0.0]])
    x = torch.tensor([[4.0, 4.0], [3.0, 5.0], [3.0, 5.0]])
    points, spans = interpolate(starts, x, torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64))
    assert torch.equal(spans, x - starts)
    assert torch.equal(points, torch.tensor([[2.0, 2.0], [3.0, 5.0], [3.75, 1.25]]))


def test_chunk_plan():
    plan = LocalPathIntegration._chunks(5, 4, 3)  # 3 rows per pass: 3 examples x 1 draw, then 2 x 1
    assert plan[0] == (slice(0, 3), slice(0, 1)) and len(plan) == 8
    assert all((e.stop - e.start) * (d.stop - d.start) <= 3 for e, d in plan)
    assert LocalPathIntegration._chunks(2, 10, 7) == [
        (slice(0, 2), slice(0, 3)),
        (slice(0, 2), slice(3, 6)),
        (slice(0, 2), slice(6, 9)),
        (slice(0, 2), slice(9, 10)),
    ]


# ------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("estimator", ["stratified", "sampled"])
def test_linear_model_closed_form_with_one_reference_per_neighbourhood(x64, estimator):
    x_train, x_test = x64
    model = Linear(256, 10)
    bank = ReferenceBank(n_neighborhoods=4, n_references=1, random_state=0).fit(model, x_train)
    x = x_test[:6]
    lpi = LocalPathIntegration(model, bank)
    attr = lpi.attribute(x, target=2, n_samples=3, n_alphas=2, estimator=estimator, generator=0)
    hood = bank.neighborhoods(model(x).detach())
    expected = (x - bank.references_[0][hood]) * model.weight[:, 2].detach().reshape(1, 1, 16, 16)
    assert torch.allclose(attr, expected, atol=1e-12)


def test_stratified_is_exact_on_a_linear_model(x64):
    """sum_m p_m (x - r_m) w = (x - sum_m p_m r_m) w with no Monte Carlo error at all (only alphas are random)."""
    x_train, x_test = x64
    model = Linear(256, 1, seed=1)
    bank = ReferenceBank(n_neighborhoods=2, n_references=6, random_state=0).fit(model, x_train)
    x = x_test[:3]
    attr, delta = LocalPathIntegration(model, bank).attribute(x, generator=1, return_convergence_delta=True)
    w = model.weight[:, 0].detach().reshape(1, 16, 16)
    for i, g in enumerate(bank.neighborhoods(model(x).detach()).tolist()):
        assert torch.allclose(attr[i], (x[i] - _density_mean_reference(bank, g)[0]) * w, atol=1e-12)
    assert delta.abs().max() < 1e-10  # a linear model is complete with the density-weighted reference scores


def test_explicit_baselines_stratified_uses_every_reference_equally(x64):
    x_train, x_test = x64
    model = Linear(256, 3, seed=4)
    refs = x_train[:7]
    x = x_test[:2]
    attr = LocalPathIntegration(model).attribute(x, refs, target=1, n_samples=2, generator=0)
    expected = (x - refs.mean(0, keepdim=True)) * model.weight[:, 1].detach().reshape(1, 1, 16, 16)
    assert torch.allclose(attr, expected, atol=1e-12)


def test_sampled_converges_to_the_density_weighted_mean_reference(x64):
    """E[(x - x') w] = (x - sum_m p_m r_m) w: checks the draw by density, within 5 standard errors."""
    x_train, x_test = x64
    model = Linear(256, 1, seed=1)
    bank = ReferenceBank(n_neighborhoods=2, n_references=6, random_state=0).fit(model, x_train)
    x = x_test[:2]
    s = 4000
    lpi = LocalPathIntegration(model, bank)
    attr = lpi.attribute(x, n_samples=s, estimator="sampled", generator=1)  # target None: 1 output
    w = model.weight[:, 0].detach().reshape(1, 16, 16)
    for i, g in enumerate(bank.neighborhoods(model(x).detach()).tolist()):
        mean_ref, std_ref = _density_mean_reference(bank, g)
        err = (attr[i] - (x[i] - mean_ref) * w).abs()
        assert (err <= 5 * std_ref * w.abs() / s**0.5 + 1e-12).all()


@pytest.mark.parametrize("estimator", ["stratified", "sampled"])
def test_degenerate_bank_agrees_with_integrated_gradients(digits, digits_cnn64, estimator):
    """One neighbourhood, one reference = a fixed baseline, many alphas: IG from that baseline."""
    baseline = torch.full((1, 1, 16, 16), 0.25, dtype=torch.float64)
    bank = ReferenceBank(n_neighborhoods=1, n_references=1, random_state=0).fit(digits_cnn64, baseline)
    assert torch.equal(bank.references_[0], baseline)
    x = digits.x_test[:1].double()
    target = int(digits.y_test[0])
    lpi = LocalPathIntegration(digits_cnn64, bank)
    n_alphas = 3000
    attr = lpi.attribute(x, target=target, n_samples=1, n_alphas=n_alphas, estimator=estimator, generator=0)
    ig = IntegratedGradients(digits_cnn64).attribute(x, baselines=baseline, target=target, n_steps=256)
    # Monte Carlo standard error per feature, from independent one-alpha draws on copies of the input
    copies = lpi.attribute(x.repeat(1000, 1, 1, 1), target=target, n_samples=1, n_alphas=1, generator=1)
    stderr = copies.std(0, keepdim=True) / n_alphas**0.5
    assert ((attr - ig).abs() <= 5 * stderr + 1e-7).all()
    assert (attr - ig).norm() < 0.05 * ig.norm()


# ------------------------------------------------------------------------------------ the estimators
def test_stratified_agrees_with_sampled_in_expectation_and_is_less_noisy(digits, digits_cnn64, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn64, cnn_bank)
    x, t = digits.x_test[3:4].double(), int(digits.y_test[3])
    copies = x.repeat(300, 1, 1, 1)
    kw = dict(target=t, n_samples=5)  # 5 references per neighbourhood: 5 passes per example either way
    strat = lpi.attribute(copies, estimator="stratified", generator=0, **kw)
    samp = lpi.attribute(copies, estimator="sampled", generator=1, **kw)
    se = (strat.var(0) / 300 + samp.var(0) / 300).sqrt()
    assert ((strat.mean(0) - samp.mean(0)).abs() <= 5 * se + 1e-9).float().mean() > 0.99
    assert float(strat.var(0).sum()) < 0.8 * float(samp.var(0).sum())


def test_convergence_delta_is_zero_in_expectation_and_shrinks_with_samples(digits, digits_cnn64, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn64, cnn_bank)
    x, t = digits.x_test[3:4].double(), int(digits.y_test[3])
    kw = dict(target=t, estimator="sampled", return_convergence_delta=True)
    _, d1 = lpi.attribute(x.repeat(400, 1, 1, 1), n_samples=1, generator=0, **kw)
    assert d1.shape == (400,) and d1.dtype == torch.float64
    assert abs(float(d1.mean())) < 4 * float(d1.std()) / 400**0.5
    _, d16 = lpi.attribute(x.repeat(100, 1, 1, 1), n_samples=16, generator=1, **kw)
    ratio = float(d16.std() / d1.std())  # 1/sqrt(16) = 0.25 expected
    assert 0.15 < ratio < 0.4
    assert abs(float(d16.mean())) < 4 * float(d16.std()) / 100**0.5
    _, ds = lpi.attribute(x.repeat(200, 1, 1, 1), target=t, n_samples=5, generator=2, return_convergence_delta=True)
    assert abs(float(ds.mean())) < 4 * float(ds.std()) / 200**0.5  # stratified: zero in expectation too


def test_uneven_neighbourhoods_batched_chunked_and_exact_progress(digits, digits_cnn64, uneven_bank, monkeypatch):
    lpi = LocalPathIntegration(digits_cnn64, uneven_bank)
    x, y = digits.x_test[:8].double(), digits.y_test[:8]
    kw = dict(n_samples=3, n_alphas=2, return_convergence_delta=True)
    a, d = lpi.attribute(x, target=y, generator=0, **kw)
    g = torch.Generator().manual_seed(0)
    singles = [lpi.attribute(x[i : i + 1], target=y[i : i + 1], generator=g, **kw) for i in range(8)]
    assert torch.allclose(a, torch.cat([s[0] for s in singles]), rtol=0, atol=1e-12)
    assert torch.allclose(d, torch.cat([s[1] for s in singles]), rtol=0, atol=1e-10)
    for ibs in (1, 5, 64):
        a2, d2 = lpi.attribute(x, target=y, generator=0, internal_batch_size=ibs, **kw)
        assert torch.allclose(a, a2, rtol=0, atol=1e-12) and torch.allclose(d, d2, rtol=0, atol=1e-10)

    bars = []

    class Bar:
        def __init__(self, total=None, **_):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def refresh(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(progress_module, "tqdm", Bar)
    rows = []

    def function(z):  # not a module: the bank is checked at the first call, and counted
        rows.append(len(z))
        return digits_cnn64(z)

    LocalPathIntegration(function, uneven_bank).attribute(x, target=y, generator=0, show_progress=True, **kw)
    hoods = uneven_bank.neighborhoods(digits_cnn64(x).detach())
    counts = (uneven_bank.offsets_[1:] - uneven_bank.offsets_[:-1])[hoods]
    paths = -(-3 // counts)  # ceil(n_samples / R_g) paths per reference
    expected = int(uneven_bank.offsets_[-1]) + 8 + int((counts * paths * 2 + counts).sum())
    assert bars[-1].n == bars[-1].total == sum(rows) == expected


# ------------------------------------------------------------------------------------ tuple inputs
def test_tuple_inputs_closed_form(x64):
    x_train, x_test = x64
    extra_train = torch.linspace(-1, 1, len(x_train), dtype=torch.float64).unsqueeze(1).repeat(1, 3) ** 2
    extra_test = torch.linspace(-1, 1, 5, dtype=torch.float64).unsqueeze(1).repeat(1, 3)

    class TwoLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Linear(256, 10, seed=2), Linear(3, 10, seed=3)

        def forward(self, x, e):
            return self.a(x) + self.b(e)

    model = TwoLinear()
    bank = ReferenceBank(n_neighborhoods=3, n_references=1, random_state=0).fit(model, (x_train, extra_train))
    inputs = (x_test[:5], extra_test)
    a1, a2 = LocalPathIntegration(model, bank).attribute(inputs, target=4, n_samples=2, generator=0)
    hood = bank.neighborhoods(model(*inputs).detach())
    assert torch.allclose(
        a1, (inputs[0] - bank.references_[0][hood]) * model.a.weight[:, 4].detach().reshape(1, 1, 16, 16)
    )
    assert torch.allclose(a2, (inputs[1] - bank.references_[1][hood]) * model.b.weight[:, 4].detach())
    with pytest.raises(ValueError, match="fitted on 2 input"):
        LocalPathIntegration(model, bank).attribute(inputs[0], target=4)


# ------------------------------------------------------------------------------------ the bank checks
def test_a_bank_fitted_for_another_model_is_refused(digits, digits_cnn, digits_cnn64, cnn_bank):
    other = copy.deepcopy(digits_cnn)
    with torch.no_grad():
        other.head.bias.add_(0.5)
    with pytest.raises(ValueError, match="fitted for another model"):
        LocalPathIntegration(other, cnn_bank)  # a module: checked at construction
    LocalPathIntegration(digits_cnn64, cnn_bank)  # the fitting model in float64: accepted
    # a plain function: checked at the first call that uses the bank, before the neighbourhood pass
    calls = []

    def scaled(z):
        calls.append(len(z))
        return digits_cnn(z) * 1.5

    lpi = LocalPathIntegration(scaled, cnn_bank)
    assert calls == []
    x = digits.x_test[:2]
    with pytest.raises(ValueError, match="fitted for another model"):
        lpi.attribute(x, target=0, n_samples=2)
    assert calls == [int(cnn_bank.offsets_[-1])]
    lpi.attribute(x, torch.zeros(1, 1, 16, 16), target=0, n_samples=2)  # explicit baselines: the bank is unused
    with pytest.raises(ValueError, match=r"gives \(15, 4\) logits.*giving \(15, 10\)"):
        LocalPathIntegration(lambda z: digits_cnn(z)[:, :4], cnn_bank).attribute(x, target=0)


def test_the_bank_is_checked_once_per_instance_and_bank(digits, digits_cnn):
    calls = []

    def counted(z):
        calls.append(len(z))
        return digits_cnn(z)

    bank = ReferenceBank(n_neighborhoods=2, n_references=3, random_state=0)
    lpi = LocalPathIntegration(counted, bank)  # not fitted yet: checked at the first call
    bank.fit(digits_cnn, digits.x_train)
    x = digits.x_test[:2]
    lpi.attribute(x, target=0, n_samples=2, generator=0)
    lpi.attribute(x, target=0, n_samples=2, generator=0)
    assert calls == [6, 2, 6, 2, 6]  # the check (6 references) once; per call the neighbourhoods, then 2 x 3 paths
    bank.fit(digits_cnn, digits.x_train[:100])  # refitted: checked again
    lpi.attribute(x, target=0, n_samples=2, generator=0)
    assert calls[5:] == [6, 2, 6]


def test_check_bank_option_and_forwards_needing_arguments(digits, digits_cnn, cnn_bank):
    class NeedsScale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = digits_cnn

        def forward(self, x, scale):
            return self.cnn(x) * scale

    with pytest.raises(ValueError, match="check_bank=False"):
        LocalPathIntegration(NeedsScale(), cnn_bank)
    lpi = LocalPathIntegration(NeedsScale(), cnn_bank, check_bank=False)
    x = digits.x_test[:2]
    attr = lpi.attribute(x, target=0, additional_forward_args=(1.0,), n_samples=2, generator=0)
    expected = LocalPathIntegration(digits_cnn, cnn_bank).attribute(x, target=0, n_samples=2, generator=0)
    assert torch.allclose(attr, expected)
    with pytest.raises(TypeError, match="check_bank"):
        LocalPathIntegration(digits_cnn, cnn_bank, check_bank="no")


def test_a_version_1_bank_loads_and_warns_that_it_cannot_be_checked(digits_cnn, cnn_bank, tmp_path):
    from captum_paths.attr._core.reference_bank import _tensor_digest

    state = cnn_bank._state()
    state["version"] = 1
    del state["reference_logits"]
    state["sha256"] = _tensor_digest(state)
    torch.save(state, tmp_path / "v1.pt")
    old = ReferenceBank.load(tmp_path / "v1.pt")
    assert old.reference_logits_ is None and torch.equal(old.references_[0], cnn_bank.references_[0])
    with pytest.warns(UserWarning, match="version-1"):
        LocalPathIntegration(digits_cnn, old)


# ------------------------------------------------------------------------------------ LPI's own bad input
def test_lpi_arguments_are_checked_before_any_pass(digits, digits_cnn, cnn_bank):
    calls = []

    def counted(x):
        calls.append(len(x))
        return digits_cnn(x)

    lpi = LocalPathIntegration(counted, cnn_bank, check_bank=False)
    x = digits.x_test[:2]
    with pytest.raises(TypeError, match="reference_bank"):
        LocalPathIntegration(digits_cnn, "bank.pt")
    with pytest.raises(ValueError, match="not fitted"):
        LocalPathIntegration(counted, ReferenceBank()).attribute(x, target=0)
    with pytest.raises(ValueError, match="no `reference_bank`"):
        LocalPathIntegration(counted).attribute(x, target=0)
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(ValueError, match="n_samples"):
            lpi.attribute(x, target=0, n_samples=bad)
    with pytest.raises(ValueError, match="n_alphas"):
        lpi.attribute(x, target=0, n_alphas=0)
    for bad in [(0.5, 0.2), (-0.1, 1.0), (0.0, 1.5), 0.5, (0, 0.5, 1)]:
        with pytest.raises(ValueError, match="alpha_range"):
            lpi.attribute(x, target=0, alpha_range=bad)
    for bad in ["exact", None, 1]:
        with pytest.raises(ValueError, match=r"`estimator` must be one of \('stratified', 'sampled'\)"):
            lpi.attribute(x, target=0, estimator=bad)
    with pytest.raises(ValueError, match=r"per-example shape \(1, 8, 8\).*fitted on inputs of shape \(1, 16, 16\)"):
        lpi.attribute(torch.zeros(2, 1, 8, 8), target=0)
    with pytest.raises(ValueError, match="`baselines` contains non-finite"):
        lpi.attribute(x, torch.full((2, 1, 16, 16), float("inf")), target=0)
    assert calls == []
    assert lpi_module.ESTIMATORS == ("stratified", "sampled")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tensors_stay_on_the_gpu(digits, digits_cnn, cnn_bank):
    model = copy.deepcopy(digits_cnn).cuda()
    x = digits.x_test[:3].cuda()
    attr, delta = LocalPathIntegration(model, cnn_bank).attribute(
        x, target=torch.tensor([0, 1, 2]).cuda(), n_samples=4, generator=0, return_convergence_delta=True
    )
    assert attr.device == x.device and delta.device == x.device
    cpu = LocalPathIntegration(digits_cnn, cnn_bank).attribute(
        digits.x_test[:3], target=[0, 1, 2], n_samples=4, generator=0
    )
    assert torch.allclose(attr.cpu(), cpu, atol=1e-5)
    on_gpu = LocalPathIntegration(model, cnn_bank).attribute(
        x, target=0, n_samples=4, generator=torch.Generator(device="cuda").manual_seed(0)
    )  # a CUDA generator draws on its device
    assert on_gpu.device == x.device and torch.isfinite(on_gpu).all()
