"""Sanity checks of attribution methods: cascading model-parameter randomisation (Adebayo, Gilmer,
Muelly, Goodfellow, Hardt, Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018) and sigma-perturbation
(Rahman, Lewis, Plis, "Geometrically Guided Integrated Gradients").

Both compare the explanations of a damaged copy of the model with those of the original; a method that
explains the model (rather than the image) must produce explanations that drift away as the damage grows.
The model passed in is never modified: every step works on a deep copy.
"""

import copy
import inspect
import math
from numbers import Real
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from captum_paths.attr._utils.captum_compat import format_additional_forward_args, format_inputs, run_forward
from captum_paths.attr._utils.features import flatten_inputs
from captum_paths.attr._utils.progress import chunk_slices, progress_bar
from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target
from captum_paths.attr._utils.validation import check_generator, check_internal_batch_size, check_same_batch
from captum_paths.metrics._core._common import (
    check_finite,
    check_target,
    pearson,
    score_function,
    spearman,
)

__all__ = [
    "SanityCheckResult",
    "model_randomization_check",
    "sigma_perturbation_check",
    "randomization_layers",
    "explanation_similarities",
    "saliency_maps",
    "ssim_of_maps",
]

AttributeFn = Union[type, Callable[[nn.Module, Any, Any], Any]]
DEFAULT_SIGMAS = tuple(t / 100 for t in range(1, 101))


class SanityCheckResult(NamedTuple):
    """Per-step, per-example similarities of the explanations to the original model's (``S`` damage
    steps after step 0, the undamaged model; ``N`` examples).

    Attributes:
        steps (list of str): a label per step: ``"original"`` then the layer randomised last (cascading
            randomisation) or ``"sigma=t"`` (sigma-perturbation).
        spearman_abs (Tensor): ``(S + 1, N)`` Spearman rank correlation of the absolute attributions.
        spearman (Tensor): ``(S + 1, N)`` Spearman rank correlation of the signed attributions.
        pearson_abs (Tensor): ``(S + 1, N)`` Pearson correlation of the absolute attributions.
        ssim (Tensor or None): ``(S + 1, N)`` structural similarity of the normalised absolute maps (see
            :func:`ssim_of_maps`), for a single ``(N, C, H, W)`` input of at least 7x7; else None.
        scores (Tensor): ``(S + 1, N)`` the model's score (``score`` rule) of the target on each input.
        agreement (Tensor): ``(S + 1,)`` fraction of examples whose top-1 class equals the original
            model's (``nan`` for outputs without a class dimension).
        accuracy (Tensor or None): ``(S + 1,)`` top-1 accuracy against ``labels`` when they are given.
        values (Tensor): ``(S + 1,)`` the damage parameter of each step: the number of randomised layers,
            or the noise factor ``t``.
    """

    steps: List[str]
    spearman_abs: Tensor
    spearman: Tensor
    pearson_abs: Tensor
    ssim: Optional[Tensor]
    scores: Tensor
    agreement: Tensor
    accuracy: Optional[Tensor]
    values: Tensor


def explanation_similarities(reference: Tensor, other: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(spearman_abs, spearman, pearson_abs)`` between rows of two ``(N, D)`` attribution matrices."""
    reference, other = reference.to(torch.float64), other.to(torch.float64)
    return (
        spearman(reference.abs(), other.abs()),
        spearman(reference, other),
        pearson(reference.abs(), other.abs()),
    )


def saliency_maps(flat_attr: Tensor, image_shape: Tuple[int, ...]) -> Tensor:
    """Adebayo et al.'s visualisation: per example the channel sum of absolute attributions, divided by
    its maximum (all-zero maps stay zero): ``(N, H, W)`` in [0, 1]."""
    maps = flat_attr.reshape((-1,) + tuple(image_shape[1:])).abs().sum(1).to(torch.float64)
    peak = maps.flatten(1).max(1).values.reshape(-1, 1, 1)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


def ssim_of_maps(
    a: Tensor, b: Tensor, window: int = 7, data_range: float = 1.0, k1: float = 0.01, k2: float = 0.03
) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) of ``(N, H, W)`` maps: ``(N,)``.

    The defaults of ``skimage.metrics.structural_similarity`` (the SSIM Adebayo et al. report): a 7x7
    uniform window, sample covariances (``window^2 / (window^2 - 1)``), ``K1 = 0.01``, ``K2 = 0.03``, the
    mean over the windows that lie inside the image. Maps smaller than the window give ``nan``.
    """
    if a.shape[-1] < window or a.shape[-2] < window:
        return torch.full(a.shape[:1], float("nan"), dtype=torch.float64, device=a.device)
    a, b = a.to(torch.float64).unsqueeze(1), b.to(torch.float64).unsqueeze(1)
    mean = lambda t: torch.nn.functional.avg_pool2d(t, window, stride=1)  # noqa: E731  (valid windows)
    ua, ub = mean(a), mean(b)
    cov_norm = window * window / (window * window - 1)
    va = cov_norm * (mean(a * a) - ua * ua)
    vb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.flatten(1).mean(1)


def randomization_layers(model: nn.Module) -> List[str]:
    """Names of the modules that own parameters directly, top-down (the reverse of registration order,
    which is the forward order for ``nn.Sequential``-style models)."""
    names = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def _trunc_normal(shape, std: float, generator, device, dtype) -> Tensor:
    """N(0, std^2) truncated to [-2 std, 2 std] (redraws outside), drawn from ``generator``."""
    gen_device = generator.device if generator is not None else device
    out = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float64)
    bad = out.abs() > 2
    while bool(bad.any()):
        out[bad] = torch.randn(int(bad.sum()), generator=generator, device=gen_device, dtype=torch.float64)
        bad = out.abs() > 2
    return (out * std).to(device=device, dtype=dtype)


