"""The attribution methods the benchmark compares, with every knob recorded.

Each method is a :class:`MethodSpec`: a name for ``--methods``, a label for the table, the knobs it
runs with (written to ``results.json``) and a ``build(model, context)`` that returns
``explain(inputs, target) -> attributions`` (inputs' shape). Methods of this package that are not
importable (not built yet in this checkout), or whose reference package is not installed, are reported as
unavailable instead of being faked.

:data:`METHOD_NAMES` run by default; :data:`OPTIONAL_METHOD_NAMES` only when named (``--methods``), because
they do not fit the default run's budget of about ten minutes.
"""

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from captum_paths.benchmark.unshare import unshare_modules

__all__ = [
    "MethodContext",
    "MethodSpec",
    "PassCounter",
    "METHOD_NAMES",
    "OPTIONAL_METHOD_NAMES",
    "ALL_METHOD_NAMES",
    "method_specs",
    "pair_call_model",
    "unavailable_reason",
]

# Every method, in table order. ``samp++`` is SAMP with the infinitesimal constraint and momentum; the
# ``-idgi`` rows are IDGI's reweighting on that method's path (IG's straight line for ``ig-idgi``).
METHOD_NAMES = (
    "samp",
    "samp++",
    "lpi",
    "lpi-3",
    "lpi-11",
    "ggig",
    "ablation",
    "guided-ig",
    "blur-ig",
    "agi",
    "ig",
    "ig-idgi",
    "guided-ig-idgi",
    "blur-ig-idgi",
    "eg",
    "smoothgrad",
    "deeplift",
    "gradcam",
    "lime",
    "saliency",
    "ixg",
    "random",
)
# Named only (``--methods xrai``): XRAI costs about 0.5 s per 28x28 digit on one thread (PAIR segments every
# image at 224x224), about 50 s more on the default 100 digits, past the default run's budget.
OPTIONAL_METHOD_NAMES = ("xrai",)
ALL_METHOD_NAMES = METHOD_NAMES + OPTIONAL_METHOD_NAMES

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
    packages: Tuple[str, ...] = field(default_factory=tuple)  # reference packages it runs (import names)


def unavailable_reason(spec: MethodSpec) -> Optional[str]:
    """``None`` if every public name the method needs is exported by ``captum_paths`` and every reference
    package it runs is installed."""
    import captum_paths

    missing = [n for n in spec.requires if not hasattr(captum_paths, n)]
    if missing:
        return f"{', '.join(missing)} is not in this build of captum_paths"
    absent = [p for p in spec.packages if importlib.util.find_spec(p) is None]
    if absent:
        return f"needs the {', '.join(absent)} package (pip install 'captum_paths[benchmark]')"
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
                show_progress=ctx.show_progress,
            )

        return explain

    return build


def _lpi_build(n_neighborhoods: int, n_references: int, n_samples: int, estimator: str):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        from captum_paths import LocalPathIntegration, ReferenceBank

        # the bank is part of the method's set-up (like a trained model), fitted once per data set
        bank = ReferenceBank(n_neighborhoods=n_neighborhoods, n_references=n_references, random_state=ctx.seed)
        bank.fit(model, ctx.x_reference)
        lpi = LocalPathIntegration(model, bank)
        gen = torch.Generator().manual_seed(ctx.seed)  # LPI draws on a CPU generator, any device

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return lpi.attribute(
                x,
                target=target,
                n_samples=n_samples,
                estimator=estimator,
                generator=gen,
                show_progress=ctx.show_progress,
            )

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
                show_progress=ctx.show_progress,
            )

        return explain

    return build


def _ablation_build(params: Dict[str, Any]):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        from captum_paths import AblationPath, Blur

        ablation = AblationPath(model)
        blur = Blur(*ctx.blur)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return ablation.attribute(x, baselines=blur, target=target, show_progress=ctx.show_progress, **params)

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


def _package_build(class_name: str, params: Dict[str, Any]):
    """A method of this package by its public name, run with ``params`` (and the context's memory bound)."""

    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        import captum_paths

        method = getattr(captum_paths, class_name)(model)
        extra = {"internal_batch_size": ctx.internal_batch_size, "show_progress": ctx.show_progress}

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return method.attribute(x, target=target, **params, **extra)

        return explain

    return build


def _agi_build(params: Dict[str, Any]):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        from captum_paths import AdversarialGradientIntegration

        agi = AdversarialGradientIntegration(model)
        gen = torch.Generator().manual_seed(ctx.seed)  # the random false classes of the LPI paper's setting

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return agi.attribute(
                x,
                target=target,
                generator=gen,
                internal_batch_size=ctx.internal_batch_size,
                show_progress=ctx.show_progress,
                **params,
            )

        return explain

    return build


