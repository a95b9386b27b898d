"""Selecting a subset of expanded rows of ``target`` / ``additional_forward_args``.

Path methods expand a batch of N examples into R rows (e.g. example x direction, example x path point)
with Captum's repeat-whole-batch expansion, then forward only the rows still active. These helpers pick
the matching entries of every Captum target format and of every tensor forward argument.
"""
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["subset_target", "subset_additional_forward_args"]


def subset_target(target: Any, index: Tensor, n_rows: int) -> Any:
    """Rows ``index`` of an (already expanded to ``n_rows``) Captum target."""
    if target is None or isinstance(target, (int, tuple)):
        return target
    if isinstance(target, Tensor):
        if target.numel() == 1:
            return target
        return target.reshape(n_rows, *target.shape[1:])[index.to(target.device)]
    if isinstance(target, list):
        return [target[i] for i in index.tolist()]
    raise TypeError(f"`target` must be None, an int, a tuple, a tensor or a list, got {type(target).__name__}")


def subset_additional_forward_args(
    additional_forward_args: Optional[Tuple], index: Tensor, n_rows: int
) -> Optional[Tuple]:
    """Rows ``index`` of every tensor argument whose first dimension is ``n_rows``; others unchanged."""
    if additional_forward_args is None:
        return None
    return tuple(
        a[index.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n_rows else a
        for a in additional_forward_args
    )
