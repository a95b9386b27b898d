"""Sensitivity-n (Ancona, Ceolini, Oztireli, Gross, ICLR 2018)."""

from numbers import Integral
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_paths.attr._utils.captum_compat import format_additional_forward_args, run_forward
from captum_paths.attr._utils.features import flatten_inputs, unflatten_inputs
from captum_paths.attr._utils.progress import chunk_slices, progress_bar
from captum_paths.attr._utils.validation import check_generator, check_positive_int
from captum_paths.baselines import resolve_baselines
from captum_paths.metrics._core._common import (
    TensorOrTuple,
    check_target,
    evaluate_rows,
    flatten_rows,
    group_attributions,
    pearson,
    prepare_inputs_and_attributions,
    rows_per_pass,
    score_function,
)

__all__ = ["sensitivity_n", "random_subsets", "subset_sums_and_drops"]


def random_subsets(
    n_examples: int, n_subsets: int, n_features: int, size: int, generator: Optional[torch.Generator], device
) -> Tensor:
    """Membership masks of uniformly random ``size``-subsets of ``n_features``: ``(N, S, G)`` bool.

    Each subset is the ``size`` smallest of ``G`` i.i.d. uniform keys (a uniform random subset), drawn
    on the generator's device and moved to ``device``.
    """
    gen_device = generator.device if generator is not None else device
    keys = torch.rand((n_examples, n_subsets, n_features), generator=generator, device=gen_device).to(device)
    chosen = keys.topk(size, dim=-1, largest=False).indices
    return torch.zeros(keys.shape, dtype=torch.bool, device=device).scatter_(-1, chosen, True)