def _smoothgrad_build(n_samples: int, stdev_fraction: float):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        # SmoothGrad (Smilkov et al. 2017): Captum's NoiseTunnel on Saliency, noise std a fraction of the
        # data range, seeded (NoiseTunnel draws from torch's global RNG)
        from captum.attr import NoiseTunnel, Saliency

        nt = NoiseTunnel(Saliency(model))
        stdev = stdev_fraction * float(ctx.x_reference.max() - ctx.x_reference.min())
        torch.manual_seed(ctx.seed)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            return nt.attribute(x, nt_type="smoothgrad", nt_samples=n_samples, stdevs=stdev, target=target)

        return explain

    return build


def _deeplift_build(model: nn.Module, ctx: MethodContext) -> Explain:
    # DeepLift (Shrikumar et al. 2017, Rescale rule) as Captum implements it, zero baseline. Captum keeps one
    # input and output per nonlinearity module and raises when a module runs twice in a forward, as in
    # torchvision's ResNet blocks (self.relu called two or three times): the model is first given one module
    # per call site (same outputs, shared weights). Wrappers above a rewritten block are copies, so a copied
    # PassCounter counts apart: its rows are added to the counter this builder was given after every call.
    from captum.attr import DeepLift

    unshared = unshare_modules(model)
    counted_apart = unshared is not model and isinstance(model, PassCounter)
    deeplift = DeepLift(unshared)

    def explain(x: Tensor, target: Tensor) -> Tensor:
        if counted_apart:
            unshared.reset()
        attributions = deeplift.attribute(x, baselines=0.0, target=target)
        if counted_apart:
            model.forward_rows += unshared.forward_rows
            model.backward_rows += unshared.backward_rows
        return attributions

    return explain


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The model's last ``nn.Conv2d`` (Grad-CAM's layer), or a ValueError naming the model."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"Grad-CAM needs a convolutional layer; {type(model).__name__} has none")
    return convs[-1]


def _gradcam_build(model: nn.Module, ctx: MethodContext) -> Explain:
    # Grad-CAM (Selvaraju et al. 2017): Captum's LayerGradCam on the last convolution, ReLU of the
    # channel-weighted map, bilinearly upsampled to the input and shared by its channels
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, last_conv_layer(model))

    def explain(x: Tensor, target: Tensor) -> Tensor:
        coarse = cam.attribute(x, target=target, relu_attributions=True)
        fine = LayerAttribution.interpolate(coarse, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return fine.expand_as(x).contiguous()

    return explain


def grid_feature_mask(height: int, width: int, cell: int, device=None) -> Tensor:
    """``(1, 1, H, W)`` superpixel ids of ``cell x cell`` squares, row-major (LIME's interpretable features)."""
    rows = torch.arange(height, device=device) // cell
    cols = torch.arange(width, device=device) // cell
    per_row = (width + cell - 1) // cell
    return (rows.reshape(-1, 1) * per_row + cols.reshape(1, -1)).reshape(1, 1, height, width)


def _lime_build(n_samples: int, cell: int):
    def build(model: nn.Module, ctx: MethodContext) -> Explain:
        # LIME (Ribeiro et al. 2016) as Captum implements it (Lasso alpha 0.01, exponential cosine kernel),
        # on square superpixels, one example at a time (one interpretable model each), seeded per image
        import warnings

        from captum.attr import Lime

        lime = Lime(model)
        torch.manual_seed(ctx.seed)

        def explain(x: Tensor, target: Tensor) -> Tensor:
            mask = grid_feature_mask(x.shape[-2], x.shape[-1], cell, x.device)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*interpretable model.*")
                parts = [
                    lime.attribute(
                        x[i : i + 1], target=target[i : i + 1], feature_mask=mask, n_samples=n_samples,
                        perturbations_per_eval=n_samples,
                    )
                    for i in range(x.shape[0])
                ]  # fmt: skip
            return torch.cat(parts)

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


def pair_call_model(model: nn.Module, target: int, dtype: torch.dtype, device=None) -> Callable:
    """PAIR saliency's ``call_model_function`` for a torch image model: ``(B, H, W, C)`` numpy batches in, the
    gradients of output ``target`` (the logit of a classifier) w.r.t. them out, computed in ``dtype``."""
    from saliency.core.base import INPUT_OUTPUT_GRADIENTS

    def call_model(batch, call_model_args=None, expected_keys=None):
        points = torch.as_tensor(batch, dtype=dtype, device=device).permute(0, 3, 1, 2).requires_grad_()
        with torch.enable_grad():
            grads = torch.autograd.grad(model(points)[:, target].sum(), points)[0]
        return {INPUT_OUTPUT_GRADIENTS: grads.permute(0, 2, 3, 1).detach().cpu().numpy()}

    return call_model


def _xrai_build(model: nn.Module, ctx: MethodContext) -> Explain:
    # XRAI (Kapishnikov et al., ICCV 2019) as PAIR saliency 0.2.1 implements it, with its defaults: IG from
    # a black and a white baseline (the image's minimum and maximum), 100 steps, Felzenszwalb segments
    # computed at 224x224, the full greedy algorithm. One image per call; each baseline's 100 path points go
    # through the model in one batch (PAIR's batch_size). The (H, W) map is shared by the image's channels.
    from saliency.core.xrai import XRAI

    xrai = XRAI()

    def explain(x: Tensor, target: Tensor) -> Tensor:
        maps = []
        for image, label in zip(x, target.tolist()):
            hwc = image.detach().permute(1, 2, 0).cpu().double().numpy()
            mask = xrai.GetMask(hwc, pair_call_model(model, label, x.dtype, x.device), batch_size=100)
            maps.append(torch.as_tensor(mask, dtype=x.dtype, device=x.device))
        return torch.stack(maps).unsqueeze(1).expand_as(x).contiguous()

    return explain


def _random_build(model: nn.Module, ctx: MethodContext) -> Explain:
    gen = torch.Generator(device=ctx.x_reference.device).manual_seed(ctx.seed)
    return lambda x, target: torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)


