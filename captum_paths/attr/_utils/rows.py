"""Selecting the rows of ``target`` / ``additional_forward_args`` that belong to some examples.

Methods and metrics expand a batch of N examples into rows (example x direction, example x path
point, example x perturbation) and forward only some of them at a time. These helpers pick the matching
entries of every Captum target format and of every per-example tensor argument. ``index`` is a slice or
a long tensor of example indices in ``range(n)`` (repeats allowed, so it can also expand).
"""

from numbers import Integral
from typing import Any, Optional, Tuple, Union

from torch import Tensor

__all__ = ["subset_target", "subset_additional_forward_args"]

Index = Union[slice, Tensor]


def _is_everything(index: Index, n: int) -> bool:
    return isinstance(index, slice) and index.indices(n) == (0, n, 1)


def _take(values: Tensor, index: Index) -> Tensor:
    return values[index] if isinstance(index, slice) else values[index.to(values.device)]


def subset_target(target: Any, index: Index, n: int) -> Any:
    """The target of the rows showing examples ``index`` of a per-example target for ``n`` examples.

    Targets shared by every example (``None``, an int, a tuple, a one-element tensor) are returned
    unchanged; per-example ones (a tensor or list of ``n`` entries) are indexed.
    """
    if target is None or isinstance(target, tuple):
        return target
    if isinstance(target, Integral) and not isinstance(target, bool):
        return int(target)
    if isinstance(target, Tensor):
        if target.numel() == 1 or _is_everything(index, n):
            return target
        return _take(target.reshape(n, *target.shape[1:]) if target.dim() <= 1 else target, index)
    if isinstance(target, list):
        if _is_everything(index, n):
            return target
        positions = range(n)[index] if isinstance(index, slice) else index.tolist()
        return [target[i] for i in positions]
    raise TypeError(f"`target` must be None, an int, a tuple, a tensor or a list, got {type(target).__name__}")


def subset_additional_forward_args(additional_forward_args: Optional[Tuple], index: Index, n: int) -> Optional[Tuple]:
    """Rows ``index`` of every tensor argument whose first dimension is ``n``; other arguments unchanged.

    As in Captum, a tensor argument with a batch dimension is per example; 0-d tensors and other
    objects are shared by all rows.
    """
    if additional_forward_args is None or _is_everything(index, n):
        return additional_forward_args
    return tuple(
        _take(a, index) if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n else a
        for a in additional_forward_args
    )
