"""How the contract tests (tests/attr/test_contract.py) build every public method cheaply.

Every public ``PathAttribution`` subclass exported by ``captum_paths.attr`` must have an entry here: the
contract module fails for a method without one, so a new method cannot skip the contract. An entry says

* ``build(model, train_images)``: the attribution for a model (``train_images`` are a few ``(M, 1, 6, 6)``
  images for methods that fit something first, e.g. a reference bank);
* ``kwargs``: the cheapest knobs that still exercise the method's path (a few model passes per example);
* ``baselines``: every baseline form the method accepts besides ``None`` (strings, specification objects,
  numbers, tensors), each run through the contract (NoiseTunnel included);
* ``random``: whether the method draws random numbers itself (then ``generator`` must make it reproducible);
* ``float_tolerance``: the tolerance for "batched == one at a time" comparisons in float64.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Tuple

import torch

from captum_paths.attr import (
    IDGI,
    AblationPath,
    AdversarialGradientIntegration,
    BlurIG,
    GeometricallyGuidedIG,
    GuidedIG,
    LocalPathIntegration,
    ReferenceBank,
    SampAttribution,
)
from captum_paths.baselines import Blur, Constant, Mean


@dataclass
class MethodConfig:
    build: Callable[[torch.nn.Module, torch.Tensor], Any]
    kwargs: Dict[str, Any] = field(default_factory=dict)
    baselines: Tuple[Any, ...] = ("zeros", 0.5, Constant(0.25), Mean(), Blur(3, 1.0), "tensor")
    random: bool = False
    float_tolerance: float = 1e-9


def _lpi(model, train_images):
    bank = ReferenceBank(n_neighborhoods=2, n_references=3, random_state=0).fit(model, train_images)
    return LocalPathIntegration(model, bank)


METHOD_CONFIGS: Dict[str, MethodConfig] = {
    "SampAttribution": MethodConfig(
        build=lambda model, _: SampAttribution(model),
        kwargs=dict(features_per_step=9, eta=None, momentum=None),
    ),
    "LocalPathIntegration": MethodConfig(
        build=_lpi,
        kwargs=dict(n_samples=3),
        baselines=("tensor",),
        random=True,
    ),
    "GeometricallyGuidedIG": MethodConfig(
        build=lambda model, _: GeometricallyGuidedIG(model),
        kwargs=dict(n_steps=3, n_iterations=2, learning_rate=0.01),
    ),
    "AblationPath": MethodConfig(
        build=lambda model, _: AblationPath(model),
        kwargs=dict(n_steps=4, n_iterations=2, score="logit"),
    ),
    "IDGI": MethodConfig(
        build=lambda model, _: IDGI(model),
        kwargs=dict(n_steps=3),
    ),
    "GuidedIG": MethodConfig(
        build=lambda model, _: GuidedIG(model),
        kwargs=dict(n_steps=3, fraction=0.25, max_dist=0.5),
    ),
    "BlurIG": MethodConfig(
        build=lambda model, _: BlurIG(model),
        kwargs=dict(n_steps=3, max_sigma=2.0),
        baselines=(),  # Blur IG's path starts at the blurred input: baselines must be None
    ),
    "AdversarialGradientIntegration": MethodConfig(
        build=lambda model, _: AdversarialGradientIntegration(model),
        kwargs=dict(n_iterations=2, n_false_classes=2, clamp=None),
        baselines=(),
    ),
}
