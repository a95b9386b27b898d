"""Path-choice attribution methods, drop-in beside ``captum.attr.IntegratedGradients``."""
from captum_paths.attr._utils.baselines import (  # noqa: F401
    Baseline,
    Constant,
    GaussianBlur,
    GaussianNoise,
    Mean,
    Uniform,
    Zeros,
    gaussian_blur,
)

__all__ = [
    "Baseline",
    "Constant",
    "GaussianBlur",
    "GaussianNoise",
    "Mean",
    "Uniform",
    "Zeros",
    "gaussian_blur",
]
