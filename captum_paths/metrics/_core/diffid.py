"""DiffID: the insertion-minus-deletion protocol of Local Path Integration (Yang et al., AAAI 2023)."""

from numbers import Integral
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_paths.attr._utils.baselines import resolve_baselines
from captum_paths.attr._utils.features import flatten_inputs, unflatten_inputs
from captum_paths.attr._utils.validation import check_generator
from captum_paths.metrics._core._common import (
    TensorOrTuple,
    check_fraction_sequence,
    check_target,
    evaluate_rows,
    group_attributions,
    group_ranks,
    prepare_inputs_and_attributions,
    score_function,
)

__all__ = ["DiffIDResult", "diffid", "removed_counts"]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class DiffIDResult(NamedTuple):
    """Per-example results of :func:`diffid` (``N`` examples, ``R`` ratios).

    Attributes:
        diff (Tensor): ``(N, R)`` ``insertion - deletion``: the DiffID of each ratio (higher is better).
        area (Tensor): ``(N,)`` the trapezoid-rule area of ``diff`` over ``ratios``.
        insertion (Tensor): ``(N, R)`` target logit with the *least* important ``r`` of the features
            removed, divided by the target logit of the unperturbed input.
        deletion (Tensor): ``(N, R)`` the same with the *most* important ``r`` of the features removed.
        insertion_top1 (Tensor or None): ``(N, R)`` bool, whether the model's top-1 class on the insertion
            image is the target (LPI's "accuracy" when the target is the label); ``None`` when the target
            does not name one class per example of a ``(N, C)`` output.
        deletion_top1 (Tensor or None): ``(N, R)`` bool, the same for the deletion image.
        diff_top1 (Tensor or None): ``(N, R)`` ``insertion_top1 - deletion_top1`` as floats; its mean over
            examples is LPI's "Diff accu" score.
        ratios (Tensor): ``(R,)`` the ratios, float64. With a single ratio ``area`` is 0.
    """

    diff: Tensor
    area: Tensor
    insertion: Tensor
    deletion: Tensor
    insertion_top1: Optional[Tensor]
    deletion_top1: Optional[Tensor]
    diff_top1: Optional[Tensor]
    ratios: Tensor


def removed_counts(ratios: Tensor, n_features: int) -> Tensor:
    """Features removed at each ratio: ``floor(r * G)`` (LPI's ``int(num_elements * ratio)``).

    A relative guard of 1e-9 keeps products such as ``0.29 * 100`` (28.999999999999996 in floating
    point) at the count the ratio means.
    """
    return torch.floor(ratios * n_features * (1 + 1e-9)).to(torch.long).clamp(0, n_features)


