"""LocalPathIntegration: closed forms, reduction to IG, completeness in expectation, Captum conventions."""

import copy

import pytest
import torch
from captum.attr import IntegratedGradients, NoiseTunnel

from captum_paths import LocalPathIntegration, ReferenceBank
from captum_paths.attr._core.local_path_integration import (
    draw_references_and_alphas,
    interpolate,
)
from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cnn_bank(digits, digits_cnn):
    return ReferenceBank(n_neighborhoods=3, n_references=5, random_state=0).fit(digits_cnn, digits.x_train)


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


# ------------------------------------------------------------------------------------ pure maths
def test_draws_follow_the_densities_and_alpha_range():
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


def test_interpolate_and_selection_helpers():
    starts = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[2.0, 2.0], [4.0, 0.0]]])  # (S=2, C=2, 2)
    x = torch.tensor([[4.0, 4.0], [3.0, 5.0]])
    points, spans = interpolate(starts, x, torch.tensor([[0.5, 1.0], [0.0, 0.25]]))
    assert torch.equal(spans, x.unsqueeze(0) - starts)
    assert torch.equal(points, torch.tensor([[2.0, 2.0], [3.0, 5.0], [2.0, 2.0], [3.75, 1.25]]))
    t = torch.tensor([1, 2, 3, 4])
    assert torch.equal(subset_target(t, slice(1, 3), 4), torch.tensor([2, 3]))
    assert subset_target([5, 6, 7, 8], slice(2, 4), 4) == [7, 8]
    assert subset_target(3, slice(0, 2), 4) == 3 and subset_target((1, 2), slice(0, 2), 4) == (1, 2)
    afa = (torch.arange(4.0).unsqueeze(1), torch.tensor(7.0), "mode")
    part = subset_additional_forward_args(afa, slice(1, 2), 4)
    assert torch.equal(part[0], torch.tensor([[1.0]])) and part[1] is afa[1] and part[2] == "mode"


# ------------------------------------------------------------------------------------ closed forms
def test_linear_model_closed_form_with_one_reference_per_neighbourhood(x64):
    x_train, x_test = x64
    model = Linear(256, 10)
    bank = ReferenceBank(n_neighborhoods=4, n_references=1, random_state=0).fit(model, x_train)
    x = x_test[:6]
    attr = LocalPathIntegration(model, bank).attribute(x, target=2, n_samples=3, n_alphas=2, generator=0)
    hood = bank.neighborhoods(model(x).detach())
    expected = (x - bank.references_[0][hood]) * model.weight[:, 2].detach().reshape(1, 1, 16, 16)
    assert torch.allclose(attr, expected, atol=1e-12)


def test_linear_model_converges_to_the_density_weighted_mean_reference(x64):
    """E[(x - x') w] = (x - sum_m p_m r_m) w: checks the draw by density, within 5 standard errors."""
    x_train, x_test = x64
    model = Linear(256, 1, seed=1)
    bank = ReferenceBank(n_neighborhoods=2, n_references=6, random_state=0).fit(model, x_train)
    x = x_test[:2]
    s = 4000
    attr = LocalPathIntegration(model, bank).attribute(x, n_samples=s, generator=1)  # target None: 1 output
    w = model.weight[:, 0].detach().reshape(1, 1, 16, 16)
    hood = bank.neighborhoods(model(x).detach())
    refs = bank.references_[0]
    for i, g in enumerate(hood.tolist()):
        lo, hi = int(bank.offsets_[g]), int(bank.offsets_[g + 1])
        p = bank.densities_[lo:hi].reshape(-1, 1, 1, 1)
        mean_ref = (p * refs[lo:hi]).sum(0)
        std_ref = ((p * (refs[lo:hi] - mean_ref) ** 2).sum(0)).sqrt()
        err = (attr[i] - (x[i] - mean_ref) * w[0]).abs()
        assert (err <= 5 * std_ref * w[0].abs() / s**0.5 + 1e-12).all()