def _path_method_knobs(large: bool, quick: bool) -> Dict[str, Dict[str, Any]]:
    """The knobs of this package's path methods at the image size, with the budget cuts under ``--quick``.

    Paper knobs are kept except where a budget forces a change, which the params record: GGIG's ImageNet
    setting (50 points x 100 ascent steps = 5,000 gradients per image) is cut to 20 x 20 on 28x28-32x32
    images. Guided IG runs the SAMP paper's comparison setting (25 steps, fraction 0.5, max_dist 1.0, its
    Table 1) and Blur IG PAIR's defaults (100 steps, max_sigma 50); AGI runs the LPI paper's setting (PGD 20
    steps, one random false class, its Table 1).
    """
    knobs: Dict[str, Dict[str, Any]] = {
        "ggig": {"n_steps": 50, "n_iterations": 100, "learning_rate": 1e-4}
        if large
        else {"n_steps": 20, "n_iterations": 20, "learning_rate": 1e-4},
        # LPI: the authors' estimator and their shipped bank (one neighbourhood of 20 references); the
        # verdict against expected gradients depends on the neighbourhood count, so 3 and 11 are rows too
        "lpi": {"n_neighborhoods": 1, "n_references": 20, "n_samples": 20, "estimator": "stratified"},
        "ablation": {"n_steps": 15, "n_iterations": 30, "learning_rate": 0.1, "momentum": 0.5, "zeta": 0.8},
        "guided-ig": {"n_steps": 25, "fraction": 0.5, "max_dist": 1.0},
        "blur-ig": {"n_steps": 100, "max_sigma": 50.0},
        "agi": {"n_iterations": 20, "n_false_classes": 1, "false_classes": "random", "score": "logit"},
        "ig-idgi": {"n_steps": 50},
    }
    knobs["ablation"]["score"] = "softmax"
    if quick:
        knobs["ggig"].update(n_steps=4, n_iterations=4)
        knobs["lpi"].update(n_references=5, n_samples=5)
        knobs["ablation"].update(n_iterations=5)
        knobs["guided-ig"].update(n_steps=10)
        knobs["blur-ig"].update(n_steps=10)
        knobs["agi"].update(n_iterations=5)
        knobs["ig-idgi"].update(n_steps=10)
    return knobs


def _samp_specs(features_per_step: int) -> list:
    common = {"features_per_step": features_per_step, "direction": "both", "deletion_end": "zeros"}
    common["insertion_start"] = "blur"
    return [
        MethodSpec(
            "samp", "SAMP", dict(common, eta=None, momentum=None), _samp_builder(None, None), ("SampAttribution",)
        ),
        MethodSpec(
            "samp++", "SAMP++", dict(common, eta=0.1, momentum=0.5), _samp_builder(0.1, 0.5), ("SampAttribution",)
        ),
    ]


