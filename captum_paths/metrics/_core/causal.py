"""Insertion and deletion: the causal metrics of RISE (Petsiuk, Das, Saenko, BMVC 2018).

Features are ranked by attribution; starting from a *start* image, ``step`` features at a time (most
important first) are replaced by their value in a *finish* image and the model is scored after every
step. Deletion goes from the input to a substrate (zeros), so a good attribution makes the score fall
fast (low AUC is good); insertion goes from a substrate (the blurred input) to the input, so a good
attribution makes the score rise fast (high AUC is good).
"""

import math
from numbers import Integral, Real
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_paths.attr._utils.features import flatten_inputs, unflatten_inputs
from captum_paths.attr._utils.validation import check_generator
from captum_paths.baselines import resolve_baselines
from captum_paths.metrics._core._common import (
    ScoreSpec,
    TensorOrTuple,
    auc_mean,
    auc_trapezoid,
    check_target,
    evaluate_rows,
    group_attributions,
    group_ranks,
    prepare_inputs_and_attributions,
    score_function,
)

__all__ = ["deletion", "insertion", "causal_curves", "features_per_step"]

_AUC_RULES = {"trapezoid": auc_trapezoid, "mean": auc_mean}


def features_per_step(step: Union[int, float], n_features: int) -> int:
    """Number of features moved per step: ``step`` itself for an int, ``max(1, round(step * n_features))``
    for a float fraction in (0, 1]. Raises ``ValueError`` for anything else."""
    if isinstance(step, bool) or not isinstance(step, Real):
        raise ValueError(f"`step` must be a positive int (features per step) or a float in (0, 1], got {step!r}")
    if isinstance(step, Integral):
        if step < 1:
            raise ValueError(f"`step` must be a positive int (features per step), got {step!r}")
        return int(step)
    if not (math.isfinite(step) and 0 < step <= 1):
        raise ValueError(f"a float `step` is a fraction of the features and must lie in (0, 1], got {step!r}")
    return max(1, int(round(step * n_features)))


