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
"""
import functools
import math
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "monotone_projection",
    "constant_speed",
    "repair_path",
    "saturate",
    "gaussian_filter_2d",
    "path_saturation",
    "trapezoid_weights",
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
    moved = values.movedim(dim, -1)  # a view: no copy of the (typically large) untouched part
    if moved.shape[-1] < 2 or moved.numel() == 0:
        return values.clone()
    # only sequences with at least one decrease need work
    descents = moved[..., 1:] < moved[..., :-1]
    needs_work = descents.any(dim=-1)
    out = values.clone()
    if bool(needs_work.any()):
        out.movedim(dim, -1)[needs_work] = _merge_violating_blocks(moved[needs_work], descents[needs_work])
    return out


def _merge_violating_blocks(seqs: Tensor, descents: Tensor) -> Tensor:
    """Block merging on ``(P, L)`` sequences that each contain a decrease (``descents``: ``(P, L-1)``).

    Round one (every value its own block, levels = values) merges exactly the descents, so the loop
    starts from them. Sequences with no violation left are final and leave the working set.
    """
    n_seq, length = seqs.shape
    out = torch.empty_like(seqs)
    rows = torch.arange(n_seq, device=seqs.device)
    values, joined = seqs, descents.clone()
    high = torch.empty(n_seq * length, dtype=seqs.dtype, device=seqs.device)
    low = torch.empty_like(high)
    block = torch.zeros(n_seq, length, dtype=torch.long, device=seqs.device)
    offsets = torch.arange(n_seq, device=seqs.device).unsqueeze(1) * length
    # at most L - 1 merges are possible per sequence, and every round merges at least one edge
    for _ in range(length):
        n_work = values.shape[0]
        ids = block[:n_work]
        torch.cumsum(~joined, dim=1, out=ids[:, 1:])
        flat_ids = (ids + offsets[:n_work]).reshape(-1)
        flat_values = values.reshape(-1)
        # block slots that no position uses keep stale values: they are never read
        block_high = high[: n_work * length].scatter_reduce_(0, flat_ids, flat_values, "amax", include_self=False)
        block_low = low[: n_work * length].scatter_reduce_(0, flat_ids, flat_values, "amin", include_self=False)
        level = block_high.add(block_low).mul_(0.5)[flat_ids].reshape(n_work, length)
        violation = level[:, 1:] < level[:, :-1]
        unfinished = violation.any(dim=1)
        if not bool(unfinished.any()):
            out[rows] = level
            break
        finished = ~unfinished
        out[rows[finished]] = level[finished]
        rows, values = rows[unfinished], values[unfinished]
        joined = joined[unfinished] | violation[unfinished]
    return out


def trapezoid_weights(n_points: int, dtype=torch.float64, device=None) -> Tensor:
    """Weights ``w`` with ``sum_k w[k] f(t_k)`` the trapezoid rule for ``int_0^1 f(t) dt``: ``(T,)``."""
    w = torch.full((n_points,), 1.0 / (n_points - 1), dtype=dtype, device=device)
    w[0] = w[-1] = 0.5 / (n_points - 1)
    return w


def _weighted_mean(masks: Tensor, weights: Optional[Tensor]) -> Tensor:
    if weights is None:
        return masks.mean(dim=-1)
    if weights.dim() == 1:
        return torch.matmul(masks, weights)
    return torch.matmul(masks, weights.unsqueeze(-1)).squeeze(-1)


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
    n_points, n_groups = masks.shape[-2:]
    lead = masks.shape[:-2]
    mean = _weighted_mean(masks, weights).reshape(-1, n_points)
    mean = torch.cummax(mean, dim=-1).values  # rounding could break monotonicity of the mean
    times = torch.linspace(0, 1, n_points, dtype=masks.dtype, device=masks.device)
    # segment j such that mean[j] <= t < mean[j + 1] (the last point uses the last segment)
    seg = torch.searchsorted(mean, times.expand(mean.shape[0], n_points).contiguous(), right=True) - 1
    seg = seg.clamp_(0, n_points - 2)
    m_lo = torch.gather(mean, 1, seg)
    span = torch.gather(mean, 1, seg + 1) - m_lo
    flat_span = torch.where(span > 0, span, torch.ones_like(span))
    frac = torch.where(span > 0, (times - m_lo) / flat_span, torch.zeros_like(span)).clamp_(0, 1)
    # whole rows (masks) are interpolated: pick them by flat row index
    rows = (seg + torch.arange(mean.shape[0], device=masks.device).unsqueeze(1) * n_points).reshape(-1)
    flat = masks.reshape(-1, n_groups)
    lo = flat.index_select(0, rows)
    out = torch.lerp(lo, flat.index_select(0, rows + 1), frac.reshape(-1, 1).to(masks.dtype))
    out = out.reshape(lead + (n_points, n_groups))
    out[..., 0, :] = 0
    out[..., -1, :] = 1
    return out


def repair_path(masks: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Restore every path constraint: monotone projection over ``T``, clamp to [0, 1], end points
    0 and 1, constant speed. ``masks``: ``(..., T, G)``; returns the same shape."""
    out = monotone_projection(masks, dim=-2).clamp_(0, 1)
    out[..., 0, :] = 0
    out[..., -1, :] = 1
    return constant_speed(out, weights)


