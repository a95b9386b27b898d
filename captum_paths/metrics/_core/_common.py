"""Shared machinery of the metrics: argument checks, feature ranking, scoring rules and the batched
evaluation of many perturbed copies of many examples.

Every metric here builds ``R`` perturbed *rows* (e.g. example x step) and needs the model's score on each.
:func:`evaluate_rows` forwards them in chunks of at most ``max_examples_per_batch`` rows, whatever example
they come from, so that the cost is the model evaluations and nothing else. Rows are described by the
example they belong to (``row_examples``) and built lazily, chunk by chunk, so memory is bounded by the
chunk size.
"""

from numbers import Integral, Real
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_paths.attr._utils.captum_compat import (
    format_additional_forward_args,
    format_inputs,
    run_forward,
    target_scores,
)
from captum_paths.attr._utils.features import feature_groups, group_sum
from captum_paths.attr._utils.progress import chunk_slices, progress_bar
from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target
from captum_paths.attr._utils.validation import check_internal_batch_size, check_same_batch

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
ScoreSpec = Union[str, Callable[[Tensor, Any], Tensor]]

__all__ = [
    "prepare_inputs_and_attributions",
    "check_finite",
    "class_indices",
    "empty_batch",
    "flatten_rows",
    "default_rows_per_pass",
    "rows_per_pass",
    "check_target",
    "score_function",
    "evaluate_rows",
    "group_attributions",
    "group_ranks",
    "auc_trapezoid",
    "auc_mean",
    "pearson",
    "spearman",
    "average_ranks",
]


# Default bound of the rows (perturbed inputs) of one model pass, chosen by measurement (benchmarks/bench_metrics.py,
# one torch thread): the fastest chunks hold about 2**18 input elements (256 rows of 28x28 digits, 64 of 64x64:
# larger chunks spill the activations out of the cache and get slower per row), never fewer than 8 rows (a
# torchvision resnet18 at 3x224x224 costs the same per row from 1 to 32 rows) nor more than 256.
DEFAULT_ROW_ELEMENTS = 2**18
DEFAULT_MIN_ROWS = 8
DEFAULT_MAX_ROWS = 256


# ----------------------------------------------------------------------------------------------- inputs
def class_indices(target: Any, n: int, device) -> Optional[Tensor]:
    """``(n,)`` long class indices when ``target`` names one class per example (an int; an integer tensor of 1
    or ``n`` entries; a list of ``n`` ints), else ``None``: the accuracy-style scores need it."""
    if isinstance(target, Integral) and not isinstance(target, bool):
        return torch.full((n,), int(target), dtype=torch.long, device=device)
    if isinstance(target, Tensor):
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            return None
        if target.numel() in (1, n):
            return target.reshape(-1).to(device=device, dtype=torch.long).expand(n).contiguous()
        return None
    if isinstance(target, list) and len(target) == n:
        if all(isinstance(t, Integral) and not isinstance(t, bool) for t in target):
            return torch.tensor([int(t) for t in target], dtype=torch.long, device=device)
    return None


def check_finite(tensors: Tuple[Tensor, ...], name: str) -> None:
    """Raise ``ValueError`` naming ``name``[i] when a tensor holds NaN or infinite values (before any model pass)."""
    for i, t in enumerate(tensors):
        if t.dtype.is_floating_point or t.dtype.is_complex:
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                where = tuple(int(v) for v in bad.nonzero()[0])
                raise ValueError(
                    f"`{name}`[{i}] must be finite, got {int(bad.sum())} NaN or infinite value(s) (the first at index "
                    f"{where}); replace them (e.g. torch.nan_to_num) or drop those examples"
                )


def empty_batch(inputs: TensorOrTuple, attributions: TensorOrTuple) -> Optional[Tensor]:
    """For ``N = 0`` examples: the checked, formatted first input (to build an empty result on its device
    and dtype) after the structure checks that need no example; ``None`` when there are examples."""
    inputs_t, attr_t = format_inputs(inputs, "inputs"), format_inputs(attributions, "attributions")
    if check_same_batch(inputs_t, "inputs") > 0:
        return None
    if len(attr_t) != len(inputs_t) or any(a.shape != x.shape for a, x in zip(attr_t, inputs_t)):
        raise ValueError(
            f"`attributions` of shapes {[tuple(a.shape) for a in attr_t]} must have exactly the shapes of "
            f"`inputs`: {[tuple(x.shape) for x in inputs_t]}"
        )
    return inputs_t[0]


def flatten_rows(tensors: Tuple[Tensor, ...]) -> Tensor:
    """:func:`~captum_paths.attr._utils.features.flatten_inputs` that also works for ``N = 0``: ``(N, D)``."""
    n = tensors[0].shape[0]
    flat = [t.reshape(n, int(torch.Size(t.shape[1:]).numel())) for t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)


