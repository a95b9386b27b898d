"""The attribution methods the benchmark compares, with every knob recorded.

Each method is a :class:`MethodSpec`: a name for ``--methods``, a label for the table, the knobs it
runs with (written to ``results.json``) and a ``build(model, context)`` that returns
``explain(inputs, target) -> attributions`` (inputs' shape). Methods of this package that are not
importable (not built yet in this checkout) are reported as unavailable instead of being faked.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "MethodContext",
    "MethodSpec",
    "PassCounter",
    "METHOD_NAMES",
    "method_specs",
    "unavailable_reason",
]

# Every method, in table order. ``samp++`` is SAMP with the infinitesimal constraint and momentum.
METHOD_NAMES = ("samp", "samp++", "lpi", "ggig", "ablation", "ig", "eg", "saliency", "ixg", "random")

Explain = Callable[[Tensor, Tensor], Tensor]


class PassCounter(nn.Module):
    """Wraps a model and counts the rows (examples) it forwards and back-propagates.

    ``forward_rows`` grows by the batch size of every call; ``backward_rows`` by the batch size of
    every gradient that flows back into the model's output (a tensor hook), so a method's cost is
    read off exactly, whatever its batching. The wrapped model's mode and parameters are untouched.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_rows = 0
        self.backward_rows = 0

    def reset(self) -> None:
        self.forward_rows = 0
        self.backward_rows = 0

    def _count_backward(self, grad: Tensor) -> Tensor:
        self.backward_rows += int(grad.shape[0])
        return grad

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        if isinstance(out, Tensor):
            self.forward_rows += int(out.shape[0]) if out.dim() else 1
            if out.requires_grad:
                out.register_hook(self._count_backward)
        return out


@dataclass
class MethodContext:
    """What a method may use besides the model: reference (training) images, the seed, the
    data-dependent knobs (SAMP's step and blur) and a memory bound."""

    x_reference: Tensor
    seed: int = 0
    features_per_step: int = 10
    blur: Tuple[int, float] = (11, 5.0)
    internal_batch_size: Optional[int] = None
    show_progress: bool = False
    quick: bool = False


@dataclass
class MethodSpec:
    name: str
    label: str
    params: Dict[str, Any]
    build: Callable[[nn.Module, MethodContext], Explain]
    requires: Tuple[str, ...] = field(default_factory=tuple)


def unavailable_reason(spec: MethodSpec) -> Optional[str]:
    """``None`` if every public name the method needs is exported by ``captum_paths``."""
    import captum_paths

    missing = [n for n in spec.requires if not hasattr(captum_paths, n)]
    if missing:
        return f"{', '.join(missing)} is not in this build of captum_paths"
    return None


def _samp_builder(eta: Optional[float], momentum: Optional[float]):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        from captum_paths import Blur, SampAttribution

        samp = SampAttribution(model)
        blur = Blur(*ctx.blur)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return samp.attribute(
                x,
                target=target,
                features_per_step=ctx.features_per_step,
                eta=eta,
                momentum=momentum,
                direction="both",
                insertion_start=blur,
                internal_batch_size=ctx.internal_batch_size,
            )

        return explain

    return build


def _lpi_build(n_neighborhoods: int, n_references: int, n_samples: int):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        from captum_paths import LocalPathIntegration, ReferenceBank

        # the bank is part of the method's set-up (like a trained model), fitted once per data set
        bank = ReferenceBank(n_neighborhoods=n_neighborhoods, n_references=n_references, random_state=ctx.seed)
        bank.fit(model, ctx.x_reference)
        lpi = LocalPathIntegration(model, bank)
        gen = torch.Generator().manual_seed(ctx.seed)  # LPI draws on a CPU generator, any device

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return lpi.attribute(x, target=target, n_samples=n_samples, generator=gen)

        return explain

    return build


def _ggig_build(n_steps: int, n_iterations: int, learning_rate: float):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        from captum_paths import GeometricallyGuidedIG

        ggig = GeometricallyGuidedIG(model)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return ggig.attribute(
                x,
                baselines=0.0,
                target=target,
                n_steps=n_steps,
                n_iterations=n_iterations,
                learning_rate=learning_rate,
                internal_batch_size=ctx.internal_batch_size,
            )

        return explain

    return build


def _ablation_build(params: Dict[str, Any]):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        from captum_paths import AblationPath, Blur

        ablation = AblationPath(model)
        blur = Blur(*ctx.blur)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return ablation.attribute(x, baselines=blur, target=target, **params)

        return explain

    return build


