"""Feature groups: which input elements move together along a path.

Default grouping: one group per pixel for 4-D ``(N, C, H, W)`` inputs (the channels of a pixel move
together, as in the SAMP reference code) and one group per element otherwise. A Captum-style
``feature_mask`` (integer ids, broadcastable to each input, ids shared across the tuple, contiguous
from 0) overrides the default, e.g. for superpixels.

Path methods here work on a flat view: every example's tuple of tensors is concatenated into one row
of ``D`` elements (:func:`flatten_inputs`), and the groups are a ``(N, D)`` long tensor of ids.
"""

from typing import Tuple, Union

import torch
from torch import Tensor

__all__ = ["flatten_inputs", "unflatten_inputs", "feature_groups", "group_sum"]


def flatten_inputs(inputs: Tuple[Tensor, ...]) -> Tensor:
    """Concatenate the per-example elements of a tuple of ``(N, ...)`` tensors: shape ``(N, D)``.

    May return a view of a single input (never write into the result in place).
    """
    n = inputs[0].shape[0]
    if len(inputs) == 1:  # a view when possible: no copy on the hot path of single-input models
        return inputs[0].reshape(n, -1)
    return torch.cat([x.reshape(n, -1) for x in inputs], dim=1)


def unflatten_inputs(flat: Tensor, like: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Inverse of :func:`flatten_inputs`, for any number of rows: views shaped ``(rows, *x.shape[1:])``."""
    out, start = [], 0
    rows = flat.shape[0]
    for x in like:
        size = x[0].numel() if x.shape[0] > 0 else int(torch.tensor(x.shape[1:]).prod())
        out.append(flat[:, start : start + size].reshape((rows,) + tuple(x.shape[1:])))
        start += size
    return tuple(out)


def _default_groups(x: Tensor) -> Tensor:
    per_example = x.shape[1:]
    if x.dim() == 4:
        c, h, w = per_example
        ids = torch.arange(h * w, device=x.device).reshape(1, h, w).expand(c, h, w)
    else:
        ids = torch.arange(int(torch.tensor(per_example).prod()) if per_example else 1, device=x.device)
        ids = ids.reshape(per_example)
    return ids


def feature_groups(
    inputs: Tuple[Tensor, ...],
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
) -> Tuple[Tensor, int]:
    """Group ids for every element of every example: ``(ids, n_groups)`` with ``ids`` of shape ``(N, D)``.

    Raises ``ValueError``/``TypeError`` naming ``feature_mask`` if a mask is not broadcastable to its
    input, is not integer, has negative ids, or its ids are not contiguous from 0 (a gap would be a
    feature that exists in no input).
    """
    n = inputs[0].shape[0]
    if feature_mask is None:
        per_input, offset = [], 0
        for x in inputs:
            ids = _default_groups(x)
            per_input.append(ids + offset)
            offset += int(ids.max()) + 1 if ids.numel() else 0
        flat = torch.cat([ids.reshape(1, -1) for ids in per_input], dim=1).expand(n, -1)
        return flat, offset

    masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if len(masks) != len(inputs):
        raise ValueError(f"`feature_mask` has {len(masks)} tensor(s) but there are {len(inputs)} input tensors")
    expanded = []
    for i, (m, x) in enumerate(zip(masks, inputs)):
        if not isinstance(m, Tensor):
            raise TypeError(f"`feature_mask`[{i}] must be a torch.Tensor, got {type(m).__name__}")
        if m.dtype.is_floating_point or m.dtype.is_complex or m.dtype == torch.bool:
            raise TypeError(f"`feature_mask`[{i}] must hold integer ids, got dtype {m.dtype}")
        if m.dim() == x.dim() - 1:
            m = m.unsqueeze(0)
        if m.dim() != x.dim() or not all(ms in (1, xs) for ms, xs in zip(m.shape, x.shape)):
            raise ValueError(
                f"`feature_mask`[{i}] of shape {tuple(m.shape)} is not broadcastable to the input of "
                f"shape {tuple(x.shape)}"
            )
        expanded.append(m.to(device=x.device, dtype=torch.long).expand_as(x).reshape(n, -1))
    flat = torch.cat(expanded, dim=1)
    if flat.numel() and int(flat.min()) < 0:
        raise ValueError("`feature_mask` ids must be non-negative")
    n_groups = int(flat.max()) + 1 if flat.numel() else 0
    present = torch.zeros(n_groups, dtype=torch.bool, device=flat.device)
    present[flat.reshape(-1)] = True
    if not bool(present.all()):
        missing = torch.nonzero(~present).reshape(-1)[:5].tolist()
        raise ValueError(f"`feature_mask` ids must be contiguous from 0 to {n_groups - 1}; missing ids {missing}")
    return flat, n_groups


def group_sum(values: Tensor, ids: Tensor, n_groups: int) -> Tensor:
    """Sum ``values`` (``(R, D)``) within each group of ``ids`` (``(R, D)``): shape ``(R, n_groups)``."""
    out = torch.zeros(values.shape[0], n_groups, dtype=values.dtype, device=values.device)
    return out.scatter_add_(1, ids, values)
