"""Path-choice attribution methods, drop-in beside ``captum.attr.IntegratedGradients``."""

from captum_paths.baselines import (  # noqa: F401  (re-exported)
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
    "Baseline",
    "Constant",
    "Blur",
    "GaussianNoise",
    "Mean",
    "Uniform",
    "Zeros",
    "gaussian_blur",
]
from captum_paths.attr._core.samp import SampAttribution, SampPath  # noqa: E402

__all__ += ["SampAttribution", "SampPath"]
from captum_paths.attr._core.geometrically_guided_ig import GeometricallyGuidedIG  # noqa: E402

__all__ += ["GeometricallyGuidedIG"]
from captum_paths.attr._core.local_path_integration import LocalPathIntegration  # noqa: E402
from captum_paths.attr._core.reference_bank import ReferenceBank  # noqa: E402

__all__ += ["LocalPathIntegration", "ReferenceBank"]
from captum_paths.attr._core.ablation_path import AblationPath, AblationPathResult  # noqa: E402

__all__ += ["AblationPath", "AblationPathResult"]
from captum_paths.attr._core.idgi import IDGI  # noqa: E402

__all__ += ["IDGI"]
from captum_paths.attr._core.agi import AdversarialGradientIntegration  # noqa: E402

__all__ += ["AdversarialGradientIntegration"]
from captum_paths.attr._core.guided_ig import GuidedIG  # noqa: E402
from captum_paths.attr._core.blur_ig import BlurIG  # noqa: E402

__all__ += ["GuidedIG", "BlurIG"]
