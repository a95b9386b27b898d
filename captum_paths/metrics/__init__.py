"""Evaluation protocols for attributions (any Captum attribution, ours or Captum's own).

* :func:`deletion`, :func:`insertion`: RISE's causal metrics (and the SAMP paper's variant);
* :func:`diffid`: LPI's insertion-minus-deletion protocol (and cleanig's scoring variants);
* :func:`pic`, :func:`sic`, :func:`aic`: XRAI's performance information curves, as PAIR saliency computes them;
* :func:`sensitivity_n`: Ancona et al.'s Sensitivity-n;
* :func:`pointing_game`: Zhang et al.'s pointing game;
* :func:`road`, :func:`noisy_linear_impute`: ROAD (Rong et al.), MoRF / LeRF with noisy linear imputation;
* :func:`model_randomization_check`, :func:`sigma_perturbation_check`: sanity checks of a method;
* :func:`mu_fidelity`: Bhatt et al.'s mu-fidelity (faithfulness correlation);
* :func:`map_input_similarity`: the GGIG paper's map-versus-input similarities (its Table 1).

:func:`mu_fidelity` (Bhatt, Weller, Moura, IJCAI 2020): per example, the correlation over random feature
subsets between the sum of their attributions and the output drop when they are set to a baseline (1 for
the exact attribution ``w (x - b)`` of a linear model). Defaults: Pearson, fixed-size uniform subsets of 20 %
of the features, 100 subsets, zeros baseline; its docstring gives the arguments that reproduce Quantus's
``FaithfulnessCorrelation`` (equal given the same subsets, which ``subsets=`` passes) and Xplique's
``MuFidelity`` (9x9 grid, Bernoulli 20 %, Spearman, nan -> 0). Cost: ``N (1 + S)`` model rows.

:func:`map_input_similarity` (Rahman, Lewis, Plis, GGIG, Table 1): how much each map looks like its input,
after the GGIG code's rescaling (input ``(clip(x, -1, 1) + 1) / 2``, map ``a / max(a)``): Spearman rank
correlation, weighted Jaccard, skimage-default SSIM (7x7 uniform window, ``data_range`` 2 as the authors'
skimage inferred it) and the normalised reverse MSE ``1 - MSE / max MSE`` (pass ``max_mse`` to pool the
maximum over several methods, as the authors did); one pure function per measure in
``captum_paths.metrics._core.similarity``. No model passes.

:func:`diffid` (Yang et al., LPI, AAAI 2023): deletion removes the top ``r`` of the ranked features, insertion
the bottom ``r``, removed values set to the mean of the preserved ones; ``diff = insertion - deletion`` per
ratio (0.1..0.9) and its trapezoid area. ``score=`` picks the variant and the result names it
(``DiffIDResult.score``): ``"logit_ratio"`` (LPI's default, ``f_t(x') / f_t(x)`` unclamped), ``"accuracy"``
(LPI's second score, cleanig's "binary") or ``"clamped_softmax"`` (cleanig's "soft",
``clamp(p_t(x') / (p_t(x) + 1e-8), 0, 1)``). Cost: ``N (2 R + 1)`` model rows.
"""

from captum_paths.metrics._core.causal import deletion, insertion
from captum_paths.metrics._core.diffid import DiffIDResult, diffid
from captum_paths.metrics._core.fidelity import mu_fidelity
from captum_paths.metrics._core.pic import PicCurve, PicResult, aic, pic, sic
from captum_paths.metrics._core.pointing import pointing_game
from captum_paths.metrics._core.road import ROADResult, noisy_linear_impute, road
from captum_paths.metrics._core.sanity import (
    SanityCheckResult,
    model_randomization_check,
    sigma_perturbation_check,
)
from captum_paths.metrics._core.sensitivity import sensitivity_n
from captum_paths.metrics._core.similarity import map_input_similarity

__all__ = [
    "deletion",
    "insertion",
    "diffid",
    "DiffIDResult",
    "sensitivity_n",
    "mu_fidelity",
    "map_input_similarity",
    "pointing_game",
    "road",
    "ROADResult",
    "noisy_linear_impute",
    "model_randomization_check",
    "sigma_perturbation_check",
    "SanityCheckResult",
    "pic",
    "sic",
    "aic",
    "PicResult",
    "PicCurve",
]