def _reinitialise(module: nn.Module, reinit: Any, std: float, generator: Optional[torch.Generator]) -> None:
    with torch.no_grad():
        if reinit == "reset_parameters" and hasattr(module, "reset_parameters"):
            gen_device = generator.device if generator is not None else "cpu"
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gen_device))
            devices = sorted({p.device.index for p in module.parameters() if p.device.type == "cuda"})
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                module.reset_parameters()
            return
        for name, p in module.named_parameters():
            if callable(reinit) and not isinstance(reinit, str):
                new = reinit(name, p.detach().clone(), generator)
                if not isinstance(new, Tensor) or new.shape != p.shape:
                    raise ValueError(f"`reinit` must return a tensor of shape {tuple(p.shape)} for {name!r}")
                p.copy_(new)
            else:  # "trunc_normal", or a module without reset_parameters
                p.copy_(_trunc_normal(p.shape, std, generator, p.device, p.dtype))


def _normalise_attribute_fn(attribute_fn: AttributeFn, attribute_kwargs: Dict[str, Any]) -> Callable:
    if inspect.isclass(attribute_fn):

        def call(model, inputs, target, afa):
            method = attribute_fn(model)
            kwargs = dict(attribute_kwargs)
            if afa is not None:
                kwargs["additional_forward_args"] = afa
            return method.attribute(inputs, target=target, **kwargs)

        return call
    if callable(attribute_fn):
        if attribute_kwargs:
            raise ValueError("`attribute_kwargs` only applies when `attribute_fn` is an Attribution class")

        def call(model, inputs, target, afa):
            if afa is not None:
                return attribute_fn(model, inputs, target, afa)
            return attribute_fn(model, inputs, target)

        return call
    raise TypeError(
        "`attribute_fn` must be a Captum Attribution class (constructed on each model copy) or a callable "
        f"(model, inputs, target) -> attributions, got {type(attribute_fn).__name__}"
    )