def causal_curves(
    mode: str,
    forward_func: Callable,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    target: Any = None,
    additional_forward_args: Any = None,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    step: Union[int, float] = 1,
    substrate: Any = "zeros",
    score: ScoreSpec = "logit",
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
    generator: Union[None, int, torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """The raw (unnormalised) curves ``(N, K + 1)`` and fractions ``(K + 1,)`` of ``mode`` in
    {``"deletion"``, ``"insertion"``}; see :func:`deletion` for the arguments."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"`mode` must be 'deletion' or 'insertion', got {mode!r}")
    inputs_t, flat_attr, ids, n_groups = prepare_inputs_and_attributions(
        inputs, attributions, feature_mask, max_examples_per_batch
    )
    n = inputs_t[0].shape[0]
    per_step = features_per_step(step, n_groups)
    check_target(target, n)
    score_fn = score_function(score)
    gen = check_generator(generator)
    detached = tuple(x.detach() for x in inputs_t)
    substrate_t = resolve_baselines(substrate, detached, default="zeros", name="substrate", generator=gen)
    x_flat, s_flat = flatten_inputs(detached), flatten_inputs(substrate_t)
    start, finish = (x_flat, s_flat) if mode == "deletion" else (s_flat, x_flat)
    device = x_flat.device

    n_steps = (n_groups + per_step - 1) // per_step  # RISE: ceil(features / step)
    moved_count = (torch.arange(n_steps + 1, device=device) * per_step).clamp(max=n_groups)
    element_rank = group_ranks(group_attributions(flat_attr, ids, n_groups)).gather(1, ids)
    points = n_steps + 1
    # the step from which each element holds its finish value (rank < k * s  <=>  rank // s + 1 <= k),
    # in the narrowest integer type: building a chunk then reads 2 bytes per element, not 8
    step_dtype = torch.int16 if points < 2**15 else torch.int32
    first_moved_step = (element_rank // per_step + 1).to(step_dtype)
    del element_rank
    row_examples = torch.arange(n, device=device).repeat_interleave(points)

    def make_rows(rows: Tensor) -> Tuple[Tensor, ...]:
        example, k = rows // points, (rows % points).to(step_dtype)
        moved = first_moved_step.index_select(0, example) <= k.unsqueeze(1)
        perturbed = torch.where(moved, finish.index_select(0, example), start.index_select(0, example))
        return unflatten_inputs(perturbed, detached)

    scores = evaluate_rows(
        forward_func,
        make_rows,
        row_examples,
        n,
        target,
        additional_forward_args,
        score_fn,
        max_examples_per_batch,
        show_progress,
        desc=mode,
    )
    curves = scores.reshape(n, points)
    fractions = moved_count.to(curves.dtype) / n_groups
    return curves, fractions


def _causal_metric(mode: str, auc: str, normalize: bool, return_curves: bool, **kwargs):
    if auc not in _AUC_RULES:
        raise ValueError(f"`auc` must be one of {sorted(_AUC_RULES)}, got {auc!r}")
    if not isinstance(normalize, bool):
        raise TypeError(f"`normalize` must be a bool, got {type(normalize).__name__}")
    curves, fractions = causal_curves(mode, **kwargs)
    if normalize:
        # the unperturbed input is the first point of deletion and the last of insertion
        input_score = curves[:, :1] if mode == "deletion" else curves[:, -1:]
        curves = curves / input_score
    area = _AUC_RULES[auc](curves)
    if return_curves:
        return area, curves, fractions
    return area


def deletion(
    forward_func: Callable,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    target: Any = None,
    additional_forward_args: Any = None,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    step: Union[int, float] = 1,
    substrate: Any = "zeros",
    score: ScoreSpec = "logit",
    auc: str = "trapezoid",
    normalize: bool = False,
    return_curves: bool = False,
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
    generator: Union[None, int, torch.Generator] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor]]:
    r"""Deletion metric (RISE's causal metric, ``mode='del'``): lower is better.

    Features are ranked by attribution, largest first (a feature's attribution is the sum over its
    elements: over the channels of a pixel for ``(N, C, H, W)`` inputs, over a ``feature_mask`` group,
    or the element itself otherwise). Starting from the input ``x``, step ``k`` (``k = 0..K``,
    ``K = ceil(G / s)`` for ``G`` features and ``s`` features per step) holds the image whose top
    ``min(k s, G)`` features are replaced by the substrate ``b``:

    .. math:: x^{(k)} = x \odot (1 - m_k) + b \odot m_k,\quad c_k = \mathrm{score}(f(x^{(k)}))_{target}

    and the curve ``c_0..c_K`` is summarised by an AUC rule. Ties in the ranking are broken by feature
    index (lower first).

    **Reproducing RISE exactly** (Petsiuk et al. 2018, ``evaluation.py``'s ``CausalMetric``):
    ``deletion(model, x, attr, target=model(x).argmax(1), step=224, substrate="zeros",
    score="softmax", auc="trapezoid", normalize=False)`` (RISE scores the softmax probability of the
    class the model predicts on the input, moves 224 pixels per step on 224x224 images, and integrates
    with the trapezoid rule over ``K + 1`` evenly spaced points).

    **Reproducing the SAMP paper** (Zhang et al., ICLR 2024; reference ``metric.py``):
    ``deletion(model, x, attr, target=predicted_class, step=10, substrate="zeros", score="logit",
    auc="mean", normalize=True)`` (raw logit, the curve divided by the logit of the unperturbed input,
    AUC = mean of the ``K + 1`` points).

    Args:
        forward_func (Callable): the model or any function of the inputs returning its output.
        inputs (Tensor or tuple of Tensor): ``(N, ...)`` examples. For a tuple, the features of all
            tensors are ranked together.
        attributions (Tensor or tuple of Tensor): exactly the shapes of ``inputs`` (e.g. the output of any
            Captum attribution).
        target (int, tuple, Tensor or list, optional): the output index scored, in any Captum target
            format (``None`` for single-output models). Default: None.
        additional_forward_args (Any, optional): extra arguments of ``forward_func``; tensors with ``N``
            rows are per example. Default: None.
        feature_mask (Tensor or tuple of Tensor, optional): Captum-style integer group ids broadcastable
            to each input; a group is one feature (e.g. superpixels). Default: None (one feature per
            pixel for 4-D inputs, per element otherwise).
        step (int or float): features moved per step (int), or a fraction of the features (float in
            (0, 1], rounded to the nearest count, at least 1). Default: 1.
        substrate: the finish image: any baseline specification of
            :func:`captum_paths.baselines.resolve_baselines` (``"zeros"``, ``"blur"``,
            ``"mean"``, ``Blur(11, 5)``, a number, a tensor, or a callable of the input).
            Default: ``"zeros"`` (RISE).
        score (str or Callable): ``"logit"`` (raw output of the target), ``"softmax"`` (softmax over dim
            1, probability of the target) or a callable ``(output, target) -> (rows,)``. Default:
            ``"logit"``.
        auc (str): ``"trapezoid"`` (RISE: ``(sum(c) - c_0/2 - c_K/2) / K``) or ``"mean"`` (SAMP paper:
            ``mean(c)``). Default: ``"trapezoid"``.
        normalize (bool): divide the curve by the score of the unperturbed input ``c_0`` before the AUC
            (SAMP paper). A zero input score gives non-finite values; a negative one flips the curve
            (the paper divides raw logits as they are). Default: False.
        return_curves (bool): also return the curves and the fraction of features moved at each point.
        max_examples_per_batch (int, optional): at most this many perturbed inputs per forward pass; the
            perturbed inputs of all examples and steps are batched together. Default: None (all at once).
        show_progress (bool): tqdm progress over forward batches. Default: False.
        generator (int or torch.Generator, optional): seed for random substrates (``"uniform"``,
            ``"gaussian"``). Default: None.

    Returns:
        ``auc`` of shape ``(N,)``; with ``return_curves=True`` the tuple ``(auc (N,), curves (N, K + 1),
        fractions (K + 1,))`` where ``fractions[k] = min(k s, G) / G``. Everything on the inputs'
        device.
    """
    return _causal_metric(
        "deletion",
        auc,
        normalize,
        return_curves,
        forward_func=forward_func,
        inputs=inputs,
        attributions=attributions,
        target=target,
        additional_forward_args=additional_forward_args,
        feature_mask=feature_mask,
        step=step,
        substrate=substrate,
        score=score,
        max_examples_per_batch=max_examples_per_batch,
        show_progress=show_progress,
        generator=generator,
    )


def insertion(
    forward_func: Callable,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    target: Any = None,
    additional_forward_args: Any = None,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    step: Union[int, float] = 1,
    substrate: Any = "blur",
    score: ScoreSpec = "logit",
    auc: str = "trapezoid",
    normalize: bool = False,
    return_curves: bool = False,
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
    generator: Union[None, int, torch.Generator] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor, Tensor]]:
    r"""Insertion metric (RISE's causal metric, ``mode='ins'``): higher is better.

    The mirror of :func:`deletion`: the start image is the substrate ``b`` (default: the input blurred
    with RISE's kernel, ``Blur(klen=11, sigma=5)``) and the finish image is the input, so step
    ``k`` holds ``x^{(k)} = b \odot (1 - m_k) + x \odot m_k`` with ``m_k`` the top ``min(k s, G)``
    features. The last point is the unperturbed input.

    **Reproducing RISE exactly**: ``insertion(model, x, attr, target=model(x).argmax(1), step=224,
    substrate="blur", score="softmax", auc="trapezoid", normalize=False)`` (``"blur"`` is RISE's
    ``gkern(11, 5)`` with zero padding, see :class:`~captum_paths.attr.Blur`).

    **Reproducing the SAMP paper**: ``insertion(model, x, attr, target=predicted_class, step=10,
    substrate="blur", score="logit", auc="mean", normalize=True)`` (the curve is divided by the logit of
    the unperturbed input, i.e. its last point; SAMP's ImageNet runs use ``Blur(31, 5)``).

    Args: as :func:`deletion`; ``substrate`` (the start image) defaults to ``"blur"``, which needs
    ``(N, C, H, W)`` inputs. ``normalize`` divides by the last point ``c_K`` (the input's score).

    Returns: as :func:`deletion`.
    """
    return _causal_metric(
        "insertion",
        auc,
        normalize,
        return_curves,
        forward_func=forward_func,
        inputs=inputs,
        attributions=attributions,
        target=target,
        additional_forward_args=additional_forward_args,
        feature_mask=feature_mask,
        step=step,
        substrate=substrate,
        score=score,
        max_examples_per_batch=max_examples_per_batch,
        show_progress=show_progress,
        generator=generator,
    )
