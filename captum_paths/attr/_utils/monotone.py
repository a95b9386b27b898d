"""Building blocks of ablation paths (Sagemüller & Verdier, "Ablation Path Saliency", 2022).

An ablation path is a sequence of masks ``phi[0], ..., phi[T-1]`` (one value in [0, 1] per feature)
at times ``t_k = k / (T - 1)``. Its constraints are

* ``phi(0) = 0`` and ``phi(1) = 1``;
* monotone in ``t`` for every feature (an ablated feature is never restored);
* constant speed: the (weighted) mean of ``phi(t_k)`` over the features equals ``t_k``.

The functions here are pure tensor maps, vectorised over every leading dimension:

* :func:`monotone_projection`: the L-infinity-optimal projection of sequences onto the non-decreasing
  ones (paper, appendix B);
* :func:`constant_speed`: the re-parametrisation of a monotone path to constant speed (appendix A);
* :func:`repair_path`: projection, clamping, end points and re-parametrisation in one call;
* :func:`saturate`: the saturation map ``(tanh((2 phi - 1) zeta) / tanh(zeta) + 1) / 2``;
* :func:`gaussian_filter_2d`: the spatial Gaussian filter of masks (scipy ``mode="nearest"`` semantics);
* :func:`path_saturation`: how close a path's masks are to binary (1 = every mask value is 0 or 1).

:class:`~captum_paths.AblationPath` keeps its path time-major, ``(T, N, G)``: row ``k`` holds the masks
of every example at ``t_k``, so the interior points are the model's batch without a copy and the
monotone projection reads each point's values as one contiguous row. The ``*_time_major`` functions
work on that layout (the ones ending in ``_`` overwrite their argument); the public functions take the
natural ``(..., T, G)`` layout and delegate to them.
"""

import functools
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "monotone_projection",
    "constant_speed",
    "repair_path",
    "saturate",
    "gaussian_filter_2d",
    "path_saturation",
    "weighted_mean",
    "project_columns_",
    "constant_speed_time_major",
    "repair_path_time_major_",
    "path_saturation_time_major",
]


def monotone_projection(values: Tensor, dim: int = -1) -> Tensor:
    """L-infinity-optimal non-decreasing approximation of every sequence along ``dim``.

    The algorithm of the paper's appendix B, vectorised over all sequences: start from the
    decreasing runs; replace each run by the level of its midpoint ``(max + min) / 2``; a neighbour
    (a single value or another run) that now violates monotonicity against that level is merged into
    the run; repeat until no two neighbouring blocks decrease; every block then takes its midpoint
    level. Values that take part in no violation are returned unchanged.

    Properties: the output is non-decreasing along ``dim``; a non-decreasing input is returned
    exactly (idempotent); the L-infinity distance to the input equals the optimum
    ``max_{i <= j} (values[i] - values[j]) / 2`` (each block's maximum precedes its minimum, so its
    half range is a lower bound for any monotone approximation).

    Args:
        values: tensor of any shape with at least one element along ``dim``.
        dim: the dimension holding the sequences (the path's time axis).

    Returns:
        tensor of ``values``' shape, dtype and device.
    """
    if not isinstance(values, Tensor) or not values.dtype.is_floating_point:
        raise TypeError("`values` must be a floating-point torch.Tensor")
    # time-major copy: each position of the sequences is one contiguous row
    out = values.movedim(dim, 0).clone(memory_format=torch.contiguous_format)
    if out.numel() > 0 and out.shape[0] > 1:
        project_columns_(out.view(out.shape[0], -1))
    return out.movedim(0, dim)


def project_columns_(columns: Tensor) -> Tensor:
    """In-place :func:`monotone_projection` of every column of a contiguous ``(L, P)`` tensor.

    The time-major layout of the ablation path (one row per path point) needs no transpose: only the
    columns that contain a decrease are copied out, merged and written back.
    """
    descents = columns[1:] < columns[:-1]
    needs_work = descents.any(dim=0).nonzero().squeeze(1)
    if needs_work.numel() > 0:
        # the merge loop runs on rows: (P', L) contiguous, one sequence per row
        seqs = columns.index_select(1, needs_work).t().contiguous()
        joined = descents.index_select(1, needs_work).t().contiguous()
        columns.index_copy_(1, needs_work, _merge_violating_blocks(seqs, joined).t())
    return columns