class _Evaluator:
    """Runs the attribution method and the model on a model copy, in chunks of examples."""

    def __init__(
        self,
        attribute_fn,
        attribute_kwargs,
        inputs,
        target,
        additional_forward_args,
        labels,
        score,
        max_examples_per_batch,
    ):
        self.inputs = tuple(x.detach() for x in format_inputs(inputs, "inputs"))
        self.is_tuple = isinstance(inputs, tuple)
        self.n = check_same_batch(self.inputs, "inputs")
        check_finite(self.inputs, "inputs")
        check_target(target, self.n)
        self.target = target
        self.afa = format_additional_forward_args(additional_forward_args)
        self.score_fn = score_function(score)
        self.chunk = check_internal_batch_size(max_examples_per_batch, "max_examples_per_batch")
        self.call = _normalise_attribute_fn(attribute_fn, attribute_kwargs or {})
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.reshape(-1).shape[0] != self.n:
                raise ValueError(f"`labels` must be a tensor of {self.n} class indices")
            labels = labels.reshape(-1).to(self.inputs[0].device)
        self.labels = labels

    def run(self, model: nn.Module) -> Tuple[Tensor, Tensor, Tensor]:
        """Attributions ``(N, D)``, target scores ``(N,)`` and top-1 classes ``(N,)`` (-1 if none)."""
        attrs, scores, top1 = [], [], []
        for sl in chunk_slices(self.n, self.chunk):
            idx = torch.arange(sl.start, sl.stop, device=self.inputs[0].device)
            x = tuple(t[sl] for t in self.inputs)
            t = subset_target(self.target, idx, self.n)
            afa = subset_additional_forward_args(self.afa, idx, self.n)
            with torch.no_grad():
                out = run_forward(model, x, None, afa)
                scores.append(self.score_fn(out, t, len(idx)))
                top1.append(out.argmax(1) if out.dim() == 2 else torch.full((len(idx),), -1, device=out.device))
            a = self.call(model, x if self.is_tuple else x[0], t, afa)
            a = format_inputs(a, "attributions returned by attribute_fn")
            if len(a) != len(x) or any(ai.shape != xi.shape for ai, xi in zip(a, x)):
                raise ValueError(
                    "`attribute_fn` must return attributions of the inputs' shapes, got "
                    f"{[tuple(ai.shape) for ai in a]} for inputs {[tuple(xi.shape) for xi in x]}"
                )
            check_finite(a, "attributions returned by attribute_fn")
            attrs.append(flatten_inputs(tuple(ai.detach() for ai in a)))
        return torch.cat(attrs), torch.cat(scores), torch.cat(top1)


def _resolve_target(target, model, evaluator: "_Evaluator"):
    """``None`` on a multi-class model means the original model's predicted classes."""
    if target is not None:
        return target
    with torch.no_grad():
        out = run_forward(model, evaluator.inputs, None, evaluator.afa)
    if out.dim() == 2 and out.shape[1] > 1:
        return out.argmax(1)
    return None


def _sanity_check(model, evaluator, target, damaged_models, labels_out, values, show_progress, desc):
    """Explain with the original model, then with every damaged copy; compare. The model is never touched."""
    if evaluator.n == 0:  # no example: empty per-example tensors, no model copy, no model pass
        return _empty_sanity_result(evaluator, labels_out, values)
    reference_model = copy.deepcopy(model)  # even a forward pass may change a model (BatchNorm in train mode)
    evaluator.target = _resolve_target(target, reference_model, evaluator)
    sp_abs, sp, pe_abs, ssim, scores, agreement, accuracy = _run_steps(
        reference_model, evaluator, damaged_models, labels_out, show_progress, desc
    )
    return SanityCheckResult(labels_out, sp_abs, sp, pe_abs, ssim, scores, agreement, accuracy, values)


def _empty_sanity_result(evaluator, labels_out, values) -> SanityCheckResult:
    """The result for ``N = 0``: ``(S + 1, 0)`` per-example tensors, ``nan`` agreement and accuracy."""
    first = evaluator.inputs[0]
    empty = torch.empty((len(labels_out), 0), dtype=torch.float64, device=first.device)
    image = len(evaluator.inputs) == 1 and first.dim() == 4 and min(first.shape[-2:]) >= 7
    nan = torch.full((len(labels_out),), float("nan"), dtype=torch.float64, device=first.device)
    accuracy = nan.clone() if evaluator.labels is not None else None
    ssim = empty.clone() if image else None
    return SanityCheckResult(
        labels_out, empty, empty.clone(), empty.clone(), ssim, empty.clone(), nan, accuracy, values
    )


def _run_steps(reference_model, evaluator, damaged_models, labels_out, show_progress, desc):
    reference, ref_scores, ref_top1 = evaluator.run(reference_model)
    first = evaluator.inputs[0]
    image = len(evaluator.inputs) == 1 and first.dim() == 4 and min(first.shape[-2:]) >= 7
    ref_maps = saliency_maps(reference, first.shape) if image else None
    sims = [explanation_similarities(reference, reference)]
    ssims = [ssim_of_maps(ref_maps, ref_maps)] if image else None
    scores, tops = [ref_scores], [ref_top1]
    with progress_bar(show_progress, total=len(labels_out) - 1, desc=desc) as bar:
        for damaged in damaged_models:
            attrs, s, t = evaluator.run(damaged)
            sims.append(explanation_similarities(reference, attrs))
            if image:
                ssims.append(ssim_of_maps(ref_maps, saliency_maps(attrs, first.shape)))
            scores.append(s)
            tops.append(t)
            bar.update(1)
    tops_t = torch.stack(tops)
    has_classes = bool((tops_t >= 0).all())
    agreement = (
        (tops_t == tops_t[:1]).to(torch.float64).mean(1)
        if has_classes
        else torch.full((len(tops),), float("nan"), dtype=torch.float64)
    )
    accuracy = None
    if evaluator.labels is not None and has_classes:
        accuracy = (tops_t == evaluator.labels.unsqueeze(0)).to(torch.float64).mean(1)
    return (
        torch.stack([s[0] for s in sims]),
        torch.stack([s[1] for s in sims]),
        torch.stack([s[2] for s in sims]),
        torch.stack(ssims) if image else None,
        torch.stack(scores),
        agreement.to(reference.device),
        accuracy,
    )