def _package_specs(knobs: Dict[str, Dict[str, Any]]) -> list:
    gig, big = knobs["guided-ig"], knobs["blur-ig"]
    return [
        *[
            MethodSpec(
                name,
                label,
                dict(knobs["lpi"], n_neighborhoods=g, bank_fitted_on="training split"),
                _lpi_build(**dict(knobs["lpi"], n_neighborhoods=g)),
                ("LocalPathIntegration", "ReferenceBank"),
            )
            for name, label, g in (("lpi", "LPI", 1), ("lpi-3", "LPI (3 nbhd)", 3), ("lpi-11", "LPI (11 nbhd)", 11))
        ],
        MethodSpec(
            "ggig",
            "GGIG",
            dict(knobs["ggig"], baseline="zeros"),
            _ggig_build(**knobs["ggig"]),
            ("GeometricallyGuidedIG",),
        ),
        MethodSpec(
            "ablation",
            "AblationPath",
            dict(knobs["ablation"], baseline="blur"),
            _ablation_build(knobs["ablation"]),
            ("AblationPath",),
        ),
        MethodSpec(
            "guided-ig", "GuidedIG", dict(gig, baseline="zeros"), _package_build("GuidedIG", gig), ("GuidedIG",)
        ),
        MethodSpec("blur-ig", "BlurIG", dict(big), _package_build("BlurIG", big), ("BlurIG",)),
        MethodSpec("agi", "AGI", dict(knobs["agi"]), _agi_build(knobs["agi"]), ("AdversarialGradientIntegration",)),
        MethodSpec(
            "ig-idgi",
            "IG+IDGI",
            dict(knobs["ig-idgi"], baseline="zeros"),
            _package_build("IDGI", knobs["ig-idgi"]),
            ("IDGI",),
        ),
        MethodSpec(
            "guided-ig-idgi",
            "GuidedIG+IDGI",
            dict(gig, idgi=True, baseline="zeros"),
            _package_build("GuidedIG", dict(gig, idgi=True)),
            ("GuidedIG",),
        ),
        MethodSpec(
            "blur-ig-idgi",
            "BlurIG+IDGI",
            dict(big, idgi=True),
            _package_build("BlurIG", dict(big, idgi=True)),
            ("BlurIG",),
        ),
    ]


def _captum_specs(quick: bool) -> list:
    eg_samples = 5 if quick else 20
    sg_samples = 5 if quick else 20
    return [
        MethodSpec("ig", "IG", {"n_steps": 50, "method": "gausslegendre", "baseline": "zeros"}, _ig_build(50)),
        MethodSpec(
            "eg",
            "ExpectedGradients",
            {"n_samples": eg_samples, "stdevs": 0.0, "baselines": "training images"},
            _eg_build(eg_samples),
        ),
        MethodSpec(
            "smoothgrad",
            "SmoothGrad",
            {"n_samples": sg_samples, "stdevs": "0.15 x data range", "of": "Saliency"},
            _smoothgrad_build(sg_samples, 0.15),
        ),
        MethodSpec("deeplift", "DeepLift", {"baseline": "zeros"}, _deeplift_build),
        MethodSpec(
            "gradcam", "Grad-CAM", {"layer": "last Conv2d", "upsampling": "bilinear", "relu": True}, _gradcam_build
        ),
        MethodSpec(
            "lime",
            "LIME",
            {"n_samples": 50 if quick else 200, "superpixels": "4x4 squares", "model": "Captum Lasso(0.01)"},
            _lime_build(50 if quick else 200, 4),
        ),
        MethodSpec("saliency", "Saliency", {"abs": True}, _saliency_build),
        MethodSpec("ixg", "InputXGradient", {}, _ixg_build),
        MethodSpec("random", "Random", {"distribution": "U(0,1)"}, _random_build),
        MethodSpec(
            "xrai",
            "XRAI",
            {
                "implementation": "PAIR saliency",
                "ig_steps": 100,
                "baselines": "image min and max",
                "segments": "Felzenszwalb at 224x224",
                "algorithm": "full",
            },
            _xrai_build,
            packages=("saliency", "skimage"),
        ),
    ]


def method_specs(image_size: int, quick: bool = False) -> Dict[str, MethodSpec]:
    """Every method, the optional ones last, with the knobs it runs with on ``image_size x image_size`` images,
    in table order."""
    large = image_size >= 128
    specs = _samp_specs(224 * 16 if large else 10)
    specs += _package_specs(_path_method_knobs(large, quick)) + _captum_specs(quick)
    by_name = {s.name: s for s in specs}
    return {name: by_name[name] for name in ALL_METHOD_NAMES}
