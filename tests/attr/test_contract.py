"""The Captum contract, written once and run over every public method of captum_paths.attr.

Methods are discovered from ``captum_paths.attr.__all__``: every exported ``PathAttribution`` subclass runs
through every test here (and must have an entry in ``method_configs.py``). Method test files keep only their
own maths.
"""

import inspect
from contextlib import contextmanager

import pytest
import torch
from captum.attr import NoiseTunnel
from captum.metrics import infidelity, sensitivity_max
from method_configs import METHOD_CONFIGS

import captum_paths.attr as public
from captum_paths.attr._core.base import PathAttribution
from captum_paths.attr._utils import progress as progress_module
from captum_paths.baselines import _NAMED as NAMED_BASELINES

METHODS = sorted(
    name
    for name in public.__all__
    if inspect.isclass(getattr(public, name))
    and issubclass(getattr(public, name), PathAttribution)
    and getattr(public, name) is not PathAttribution
)
N_CLASSES = 3


class ImageNet(torch.nn.Module):
    """A smooth little CNN on ``(N, 1, 6, 6)`` images (one or two of them) with an optional per-example scale."""

    def __init__(self, n_images: int = 1, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(n_images, 4, 3, padding=1)
        self.head = torch.nn.Linear(4 * 36, N_CLASSES)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.n_images = n_images

    def forward(self, *args):
        images, rest = args[: self.n_images], args[self.n_images :]
        x = torch.cat(images, dim=1)
        out = self.head(torch.nn.functional.softplus(self.conv(x)).flatten(1))
        if rest:
            scale = rest[0]
            out = out * (scale.reshape(-1, 1) if isinstance(scale, torch.Tensor) else scale)
        return out


def _images(n: int, seed: int = 1, dtype=torch.float64):
    return torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.fixture(scope="module")
def model():
    return ImageNet().double().eval()


@pytest.fixture(scope="module")
def x():
    return _images(4)


def build(name, model, train=None):
    train = _images(24, seed=7) if train is None else train
    return METHOD_CONFIGS[name].build(model, train)


def kwargs_of(name, **extra):
    config = METHOD_CONFIGS[name]
    kwargs = dict(config.kwargs)
    if config.random:
        kwargs["generator"] = 0
    kwargs.update(extra)
    return kwargs


def baseline_value(form, x, noise_tunnel=False):
    """The value to pass for a configured baseline form. Under Captum's NoiseTunnel a name becomes its
    specification object: Captum lets only tensors and numbers through as `baselines` (see Baseline)."""
    if isinstance(form, str) and form == "tensor":
        return x.flip(0) * 0.5
    if noise_tunnel and isinstance(form, str):
        return NAMED_BASELINES[form]()
    return form


def assert_same(a, b, tol):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------ discovery
def test_every_public_method_is_covered():
    assert METHODS, "no PathAttribution subclass exported by captum_paths.attr"
    missing = [name for name in METHODS if name not in METHOD_CONFIGS]
    assert not missing, f"add contract settings for {missing} to tests/attr/method_configs.py"


@pytest.mark.parametrize("name", METHODS)
def test_signature_is_integrated_gradients_shape(name):
    params = list(inspect.signature(getattr(public, name).attribute).parameters.values())[1:]
    assert [p.name for p in params[:4]] == ["inputs", "baselines", "target", "additional_forward_args"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:4])
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[4:])
    names = {p.name for p in params}
    assert {"internal_batch_size", "return_convergence_delta", "generator", "show_progress"} <= names


# ------------------------------------------------------------------------------------------ calls
@pytest.mark.parametrize("name", METHODS)
def test_ig_style_positional_call(name, model, x):
    method = build(name, model)
    by_keyword = method.attribute(x, target=1, **kwargs_of(name))
    positional = method.attribute(x, None, 1, None, **kwargs_of(name))
    assert_same(by_keyword, positional, 0)
    with pytest.raises(TypeError):
        method.attribute(x, None, 1, None, 5)  # knobs are keyword-only


@pytest.mark.parametrize("name", METHODS)
def test_every_target_format_agrees(name, model, x):
    method = build(name, model)
    n = x.shape[0]
    reference = method.attribute(x, target=2, **kwargs_of(name))
    for target in (torch.full((n,), 2), [2] * n, torch.tensor(2), torch.full((n,), -1), -1):
        assert_same(reference, method.attribute(x, target=target, **kwargs_of(name)), 1e-12)


