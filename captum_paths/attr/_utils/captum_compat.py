"""The one module of captum_paths that touches Captum's private helpers.

Captum moves and renames its private helpers between releases; every other module imports them from
here, so a Captum release that breaks one of them breaks this file only. Supported: Captum 0.7, 0.8, 0.9.
"""

from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum._utils.common import (  # noqa: F401  (re-exported)
    _expand_additional_forward_args,
    _expand_target,
    _format_additional_forward_args,
    _format_output,
    _is_tuple,
    _run_forward,
    _select_targets,
)
from captum._utils.gradient import compute_gradients  # noqa: F401  (re-exported)
from captum.log import log_usage  # noqa: F401  (re-exported)
from torch import Tensor

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
#: every Captum target format: None, an int, a tuple index, a tensor (one entry or one per example), a list
TargetType = Union[None, int, Tuple[int, ...], Tensor, List[int], List[Tuple[int, ...]]]

__all__ = [
    "compute_gradients",
    "expand_additional_forward_args",
    "expand_target",
    "format_additional_forward_args",
    "format_inputs",
    "format_output",
    "is_tuple",
    "log_usage",
    "run_forward",
    "select_targets",
    "forward_scores",
    "gradients_and_scores",
    "target_scores",
    "check_target_range",
    "TargetType",
    "SCORES",
    "check_score",
    "scored_forward",
    "TensorOrTuple",
]


def is_tuple(inputs: Any) -> bool:
    return _is_tuple(inputs)


def format_inputs(inputs: TensorOrTuple, name: str = "inputs") -> Tuple[Tensor, ...]:
    """Return ``inputs`` as a tuple of tensors, raising ``TypeError`` naming ``name`` otherwise."""
    if isinstance(inputs, Tensor):
        return (inputs,)
    if isinstance(inputs, tuple) and len(inputs) > 0 and all(isinstance(t, Tensor) for t in inputs):
        return inputs
    raise TypeError(
        f"`{name}` must be a torch.Tensor or a non-empty tuple of torch.Tensor, got {type(inputs).__name__}"
    )


def format_additional_forward_args(additional_forward_args: Any) -> Optional[Tuple]:
    return _format_additional_forward_args(additional_forward_args)


def expand_additional_forward_args(additional_forward_args: Any, n_steps: int) -> Any:
    """Repeat every tensor argument ``n_steps`` times along dim 0 (repeat-whole-batch order)."""
    if additional_forward_args is None:
        return None
    return _expand_additional_forward_args(additional_forward_args, n_steps)


def expand_target(target: Any, n_steps: int) -> Any:
    """Repeat ``target`` ``n_steps`` times (repeat-whole-batch order), any Captum target format."""
    return _expand_target(target, n_steps)


def format_output(is_inputs_tuple: bool, output: Tuple[Tensor, ...]) -> TensorOrTuple:
    return _format_output(is_inputs_tuple, output)


def run_forward(forward_func: Callable, inputs: Any, target: Any = None, additional_forward_args: Any = None):
    return _run_forward(forward_func, inputs, target, additional_forward_args)


def select_targets(output: Tensor, target: Any) -> Tensor:
    return _select_targets(output, target)


def _target_indices(target: Any) -> list:
    """Every index a Captum target names, as tuples (one entry per output dimension after the batch)."""
    if target is None:
        return []
    if isinstance(target, Tensor):
        if target.numel() == 0:
            return []
        # the extremes stand for every entry: one check, not one per row (this runs every pass)
        return [(int(target.min()),), (int(target.max()),)]
    if isinstance(target, int):
        return [(target,)]
    if isinstance(target, tuple):
        return [target]
    if isinstance(target, list):
        return [t if isinstance(t, tuple) else (t,) for t in target]
    raise TypeError(
        f"`target` must be None, an int, a tuple, a tensor or a list of ints/tuples, got {type(target).__name__}"
    )


def check_target_range(output: Tensor, target: Any) -> None:
    """``ValueError`` if ``target`` (any Captum format) names an index outside ``output``'s dims after the
    batch."""
    if not isinstance(output, Tensor):
        raise TypeError(f"the forward function must return a torch.Tensor, got {type(output).__name__}")
    for idx in _target_indices(target):
        if len(idx) > output.dim() - 1:
            raise ValueError(
                f"`target` {idx} has {len(idx)} indices but the model output of shape "
                f"{tuple(output.shape)} has only {output.dim() - 1} dimension(s) after the batch"
            )
        for d, i in enumerate(idx):
            if isinstance(i, int) and not -output.shape[d + 1] <= i < output.shape[d + 1]:
                raise ValueError(f"`target` index {i} is out of range for model output of shape {tuple(output.shape)}")