def saturate(masks: Tensor, zeta: float = 0.8) -> Tensor:
    """The saturation map ``(tanh((2 phi - 1) zeta) / tanh(zeta) + 1) / 2``.

    It maps [0, 1] onto itself with fixed points 0, 1/2 and 1; 0 and 1 attract (values move away
    from 1/2), so repeated application drives masks towards binary ones. Larger ``zeta`` saturates
    faster; ``zeta -> 0`` tends to the identity.
    """
    if not (isinstance(zeta, (int, float)) and not isinstance(zeta, bool) and math.isfinite(zeta) and zeta > 0):
        raise ValueError(f"`zeta` must be a positive finite number, got {zeta!r}")
    out = masks * (2 * zeta)
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


def gaussian_filter_2d(masks: Tensor, sigma: float) -> Tensor:
    """Gaussian filter over the last two (spatial) dimensions of ``masks`` (``(..., H, W)``).

    Separable, truncated at 4 standard deviations, edges extended with the nearest value (the same as
    ``scipy.ndimage.gaussian_filter(mode="nearest")`` over the last two axes). The filter averages, so
    values in [0, 1] stay in [0, 1] and a constant mask is unchanged. ``sigma = 0`` returns a copy.
    Computed as ``A_H @ masks @ A_W^T`` with the (edge-folded) filter matrices: two batched matrix
    products, fast for the mask sizes of image models.
    """
    if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"`sigma` must be a non-negative finite number, got {sigma!r}")
    if masks.dim() < 2:
        raise ValueError(f"`masks` must have two spatial dimensions, got shape {tuple(masks.shape)}")
    if sigma == 0:
        return masks.clone()
    height, width = masks.shape[-2:]
    rows = _filter_matrix(height, float(sigma)).to(dtype=masks.dtype, device=masks.device)
    cols = _filter_matrix(width, float(sigma)).to(dtype=masks.dtype, device=masks.device)
    return torch.matmul(torch.matmul(rows, masks), cols.t())


def path_saturation(masks: Tensor, weights: Optional[Tensor] = None) -> Tensor:
    """Mean of ``|2 phi - 1|`` over the interior path points and the features: ``(...)`` from
    ``(..., T, G)``.

    1 when every mask is binary (each path point ablates a set of features completely), 0.5 for the
    straight-line path ``phi(t) = t`` with many points, 0 when every value is 1/2.
    """
    interior = masks[..., 1:-1, :]
    return _weighted_mean((2 * interior - 1).abs(), weights).mean(dim=-1)