@pytest.mark.parametrize("name", METHODS)
def test_targets_are_checked_for_every_example_on_the_first_chunk(name, model, x):
    # a call checks the targets once (its first pass checks every example's, later passes skip it)
    method = build(name, model)
    mixed = torch.tensor([0, -1, 2, -3])
    expected = method.attribute(x, target=torch.tensor([0, 2, 2, 0]), **kwargs_of(name))
    assert_same(expected, method.attribute(x, target=mixed, internal_batch_size=1, **kwargs_of(name)), 1e-12)
    with (
        _counting_rows(model) as rows,
        pytest.raises(ValueError, match=f"{N_CLASSES} is out of range|outside the model's {N_CLASSES}"),
    ):
        method.attribute(x, target=torch.tensor([0, 1, 2, N_CLASSES]), internal_batch_size=1, **kwargs_of(name))
    assert sum(rows) <= 1  # at most the first chunk's forward, never a backward past it


@pytest.mark.parametrize("name", METHODS)
def test_tuple_inputs(name):
    model = ImageNet(n_images=2).double().eval()
    inputs = (_images(3, seed=2), _images(3, seed=3))
    method = build(name, model, (_images(24, seed=8), _images(24, seed=9)))
    attributions = method.attribute(inputs, target=[0, 1, 2], **kwargs_of(name))
    assert isinstance(attributions, tuple) and len(attributions) == 2
    for a, x in zip(attributions, inputs):
        assert a.shape == x.shape and a.dtype == x.dtype and bool(torch.isfinite(a).all())


@pytest.mark.parametrize("name", METHODS)
def test_additional_forward_args_are_per_example(name, model, x):
    method = build(name, model)
    scale = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    batched = method.attribute(x, target=0, additional_forward_args=(scale,), **kwargs_of(name))
    generator = torch.Generator().manual_seed(0)
    for i in range(x.shape[0]):
        kwargs = kwargs_of(name, generator=generator) if METHOD_CONFIGS[name].random else kwargs_of(name)
        single = method.attribute(x[i : i + 1], target=0, additional_forward_args=(scale[i : i + 1],), **kwargs)
        assert_same(batched[i : i + 1], single, METHOD_CONFIGS[name].float_tolerance)


@pytest.mark.parametrize("name", METHODS)
def test_batched_equals_one_at_a_time_and_chunked(name, model, x):
    config = METHOD_CONFIGS[name]
    method = build(name, model)
    target = torch.tensor([0, 1, 2, 1])
    batched = method.attribute(x, target=target, **kwargs_of(name))
    for ibs in (1, 3):
        chunked = method.attribute(x, target=target, internal_batch_size=ibs, **kwargs_of(name))
        assert_same(batched, chunked, config.float_tolerance)
    generator = torch.Generator().manual_seed(0)
    singles = []
    for i in range(x.shape[0]):
        kwargs = kwargs_of(name, generator=generator) if config.random else kwargs_of(name)
        singles.append(method.attribute(x[i : i + 1], target=int(target[i]), **kwargs))
    assert_same(batched, torch.cat(singles), config.float_tolerance)


