"""Evaluation protocols for attributions (any Captum attribution, ours or Captum's own).

* :func:`deletion`, :func:`insertion`: RISE's causal metrics (and the SAMP paper's variant);
* :func:`diffid`: LPI's insertion-minus-deletion protocol;
* :func:`sensitivity_n`: Ancona et al.'s Sensitivity-n;
* :func:`pointing_game`: Zhang et al.'s pointing game;
* :func:`model_randomization_check`, :func:`sigma_perturbation_check`: sanity checks of a method;
* :func:`mu_fidelity`: Bhatt et al.'s mu-fidelity (faithfulness correlation).

:func:`mu_fidelity` (Bhatt, Weller, Moura, IJCAI 2020): per example, the correlation over random feature
subsets between the sum of their attributions and the output drop when they are set to a baseline (1 for
the exact attribution ``w (x - b)`` of a linear model). Defaults: Pearson, fixed-size uniform subsets of 20 %
of the features, 100 subsets, zeros baseline; its docstring gives the arguments that reproduce Quantus's
``FaithfulnessCorrelation`` (equal given the same subsets, which ``subsets=`` passes) and Xplique's
``MuFidelity`` (9x9 grid, Bernoulli 20 %, Spearman, nan -> 0). Cost: ``N (1 + S)`` model rows.
"""

from captum_paths.metrics._core.causal import deletion, insertion
from captum_paths.metrics._core.diffid import DiffIDResult, diffid
from captum_paths.metrics._core.fidelity import mu_fidelity
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
    "mu_fidelity",
    "pointing_game",
    "model_randomization_check",
    "sigma_perturbation_check",
    "SanityCheckResult",
]