def _ig_build(n_steps: int):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(model)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return ig.attribute(
                x, baselines=0.0, target=target, n_steps=n_steps, internal_batch_size=ctx.internal_batch_size
            )

        return explain

    return build


def _eg_build(n_samples: int):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        # Expected gradients (Erion et al.): GradientShap with training images as the baseline
        # distribution, no input noise, alpha ~ U(0, 1). Captum draws the baselines with torch's and
        # the alphas with numpy's global RNG: both are seeded here so that a run is reproducible.
        import numpy as np
        from captum.attr import GradientShap

        gs = GradientShap(model)
        torch.manual_seed(ctx.seed)
        np.random.seed(ctx.seed)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return gs.attribute(x, baselines=ctx.x_reference, target=target, n_samples=n_samples, stdevs=0.0)

        return explain

    return build


def _saliency_build(model: nn.Module, ctx: MethodContext) -> Explain:
    from captum.attr import Saliency

    sal = Saliency(model)
    return lambda x, target: sal.attribute(x, target=target, abs=True)


def _ixg_build(model: nn.Module, ctx: MethodContext) -> Explain:
    from captum.attr import InputXGradient

    ixg = InputXGradient(model)
    return lambda x, target: ixg.attribute(x, target=target)


def _random_build(model: nn.Module, ctx: MethodContext) -> Explain:
    gen = torch.Generator(device=ctx.x_reference.device).manual_seed(ctx.seed)
    return lambda x, target: torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def method_specs(image_size: int, quick: bool = False) -> Dict[str, MethodSpec]:
    """Every method with the knobs it runs with on ``image_size x image_size`` images.

    Paper knobs are kept except where a budget forces a change, which the params record:
    GGIG's ImageNet setting (50 points x 100 ascent steps = 5,000 gradients per image) is cut to
    20 x 20 on 28x28-32x32 images, and to 4 x 4 under ``--quick``.
    """
    large = image_size >= 128
    ggig = (
        {"n_steps": 50, "n_iterations": 100, "learning_rate": 1e-4}
        if large
        else {"n_steps": 20, "n_iterations": 20, "learning_rate": 1e-4}
    )
    if quick:
        ggig.update(n_steps=4, n_iterations=4)
    lpi = {"n_neighborhoods": 11, "n_references": 20, "n_samples": 20}
    if quick:
        lpi.update(n_neighborhoods=3, n_references=5, n_samples=5)
    ablation: Dict[str, Any] = {
        "n_steps": 15,
        "n_iterations": 30,
        "learning_rate": 0.1,
        "momentum": 0.5,
        "zeta": 0.8,
        "score": "softmax",
    }
    if quick:
        ablation.update(n_iterations=5)
    features_per_step = 224 * 16 if large else 10
    specs = [
        MethodSpec(
            "samp",
            "SAMP",
            {
                "features_per_step": features_per_step,
                "eta": None,
                "momentum": None,
                "direction": "both",
                "deletion_end": "zeros",
                "insertion_start": "blur",
            },
            _samp_builder(None, None),
            ("SampAttribution",),
        ),
        MethodSpec(
            "samp++",
            "SAMP++",
            {
                "features_per_step": features_per_step,
                "eta": 0.1,
                "momentum": 0.5,
                "direction": "both",
                "deletion_end": "zeros",
                "insertion_start": "blur",
            },
            _samp_builder(0.1, 0.5),
            ("SampAttribution",),
        ),
        MethodSpec(
            "lpi",
            "LPI",
            dict(lpi, bank_fitted_on="training split"),
            _lpi_build(**lpi),
            ("LocalPathIntegration", "ReferenceBank"),
        ),
        MethodSpec("ggig", "GGIG", dict(ggig, baseline="zeros"), _ggig_build(**ggig), ("GeometricallyGuidedIG",)),
        MethodSpec(
            "ablation", "AblationPath", dict(ablation, baseline="blur"), _ablation_build(ablation), ("AblationPath",)
        ),
        MethodSpec("ig", "IG", {"n_steps": 50, "method": "gausslegendre", "baseline": "zeros"}, _ig_build(50)),
        MethodSpec(
            "eg",
            "ExpectedGradients",
            {"n_samples": 20 if not quick else 5, "stdevs": 0.0, "baselines": "training images"},
            _eg_build(20 if not quick else 5),
        ),
        MethodSpec("saliency", "Saliency", {"abs": True}, _saliency_build),
        MethodSpec("ixg", "InputXGradient", {}, _ixg_build),
        MethodSpec("random", "Random", {"distribution": "U(0,1)"}, _random_build),
    ]
    return {s.name: s for s in specs}