@pytest.mark.parametrize("name", METHODS)
def test_determinism_under_a_generator_leaves_global_rng_alone(name, model, x):
    method = build(name, model)
    kwargs = kwargs_of(name, generator=torch.Generator().manual_seed(3))
    state = torch.get_rng_state()
    first = method.attribute(x, baselines=_random_baseline(name), target=1, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    again = method.attribute(x, baselines=_random_baseline(name), target=1, **kwargs_of(name, generator=3))
    assert_same(first, again, 0)


def _random_baseline(name):
    """A random baseline specification where the method takes one, so that seeding is exercised."""
    return "uniform" if "uniform" in METHOD_CONFIGS[name].baselines or _takes_specs(name) else None


def _takes_specs(name):
    return any(isinstance(b, str) and b != "tensor" for b in METHOD_CONFIGS[name].baselines)


@pytest.mark.parametrize("name", METHODS)
def test_convergence_delta(name, model, x):
    method = build(name, model)
    if method.has_convergence_delta():
        attributions, delta = method.attribute(x, target=1, return_convergence_delta=True, **kwargs_of(name))
        assert delta.shape == (x.shape[0],) and bool(torch.isfinite(delta).all())
        assert_same(attributions, method.attribute(x, target=1, **kwargs_of(name)), 0)
    else:
        with pytest.raises(ValueError, match="return_convergence_delta"):
            method.attribute(x, target=1, return_convergence_delta=True, **kwargs_of(name))


@pytest.mark.parametrize("name", METHODS)
def test_empty_batch(name, model, x):
    attributions = build(name, model).attribute(x[:0], target=1, **kwargs_of(name))
    assert attributions.shape == x[:0].shape


# ------------------------------------------------------------------------------------------ Captum tools
@pytest.mark.parametrize("nt_type", ["smoothgrad", "smoothgrad_sq", "vargrad"])
@pytest.mark.parametrize("name", METHODS)
def test_noise_tunnel_with_every_baseline_form(name, nt_type, model, x):
    method = build(name, model)
    for form in (None,) + tuple(METHOD_CONFIGS[name].baselines):
        kwargs = kwargs_of(name)
        if form is not None:
            kwargs["baselines"] = baseline_value(form, x, noise_tunnel=True)
        attributions = NoiseTunnel(method).attribute(
            x, nt_type=nt_type, nt_samples=2, stdevs=0.05, target=[0, 1, 2, 0], **kwargs
        )
        assert attributions.shape == x.shape and bool(torch.isfinite(attributions).all()), form


@pytest.mark.parametrize("name", METHODS)
def test_every_baseline_form(name, model, x):
    method = build(name, model)
    for form in tuple(METHOD_CONFIGS[name].baselines):
        attributions = method.attribute(x, baselines=baseline_value(form, x), target=1, **kwargs_of(name))
        assert attributions.shape == x.shape and bool(torch.isfinite(attributions).all()), form


@pytest.mark.parametrize("name", METHODS)
def test_captum_infidelity_and_sensitivity(name, model, x):
    method = build(name, model)
    target = torch.tensor([0, 1, 2, 0])
    attributions = method.attribute(x, target=target, **kwargs_of(name))

    def perturb(inputs):
        noise = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(0), dtype=inputs.dtype) * 0.01
        return noise, inputs - noise

    value = infidelity(model, perturb, x, attributions, target=target, n_perturb_samples=2)
    assert value.shape == (x.shape[0],) and bool(torch.isfinite(value).all())
    sens = sensitivity_max(method.attribute, x, target=target, n_perturb_samples=2, **kwargs_of(name))
    assert sens.shape == (x.shape[0],) and bool(torch.isfinite(sens).all())


@pytest.mark.parametrize("name", METHODS)
def test_swapped_gradient_func_is_used(name, model, x):
    method = build(name, model)
    reference = method.attribute(x, target=1, **kwargs_of(name))
    calls = []
    original = method.gradient_func

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    method.gradient_func = counting
    assert_same(reference, method.attribute(x, target=1, **kwargs_of(name)), 0)
    assert calls


class _RecordingBar:
    bars = []

    def __init__(self, total=None, desc="", unit="", leave=False, delay=0.0):
        self.total, self.desc, self.unit, self.n, self.delay = total, desc, unit, 0, delay
        _RecordingBar.bars.append(self)

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *args, **kwargs):
        pass

    def refresh(self):
        pass

    def close(self):
        pass


@contextmanager
def _counting_rows(model):
    rows = []
    handle = model.register_forward_hook(lambda module, args, output: rows.append(output.shape[0]))
    try:
        yield rows
    finally:
        handle.remove()


@pytest.mark.parametrize("name", METHODS)
def test_show_progress_counts_model_passes(name, model, x, monkeypatch):
    method = build(name, model)
    monkeypatch.setattr(progress_module, "tqdm", _RecordingBar)
    _RecordingBar.bars = []
    with _counting_rows(model) as rows:
        method.attribute(x, target=1, show_progress=True, **kwargs_of(name))
    bar = _RecordingBar.bars[-1]
    assert bar.unit == "pass" and name in bar.desc and bar.delay == 0
    assert bar.n == sum(rows) and 0 < bar.n <= bar.total
    _RecordingBar.bars = []
    method.attribute(x, target=1, show_progress=False, **kwargs_of(name))
    assert not _RecordingBar.bars
    method.attribute(x, target=1, **kwargs_of(name))  # the default: a bar that shows itself after a few seconds
    assert len(_RecordingBar.bars) == 1 and _RecordingBar.bars[0].delay >= 1


# ------------------------------------------------------------------------------------------ no side effects
def _snapshot(model, x):
    return dict(
        x=x.clone(),
        requires_grad=x.requires_grad,
        params=[p.detach().clone() for p in model.parameters()],
        grads=[None if p.grad is None else p.grad.clone() for p in model.parameters()],
        training=[m.training for m in model.modules()],
        hooks=[len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules()],
        grad_mode=torch.is_grad_enabled(),
        rng=torch.get_rng_state(),
    )


