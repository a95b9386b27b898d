"""Insertion and deletion: the causal metrics of RISE (Petsiuk, Das, Saenko, BMVC 2018).

Features are ranked by attribution; starting from a *start* image, ``features_per_step`` features at a time (most
important first) are replaced by their value in a *finish* image and the model is scored after every
step. Deletion goes from the input to a substrate (zeros), so a good attribution makes the score fall
fast (low AUC is good); insertion goes from a substrate (the blurred input) to the input, so a good
attribution makes the score rise fast (high AUC is good).

Defaults: RISE's protocol (softmax probability of the target, trapezoid AUC, no normalisation, deletion to
zeros, insertion from ``Blur(11, 5)``), with RISE's curve resolution at every size: ``ceil(G / 224)``
features per step, i.e. exactly RISE's 224 pixels per step (224 steps) at 224x224. The perturbed inputs go
through the model in chunks of at most ``max_examples_per_batch`` rows (default: about ``2**18`` input
elements, between 8 and 256 rows), so memory is bounded whatever the number of examples and steps.
"""

from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_paths.attr._utils.features import unflatten_inputs
from captum_paths.attr._utils.validation import check_generator, features_per_step_count
from captum_paths.baselines import resolve_baselines
from captum_paths.metrics._core._common import (
    ScoreSpec,
    TensorOrTuple,
    auc_mean,
    auc_trapezoid,
    check_target,
    evaluate_rows,
    flatten_rows,
    group_attributions,
    group_ranks,
    prepare_inputs_and_attributions,
    rows_per_pass,
    score_function,
)

__all__ = ["deletion", "insertion", "causal_curves", "curve_features_per_step", "RISE_STEPS"]

RISE_STEPS = 224  # RISE moves 224 pixels per step on 224x224 images: 224 steps, 225 points per curve

_AUC_RULES = {"trapezoid": auc_trapezoid, "mean": auc_mean}