def test_degenerate_bank_agrees_with_integrated_gradients(digits, digits_cnn64):
    """One neighbourhood, one reference = a fixed baseline, many alphas: IG from that baseline."""
    baseline = torch.full((1, 1, 16, 16), 0.25, dtype=torch.float64)
    bank = ReferenceBank(n_neighborhoods=1, n_references=1, random_state=0).fit(digits_cnn64, baseline)
    assert torch.equal(bank.references_[0], baseline)
    x = digits.x_test[:1].double()
    target = int(digits.y_test[0])
    lpi = LocalPathIntegration(digits_cnn64, bank)
    n_alphas = 3000
    attr = lpi.attribute(x, target=target, n_samples=1, n_alphas=n_alphas, generator=0)
    ig = IntegratedGradients(digits_cnn64).attribute(x, baselines=baseline, target=target, n_steps=256)
    # Monte Carlo standard error per feature, from independent one-alpha draws on copies of the input
    copies = lpi.attribute(x.repeat(1000, 1, 1, 1), target=target, n_samples=1, n_alphas=1, generator=1)
    stderr = copies.std(0, keepdim=True) / n_alphas**0.5
    assert ((attr - ig).abs() <= 5 * stderr + 1e-7).all()
    assert (attr - ig).norm() < 0.05 * ig.norm()


# ------------------------------------------------------------------------------------ completeness
def test_convergence_delta_is_zero_in_expectation_and_shrinks_with_samples(digits, digits_cnn64, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn64, cnn_bank)
    x, t = digits.x_test[3:4].double(), int(digits.y_test[3])
    _, d1 = lpi.attribute(x.repeat(400, 1, 1, 1), target=t, n_samples=1, generator=0, return_convergence_delta=True)
    assert d1.shape == (400,) and d1.dtype == torch.float64
    assert abs(float(d1.mean())) < 4 * float(d1.std()) / 400**0.5
    _, d16 = lpi.attribute(x.repeat(100, 1, 1, 1), target=t, n_samples=16, generator=1, return_convergence_delta=True)
    ratio = float(d16.std() / d1.std())  # 1/sqrt(16) = 0.25 expected
    assert 0.15 < ratio < 0.4
    assert abs(float(d16.mean())) < 4 * float(d16.std()) / 100**0.5


# ------------------------------------------------------------------------------------ reproducibility
def test_determinism_under_a_seed_or_generator(digits, digits_cnn, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn, cnn_bank)
    x, y = digits.x_test[:4], digits.y_test[:4]
    a = lpi.attribute(x, target=y, n_samples=5, generator=7)
    assert torch.equal(a, lpi.attribute(x, target=y, n_samples=5, generator=7))
    assert torch.equal(a, lpi.attribute(x, target=y, n_samples=5, generator=torch.Generator().manual_seed(7)))
    assert not torch.equal(a, lpi.attribute(x, target=y, n_samples=5, generator=8))
    torch.manual_seed(3)
    b = lpi.attribute(x, target=y, n_samples=5)
    torch.manual_seed(3)
    assert torch.equal(b, lpi.attribute(x, target=y, n_samples=5))


def test_batched_equals_one_at_a_time_and_any_internal_batch_size(digits, digits_cnn64, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn64, cnn_bank)
    x, y = digits.x_test[:5].double(), digits.y_test[:5]
    kw = dict(n_samples=4, n_alphas=2, return_convergence_delta=True)
    a, d = lpi.attribute(x, target=y, generator=torch.Generator().manual_seed(0), **kw)
    g = torch.Generator().manual_seed(0)
    singles = [lpi.attribute(x[i : i + 1], target=y[i : i + 1], generator=g, **kw) for i in range(5)]
    assert torch.allclose(a, torch.cat([s[0] for s in singles]), rtol=0, atol=1e-12)
    assert torch.allclose(d, torch.cat([s[1] for s in singles]), rtol=0, atol=1e-10)
    for ibs in [1, 3, 7, 16, 1000]:
        a2, d2 = lpi.attribute(x, target=y, generator=torch.Generator().manual_seed(0), internal_batch_size=ibs, **kw)
        assert torch.allclose(a, a2, rtol=0, atol=1e-12) and torch.allclose(d, d2, rtol=0, atol=1e-10), ibs