def _class_targets(target: Any, n: int, device) -> Optional[Tensor]:
    """One class index per example if ``target`` names one (int, 1-d tensor, list of ints), else None."""
    if isinstance(target, Integral) and not isinstance(target, bool):
        return torch.full((n,), int(target), dtype=torch.long, device=device)
    if isinstance(target, Tensor) and target.numel() in (1, n):
        return target.reshape(-1).to(device=device, dtype=torch.long).expand(n)
    if isinstance(target, list) and all(isinstance(t, Integral) for t in target):
        return torch.tensor([int(t) for t in target], dtype=torch.long, device=device)
    return None


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
) -> DiffIDResult:
    r"""DiffID (LPI, Yang et al. AAAI 2023): insertion score minus deletion score at removal ratios ``r``.

    Features (pixels: the channels of a pixel together; or ``feature_mask`` groups) are ranked by
    attribution. For each ratio ``r`` with ``m = floor(r G)`` of the ``G`` features:

    * deletion removes the ``m`` most important features (keeps the bottom ``G - m``);
    * insertion removes the ``m`` least important features (keeps the top ``G - m``).

    Removed elements are set to ``fill``: by default the mean of the *preserved* elements of that
    example (one scalar per example and input tensor, over all channels, as LPI's evaluator does; a
    tensor of a tuple input with no preserved element is filled with 0). The
    score of a perturbed image ``x'`` is the logit ratio ``f_t(x') / f_t(x)`` to the unperturbed input,
    and its top-1 class is compared with the target (the ratio is taken as LPI takes it: a negative
    input logit flips its sign, a zero one makes it non-finite). ``diff = insertion - deletion`` per ratio, and
    ``area`` integrates it over the ratios with the trapezoid rule. Both games (and the input) go
    through the model in one batched pass.

    LPI ranks by the channel sum of *absolute* attributions (``absolute=True``, the default), so negating
    the attributions changes nothing; with ``absolute=False`` the ranking uses the signed sum and
    negating the attributions swaps the games, negating ``diff``. LPI removes ``int(r * C*H*W)``
    elements of a per-element ranking in which a pixel's channels tie; removing whole pixels here
    differs only in the at most one pixel that LPI may split across the cut.

    To reproduce LPI's table: ``diffid(model, x, attr, target=labels)`` (defaults) and average each
    field over the examples (``diff.mean(0)`` is "Diff logit", ``diff_top1.mean(0)`` "Diff accu").

    Args:
        forward_func (Callable): the model or any function of the inputs returning its output.
        inputs (Tensor or tuple of Tensor): ``(N, ...)`` examples.
        attributions (Tensor or tuple of Tensor): exactly the shapes of ``inputs``.
        target (int, tuple, Tensor or list, optional): any Captum target format. Default: None.
        additional_forward_args (Any, optional): extra arguments of ``forward_func``. Default: None.
        feature_mask (Tensor or tuple of Tensor, optional): Captum-style feature groups. Default: None
            (pixels for 4-D inputs, elements otherwise).
        ratios (sequence of float): removal ratios, each in the open interval (0, 1). Default:
            ``(0.1, ..., 0.9)`` (LPI).
        fill: ``"mean"`` (mean of the preserved elements, LPI) or any baseline specification of
            :func:`~captum_paths.attr._utils.baselines.resolve_baselines` (``"zeros"``, ``"blur"``, a
            number, a tensor, a ``Baseline`` such as ``Mean()`` for the per-channel image mean, or a
            callable of the input). Default: ``"mean"``.
        max_examples_per_batch (int, optional): at most this many perturbed inputs per forward pass.
            Default: None (all ``N (2 R + 1)`` at once).
        show_progress (bool): tqdm progress over forward batches. Default: False.
        absolute (bool): rank by absolute attributions (LPI). Default: True.
        generator (int or torch.Generator, optional): seed for a random ``fill``. Default: None.

    Returns:
        :class:`DiffIDResult` with per-example tensors on the inputs' device.
    """
    inputs_t, flat_attr, ids, n_groups = prepare_inputs_and_attributions(
        inputs, attributions, feature_mask, max_examples_per_batch
    )
    n = inputs_t[0].shape[0]
    ratios_t = check_fraction_sequence(ratios, "ratios")
    if not isinstance(absolute, bool):
        raise TypeError(f"`absolute` must be a bool, got {type(absolute).__name__}")
    check_target(target, n)
    gen = check_generator(generator)
    detached = tuple(x.detach() for x in inputs_t)
    device = detached[0].device
    x_flat = flatten_inputs(detached)
    mean_fill = isinstance(fill, str) and fill == "mean"
    fill_flat = None if mean_fill else flatten_inputs(resolve_baselines(fill, detached, name="fill", generator=gen))
    # which input tensor each flat element belongs to, for the per-tensor mean of the preserved elements
    sizes = [x[0].numel() for x in detached]
    tensor_of_element = torch.repeat_interleave(
        torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device)
    )

    element_rank = group_ranks(group_attributions(flat_attr, ids, n_groups, absolute)).gather(1, ids)
    removed = removed_counts(ratios_t, n_groups).to(device)
    n_ratios = len(ratios_t)
    # per example: row 0 the input, rows 1..R deletion at each ratio, rows R+1..2R insertion
    per_example = 2 * n_ratios + 1
    row_examples = torch.arange(n, device=device).repeat_interleave(per_example)

    def make_rows(rows: Tensor) -> Tuple[Tensor, ...]:
        example, j = rows // per_example, rows % per_example
        rank = element_rank[example]
        is_deletion = (j >= 1) & (j <= n_ratios)
        is_insertion = j > n_ratios
        m = removed[(j - 1).remainder(n_ratios)].unsqueeze(1)
        drop = torch.where(
            is_deletion.unsqueeze(1),
            rank < m,  # the top m
            torch.where(is_insertion.unsqueeze(1), rank >= n_groups - m, torch.zeros_like(rank, dtype=torch.bool)),
        )
        x = x_flat[example]
        if mean_fill and len(sizes) == 1:
            keep = (~drop).to(x.dtype)
            fill_values = ((x * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp(min=1)).expand_as(x)
        elif mean_fill:
            keep = (~drop).to(x.dtype)
            fill_values = torch.empty_like(x)
            for t in range(len(sizes)):
                in_t = tensor_of_element == t
                kept_sum = (x[:, in_t] * keep[:, in_t]).sum(1, keepdim=True)
                kept_count = keep[:, in_t].sum(1, keepdim=True).clamp(min=1)
                fill_values[:, in_t] = kept_sum / kept_count
        else:
            fill_values = fill_flat[example]
        return unflatten_inputs(torch.where(drop, fill_values, x), detached)

    logit_fn = score_function("logit")

    def reduce_output(output: Tensor, t: Any, rows: int) -> Tensor:
        logits = logit_fn(output, t, rows)
        top1 = output.argmax(1).to(logits.dtype) if output.dim() == 2 else torch.full_like(logits, -1)
        return torch.stack([logits, top1], dim=1)

    values = evaluate_rows(
        forward_func,
        make_rows,
        row_examples,
        n,
        target,
        additional_forward_args,
        reduce_output,
        max_examples_per_batch,
        show_progress,
        desc="diffid",
    ).reshape(n, per_example, 2)
    logits, top1 = values[..., 0], values[..., 1]
    ratio_to_input = logits[:, 1:] / logits[:, :1]
    deletion_scores, insertion_scores = ratio_to_input[:, :n_ratios], ratio_to_input[:, n_ratios:]
    diff = insertion_scores - deletion_scores
    x_ratios = ratios_t.to(device=device, dtype=diff.dtype)
    area = torch.trapezoid(diff, x_ratios, dim=1) if n_ratios > 1 else torch.zeros_like(diff[:, 0])

    classes = _class_targets(target, n, device)
    ins_top1 = del_top1 = diff_top1 = None
    if classes is not None and values.shape[0] > 0 and bool((top1 >= 0).all()):
        hits = top1[:, 1:].to(torch.long) == classes.unsqueeze(1)
        del_top1, ins_top1 = hits[:, :n_ratios], hits[:, n_ratios:]
        diff_top1 = ins_top1.to(diff.dtype) - del_top1.to(diff.dtype)
    return DiffIDResult(
        diff, area, insertion_scores, deletion_scores, ins_top1, del_top1, diff_top1, ratios_t.to(device)
    )