def model_randomization_check(
    model: nn.Module,
    attribute_fn: AttributeFn,
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    target: Any = None,
    additional_forward_args: Any = None,
    layers: Optional[Sequence[str]] = None,
    cascading: bool = True,
    reinit: Any = "trunc_normal",
    reinit_std: float = 0.1,
    labels: Optional[Tensor] = None,
    score: Any = "softmax",
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    generator: Union[None, int, torch.Generator] = None,
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
) -> SanityCheckResult:
    r"""Model-parameter randomisation test (Adebayo et al. 2018).

    Cascading (default): starting from the output layer, the parameters of one more layer are
    re-initialised at each step, top-down, so that step ``k`` has the top ``k`` layers random; the
    explanations of each damaged model are compared with the original model's. Independent
    (``cascading=False``): step ``k`` re-initialises layer ``k`` alone. A method sensitive to the model
    shows similarities falling towards 0 as randomisation proceeds.

    Re-initialisation: ``"trunc_normal"`` draws every parameter of the layer (weights and biases) from
    ``N(0, reinit_std^2)`` truncated at two standard deviations, the rule of the GGIG authors'
    randomisation code (std 0.1); ``"reset_parameters"`` calls the module's own PyTorch initialiser
    (seeded from ``generator``); a callable ``(name, tensor, generator) -> tensor`` sets anything else.
    All draws come from ``generator``, so a seed reproduces the check exactly.

    Args:
        model (nn.Module): the model; never modified (every step works on a deep copy, the train/eval
            mode is kept).
        attribute_fn: a Captum ``Attribution`` class, built as ``attribute_fn(model_copy)`` and called as
            ``.attribute(inputs, target=..., additional_forward_args=..., **attribute_kwargs)``; or a
            callable ``(model, inputs, target) -> attributions`` (it also receives the forward arguments
            as a fourth argument when ``additional_forward_args`` is given).
        inputs (Tensor or tuple of Tensor): ``(N, ...)`` examples.
        target: any Captum target format. Default: None, meaning the original model's top-1 class for a
            ``(N, C)`` output with ``C > 1`` (the class Adebayo et al. explain), else None.
        additional_forward_args: extra forward arguments. Default: None.
        layers (sequence of str, optional): module names in randomisation order (each randomises every
            parameter below it). Default: every module owning parameters, from the output backwards
            (reverse registration order, see :func:`randomization_layers`).
        cascading (bool): cascading (True) or independent (False) randomisation. Default: True.
        reinit: ``"trunc_normal"``, ``"reset_parameters"`` or a callable. Default: ``"trunc_normal"``.
        reinit_std (float): the truncated normal's standard deviation. Default: 0.1.
        labels (Tensor, optional): ``(N,)`` true classes, for the accuracy of every step.
        score: the per-example model score recorded at each step: ``"softmax"`` (default), ``"logit"``
            or a callable ``(output, target)``.
        attribute_kwargs (dict, optional): extra keyword arguments of ``attribute`` (class form only).
        generator (int or torch.Generator, optional): seed of the random weights.
        max_examples_per_batch (int, optional): examples per attribution call. Default: None (all).
        show_progress (bool): tqdm progress over steps. Default: False.

    Returns:
        :class:`SanityCheckResult`; ``values[k]`` is the number of layers randomised at step ``k``
        (cascading) or ``k`` (independent: the index of the single randomised layer, 1-based). ``N = 0``
        gives ``(S + 1, 0)`` tensors and ``nan`` agreement without copying or calling the model.

    Cost: ``S + 1`` attribution calls and forward passes of the ``N`` examples (``S`` = number of
    ``layers``), each in chunks of ``max_examples_per_batch``. NaN or infinite ``inputs`` raise
    ``ValueError`` before any model pass; NaN or infinite attributions returned by ``attribute_fn`` raise
    ``ValueError`` as soon as they appear.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    available = dict(model.named_modules())
    if layers is None:
        layers = randomization_layers(model)
    else:
        layers = list(layers)
        for name in layers:
            if name not in available:
                raise ValueError(f"`layers`: model has no module named {name!r}")
    if not layers:
        raise ValueError("`model` has no parameters to randomise")
    if not (reinit in ("trunc_normal", "reset_parameters") or (callable(reinit) and not isinstance(reinit, str))):
        raise ValueError(f"`reinit` must be 'trunc_normal', 'reset_parameters' or a callable, got {reinit!r}")
    if (
        isinstance(reinit_std, bool)
        or not isinstance(reinit_std, Real)
        or not math.isfinite(reinit_std)
        or reinit_std <= 0
    ):
        raise ValueError(f"`reinit_std` must be a positive number, got {reinit_std!r}")
    if not isinstance(cascading, bool):
        raise TypeError(f"`cascading` must be a bool, got {type(cascading).__name__}")
    gen = check_generator(generator)
    evaluator = _Evaluator(
        attribute_fn, attribute_kwargs, inputs, target, additional_forward_args, labels, score, max_examples_per_batch
    )

    def damaged_models():
        work = copy.deepcopy(model)
        for name in layers:
            if not cascading:
                work = copy.deepcopy(model)
            _reinitialise(dict(work.named_modules())[name], reinit, float(reinit_std), gen)
            yield work

    labels_out = ["original"] + list(layers)
    values = torch.arange(len(labels_out), dtype=torch.float64)
    return _sanity_check(model, evaluator, target, damaged_models(), labels_out, values, show_progress, "randomisation")


def sigma_perturbation_check(
    model: nn.Module,
    attribute_fn: AttributeFn,
    inputs: Union[Tensor, Tuple[Tensor, ...]],
    target: Any = None,
    additional_forward_args: Any = None,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    labels: Optional[Tensor] = None,
    score: Any = "softmax",
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    generator: Union[None, int, torch.Generator] = None,
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
) -> SanityCheckResult:
    r"""Sigma-perturbation check (GGIG paper): explanations of models with noisy weights.

    For every factor ``t`` in ``sigmas`` a fresh copy of the model gets, on every floating-point weight
    tensor ``w`` (parameters and buffers, except BatchNorm running statistics), i.i.d. noise
    ``N(0, (std(w) t)^2)`` with ``std(w)`` the tensor's (unbiased) standard deviation, as in the GGIG
    authors' code (``t = threshold / 100``, thresholds 1..100). Tensors with a single element (no
    standard deviation) are left as they are. The explanations of each noisy model are compared with the
    original model's; the score and accuracy show how much the model itself degrades.

    Args:
        sigmas (sequence of float): the noise factors ``t`` (positive). Default: ``0.01, 0.02, ..., 1.0``
            (the authors' grid). Every other argument as in :func:`model_randomization_check`.

    Returns:
        :class:`SanityCheckResult` with ``steps = ["original", "sigma=0.01", ...]`` and ``values`` the
        factors (0 for the original).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    try:
        sigma_list = [float(s) for s in sigmas]
    except TypeError:
        raise TypeError(f"`sigmas` must be a sequence of positive numbers, got {sigmas!r}") from None
    if not sigma_list or any(not math.isfinite(s) or s <= 0 for s in sigma_list):
        raise ValueError(f"`sigmas` must be a non-empty sequence of positive numbers, got {sigmas!r}")
    gen = check_generator(generator)
    evaluator = _Evaluator(
        attribute_fn, attribute_kwargs, inputs, target, additional_forward_args, labels, score, max_examples_per_batch
    )

    def noisy_models():
        for t in sigma_list:
            work = copy.deepcopy(model)
            with torch.no_grad():
                tensors = list(work.named_parameters()) + [
                    (name, b) for name, b in work.named_buffers() if "running" not in name
                ]
                for _, w in tensors:
                    if not w.dtype.is_floating_point or w.numel() < 2:
                        continue
                    std = float(w.std())
                    gen_device = gen.device if gen is not None else w.device
                    noise = torch.randn(w.shape, generator=gen, device=gen_device, dtype=torch.float64)
                    w.add_((noise * std * t).to(device=w.device, dtype=w.dtype))
            yield work

    labels_out = ["original"] + [f"sigma={t:g}" for t in sigma_list]
    values = torch.tensor([0.0] + sigma_list, dtype=torch.float64)
    return _sanity_check(
        model, evaluator, target, noisy_models(), labels_out, values, show_progress, "sigma-perturbation"
    )