def test_no_mutation_of_inputs_or_model_state(digits, digits_cnn64, cnn_bank):
    model = copy.deepcopy(digits_cnn64).train()  # no dropout / batch norm: train mode is deterministic
    params = [p.detach().clone() for p in model.parameters()]
    x = digits.x_test[:3].double().requires_grad_(False)
    x_before = x.clone()
    bank_refs = cnn_bank.references_[0].clone()
    LocalPathIntegration(model, cnn_bank).attribute(
        x, target=1, n_samples=3, generator=0, internal_batch_size=4, return_convergence_delta=True
    )
    assert torch.equal(x, x_before) and not x.requires_grad and x.grad is None
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert torch.equal(cnn_bank.references_[0], bank_refs)


# ------------------------------------------------------------------------------------ Captum conventions
def test_noise_tunnel_and_no_grad_context(digits, digits_cnn64, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn64, cnn_bank)
    x, y = digits.x_test[:2].double(), digits.y_test[:2]
    nt = NoiseTunnel(lpi)
    attr, delta = nt.attribute(
        x,
        nt_type="smoothgrad",
        nt_samples=3,
        stdevs=0.0,
        target=y,
        n_samples=4,
        generator=5,
        return_convergence_delta=True,
    )
    assert attr.shape == x.shape and delta.shape == (6,)
    # NoiseTunnel repeats each example nt_samples times and averages: the same draws by hand
    manual = lpi.attribute(x.repeat_interleave(3, 0), target=y.repeat_interleave(3), n_samples=4, generator=5)
    assert torch.allclose(attr, manual.reshape(2, 3, 1, 16, 16).mean(1), atol=1e-12)
    with torch.no_grad():
        again = lpi.attribute(x, target=y, n_samples=4, generator=5)
    assert torch.allclose(again, lpi.attribute(x, target=y, n_samples=4, generator=5))


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


def test_additional_forward_args_match_a_closure_per_example(digits, digits_cnn64, cnn_bank):
    def scaled(x, scale):
        return digits_cnn64(x) * scale

    x, y = digits.x_test[:4].double(), digits.y_test[:4]
    scale = torch.tensor([[0.9], [1.0], [1.1], [1.2]], dtype=torch.float64)
    kw = dict(n_samples=3, return_convergence_delta=True)
    a, d = LocalPathIntegration(scaled, cnn_bank).attribute(
        x,
        target=y,
        additional_forward_args=(scale,),
        generator=torch.Generator().manual_seed(0),
        internal_batch_size=2,
        **kw,
    )
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        closure = LocalPathIntegration(lambda z, s=scale[i]: digits_cnn64(z) * s, cnn_bank)
        ai, di = closure.attribute(x[i : i + 1], target=y[i : i + 1], generator=g, **kw)
        assert torch.allclose(a[i : i + 1], ai, atol=1e-12) and torch.allclose(d[i], di[0], atol=1e-10)


def test_every_target_format(digits, digits_cnn64, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn64, cnn_bank)
    x = digits.x_test[:3].double()
    ref = lpi.attribute(x, target=8, n_samples=3, generator=0)
    assert torch.equal(ref, lpi.attribute(x, target=torch.tensor([8, 8, 8]), n_samples=3, generator=0))
    assert torch.equal(ref, lpi.attribute(x, target=[8, 8, 8], n_samples=3, generator=0))
    assert torch.equal(ref, lpi.attribute(x, target=torch.tensor(8), n_samples=3, generator=0))
    # tuple target on a (N, 2, 5) output: the same 10 logits, so the same neighbourhoods
    shaped = LocalPathIntegration(lambda z: digits_cnn64(z).reshape(-1, 2, 5), cnn_bank)
    assert torch.allclose(ref, shaped.attribute(x, target=(1, 3), n_samples=3, generator=0), atol=1e-12)
    mixed = lpi.attribute(x, target=[1, 8, 2], n_samples=3, generator=0)
    assert torch.equal(mixed[1], ref[1]) and not torch.equal(mixed[0], ref[0])