def curve_features_per_step(features_per_step: Union[None, int, float], n_features: int) -> int:
    """Number of features moved per step: ``ceil(n_features / 224)`` for ``None`` (RISE's resolution: 224
    pixels per step at 224x224, 4 at 28x28, 5 at 32x32, 19 at 64x64; one per step below 224 features),
    the int itself, ``max(1, round(fraction * n_features))`` for a float fraction in (0, 1].
    Raises ``ValueError`` for anything else."""
    if features_per_step is None:
        return max(1, -(-n_features // RISE_STEPS))
    return features_per_step_count(features_per_step, n_features)


def causal_curves(
    mode: str,
    forward_func: Callable,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    target: Any = None,
    additional_forward_args: Any = None,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    features_per_step: Union[None, int, float] = None,
    substrate: Any = "zeros",
    score: ScoreSpec = "softmax",
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
    generator: Union[None, int, torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """The raw (unnormalised) curves ``(N, K + 1)`` and fractions ``(K + 1,)`` of ``mode`` in
    {``"deletion"``, ``"insertion"``}; see :func:`deletion` for the arguments. Every check runs before
    the first model pass; ``N = 0`` returns ``(0, K + 1)`` curves without calling the model."""
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"`mode` must be 'deletion' or 'insertion', got {mode!r}")
    inputs_t, flat_attr, ids, n_groups = prepare_inputs_and_attributions(
        inputs, attributions, feature_mask, max_examples_per_batch
    )
    n = inputs_t[0].shape[0]
    per_step = curve_features_per_step(features_per_step, n_groups)
    check_target(target, n)
    score_fn = score_function(score)
    chunk = rows_per_pass(max_examples_per_batch, inputs_t)
    detached = tuple(x.detach() for x in inputs_t)
    substrate_t = resolve_baselines(
        substrate, detached, default="zeros", name="substrate", generator=check_generator(generator)
    )
    x_flat, s_flat = flatten_rows(detached), flatten_rows(substrate_t)
    start, finish = (x_flat, s_flat) if mode == "deletion" else (s_flat, x_flat)
    n_steps = (n_groups + per_step - 1) // per_step  # RISE: ceil(features / step)
    points = n_steps + 1
    moved_count = (torch.arange(points, device=x_flat.device) * per_step).clamp(max=n_groups)
    if n == 0:
        return x_flat.new_empty((0, points)), moved_count.to(x_flat.dtype) / max(n_groups, 1)
    make_rows = _row_builder(flat_attr, ids, n_groups, per_step, points, start, finish, detached)
    scores = evaluate_rows(
        forward_func,
        make_rows,
        torch.arange(n, device=x_flat.device).repeat_interleave(points),
        n,
        target,
        additional_forward_args,
        score_fn,
        chunk,
        show_progress,
        desc=mode,
    )
    curves = scores.reshape(n, points)
    return curves, moved_count.to(curves.dtype) / n_groups


def _row_builder(flat_attr, ids, n_groups, per_step, points, start, finish, like):
    """``make_rows(rows)``: row ``r`` is example ``r // points`` at step ``k = r % points``, i.e. ``start``
    with the elements of its top ``min(k s, G)`` features taken from ``finish``. Only the chunk's rows are
    ever built (``2 * chunk * D`` values at a time)."""
    element_rank = group_ranks(group_attributions(flat_attr, ids, n_groups)).gather(1, ids)
    # the step from which each element holds its finish value (rank < k * s  <=>  rank // s + 1 <= k),
    # in the narrowest integer type: building a chunk then reads 2 bytes per element, not 8
    step_dtype = torch.int16 if points < 2**15 else torch.int32
    first_moved_step = (element_rank // per_step + 1).to(step_dtype)

    def make_rows(rows: Tensor) -> Tuple[Tensor, ...]:
        """``rows``: a consecutive ascending range (what :func:`evaluate_rows` passes)."""
        first, count = int(rows[0]), rows.shape[0]
        perturbed = start.new_empty((count, start.shape[1]))
        # one example's rows at a time: its start, finish and steps broadcast over its rows, so no
        # (rows, D) copies of them are gathered (two passes over the chunk in all: compare and select)
        for e in range(first // points, (first + count - 1) // points + 1):
            lo, hi = max(first, e * points), min(first + count, (e + 1) * points)
            k = torch.arange(lo - e * points, hi - e * points, device=rows.device, dtype=step_dtype)
            moved = first_moved_step[e] <= k.unsqueeze(1)
            torch.where(moved, finish[e], start[e], out=perturbed[lo - first : hi - first])
        return unflatten_inputs(perturbed, like)

    return make_rows


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
    features_per_step: Union[None, int, float] = None,
    substrate: Any = "zeros",
    score: ScoreSpec = "softmax",
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

    **The defaults are RISE's protocol** (Petsiuk et al. 2018, ``evaluation.py``'s ``CausalMetric``):
    softmax probability, substrate zeros, trapezoid AUC over ``K + 1`` evenly spaced points, no
    normalisation, and RISE's curve resolution at every size: ``s = ceil(G / 224)`` features per step
    (``features_per_step=None``), exactly RISE's 224 pixels per step at 224x224 (so ``K = 224``); 4 at 28x28 (196
    steps), 5 at 32x32, 19 at 64x64, one per step below 224 features (``K = G``). RISE exactly:
    ``deletion(model, x, attr, target=model(x).argmax(1))`` on 224x224 images.

    **Reproducing the SAMP paper** (Zhang et al., ICLR 2024; the authors' ``Metric`` in
    ``src/benchmark/metric.py``): ``deletion(model, x, attr, target=predicted_class, features_per_step=10,
    substrate="zeros", score="logit", auc="mean", normalize=True)`` at 28x28 and 32x32, ``features_per_step=224 * 8``
    at 224x224 (the authors' ImageNet harness): raw logit, the curve divided by the logit of the
    unperturbed input, AUC = mean of the ``K + 1`` points. Equal to the authors' numbers to float32
    rounding (``benchmarks/bench_metrics.py`` checks it), and at least as fast with the default chunks.

    **Cost**: ``N (K + 1)`` model rows (``K = ceil(G / s)``), no gradients, in passes of at most
    ``max_examples_per_batch`` rows. Memory: the rows of one pass (``2 x rows x D`` values while they are
    built) plus ``N D`` int16 step indices, whatever ``N`` and ``K``. Every check (shapes, finiteness,
    target, substrate) runs before the first model pass; ``N = 0`` returns empty results.

    Args:
        forward_func (Callable): the model or any function of the inputs returning its output.
        inputs (Tensor or tuple of Tensor): ``(N, ...)`` examples, finite. For a tuple, the features of
            all tensors are ranked together.
        attributions (Tensor or tuple of Tensor): exactly the shapes of ``inputs`` (e.g. the output of any
            Captum attribution), finite.
        target (int, tuple, Tensor or list, optional): the output index scored, in any Captum target
            format (``None`` for single-output models). Default: None.
        additional_forward_args (Any, optional): extra arguments of ``forward_func``; tensors with ``N``
            rows are per example. Default: None.
        feature_mask (Tensor or tuple of Tensor, optional): Captum-style integer group ids broadcastable
            to each input; a group is one feature (e.g. superpixels). Default: None (one feature per
            pixel for 4-D inputs, per element otherwise).
        features_per_step (None, int or float): features moved per step (int), or a fraction of the features (float
            in (0, 1], rounded to the nearest count, at least 1). Default: None, ``ceil(G / 224)`` (RISE's
            resolution, see above).
        substrate: the finish image: any baseline specification of
            :func:`captum_paths.baselines.resolve_baselines` (``"zeros"``, ``"blur"``,
            ``"mean"``, ``Blur(11, 5)``, a number, a tensor, or a callable of the input).
            Default: ``"zeros"`` (RISE).
        score (str or Callable): ``"softmax"`` (softmax over dim 1, probability of the target; RISE),
            ``"logit"`` (raw output of the target; SAMP) or a callable ``(output, target) -> (rows,)``.
            Default: ``"softmax"``.
        auc (str): ``"trapezoid"`` (RISE: ``(sum(c) - c_0/2 - c_K/2) / K``) or ``"mean"`` (SAMP paper:
            ``mean(c)``). Default: ``"trapezoid"``.
        normalize (bool): divide the curve by the score of the unperturbed input ``c_0`` before the AUC
            (SAMP paper). A zero input score gives non-finite values; a negative one flips the curve
            (the paper divides raw logits as they are). Default: False.
        return_curves (bool): also return the curves and the fraction of features moved at each point.
        max_examples_per_batch (int, optional): at most this many perturbed inputs (rows) per forward
            pass; rows of different examples and steps share a pass. Default: None, ``clamp(2**18 // D, 8,
            256)`` rows for ``D`` input elements per example (256 at 1x28x28, 85 at 3x32x32, 21 at 3x64x64,
            8 at 3x224x224: the fastest chunks measured on one CPU thread; raise it on a GPU).
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
        features_per_step=features_per_step,
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
    features_per_step: Union[None, int, float] = None,
    substrate: Any = "blur",
    score: ScoreSpec = "softmax",
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

    **The defaults are RISE's protocol**, as for :func:`deletion` (``"blur"`` is RISE's ``gkern(11, 5)``
    with zero padding, see :class:`~captum_paths.attr.Blur`): RISE exactly is
    ``insertion(model, x, attr, target=model(x).argmax(1))`` on 224x224 images.

    **Reproducing the SAMP paper**: ``insertion(model, x, attr, target=predicted_class, features_per_step=10,
    substrate="blur", score="logit", auc="mean", normalize=True)`` (the curve is divided by the logit of
    the unperturbed input, i.e. its last point); at 224x224 the authors' harness uses ``features_per_step=224 * 8``
    and ``substrate=Blur(31, 5)``.

    Args: as :func:`deletion`; ``substrate`` (the start image) defaults to ``"blur"``, which needs
    ``(N, C, H, W)`` inputs (other inputs get a ``ValueError`` naming ``substrate`` before any model pass:
    pass ``substrate="zeros"``, a number or a tensor). ``normalize`` divides by the last point ``c_K`` (the
    input's score). Cost and memory: as :func:`deletion`.

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
        features_per_step=features_per_step,
        substrate=substrate,
        score=score,
        max_examples_per_batch=max_examples_per_batch,
        show_progress=show_progress,
        generator=generator,
    )
