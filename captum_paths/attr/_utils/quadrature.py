"""Quadrature weights shared by the path methods."""

import torch
from torch import Tensor

__all__ = ["trapezoid_weights"]


def trapezoid_weights(n_points: int, dtype=torch.float64, device=None) -> Tensor:
    """Weights ``w`` with ``sum_k w[k] f(t_k)`` the trapezoid rule for ``int_0^1 f(t) dt`` over the
    ``n_points >= 2`` evenly spaced ``t_k = k / (n_points - 1)``: ``(n_points,)``, summing to one
    (``1 / (n_points - 1)`` inside, half that at the two ends)."""
    w = torch.full((n_points,), 1.0 / (n_points - 1), dtype=dtype, device=device)
    w[0] = w[-1] = 0.5 / (n_points - 1)
    return w