def _merge_violating_blocks(seqs: Tensor, joined: Tensor) -> Tensor:
    """Block merging on ``(P, L)`` sequences that each contain a decrease (``joined``: ``(P, L-1)``, the
    descents, True where positions ``i`` and ``i + 1`` share a block).

    Round one (every value its own block, levels = values) merges exactly the descents, so the loop
    starts from them. A block is named by the position of its first element: that slot of a copy of
    the values holds one of the block's own values, so the block maximum and minimum are one
    ``scatter_reduce`` each with no fill. Sequences with no violation left are final and leave the
    working set.
    """
    n_seq, length = seqs.shape
    out = torch.empty_like(seqs)
    rows = torch.arange(n_seq, device=seqs.device)
    positions = torch.arange(1, length, device=seqs.device)
    values = seqs
    # at most L - 1 merges are possible per sequence, and every round merges at least one edge
    for _ in range(length):
        block = torch.zeros(values.shape, dtype=torch.long, device=values.device)
        block[:, 1:] = torch.where(joined, 0, positions)
        block = torch.cummax(block, dim=1).values
        high = values.clone().scatter_reduce_(1, block, values, "amax")
        low = values.clone().scatter_reduce_(1, block, values, "amin")
        level = high.add_(low).mul_(0.5).gather(1, block)
        violation = level[:, 1:] < level[:, :-1]
        unfinished = violation.any(dim=1)
        if not bool(unfinished.any()):
            out[rows] = level
            return out
        done = (~unfinished).nonzero().squeeze(1)
        keep = unfinished.nonzero().squeeze(1)
        out[rows[done]] = level[done]
        rows, values = rows[keep], values[keep]
        joined = joined[keep] | violation[keep]
    raise AssertionError("monotone projection did not converge")  # unreachable: see the bound above


def weighted_mean(masks: Tensor, weights: Optional[Tensor]) -> Tensor:
    """Mean over the last (feature) dim; ``weights`` ``None`` (plain mean), ``(G,)`` or broadcastable to
    ``masks`` (e.g. ``(M, G)`` against time-major ``(T, M, G)``), summing to one over ``G``."""
    if weights is None:
        return masks.mean(dim=-1)
    if weights.dim() == 1:
        return torch.matmul(masks, weights)
    return (masks * weights).sum(dim=-1)