def default_rows_per_pass(inputs: Tuple[Tensor, ...]) -> int:
    """The default rows per model pass: ``clamp(2**18 // D, 8, 256)`` for ``D`` input elements per example
    (e.g. 256 rows of 1x28x28 digits, 85 of 3x32x32, 21 of 3x64x64, 8 of 3x224x224)."""
    per_row = max(1, sum(int(torch.Size(x.shape[1:]).numel()) for x in inputs))
    return max(DEFAULT_MIN_ROWS, min(DEFAULT_MAX_ROWS, DEFAULT_ROW_ELEMENTS // per_row))


def rows_per_pass(max_examples_per_batch: Optional[int], inputs: Tuple[Tensor, ...]) -> int:
    """``max_examples_per_batch`` when given (checked: a positive int), else :func:`default_rows_per_pass`."""
    chunk = check_internal_batch_size(max_examples_per_batch, "max_examples_per_batch")
    return default_rows_per_pass(inputs) if chunk is None else chunk


def prepare_inputs_and_attributions(
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    max_examples_per_batch: Optional[int] = None,
):
    """Validate and flatten: returns ``(inputs_tuple, flat_attr (N, D), ids (N, D), n_groups)``.

    ``attributions`` must have exactly the inputs' structure and shapes (as Captum's ``infidelity``
    requires); both must be finite (no NaN or infinity). Errors name the argument and the expected shape.
    """
    inputs_t = format_inputs(inputs, "inputs")
    attr_t = format_inputs(attributions, "attributions")
    check_same_batch(inputs_t, "inputs")
    if len(attr_t) != len(inputs_t):
        raise ValueError(
            f"`attributions` has {len(attr_t)} tensor(s) but `inputs` has {len(inputs_t)}: "
            "pass one attribution tensor per input tensor"
        )
    for i, (a, x) in enumerate(zip(attr_t, inputs_t)):
        if a.shape != x.shape:
            raise ValueError(
                f"`attributions`[{i}] has shape {tuple(a.shape)} but `inputs`[{i}] has shape "
                f"{tuple(x.shape)}: attributions must have exactly the shape of their input"
            )
        if not x.dtype.is_floating_point:
            raise TypeError(f"`inputs`[{i}] must be a floating-point tensor, got dtype {x.dtype}")
    check_finite(inputs_t, "inputs")
    check_finite(attr_t, "attributions")
    check_internal_batch_size(max_examples_per_batch, "max_examples_per_batch")
    ids, n_groups = feature_groups(inputs_t, feature_mask)
    flat_attr = flatten_rows(tuple(a.detach().to(device=x.device) for a, x in zip(attr_t, inputs_t)))
    return inputs_t, flat_attr, ids, n_groups


def check_target(target: Any, n: int) -> None:
    """Format checks of a Captum target for ``n`` examples, before any model evaluation."""
    if target is None or isinstance(target, (Integral, tuple)) and not isinstance(target, bool):
        return
    if isinstance(target, Tensor):
        if target.numel() not in (1, n):
            raise ValueError(
                f"`target` tensor must hold 1 or {n} (one per example) indices, got shape {tuple(target.shape)}"
            )
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise TypeError(f"`target` tensor must hold integer indices, got dtype {target.dtype}")
        return
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"`target` list must have one entry per example ({n}), got {len(target)}")
        return
    raise TypeError(f"`target` must be None, an int, a tuple, a tensor or a list, got {type(target).__name__}")


# ------------------------------------------------------------------------------------------------ scores
def score_function(score: ScoreSpec, name: str = "score") -> Callable[[Tensor, Any, int], Tensor]:
    """``score`` as a function ``(output, target, n_rows) -> (n_rows,)``.

    ``"logit"``: the raw output of the target; ``"softmax"``: the softmax (over dim 1) probability of the
    target; a callable ``(output, target) -> (n_rows,)`` for anything else.
    """
    if score == "logit":
        return lambda out, t, n: target_scores(out, t, n)
    if score == "softmax":

        def softmax_score(out, t, n):
            if not isinstance(out, Tensor) or out.dim() < 2:
                raise ValueError(
                    f"`{name}`='softmax' needs a model output with a class dimension (N, C), got "
                    f"shape {tuple(getattr(out, 'shape', ()))}"
                )
            if out.shape[1] == 1:
                raise ValueError(
                    f"`{name}`='softmax' over a single output is the constant 1; the model returns shape "
                    f"{tuple(out.shape)}: pass {name}='logit' (or a callable) for single-output models"
                )
            return target_scores(torch.softmax(out, dim=1), t, n)

        return softmax_score
    if callable(score) and not isinstance(score, str):

        def user_score(out, t, n):
            s = score(out, t)
            if not isinstance(s, Tensor) or s.numel() != n:
                raise ValueError(
                    f"the `{name}` callable must return a tensor of {n} scores (one per row), got "
                    f"{type(s).__name__} of shape {tuple(getattr(s, 'shape', ()))}"
                )
            return s.reshape(n)

        return user_score
    raise ValueError(f"`{name}` must be 'logit', 'softmax' or a callable(output, target), got {score!r}")


def evaluate_rows(
    forward_func: Callable,
    make_rows: Callable[[Tensor], Tuple[Tensor, ...]],
    row_examples: Tensor,
    n_examples: int,
    target: Any,
    additional_forward_args: Any,
    reduce_output: Callable[[Tensor, Any, int], Tensor],
    max_rows_per_batch: Optional[int],
    show_progress: bool = False,
    desc: str = "",
) -> Tensor:
    """Forward every perturbed row and reduce its output: shape ``(R,)`` or ``(R, k)``.

    ``make_rows(rows)`` builds the perturbed inputs (a tuple of tensors) of the row indices ``rows``;
    ``row_examples[r]`` is the example row ``r`` perturbs (its target and forward arguments are that
    example's). ``reduce_output(output, target_of_rows, n_rows)`` turns the model output of a chunk into
    one (or ``k``) number(s) per row. Runs without gradients; chunks hold at most ``max_rows_per_batch``.
    """
    afa = format_additional_forward_args(additional_forward_args)
    n_rows = row_examples.shape[0]
    out: Optional[Tensor] = None
    slices = chunk_slices(n_rows, max_rows_per_batch)
    with torch.no_grad(), progress_bar(show_progress, total=len(slices), desc=desc, unit="batch") as bar:
        for sl in slices:
            rows = torch.arange(sl.start, sl.stop, device=row_examples.device)
            examples = row_examples[sl]
            batch = make_rows(rows)
            output = run_forward(
                forward_func,
                batch,
                None,
                subset_additional_forward_args(afa, examples, n_examples),
            )
            values = reduce_output(output, subset_target(target, examples, n_examples), len(rows))
            if out is None:
                out = torch.empty((n_rows,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
            out[sl] = values
            bar.update(1)
    assert out is not None
    return out


# ------------------------------------------------------------------------------------------------ ranking
def group_attributions(flat_attr: Tensor, ids: Tensor, n_groups: int, absolute: bool = False) -> Tensor:
    """Attribution of each feature group (sum over its elements, e.g. over a pixel's channels): ``(N, G)``.

    With ``absolute`` the absolute values are summed (LPI's ranking rule).
    """
    values = flat_attr.abs() if absolute else flat_attr
    return group_sum(values, ids, n_groups)


def group_ranks(group_attr: Tensor) -> Tensor:
    """Rank of every group, 0 = largest attribution: ``(N, G)`` long.

    Ties are broken by group index (lower index first: a stable descending sort), so the ranking is
    deterministic and identical on every device.
    """
    order = torch.sort(group_attr, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())
    return ranks


# -------------------------------------------------------------------------------------------------- AUCs
def auc_trapezoid(curves: Tensor) -> Tensor:
    """RISE's AUC: trapezoid rule over ``K + 1`` equally spaced points on [0, 1]: ``(N,)``.

    ``(sum(c) - c_0 / 2 - c_K / 2) / K``, exactly RISE's ``auc`` (which spaces the points evenly even when
    the last step moves fewer features).
    """
    k = curves.shape[-1] - 1
    if k < 1:
        raise ValueError("a curve needs at least two points for the trapezoid rule")
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / k


def auc_mean(curves: Tensor) -> Tensor:
    """The SAMP paper's AUC: the mean of the ``K + 1`` points: ``(N,)``."""
    return curves.mean(-1)


# ---------------------------------------------------------------------------------------- correlations
def pearson(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Pearson correlation along ``dim`` (nan where either side has zero variance)."""
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    num = (a * b).sum(dim)
    den = (a.pow(2).sum(dim) * b.pow(2).sum(dim)).sqrt()
    return torch.where(
        den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.full_like(den, float("nan"))
    )


def average_ranks(values: Tensor) -> Tensor:
    """Ranks along the last dim, ties sharing their average rank (as ``scipy.stats.rankdata``), 0-based."""
    sorted_values = values.sort(-1).values.contiguous()
    v = values.contiguous()
    low = torch.searchsorted(sorted_values, v, right=False)
    high = torch.searchsorted(sorted_values, v, right=True) - 1
    return (low + high).to(torch.float64 if values.dtype == torch.float64 else torch.float32) / 2


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation along the last dim (average ranks for ties; nan for constant rows)."""
    return pearson(average_ranks(a), average_ranks(b))


def check_fraction_sequence(values: Sequence[Real], name: str) -> Tensor:
    """A non-empty sequence of numbers in the open interval (0, 1), as a float64 CPU tensor."""
    try:
        vals = [float(v) for v in values]
    except TypeError:
        raise TypeError(f"`{name}` must be a sequence of numbers in (0, 1), got {values!r}") from None
    if not vals:
        raise ValueError(f"`{name}` must not be empty")
    for v in vals:
        if not 0 < v < 1:
            raise ValueError(f"every entry of `{name}` must lie in the open interval (0, 1), got {v!r}")
    return torch.tensor(vals, dtype=torch.float64)