def test_custom_gradient_func_is_used(digits, digits_cnn, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn, cnn_bank)
    calls = []
    original = lpi.gradient_func

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    lpi.gradient_func = counting
    lpi.attribute(digits.x_test[:2], target=0, n_samples=4, internal_batch_size=4)
    assert len(calls) == 2  # 2 examples x 4 draws in blocks of 4 rows


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_is_rejected_before_any_gradient(digits, digits_cnn, cnn_bank):
    calls = []

    def counted(x):
        calls.append(len(x))
        return digits_cnn(x)

    lpi = LocalPathIntegration(counted, cnn_bank)
    x = digits.x_test[:2]
    with pytest.raises(TypeError, match="reference_bank"):
        LocalPathIntegration(digits_cnn, "bank.pt")
    with pytest.raises(ValueError, match="not fitted"):
        LocalPathIntegration(counted, ReferenceBank()).attribute(x, target=0)
    for bad in [0, -1, 2.5, True]:
        with pytest.raises(ValueError, match="n_samples"):
            lpi.attribute(x, target=0, n_samples=bad)
    with pytest.raises(ValueError, match="n_alphas"):
        lpi.attribute(x, target=0, n_alphas=0)
    for bad in [(0.5, 0.2), (-0.1, 1.0), (0.0, 1.5), 0.5, (0, 0.5, 1)]:
        with pytest.raises(ValueError, match="alpha_range"):
            lpi.attribute(x, target=0, alpha_range=bad)
    with pytest.raises(ValueError, match=r"per-example shape \(1, 8, 8\).*fitted on inputs of shape \(1, 16, 16\)"):
        lpi.attribute(torch.zeros(2, 1, 8, 8), target=0)
    with pytest.raises(ValueError, match="internal_batch_size"):
        lpi.attribute(x, target=0, internal_batch_size=0)
    with pytest.raises(TypeError, match="generator"):
        lpi.attribute(x, target=0, generator="seed")
    with pytest.raises(ValueError, match="non-finite"):
        lpi.attribute(x * float("nan"), target=0)
    assert calls == []
    with pytest.raises(ValueError, match="`target` index 10 is out of range"):
        lpi.attribute(x, target=10)
    with pytest.raises(ValueError, match="one score per example"):
        lpi.attribute(x)  # 10 outputs and no target
    assert calls == [2, 2]  # only the input's own forward pass ran, no gradient pass
    with pytest.raises(ValueError, match="fitted on 10 logits"):
        LocalPathIntegration(lambda z: digits_cnn(z)[:, :4], cnn_bank).attribute(x, target=0)


def test_progress_bar_and_chunk_plan(digits, digits_cnn, cnn_bank):
    lpi = LocalPathIntegration(digits_cnn, cnn_bank)
    a = lpi.attribute(digits.x_test[:2], target=0, n_samples=3, generator=0, show_progress=True, internal_batch_size=2)
    assert torch.equal(a, lpi.attribute(digits.x_test[:2], target=0, n_samples=3, generator=0, internal_batch_size=2))
    plan = LocalPathIntegration._chunks(5, 4, 3)  # 3 rows per pass: 3 examples x 1 draw, then 2 x 1
    assert plan[0] == (slice(0, 3), slice(0, 1)) and len(plan) == 8
    assert all((e.stop - e.start) * (d.stop - d.start) <= 3 for e, d in plan)
    assert LocalPathIntegration._chunks(2, 10, 7) == [
        (slice(0, 2), slice(0, 3)),
        (slice(0, 2), slice(3, 6)),
        (slice(0, 2), slice(6, 9)),
        (slice(0, 2), slice(9, 10)),
    ]


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
