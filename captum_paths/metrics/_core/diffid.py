"""DiffID: the insertion-minus-deletion protocol of Local Path Integration (Yang et al., AAAI 2023), with the
scoring variants of later work (cleanig, leekwoon/sig: accuracy and clamped softmax ratio)."""

from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_paths.attr._utils.features import flatten_inputs, unflatten_inputs
from captum_paths.attr._utils.validation import check_finite_inputs, check_generator
from captum_paths.baselines import resolve_baselines
from captum_paths.metrics._core._common import (
    TensorOrTuple,
    check_fraction_sequence,
    check_target,
    class_indices,
    empty_batch,
    evaluate_rows,
    group_attributions,
    group_ranks,
    prepare_inputs_and_attributions,
    rows_per_pass,
    score_function,
)

__all__ = ["DiffIDResult", "diffid", "removed_counts", "DIFFID_SCORES"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DIFFID_SCORES = ("logit_ratio", "accuracy", "clamped_softmax")
_SOFTMAX_EPS = 1e-8  # cleanig's guard of the clean probability


class DiffIDResult(NamedTuple):
    """Per-example results of :func:`diffid` (``N`` examples, ``R`` ratios).

    Attributes:
        diff (Tensor): ``(N, R)`` ``insertion - deletion``: the DiffID of each ratio (higher is better).
        area (Tensor): ``(N,)`` the trapezoid-rule area of ``diff`` over ``ratios``.
        insertion (Tensor): ``(N, R)`` the score (see ``score``) with the *least* important ``r`` of the
            features removed; for ``"logit_ratio"`` the target logit divided by the target logit of the
            unperturbed input.
        deletion (Tensor): ``(N, R)`` the same with the *most* important ``r`` of the features removed.
        insertion_top1 (Tensor or None): ``(N, R)`` bool, whether the model's top-1 class on the insertion
            image is the target (LPI's "accuracy" when the target is the label); ``None`` when the target
            does not name one class per example of a ``(N, C)`` output.
        deletion_top1 (Tensor or None): ``(N, R)`` bool, the same for the deletion image.
        diff_top1 (Tensor or None): ``(N, R)`` ``insertion_top1 - deletion_top1`` as floats; its mean over
            examples is LPI's "Diff accu" score.
        ratios (Tensor): ``(R,)`` the ratios, float64. With a single ratio ``area`` is 0.
        score (str): the scoring variant of ``insertion``, ``deletion`` and ``diff``: ``"logit_ratio"``,
            ``"accuracy"`` or ``"clamped_softmax"`` (see :func:`diffid`).
    """

    diff: Tensor
    area: Tensor
    insertion: Tensor
    deletion: Tensor
    insertion_top1: Optional[Tensor]
    deletion_top1: Optional[Tensor]
    diff_top1: Optional[Tensor]
    ratios: Tensor
    score: str = "logit_ratio"


class _Game(NamedTuple):
    """The checked, flattened problem: what every perturbed row is built from."""

    inputs: Tuple[Tensor, ...]  # detached
    x_flat: Tensor  # (N, D)
    fill_flat: Optional[Tensor]  # (N, D), None for the preserved-mean fill
    tensor_of_element: Tensor  # (D,) which input tensor each flat element belongs to
    element_rank: Tensor  # (N, D) rank of each element's feature, 0 = most important
    removed: Tensor  # (R,) features removed at each ratio
    n_groups: int
    ratios: Tensor  # (R,) float64, CPU


def removed_counts(ratios: Tensor, n_features: int) -> Tensor:
    """Features removed at each ratio: ``floor(r * G)`` (LPI's ``int(num_elements * ratio)``).

    A relative guard of 1e-9 keeps products such as ``0.29 * 100`` (28.999999999999996 in floating
    point) at the count the ratio means.
    """
    return torch.floor(ratios * n_features * (1 + 1e-9)).to(torch.long).clamp(0, n_features)


def _check_score(score: Any, target: Any, n: int) -> str:
    if not isinstance(score, str) or score not in DIFFID_SCORES:
        raise ValueError(f"`score` must be one of {DIFFID_SCORES}, got {score!r}")
    if score != "logit_ratio" and class_indices(target, n, "cpu") is None:
        raise ValueError(
            f"`score`={score!r} needs `target` to name one class per example (an int, a list of ints or a "
            f"1-d tensor; e.g. the labels, or model(inputs).argmax(1) as cleanig defaults to), got {target!r}"
        )
    return score


def _setup(inputs, attributions, target, feature_mask, ratios, fill, max_examples_per_batch, absolute, generator):
    """Every argument check (before any model pass), then the flat problem of :class:`_Game`."""
    inputs_t, flat_attr, ids, n_groups = prepare_inputs_and_attributions(
        inputs, attributions, feature_mask, max_examples_per_batch
    )
    check_finite_inputs(inputs_t)
    ratios_t = check_fraction_sequence(ratios, "ratios")
    if not isinstance(absolute, bool):
        raise TypeError(f"`absolute` must be a bool, got {type(absolute).__name__}")
    check_target(target, inputs_t[0].shape[0])
    gen = check_generator(generator)
    detached = tuple(x.detach() for x in inputs_t)
    device = detached[0].device
    mean_fill = isinstance(fill, str) and fill == "mean"
    fill_flat = None if mean_fill else flatten_inputs(resolve_baselines(fill, detached, name="fill", generator=gen))
    sizes = torch.tensor([x[0].numel() for x in detached], device=device)
    tensor_of_element = torch.repeat_interleave(torch.arange(len(detached), device=device), sizes)
    element_rank = group_ranks(group_attributions(flat_attr, ids, n_groups, absolute)).gather(1, ids)
    removed = removed_counts(ratios_t, n_groups).to(device)
    return _Game(
        detached, flatten_inputs(detached), fill_flat, tensor_of_element, element_rank, removed, n_groups, ratios_t
    )


def _preserved_mean(x: Tensor, drop: Tensor, tensor_of_element: Tensor, n_tensors: int) -> Tensor:
    """LPI's fill: per row and input tensor, the mean of the preserved elements (0 if none is preserved)."""
    keep = (~drop).to(x.dtype)
    if n_tensors == 1:
        return ((x * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)).expand_as(x)
    fill_values = torch.empty_like(x)
    for t in range(n_tensors):
        in_t = tensor_of_element == t
        kept_sum = (x[:, in_t] * keep[:, in_t]).sum(1, keepdim=True)
        fill_values[:, in_t] = kept_sum / keep[:, in_t].sum(1, keepdim=True).clamp(min=1)
    return fill_values


def _row_builder(game: _Game) -> Callable[[Tensor], Tuple[Tensor, ...]]:
    """Row ``j`` of an example: 0 the input, ``1..R`` deletion at each ratio, ``R+1..2R`` insertion."""
    n_ratios = len(game.ratios)
    per_example = 2 * n_ratios + 1

    def make_rows(rows: Tensor) -> Tuple[Tensor, ...]:
        example, j = rows // per_example, rows % per_example
        rank = game.element_rank[example]
        m = game.removed[(j - 1).remainder(n_ratios)].unsqueeze(1)
        is_deletion = ((j >= 1) & (j <= n_ratios)).unsqueeze(1)
        is_insertion = (j > n_ratios).unsqueeze(1)
        # deletion removes the top m, insertion the bottom m (keeps the top G - m), row 0 nothing
        drop = torch.where(is_deletion, rank < m, is_insertion & (rank >= game.n_groups - m))
        x = game.x_flat[example]
        if game.fill_flat is None:
            fill_values = _preserved_mean(x, drop, game.tensor_of_element, len(game.inputs))
        else:
            fill_values = game.fill_flat[example]
        return unflatten_inputs(torch.where(drop, fill_values, x), game.inputs)

    return make_rows


def _output_reducer(score: str) -> Callable[[Any, Any, int], Tensor]:
    """Per row: ``(target logit or softmax probability, top-1 class or -1)``, shape ``(rows, 2)``."""
    value_fn = score_function("softmax" if score == "clamped_softmax" else "logit")

    def reduce_output(output: Any, t: Any, rows: int) -> Tensor:
        values = value_fn(output, t, rows)
        top1 = output.argmax(1).to(values.dtype) if output.dim() == 2 else torch.full_like(values, -1)
        return torch.stack([values, top1], dim=1)

    return reduce_output


def _assemble(values: Tensor, game: _Game, target: Any, score: str) -> DiffIDResult:
    """Scores of the games from the ``(N, 2R + 1, 2)`` row values, their difference and its area."""
    n, n_ratios = values.shape[0], len(game.ratios)
    device = game.x_flat.device
    raw, top1 = values[..., 0], values[..., 1]
    classes = class_indices(target, n, device)
    ins_top1 = del_top1 = diff_top1 = None
    if classes is not None and bool((top1 >= 0).all()):
        hits = top1[:, 1:].to(torch.long) == classes.unsqueeze(1)
        del_top1, ins_top1 = hits[:, :n_ratios], hits[:, n_ratios:]
        diff_top1 = ins_top1.to(raw.dtype) - del_top1.to(raw.dtype)
    if score == "logit_ratio":  # LPI: the raw ratio (a negative input logit flips it, zero makes it non-finite)
        scores = raw[:, 1:] / raw[:, :1]
    elif score == "clamped_softmax":  # cleanig's "soft" score
        scores = (raw[:, 1:] / (raw[:, :1] + _SOFTMAX_EPS)).clamp(0, 1)
    elif ins_top1 is not None:  # accuracy
        scores = torch.cat([del_top1, ins_top1], 1).to(raw.dtype)
    else:
        raise ValueError("`score`='accuracy' needs a model output with a class dimension (N, C)")
    deletion_scores, insertion_scores = scores[:, :n_ratios], scores[:, n_ratios:]
    diff = insertion_scores - deletion_scores
    x_ratios = game.ratios.to(device=device, dtype=diff.dtype)
    area = torch.trapezoid(diff, x_ratios, dim=1) if n_ratios > 1 else torch.zeros_like(diff[:, 0])
    return DiffIDResult(
        diff, area, insertion_scores, deletion_scores, ins_top1, del_top1, diff_top1, game.ratios.to(device), score
    )


def _empty_result(first_input: Tensor, ratios: Sequence[float], target: Any, score: str) -> DiffIDResult:
    """The result of ``N = 0`` examples (after the checks that need no example): empty tensors."""
    ratios_t = check_fraction_sequence(ratios, "ratios")
    score = _check_score(score, target, 0)
    check_target(target, 0)
    device = first_input.device
    values = torch.empty(0, 2 * len(ratios_t) + 1, 2, dtype=first_input.dtype, device=device)
    game = _Game((first_input,), first_input.reshape(0, 0), None, values, values, values, 0, ratios_t)
    return _assemble(values, game, target, score)


def diffid(
    forward_func: Callable,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    target: Any = None,
    additional_forward_args: Any = None,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    fill: Any = "mean",
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
    absolute: bool = True,
    generator: Union[None, int, torch.Generator] = None,
    score: str = "logit_ratio",
) -> DiffIDResult:
    r"""DiffID (LPI, Yang et al. AAAI 2023): insertion score minus deletion score at removal ratios ``r``.

    Features (pixels: the channels of a pixel together; or ``feature_mask`` groups) are ranked by
    attribution. For each ratio ``r`` with ``m = floor(r G)`` of the ``G`` features:

    * deletion removes the ``m`` most important features (keeps the bottom ``G - m``);
    * insertion removes the ``m`` least important features (keeps the top ``G - m``).

    Removed elements are set to ``fill``: by default the mean of the *preserved* elements of that
    example (one scalar per example and input tensor, over all channels, as LPI's evaluator does; a
    tensor of a tuple input with no preserved element is filled with 0). Each perturbed image ``x'`` is
    scored by ``score``, relative to the unperturbed input ``x`` and target ``t``:

    * ``"logit_ratio"`` (LPI, the default): ``f_t(x') / f_t(x)``, raw logits, unclamped (a negative input
      logit flips the sign, a zero one makes it non-finite, as in LPI's evaluator);
    * ``"accuracy"`` (LPI's second score; cleanig's default "binary"): ``[argmax f(x') = t]``;
    * ``"clamped_softmax"`` (cleanig's "soft"): ``clamp(p_t(x') / (p_t(x) + 1e-8), 0, 1)`` with ``p`` the
      softmax over dim 1.

    ``diff = insertion - deletion`` per ratio, and ``area`` integrates it over the ratios with the
    trapezoid rule. The result names its variant in ``score``; the top-1 hits are reported for every
    variant whenever ``target`` names a class per example. Both games (and the input) go through the model
    in one batched pass: ``N (2 R + 1)`` model rows, no gradients.

    LPI ranks by the channel sum of *absolute* attributions (``absolute=True``, the default), so negating
    the attributions changes nothing; with ``absolute=False`` the ranking uses the signed sum and
    negating the attributions swaps the games, negating ``diff``. LPI removes ``int(r * C*H*W)``
    elements of a per-element ranking in which a pixel's channels tie; removing whole pixels here
    differs only in the at most one pixel that LPI may split across the cut. Ties between features are
    broken by feature index here (lower first, deterministic); LPI's evaluator sorts with an unstable sort,
    so its order among tied features is arbitrary (maps with large tied regions, e.g. zeros, can score
    differently from run to run there).

    To reproduce LPI's table: ``diffid(model, x, attr, target=labels)`` (defaults) and average each
    field over the examples (``diff.mean(0)`` is "Diff logit", ``diff_top1.mean(0)`` "Diff accu").
    To reproduce cleanig's ``compute_diffid_metrics`` (per-element ranking of ``|a|``, mean fill, labels
    defaulting to the clean prediction): ``diffid(model, x, attr, target=labels, score="accuracy",
    feature_mask=torch.arange(x[0].numel()).reshape(x.shape[1:]))`` (or ``score="clamped_softmax"``);
    its per-example DiffID is the mean over ratios, ``diff.mean(1)``, not ``area``.

    Args:
        forward_func (Callable): the model or any function of the inputs returning its output.
        inputs (Tensor or tuple of Tensor): ``(N, ...)`` examples, finite.
        attributions (Tensor or tuple of Tensor): exactly the shapes of ``inputs``, finite.
        target (int, tuple, Tensor or list, optional): any Captum target format; ``"accuracy"`` and
            ``"clamped_softmax"`` need one class per example. Default: None.
        additional_forward_args (Any, optional): extra arguments of ``forward_func``. Default: None.
        feature_mask (Tensor or tuple of Tensor, optional): Captum-style feature groups. Default: None
            (pixels for 4-D inputs, elements otherwise).
        ratios (sequence of float): removal ratios, each in the open interval (0, 1). Default:
            ``(0.1, ..., 0.9)`` (LPI, cleanig).
        fill: ``"mean"`` (mean of the preserved elements, LPI) or any baseline specification of
            :func:`~captum_paths.baselines.resolve_baselines` (``"zeros"``, ``"blur"``, a
            number, a tensor, a ``Baseline`` such as ``Mean()`` for the per-channel image mean, or a
            callable of the input). Default: ``"mean"``.
        max_examples_per_batch (int, optional): at most this many perturbed inputs per forward pass.
            Default: None, ``clamp(2**18 // D, 8, 256)`` rows for ``D``
            input elements per example (see ``default_rows_per_pass`` in ``captum_paths.metrics._core._common``).
        show_progress (bool): tqdm progress over forward batches. Default: False.
        absolute (bool): rank by absolute attributions (LPI). Default: True.
        generator (int or torch.Generator, optional): seed for a random ``fill``. Default: None.
        score (str): ``"logit_ratio"``, ``"accuracy"`` or ``"clamped_softmax"``. Default: ``"logit_ratio"``.

    Returns:
        :class:`DiffIDResult` with per-example tensors on the inputs' device (empty for ``N = 0``).
    """
    empty = empty_batch(inputs, attributions)
    if empty is not None:
        return _empty_result(empty, ratios, target, score)
    game = _setup(inputs, attributions, target, feature_mask, ratios, fill, max_examples_per_batch, absolute, generator)
    n = game.x_flat.shape[0]
    score = _check_score(score, target, n)
    per_example = 2 * len(game.ratios) + 1
    values = evaluate_rows(
        forward_func,
        _row_builder(game),
        torch.arange(n, device=game.x_flat.device).repeat_interleave(per_example),
        n,
        target,
        additional_forward_args,
        _output_reducer(score),
        rows_per_pass(max_examples_per_batch, game.inputs),
        show_progress,
        desc="diffid",
    ).reshape(n, per_example, 2)
    return _assemble(values, game, target, score)
