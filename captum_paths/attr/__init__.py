"""Path attribution methods, drop-in beside ``captum.attr.IntegratedGradients``.

Every method subclasses :class:`PathAttribution`, which owns the Captum contract; baseline specifications
live in :mod:`captum_paths.baselines`; docs/naming.md lists the one name each concept has.
"""

from captum_paths.attr._core.ablation_path import AblationPath, AblationPathResult
from captum_paths.attr._core.agi import AdversarialGradientIntegration
from captum_paths.attr._core.base import (
    LARGE_CALL_PASSES,
    PathAttribution,
    PathResult,
    default_internal_batch_size,
)
from captum_paths.attr._core.blur_ig import BlurIG
from captum_paths.attr._core.geometrically_guided_ig import GeometricallyGuidedIG
from captum_paths.attr._core.guided_ig import GuidedIG
from captum_paths.attr._core.idgi import IDGI
from captum_paths.attr._core.local_path_integration import LocalPathIntegration
from captum_paths.attr._core.reference_bank import ReferenceBank
from captum_paths.attr._core.samp import SampAttribution, SampPath
from captum_paths.baselines import (
    Baseline,
    Blur,
    Constant,
    GaussianNoise,
    Mean,
    Uniform,
    Zeros,
    gaussian_blur,
)

__all__ = [
    # the base and its result type
    "PathAttribution",
    "PathResult",
    "default_internal_batch_size",
    "LARGE_CALL_PASSES",
    # the methods
    "SampAttribution",
    "SampPath",
    "LocalPathIntegration",
    "ReferenceBank",
    "GeometricallyGuidedIG",
    "AblationPath",
    "AblationPathResult",
    "GuidedIG",
    "BlurIG",
    "IDGI",
    "AdversarialGradientIntegration",
    # baseline specifications (documented in captum_paths.baselines)
    "Baseline",
    "Blur",
    "Constant",
    "GaussianNoise",
    "Mean",
    "Uniform",
    "Zeros",
    "gaussian_blur",
]