def _time_major(masks: Tensor, weights: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """``(..., T, G)`` masks as an owned contiguous ``(T, M, G)`` copy, and the weights for it."""
    n_points, n_groups = masks.shape[-2:]
    lead = masks.shape[:-2]
    path = masks.movedim(-2, 0).clone(memory_format=torch.contiguous_format).reshape(n_points, -1, n_groups)
    if weights is not None and weights.dim() > 1:
        weights = weights.expand(lead + (n_groups,)).reshape(-1, n_groups)
    return path, weights


def _from_time_major(path: Tensor, like: Tensor) -> Tensor:
    n_points, n_groups = like.shape[-2:]
    return path.reshape((n_points,) + like.shape[:-2] + (n_groups,)).movedim(0, -2)


def constant_speed(masks: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Re-parametrise a monotone path so that its mean mask at ``t_k = k / (T - 1)`` equals ``t_k``.

    The path is read as piecewise linear in ``t`` between its points (paper, appendix A). Its mean
    ``m(t)`` is then piecewise linear and non-decreasing from 0 to 1, and the new path is
    ``psi(t_k) = phi(m^{-1}(t_k))``: the old path evaluated where its mean reaches ``t_k``. This keeps
    every feature monotone, the values in [0, 1] and the end points, and gives ``mean psi(t_k) = t_k``
    up to rounding. Flat stretches of ``m`` (steps where no mass moves) are skipped.

    Args:
        masks: ``(..., T, G)`` monotone in ``T`` with ``masks[..., 0, :] = 0`` and
            ``masks[..., -1, :] = 1``.
        weights: optional ``(G,)`` or ``(..., G)`` non-negative feature weights summing to one (for
            feature groups of different sizes: the fraction of the input each group covers). ``None``
            means the plain mean over ``G``.

    Returns:
        tensor of ``masks``' shape.
    """
    path, flat_weights = _time_major(masks, weights)
    return _from_time_major(constant_speed_time_major(path, flat_weights), masks)


def constant_speed_time_major(path: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """:func:`constant_speed` of a time-major ``(T, M, G)`` path (``weights``: ``None``, ``(G,)`` or
    ``(M, G)``); returns a new contiguous ``(T, M, G)`` tensor."""
    n_points, n_paths, n_groups = path.shape
    out = torch.empty((n_points, n_paths, n_groups), dtype=path.dtype, device=path.device)
    out[0] = 0
    out[-1] = 1
    if n_points <= 2:
        return out
    mean = weighted_mean(path, weights)  # (T, M)
    # rounding could break the monotonicity of the mean
    mean = torch.cummax(mean, dim=0).values.t().contiguous()
    inner = torch.linspace(0, 1, n_points, dtype=path.dtype, device=path.device)[1:-1]
    inner = inner.expand(n_paths, n_points - 2).contiguous()
    # segment j such that mean[j] <= t < mean[j + 1] (clamped to the first and last segment)
    seg = (torch.searchsorted(mean, inner, right=True) - 1).clamp_(0, n_points - 2)
    m_lo = torch.gather(mean, 1, seg)
    span = torch.gather(mean, 1, seg + 1) - m_lo
    moving = span > 0
    frac = torch.where(moving, (inner - m_lo) / torch.where(moving, span, torch.ones_like(span)), 0).clamp_(0, 1)
    # whole masks are interpolated: pick them as rows of the (T * M, G) view, point-major like `out`
    rows = (seg.t() * n_paths + torch.arange(n_paths, device=path.device)).reshape(-1)
    flat = path.reshape(n_points * n_paths, n_groups)
    torch.lerp(
        flat.index_select(0, rows),
        flat.index_select(0, rows + n_paths),
        frac.t().reshape(-1, 1),
        out=out[1:-1].view(-1, n_groups),
    )
    return out


def repair_path(masks: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Restore every path constraint: monotone projection over ``T``, clamp to [0, 1], end points
    0 and 1, constant speed. ``masks``: ``(..., T, G)``; returns the same shape."""
    path, flat_weights = _time_major(masks, weights)
    return _from_time_major(repair_path_time_major_(path, flat_weights), masks)


def repair_path_time_major_(path: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """:func:`repair_path` of a contiguous time-major ``(T, M, G)`` path, which it overwrites (with the
    projected, clamped path); returns the new constant-speed path."""
    project_columns_(path.view(path.shape[0], -1))
    path.clamp_(0, 1)
    path[0] = 0
    path[-1] = 1
    return constant_speed_time_major(path, weights)


def saturate(masks: Tensor, zeta: float = 0.8, inplace: bool = False) -> Tensor:
    """The saturation map ``(tanh((2 phi - 1) zeta) / tanh(zeta) + 1) / 2``.

    It maps [0, 1] onto itself with fixed points 0, 1/2 and 1; 0 and 1 attract (values move away
    from 1/2), so repeated application drives masks towards binary ones. Larger ``zeta`` saturates
    faster; ``zeta -> 0`` tends to the identity. ``inplace=True`` overwrites ``masks``.
    """
    if not (isinstance(zeta, (int, float)) and not isinstance(zeta, bool) and math.isfinite(zeta) and zeta > 0):
        raise ValueError(f"`zeta` must be a positive finite number, got {zeta!r}")
    out = masks.mul_(2 * zeta) if inplace else masks * (2 * zeta)
    return out.sub_(zeta).tanh_().mul_(0.5 / math.tanh(zeta)).add_(0.5)


def _gaussian_kernel_1d(sigma: float) -> Tensor:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's default truncation (4 standard deviations)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=16)
def _filter_matrix(size: int, sigma: float) -> Tensor:
    """``(size, size)`` matrix of the 1-D Gaussian filter with nearest-value edges (float64, CPU)."""
    kernel = _gaussian_kernel_1d(sigma)
    radius = kernel.numel() // 2
    matrix = torch.zeros(size, size, dtype=torch.float64)
    rows = torch.arange(size).unsqueeze(1)
    cols = (rows + torch.arange(-radius, radius + 1).unsqueeze(0)).clamp(0, size - 1)
    matrix.scatter_add_(1, cols, kernel.expand(size, -1).contiguous())
    return matrix


def gaussian_filter_2d(masks: Tensor, sigma: float, out: Optional[Tensor] = None) -> Tensor:
    """Gaussian filter over the last two (spatial) dimensions of ``masks`` (``(..., H, W)``).

    Separable, truncated at 4 standard deviations, edges extended with the nearest value (the same as
    ``scipy.ndimage.gaussian_filter(mode="nearest")`` over the last two axes). The filter averages, so
    values in [0, 1] stay in [0, 1] and a constant mask is unchanged. ``sigma = 0`` returns a copy.
    Computed as ``A_H @ masks @ A_W^T`` with the (edge-folded) filter matrices: two batched matrix
    products, fast for the mask sizes of image models. ``out``: optional contiguous tensor of
    ``masks``' shape to write into (it may be ``masks`` itself).
    """
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"`sigma` must be a non-negative finite number, got {sigma!r}")
    if masks.dim() < 2:
        raise ValueError(f"`masks` must have two spatial dimensions, got shape {tuple(masks.shape)}")
    if sigma == 0:
        return masks.clone() if out is None else out.copy_(masks)
    height, width = masks.shape[-2:]
    rows = _filter_matrix(height, float(sigma)).to(dtype=masks.dtype, device=masks.device)
    cols = _filter_matrix(width, float(sigma)).to(dtype=masks.dtype, device=masks.device)
    # the first product is a new tensor, so `out` may alias `masks`
    return torch.matmul(torch.matmul(rows, masks), cols.t(), out=out)


def path_saturation(masks: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Mean of ``|2 phi - 1|`` over the interior path points and the features: ``(...)`` from
    ``(..., T, G)`` (``weights``: ``None``, ``(G,)`` or ``(..., G)``).

    1 when every mask is binary (each path point ablates a set of features completely), 0.5 for the
    straight-line path ``phi(t) = t`` with many points, 0 when every value is 1/2.
    """
    return path_saturation_time_major(masks.movedim(-2, 0), weights)


def path_saturation_time_major(path: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """:func:`path_saturation` of a time-major ``(T, ..., G)`` path: ``(...)``; ``weights`` ``None``,
    ``(G,)`` or broadcastable to ``path[0]``."""
    return weighted_mean((2 * path[1:-1] - 1).abs_(), weights).mean(dim=0)
