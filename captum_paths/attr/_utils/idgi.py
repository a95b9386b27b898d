"""IDGI's important-direction reweighting (Yang, Wang, Bilgic, CVPR 2023), shared by every IG-like path.

For a path ``p_0 .. p_K`` with gradients ``g_j = grad f(p_j)`` and scores ``y_j = f(p_j)``, IDGI attributes

.. math:: I = \\sum_{j=0}^{K-1} (y_{j+1} - y_j)\\, \\frac{g_j \\odot g_j}{\\|g_j\\|^2},

so the attributions of each segment sum to that segment's output change and ``sum(I) = y_K - y_0`` exactly
(telescoping), for any path and any number of steps. The norm runs over every element of the example (across
the input tuple). A segment whose gradient is (numerically) zero carries no direction: its term is skipped,
as the TMLR reproduction does (the official function returns NaN there); completeness then misses that
segment's output change, which is reported by the convergence delta.
"""

from typing import Tuple

import torch
from torch import Tensor

__all__ = ["idgi_segment", "idgi_accumulate_", "idgi_direction"]


def idgi_segment(grads: Tuple[Tensor, ...], score_change: Tensor) -> Tuple[Tensor, ...]:
    """IDGI's attribution of one segment per row: ``(y_{j+1} - y_j) g_j^2 / ||g_j||^2``.

    Args:
        grads: one ``(R, ...)`` tensor per input, the gradient at each row's segment start.
        score_change: ``(R,)`` the output change over each row's segment.

    Returns one tensor per input, the grads' shapes; rows with ``||g|| = 0`` give zeros.
    """
    rows = score_change.shape[0]
    squares = tuple(g * g for g in grads)
    norm2 = sum(s.reshape(rows, -1).sum(dim=1) for s in squares)
    tiny = torch.finfo(norm2.dtype).tiny
    weight = torch.where(norm2 > tiny, score_change.to(norm2.dtype) / norm2.clamp_min(tiny), torch.zeros_like(norm2))
    return tuple(s.mul_(weight.reshape((rows,) + (1,) * (s.dim() - 1))) for s in squares)


def idgi_accumulate_(totals: Tuple[Tensor, ...], grads: Tuple[Tensor, ...], score_change: Tensor) -> None:
    """Add :func:`idgi_segment` of rows that are one segment per example into ``totals`` (in place).

    ``totals`` are ``(N, ...)`` running sums and the rows are the ``N`` examples in order: the running
    reduction that keeps IDGI's memory independent of the number of steps.
    """
    for total, part in zip(totals, idgi_segment(grads, score_change)):
        total.add_(part.to(total.dtype))


def idgi_direction(grads: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """The unit-sum important direction of each row, ``g^2 / ||g||^2``, without the segment's output change.

    Args:
        grads: one ``(R, ...)`` tensor per input, a gradient per row; the norm runs over every element of the
            row across the tuple.

    Returns one tensor per input, the grads' shapes, each row summing (across the tuple) to one; rows with
    ``||g|| = 0`` give zeros (no direction). ``idgi_segment(grads, d)`` equals ``d * idgi_direction(grads)``
    up to rounding: for rules that share one gradient between two segments (e.g. a trapezoid rule).
    """
    rows = grads[0].shape[0]
    squares = tuple(g * g for g in grads)
    norm2 = sum(s.reshape(rows, -1).sum(dim=1) for s in squares)
    tiny = torch.finfo(norm2.dtype).tiny
    scale = torch.where(norm2 > tiny, norm2.clamp_min(tiny).reciprocal(), torch.zeros_like(norm2))
    return tuple(s.mul_(scale.reshape((rows,) + (1,) * (s.dim() - 1))) for s in squares)