def _assert_unchanged(before, model, x):
    after = _snapshot(model, x)
    assert torch.equal(before["x"], after["x"]) and before["requires_grad"] == after["requires_grad"]
    assert all(torch.equal(a, b) for a, b in zip(before["params"], after["params"]))
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before["grads"], after["grads"]))
    for key in ("training", "hooks", "grad_mode"):
        assert before[key] == after[key], key
    assert torch.equal(before["rng"], after["rng"])


@pytest.mark.parametrize("name", METHODS)
def test_nothing_is_mutated_after_success_or_failure(name, x):
    model = ImageNet().double().train()  # train mode must survive too
    method = build(name, model)
    x = x.clone().requires_grad_()
    before = _snapshot(model, x)
    method.attribute(x, target=1, **kwargs_of(name, generator=1))
    _assert_unchanged(before, model, x)
    with pytest.raises(ValueError):
        method.attribute(x, target=N_CLASSES + 5, **kwargs_of(name, generator=1))  # fails at the first pass
    _assert_unchanged(before, model, x)
    with torch.no_grad():
        attributions = method.attribute(x, target=1, **kwargs_of(name, generator=1))
    assert bool(torch.isfinite(attributions).all())


# ------------------------------------------------------------------------------------------ bad input
BAD_CALLS = [
    (dict(target=[0, 1]), ValueError, "target"),
    (dict(target=torch.tensor([0, 1])), ValueError, "target"),
    (dict(target=torch.tensor([0.0, 1.0, 1.0, 1.0])), TypeError, "target"),
    (dict(target="cat"), TypeError, "target"),
    (dict(additional_forward_args=(torch.ones(3),)), ValueError, "additional_forward_args"),
    (dict(return_convergence_delta="no"), TypeError, "return_convergence_delta"),
    (dict(show_progress=1), TypeError, "show_progress"),
    (dict(internal_batch_size=0), ValueError, "internal_batch_size"),
    (dict(generator="seed"), TypeError, "generator"),
]


@pytest.mark.parametrize("bad, error, words", BAD_CALLS)
@pytest.mark.parametrize("name", METHODS)
def test_bad_input_fails_clearly_before_any_model_pass(name, bad, error, words, model, x):
    method = build(name, model)
    kwargs = kwargs_of(name)
    kwargs.update(bad)
    kwargs.setdefault("target", 1)
    with _counting_rows(model) as rows, pytest.raises(error, match=words):
        method.attribute(x, **kwargs)
    assert not rows


@pytest.mark.parametrize("name", METHODS)
def test_bad_tensors_fail_clearly_before_any_model_pass(name, model, x):
    method = build(name, model)
    with _counting_rows(model) as rows:
        with pytest.raises(TypeError, match="floating-point"):
            method.attribute(x.to(torch.complex128), target=1, **kwargs_of(name))
        with pytest.raises(TypeError, match="floating-point"):
            method.attribute((x * 10).long(), target=1, **kwargs_of(name))
        bad = x.clone()
        bad[1, 0, 2, 2] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):
            method.attribute(bad, target=1, **kwargs_of(name))
        with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
            method.attribute(x, target=1, **kwargs_of(name))
    assert not rows


@pytest.mark.parametrize("name", METHODS)
def test_forward_without_gradients_fails_clearly(name, x):
    model = ImageNet().double().eval()
    detaching = torch.nn.Sequential(_Detach(), model)
    with pytest.raises(ValueError, match="autograd"):
        build(name, detaching).attribute(x, target=1, **kwargs_of(name))


class _Detach(torch.nn.Module):
    def forward(self, x):
        return x.detach()


@pytest.mark.parametrize("name", METHODS)
def test_non_finite_model_stops_with_the_examples_named(name, x):
    model = ImageNet().double().eval()
    poisoned = x.clone()

    class NanOnSecond(torch.nn.Module):
        def forward(self, inputs):
            out = model(inputs)
            # example 2 of the batch is recognisable by its first pixel: its score is nan wherever it goes
            marker = (inputs[:, 0, 0, 0] - poisoned[2, 0, 0, 0]).abs() < 1e-12
            nan_or_zero = torch.where(marker, float("nan"), 0.0).to(out.dtype).reshape(-1, 1)
            return out + nan_or_zero  # a constant term: the other rows' gradients stay finite

    with pytest.raises(FloatingPointError, match=r"\[2\]"):
        build(name, NanOnSecond()).attribute(poisoned, target=1, **kwargs_of(name))
