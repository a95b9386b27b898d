"""Evaluation protocols for attributions (any Captum attribution, ours or Captum's own).

* :func:`deletion`, :func:`insertion`: RISE's causal metrics (and the SAMP paper's variant);
* :func:`diffid`: LPI's insertion-minus-deletion protocol;
* :func:`sensitivity_n`: Ancona et al.'s Sensitivity-n;
* :func:`pointing_game`: Zhang et al.'s pointing game;
* :func:`model_randomization_check`, :func:`sigma_perturbation_check`: sanity checks of a method.
"""

from captum_paths.metrics._core.causal import deletion, insertion
from captum_paths.metrics._core.diffid import DiffIDResult, diffid
from captum_paths.metrics._core.pointing import pointing_game
from captum_paths.metrics._core.sanity import (
    SanityCheckResult,
    model_randomization_check,
    sigma_perturbation_check,
)
from captum_paths.metrics._core.sensitivity import sensitivity_n

__all__ = [
    "deletion",
    "insertion",
    "diffid",
    "DiffIDResult",
    "sensitivity_n",
    "pointing_game",
    "model_randomization_check",
    "sigma_perturbation_check",
    "SanityCheckResult",
]