def target_scores(output: Tensor, target: Any, n_rows: int, checked: bool = False, whole_target: Any = None) -> Tensor:
    """Select the target scores from a model output, with clear errors: shape ``(n_rows,)``.

    Raises ``ValueError`` if ``target`` names an index outside the output, or if the selection does
    not give exactly one score per example (a multi-output model called without ``target``).
    ``whole_target`` (default: ``target``) is what the index check reads: a call's first pass checks
    every example's target, not only its rows'. ``checked=True`` skips that check (a later pass of a call
    whose target was checked): negative tensor indices are still counted from the end.
    """
    if not checked:
        check_target_range(output, target if whole_target is None else whole_target)
    if isinstance(target, Tensor) and target.numel() > 0 and output.dim() > 1:
        if checked:  # indices in [-C, C): one op, no host sync
            target = target.remainder(output.shape[1])
        elif bool((target < 0).any()):  # negative indices count from the end, as they do for an int target
            target = torch.where(target < 0, target + output.shape[1], target)
    scores = select_targets(output, target)
    if scores.dim() == 0 or scores.shape[0] != n_rows or scores[0].numel() != 1:
        raise ValueError(
            "the forward function must return one score per example for the given `target` "
            f"(expected {n_rows} scalars, got a tensor of shape {tuple(scores.shape)}); "
            "pass `target` for multi-output models"
        )
    return scores.reshape(n_rows)


def forward_scores(
    forward_func: Callable,
    inputs: Tuple[Tensor, ...],
    target: Any = None,
    additional_forward_args: Any = None,
) -> Tensor:
    """Target scores, one per example, without gradients: shape ``(N,)``."""
    with torch.no_grad():
        output = run_forward(forward_func, inputs, None, additional_forward_args)
        return target_scores(output, target, inputs[0].shape[0])


_NO_GRAPH = (
    "the forward function's scores do not depend on its inputs through autograd (does it detach its input, "
    "convert it to numpy, or run under torch.no_grad()?): gradients cannot be taken"
)


def gradients_and_scores(
    gradient_func: Callable,
    forward_func: Callable,
    inputs: Tuple[Tensor, ...],
    target: Any = None,
    additional_forward_args: Any = None,
    checked: bool = False,
    whole_target: Any = None,
) -> Tuple[Tuple[Tensor, ...], Tensor]:
    """Gradients of every row's target score w.r.t. its inputs, and the scores, in one pass.

    ``gradient_func`` is the attribution's swappable ``self.gradient_func`` (Captum's
    ``compute_gradients`` by default), handed a forward function that returns the *sum* of the rows'
    target scores (shape ``(1,)``) and ``target=None``. Rows do not interact (the assumption of every
    batched attribution), so this is each row's own gradient, exactly what Captum's per-row
    ``torch.unbind`` gives, while sparing autograd one seed tensor per row (a few percent of a small
    model's pass). Captum's own ``compute_gradients`` is run inline (the same forward and
    ``torch.autograd.grad`` of the same sum, without its per-pass inspection of the forward function's
    signature). The scores are validated (clear ``ValueError`` for a bad ``target``; ``checked`` and
    ``whole_target`` as in :func:`target_scores`) before any backward pass. Returns ``(grads, scores (N,))``.
    """
    n_rows = inputs[0].shape[0]
    recorded = []

    def summed_target_score(*args):
        scores = target_scores(forward_func(*args), target, n_rows, checked, whole_target)
        if not scores.requires_grad:
            raise ValueError(_NO_GRAPH)
        recorded.append(scores.detach())
        return scores.sum().reshape(1)

    try:
        if gradient_func is compute_gradients:
            with torch.autograd.set_grad_enabled(True):
                extra = format_additional_forward_args(additional_forward_args)
                args = inputs if extra is None else (*inputs, *extra)
                grads = torch.autograd.grad(summed_target_score(*args)[0], inputs)
        else:
            grads = gradient_func(summed_target_score, inputs, None, additional_forward_args)
    except RuntimeError as error:
        if "not have been used in the graph" not in str(error):
            raise
        raise ValueError(_NO_GRAPH) from error
    if not recorded:  # a custom gradient_func that never called the forward function
        return tuple(g.detach() for g in grads), forward_scores(forward_func, inputs, target, additional_forward_args)
    return tuple(g.detach() for g in grads), recorded[-1]


#: the scores a method can follow: the raw output, or its softmax over dim 1
SCORES = ("logit", "softmax")


def check_score(score: Any) -> str:
    if score not in SCORES:
        raise ValueError(f"`score` must be one of {SCORES}, got {score!r}")
    return score


def scored_forward(forward_func: Callable, score: str) -> Callable:
    """The forward function whose target output is followed: raw (``"logit"``), or its softmax over dim 1."""
    if score == "logit":
        return forward_func

    def softmax_forward(*args):
        output = forward_func(*args)
        if not isinstance(output, Tensor) or output.dim() != 2:
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"score='softmax' needs a forward function returning (N, n_classes) scores, got {shape}; "
                "use score='logit' for other outputs"
            )
        return torch.softmax(output, dim=1)

    return softmax_forward