def subset_sums_and_drops(
    forward_func: Callable,
    inputs: Tuple[Tensor, ...],
    group_attr: Tensor,
    ids: Tensor,
    baseline_flat: Tensor,
    draw: Callable[[int, int], Tensor],
    n_subsets: int,
    target: Any,
    additional_forward_args: Any,
    score_fn: Callable[[Tensor, Any, int], Tensor],
    max_examples_per_batch: Optional[int],
    show_progress: bool = False,
    desc: str = "",
) -> Tuple[Tensor, Tensor]:
    r"""The two sides of every subset correlation (Sensitivity-n, mu-fidelity): ``(sums, drops)``, each
    ``(N, S)``.

    ``sums[i, s] = \sum_{g \in S_{is}} group_attr[i, g]`` and ``drops[i, s] = f_t(x_i) - f_t(x_i[S_{is} :=
    b_i])``, where ``draw(start, stop)`` returns the ``(stop - start, S, G)`` bool membership of the
    subsets of examples ``start..stop-1`` (called block by block, in order, so a generator's draws do not
    depend on the chunking), ``ids`` ``(N, D)`` maps every element to its group and ``baseline_flat``
    ``(N, D)`` holds the values a removed element takes. Examples are handled in blocks of at most
    ``2**24`` membership flags; the perturbed rows are forwarded in chunks of ``max_examples_per_batch``.
    Cost: ``N + N S`` model rows. ``N = 0`` returns empty tensors without calling the model.
    """
    n_ex, n_groups = group_attr.shape
    device = inputs[0].device
    if n_ex == 0:
        empty = torch.empty(0, n_subsets, dtype=group_attr.dtype, device=device)
        return empty, empty.clone()
    x_flat = flatten_inputs(inputs)
    with torch.no_grad():  # the unperturbed scores, checked for a valid target before the big passes
        afa = format_additional_forward_args(additional_forward_args)
        input_scores = score_fn(run_forward(forward_func, inputs, None, afa), target, n_ex)
    sums = torch.empty(n_ex, n_subsets, dtype=input_scores.dtype, device=device)
    drops = torch.empty_like(sums)
    blocks = chunk_slices(n_ex, max(1, (1 << 24) // max(1, n_subsets * n_groups)))
    with progress_bar(show_progress and len(blocks) > 1, total=len(blocks), desc=desc) as bar:
        for blk in blocks:
            members = draw(blk.start, blk.stop)
            sums[blk] = (group_attr[blk].unsqueeze(1) * members.to(group_attr.dtype)).sum(-1).to(sums.dtype)

            def make_rows(rows: Tensor, members=members, start=blk.start) -> Tuple[Tensor, ...]:
                local = rows // n_subsets
                example = local + start
                off = members[local, rows % n_subsets].gather(1, ids[example])
                return unflatten_inputs(torch.where(off, baseline_flat[example], x_flat[example]), inputs)

            examples = torch.arange(blk.start, blk.stop, device=device)
            perturbed = evaluate_rows(
                forward_func,
                make_rows,
                examples.repeat_interleave(n_subsets),
                n_ex,
                target,
                additional_forward_args,
                score_fn,
                rows_per_pass(max_examples_per_batch, inputs),
                show_progress and len(blocks) == 1,
                desc=desc,
            ).reshape(len(examples), n_subsets)
            drops[blk] = input_scores[blk].unsqueeze(1) - perturbed
            bar.update(1)
    return sums, drops


def _subset_sizes(n: Union[int, Sequence[int]], n_groups: int) -> Tuple[List[int], bool]:
    single = isinstance(n, Integral) and not isinstance(n, bool)
    sizes = [n] if single else n
    try:
        sizes = list(sizes)
    except TypeError:
        raise TypeError(f"`n` must be an int or a sequence of ints, got {type(n).__name__}") from None
    if not sizes:
        raise ValueError("`n` must not be empty")
    for s in sizes:
        check_positive_int(s, "n")
        if s > n_groups:
            raise ValueError(
                f"`n` = {s} is larger than the number of features ({n_groups}); subsets must fit in the input"
            )
    return [int(s) for s in sizes], single


def sensitivity_n(
    forward_func: Callable,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    n: Union[int, Sequence[int]],
    baselines: Any = None,
    target: Any = None,
    additional_forward_args: Any = None,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    n_subsets: int = 100,
    generator: Union[None, int, torch.Generator] = None,
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
    score: Any = "logit",
) -> Tensor:
    r"""Sensitivity-n (Ancona et al. 2018): how well sums of attributions predict output drops.

    For every example and subset size ``n``, draw ``n_subsets`` uniformly random subsets ``S`` of ``n``
    features (pixels for 4-D inputs, ``feature_mask`` groups, or elements), and return the Pearson
    correlation over the subsets between

    .. math:: \sum_{i \in S} R_i(x) \quad\text{and}\quad f_t(x) - f_t(x_{[x_S = \bar x_S]}),

    the output drop when the subset is set to the baseline ``\bar x``. An attribution method satisfies
    sensitivity-n when the correlation is 1 (e.g. exact Shapley values of an additive model, for every
    ``n``). The correlation is ``nan`` when either side has no variance over the subsets (e.g. ``n``
    equal to the number of features, which allows a single subset).

    Subsets are drawn from ``generator`` example by example and, within an example, size by size, so
    the first example of a batch gets the same subsets as when it is evaluated alone with the same seed,
    and ``max_examples_per_batch`` does not change the draws. The perturbed inputs of a block of
    examples (all sizes and subsets) are forwarded together in chunks of ``max_examples_per_batch``.

    Args:
        forward_func (Callable): the model or any function of the inputs returning its output.
        inputs (Tensor or tuple of Tensor): ``(N, ...)`` examples.
        attributions (Tensor or tuple of Tensor): exactly the shapes of ``inputs``.
        n (int or sequence of int): subset size(s), each in ``1..G``.
        baselines: value the subsets are set to: any baseline specification (``None``/``"zeros"``, a
            number, a tensor, ``"mean"``, ``"blur"``, a ``Baseline``, a callable). Default: zeros.
        target, additional_forward_args: as in Captum. Default: None.
        feature_mask (Tensor or tuple of Tensor, optional): Captum-style feature groups. Default: None.
        n_subsets (int): random subsets per example and size (at least 2). Default: 100.
        generator (int or torch.Generator, optional): seed of the subsets (and of a random baseline).
        max_examples_per_batch (int, optional): at most this many perturbed inputs per forward pass.
            Default: None, ``clamp(2**18 // D, 8, 256)`` rows for ``D``
            input elements per example (see ``default_rows_per_pass`` in ``captum_paths.metrics._core._common``).
        show_progress (bool): tqdm progress over forward batches. Default: False.
        score: ``"logit"`` (Ancona et al.'s output), ``"softmax"`` or a callable ``(output, target)``.

    Inputs and attributions must be finite (``ValueError`` naming the argument otherwise); every check runs
    before the first model pass. Cost: ``N (1 + len(n) n_subsets)`` model rows; ``N = 0`` gives an empty
    result without calling the model.

    Returns:
        ``(N,)`` for an int ``n``; ``(N, len(n))`` for a sequence, on the inputs' device.
    """
    inputs_t, flat_attr, ids, n_groups = prepare_inputs_and_attributions(
        inputs, attributions, feature_mask, max_examples_per_batch
    )
    n_ex = inputs_t[0].shape[0]
    sizes, single = _subset_sizes(n, n_groups)
    n_subsets = check_positive_int(n_subsets, "n_subsets")
    if n_subsets < 2:
        raise ValueError(f"`n_subsets` must be at least 2 for a correlation, got {n_subsets}")
    check_target(target, n_ex)
    score_fn = score_function(score)
    gen = check_generator(generator)
    detached = tuple(x.detach() for x in inputs_t)
    device = detached[0].device
    baseline_flat = flatten_rows(resolve_baselines(baselines, detached, name="baselines", generator=gen))
    group_attr = group_attributions(flat_attr, ids, n_groups)

    n_sizes = len(sizes)

    def draw(start: int, stop: int) -> Tensor:
        # example by example, size by size: the draws do not depend on the chunking
        members = [
            random_subsets(1, n_subsets, n_groups, size, gen, device)[0] for _ in range(stop - start) for size in sizes
        ]
        return torch.stack(members).reshape(stop - start, n_sizes * n_subsets, n_groups)

    sums, drops = subset_sums_and_drops(
        forward_func,
        detached,
        group_attr,
        ids,
        baseline_flat,
        draw,
        n_sizes * n_subsets,
        target,
        additional_forward_args,
        score_fn,
        max_examples_per_batch,
        show_progress,
        desc="sensitivity-n",
    )
    result = pearson(sums.reshape(n_ex, n_sizes, n_subsets), drops.reshape(n_ex, n_sizes, n_subsets))
    return result[:, 0] if single else result
