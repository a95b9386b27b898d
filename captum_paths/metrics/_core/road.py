r"""ROAD: Remove And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022).

ROAD removes a share of the pixels, most relevant first (MoRF) or least relevant first (LeRF), fills them
with the *noisy linear imputation* and scores the model on the result, without retraining. The imputation
replaces every removed pixel by the weighted mean of its eight neighbours (orthogonal weight 1/6, diagonal
1/12, neighbours outside the image dropped), which is a sparse linear system over the removed pixels (a
discrete harmonic fill with the kept pixels as boundary values), and adds i.i.d. Gaussian noise. The
official code (``tleemann/road_evaluation``, MIT) solves it with SciPy's ``spsolve`` one image at a time on
the CPU; :func:`noisy_linear_impute` solves the same system for a whole batch on the inputs' device with a
matrix-free preconditioned conjugate gradient.

**Known bias.** Removal metrics that fill removed pixels from their neighbours reward spatially smooth
(blurry) maps: removing a compact blob is harder to undo by interpolation than removing scattered pixels
of the same relevance, so blurring an attribution map, which adds no information about the model, tends
to improve its MoRF score. Song, Cha and Seo (*On Pitfalls of RemOve-And-Retrain: Data Processing
Inequality Perspective*, arXiv:2304.13836) show this blurriness bias for ROAR and that it also appears in
ROAD; the issue "Using this in pytorch-grad-cam" (tleemann/road_evaluation#1) shows the large blurred
regions the imputer produces for smooth CAM maps. Compare methods whose maps have similar smoothness, or
report a blurred-map control beside ROAD.
"""

import math
import warnings
from numbers import Integral, Real
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_paths.attr._utils.validation import check_generator, check_internal_batch_size
from captum_paths.metrics._core._common import (
    ScoreSpec,
    check_fraction_sequence,
    check_target,
    class_indices,
    evaluate_rows,
    group_ranks,
    score_function,
)

__all__ = [
    "ROADResult",
    "road",
    "noisy_linear_impute",
    "neighbour_kernel",
    "neighbour_sum",
    "inbound_weight_sums",
    "imputation_operator",
    "imputation_rhs",
    "dense_imputation_system",
    "conjugate_gradient",
    "removed_pixel_counts",
    "road_ranks",
]

ORTHOGONAL_WEIGHT = 1.0 / 6.0  # official ``neighbors_weights``: the 4 orthogonal neighbours
DIAGONAL_WEIGHT = 1.0 / 12.0  # and the 4 diagonal ones; 4/6 + 4/12 = 1
DEFAULT_NOISE_STD = 0.01  # official NoisyLinearImputer(noise=0.01)
DEFAULT_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)  # the official demo's and the paper's runs
DEFAULT_JITTER = 1e-4  # official ImputedDataset: 1e-4 * N(0, 1) added to the min-max normalised map
_MINMAX_EPS = 1e-5  # official utils.normalize_map


# ------------------------------------------------------------------------------------ the linear system
def neighbour_kernel(dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    r"""The official neighbour weights as a 3x3 kernel ``K`` (zero centre): ``(3, 3)``.

    .. math:: K = \begin{pmatrix}1/12 & 1/6 & 1/12\\ 1/6 & 0 & 1/6\\ 1/12 & 1/6 & 1/12\end{pmatrix},
        \quad \textstyle\sum K = 1.
    """
    d, o = DIAGONAL_WEIGHT, ORTHOGONAL_WEIGHT
    return torch.tensor([[d, o, d], [o, 0.0, o], [d, o, d]], dtype=dtype, device=device)


def neighbour_sum(values: Tensor) -> Tensor:
    r"""``(K * v)(i) = sum_j w_ij v_j`` over the 8 neighbours, with zeros outside the image: same shape.

    ``values`` is ``(..., H, W)``. ``K`` is separable up to its centre, ``K = u u^T / 12 - e e^T / 3`` with
    ``u = (1, 2, 1)``, which is how it is computed: two 3-tap passes, so ``7`` passes over the data instead
    of a general convolution's ``9`` multiply-adds per pixel.
    """
    padded = F.pad(values, (1, 1, 1, 1))
    rows = padded[..., :, :-2] + padded[..., :, 2:] + 2 * padded[..., :, 1:-1]
    both = rows[..., :-2, :] + rows[..., 2:, :] + 2 * rows[..., 1:-1, :]
    return both / 12 - values / 3


def inbound_weight_sums(height: int, width: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    r"""``s_i = sum of the weights of pixel i's in-image neighbours``: ``(H, W)``.

    1 inside, 1 - 1/12 - 1/6 - 1/12 = 2/3 on an edge, 5/12 in a corner (the official ``sum_neighbors``).
    """
    return neighbour_sum(torch.ones(height, width, dtype=dtype, device=device))


def imputation_operator(values: Tensor, removed: Tensor, weight_sums: Tensor) -> Tensor:
    r"""The official system matrix applied matrix-free: ``A v = m (s v - K * (m v))``: shape of ``values``.

    ``values`` ``(..., H, W)``; ``removed`` (the mask ``m``, True = unknown) broadcastable to it;
    ``weight_sums`` ``s`` from :func:`inbound_weight_sums`. On the removed pixels this is the official
    ``-A`` (the code stores the equation with the opposite sign): ``s_i v_i - sum_{removed j} w_ij v_j``;
    it is 0 on kept pixels. Restricted to the removed pixels ``A`` is symmetric (``w_ij = w_ji``) and
    irreducibly diagonally dominant on every group of removed pixels that touches a kept pixel, hence
    positive definite.
    """
    m = removed.to(values.dtype)
    v = values * m
    return m * (weight_sums * v - neighbour_sum(v))


def imputation_rhs(images: Tensor, removed: Tensor) -> Tensor:
    r"""Right-hand sides ``b = m (K * ((1 - m) x))``: the weighted sum of each removed pixel's kept
    neighbours, per channel: shape of ``images`` ``(..., H, W)``, 0 on kept pixels."""
    m = removed.to(images.dtype)
    return m * neighbour_sum(images * (1 - m))


def dense_imputation_system(image: Tensor, removed: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    r"""The official system for one image, assembled densely: ``(A (n, n), b (n, C), index (n,))``.

    ``image`` ``(C, H, W)``, ``removed`` ``(H, W)`` bool; ``index`` are the flat (row-major) positions of
    the ``n`` removed pixels in ascending order (the official variable order). Row ``i``:
    ``s_i v_i - sum_{removed j} w_ij v_j = sum_{kept k} w_ik x_k``. Costs ``O(n^2)`` memory: for tests and
    small images (the official code builds the same matrix sparse and negated).
    """
    c, h, w = image.shape
    index = removed.reshape(-1).nonzero().reshape(-1)
    n = index.numel()
    a = torch.zeros(n, n, dtype=torch.float64, device=image.device)
    b = torch.zeros(n, c, dtype=torch.float64, device=image.device)
    position = torch.full((h * w,), -1, dtype=torch.long, device=image.device)
    position[index] = torch.arange(n, device=image.device)
    x = image.reshape(c, -1).to(torch.float64)
    kernel = neighbour_kernel(device=image.device)
    rows, cols = index // w, index % w
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            weight = kernel[dr + 1, dc + 1]
            if weight == 0:
                continue
            r, q = rows + dr, cols + dc
            inside = (r >= 0) & (r < h) & (q >= 0) & (q < w)
            eq = inside.nonzero().reshape(-1)
            neighbour = (r * w + q)[eq]
            a[eq, eq] += weight
            unknown = position[neighbour] >= 0
            a[eq[unknown], position[neighbour[unknown]]] -= weight
            b[eq[~unknown]] += weight * x[:, neighbour[~unknown]].T
    return a, b, index


# ------------------------------------------------------------------------------------------- the solver
def _padded_shape(height: int, width: int) -> Tuple[int, int]:
    """The grid holding an image with a ring of zeros around it: ``(H + 2, W + 2)``."""
    return height + 2, width + 2


def _neighbour_sum_padded(values: Tensor) -> Tensor:
    """:func:`neighbour_sum` of ``(S, H_p, W_p)`` contiguous grids whose outer ring is zero, computed on the
    flat rows (a row's left and right neighbours are its flat neighbours; the ring columns separate the
    rows). Values on the ring itself are meaningless and must be masked by the caller."""
    s, hp, wp = values.shape
    flat = values.reshape(s, hp * wp)
    horizontal = torch.zeros_like(flat)
    torch.add(flat[:, :-2], flat[:, 2:], out=horizontal[:, 1:-1])
    horizontal[:, 1:-1].add_(flat[:, 1:-1], alpha=2)
    out = torch.zeros_like(flat)
    torch.add(horizontal[:, : -2 * wp], horizontal[:, 2 * wp :], out=out[:, wp:-wp])
    out[:, wp:-wp].add_(horizontal[:, wp:-wp], alpha=2)
    return out.mul_(1 / 12).sub_(flat, alpha=1 / 3).reshape(s, hp, wp)


def conjugate_gradient(
    apply_a: Callable[..., Tensor],
    b: Tensor,
    inverse_diagonal: Tensor,
    rtol: float,
    max_iter: int,
    check_every: int = 4,
    operands: Sequence[Tensor] = (),
) -> Tuple[Tensor, Tensor]:
    r"""Jacobi-preconditioned conjugate gradient for ``S`` independent SPD systems ``A_k x_k = b_k`` at once.

    ``b`` and ``inverse_diagonal`` (``1 / diag(A_k)``, 0 where a system has no unknown) are ``(S, ...)``;
    ``apply_a(v, *operands)`` returns ``A_k v_k`` for the running systems, whose vectors are stacked in ``v``
    and whose rows of each ``operands`` tensor (``(S, ...)``, e.g. the systems' masks) are passed along:
    the operands are compacted with the iterates, so a step never gathers them. Inner products are per
    system, so the systems do not interact. Every ``check_every`` iterations the systems with
    ``max|b_k - A_k x_k| <= rtol * max|b_k|`` are set aside (a system with ``b_k = 0`` has ``x_k = 0`` and is
    done at once), so the cost follows the systems still running; a system still running after
    ``max_iter`` iterations keeps its last iterate.

    Returns ``(x (S, ...), converged (S,) bool)``. Per iteration: one ``apply_a``, two inner products and
    about six passes over the running systems.
    """
    dims = tuple(range(1, b.dim()))
    shape = (-1,) + (1,) * (b.dim() - 1)
    x_out = torch.zeros_like(b)
    converged = torch.zeros(b.shape[0], dtype=torch.bool, device=b.device)
    threshold = rtol * b.abs().amax(dims)
    r = b.clone()
    z = r * inverse_diagonal
    # the running systems' state; compacted together when systems converge
    state = [torch.arange(b.shape[0], device=b.device), torch.zeros_like(b), r, z.clone(), (r * z).sum(dims)]
    state += [threshold, inverse_diagonal, *operands]
    for iteration in range(max_iter + 1):
        if iteration % check_every == 0 or iteration == max_iter:
            index, x, r = state[:3]
            done = r.abs().amax(dims) <= state[5]
            if bool(done.any()):
                x_out[index[done]] = x[done]
                converged[index[done]] = True
                running = (~done).nonzero().reshape(-1)  # one index for every tensor: cheaper than masks
                state = [t.index_select(0, running) for t in state]
            if state[0].numel() == 0 or iteration == max_iter:
                break
        index, x, r, p, rz, _, inv = state[:7]
        ap = apply_a(p, *state[7:])
        pap = (p * ap).sum(dims)
        alpha = (rz / torch.where(pap > 0, pap, torch.ones_like(pap))).reshape(shape)
        x.addcmul_(p, alpha)
        r.addcmul_(ap, alpha, value=-1)
        z = r * inv
        rz_new = (r * z).sum(dims)
        beta = (rz_new / torch.where(rz > 0, rz, torch.ones_like(rz))).reshape(shape)
        p.mul_(beta).add_(z)
        state[4] = rz_new
    x_out[state[0]] = state[1]
    return x_out, converged


#: grid cells per CG batch on the CPU: about 2 MB per float64 vector, so that the iterates stay in the cache
#: (measured on 28x28 digits: 2x faster than one batch of 1,400 images); a GPU takes every image in one batch
#: (it wants wide batches; the caller bounds them). Results do not depend on it
_CG_BATCH_CELLS = 2**18


def _solve_harmonic_fill(
    images: Tensor, removed: Tensor, rtol: float, max_iter: Optional[int], dtype: torch.dtype
) -> Tensor:
    """Solution of the official system for every image and channel, in ``dtype``: ``(B, C, H, W)``, the
    input values on kept pixels. ``removed`` is ``(B, H, W)`` bool. On the CPU, images are solved in batches
    of about :data:`_CG_BATCH_CELLS` grid cells."""
    b_count, c, h, w = images.shape
    hp, wp = _padded_shape(h, w)
    inside = torch.zeros(1, hp, wp, dtype=dtype, device=images.device)
    inside[:, 1 : h + 1, 1 : w + 1] = 1
    sums = _neighbour_sum_padded(inside) * inside + (1 - inside)  # s, and 1 on the ring (never used)
    limit = max_iter if max_iter is not None else 10 * (h + w) + 100
    per_batch = max(1, _CG_BATCH_CELLS // (c * hp * wp)) if images.device.type == "cpu" else b_count
    filled = torch.empty(b_count, c, h, w, dtype=dtype, device=images.device)
    failed = 0
    for first in range(0, b_count, per_batch):
        rows = slice(first, first + per_batch)
        n = images[rows].shape[0]
        grid = torch.zeros(n, c, hp, wp, dtype=dtype, device=images.device)
        grid[:, :, 1 : h + 1, 1 : w + 1] = images[rows]
        mask = torch.zeros(n, 1, hp, wp, dtype=dtype, device=images.device)
        mask[:, 0, 1 : h + 1, 1 : w + 1] = removed[rows]
        mask = mask.expand(n, c, hp, wp).reshape(n * c, hp, wp)
        grid = grid.reshape(n * c, hp, wp)
        rhs = mask * _neighbour_sum_padded(grid * (1 - mask))
        solution, converged = conjugate_gradient(
            _apply_imputation_operator, rhs, mask / sums, rtol, limit, operands=(mask * sums, mask)
        )
        failed += int((~converged).sum())
        filled[rows] = torch.where(mask > 0, solution, grid)[:, 1 : h + 1, 1 : w + 1].reshape(n, c, h, w)
    if failed:
        warnings.warn(
            f"noisy_linear_impute: {failed} of {b_count * c} systems did not reach `rtol`={rtol} in "
            f"`max_iter`={limit} conjugate-gradient iterations; raise `max_iter`",
            RuntimeWarning,
            stacklevel=3,
        )
    return filled


def _apply_imputation_operator(v: Tensor, diagonal: Tensor, mask: Tensor) -> Tensor:
    """:func:`imputation_operator` on zero-ringed padded grids ``(S, H + 2, W + 2)``: ``diag v - m (K * v)``."""
    return torch.addcmul(diagonal * v, mask, _neighbour_sum_padded(v), value=-1)


def _check_imputer_arguments(
    images: Tensor, masks: Tensor, noise_std: Any, rtol: Any, max_iter: Any, dtype: Any
) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(
            f"`images` must be a (B, C, H, W) tensor, got {type(images).__name__} of shape "
            f"{tuple(getattr(images, 'shape', ()))}"
        )
    if not images.dtype.is_floating_point:
        raise TypeError(f"`images` must be a floating-point tensor, got dtype {images.dtype}")
    if not isinstance(masks, Tensor) or masks.dtype != torch.bool:
        raise TypeError(
            "`masks` must be a bool tensor, True where a pixel is removed (the official imputer's mask is the "
            f"opposite, 1 = kept: pass `official_mask == 0`), got {getattr(masks, 'dtype', type(masks).__name__)}"
        )
    b, _, h, w = images.shape
    if tuple(masks.shape) not in ((b, 1, h, w), (b, h, w)):
        raise ValueError(f"`masks` must have shape {(b, 1, h, w)} or {(b, h, w)}, got {tuple(masks.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("`images` contains non-finite values (nan or inf)")
    removed = masks.reshape(b, h, w).to(images.device)
    full = removed.flatten(1).all(1)
    if bool(full.any()):
        raise ValueError(
            f"`masks` removes every pixel of image(s) {full.nonzero().reshape(-1).tolist()}: the imputation "
            "system has no kept pixel to interpolate from (it is singular); keep at least one pixel"
        )
    if isinstance(noise_std, bool) or not isinstance(noise_std, Real) or not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"`noise_std` must be a finite number >= 0, got {noise_std!r}")
    if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, Real) or not 0 < rtol < 1):
        raise ValueError(f"`rtol` must be None or a number in (0, 1), got {rtol!r}")
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, Integral) or max_iter < 1):
        raise ValueError(f"`max_iter` must be None or a positive int, got {max_iter!r}")
    if dtype not in (None, torch.float64, torch.float32):
        raise ValueError(f"`dtype` must be None, torch.float64 or torch.float32, got {dtype!r}")
    return removed


def noisy_linear_impute(
    images: Tensor,
    masks: Tensor,
    noise_std: float = DEFAULT_NOISE_STD,
    generator: Union[None, int, torch.Generator] = None,
    rtol: Optional[float] = None,
    max_iter: Optional[int] = None,
    dtype: Optional[torch.dtype] = None,
) -> Tensor:
    r"""ROAD's noisy linear imputation, batched: each removed pixel becomes the weighted mean of its
    neighbours, plus Gaussian noise.

    For every image and channel the removed values ``v`` solve the official system (``N(i)``: the
    in-image 8-neighbours of ``i``, ``w`` = 1/6 orthogonal, 1/12 diagonal, ``s_i = sum_{j in N(i)} w_ij``):

    .. math:: s_i v_i - \sum_{j \in N(i),\ j\ \text{removed}} w_{ij} v_j
        = \sum_{k \in N(i),\ k\ \text{kept}} w_{ik} x_k,

    i.e. ``v_i`` is the ``w``-weighted mean of its in-image neighbours, and the output is ``v_i + noise_std
    * e`` with ``e ~ N(0, 1)`` i.i.d. per removed pixel and channel. Kept pixels are returned unchanged.
    The matrix is symmetric positive definite whenever an image keeps at least one pixel; it is solved
    matrix-free (:func:`imputation_operator`, :func:`imputation_rhs`) by Jacobi-preconditioned
    :func:`conjugate_gradient` in ``dtype`` (float64 for float64 images, float32 otherwise), all images and
    channels at once (in batches that stay in the CPU's cache), on ``images``' device.

    **Accuracy.** CG stops when ``max|b - A v| <= rtol * max|b|`` for each image and channel; the error is
    at most ``||A^{-1}||_inf`` times that (``A^{-1}`` grows with the squared diameter of a hole).

    * float64 (``rtol=1e-9``): max |difference| to a dense float64 solve of the official system below 1e-7
      on 28x28 digits at 10-90 % removal (``tests/metrics/test_road.py``); 1.2e-7 to the official
      ``NoisyLinearImputer`` (SciPy ``spsolve`` in float64, float32 output) on 100 digits: float32 rounding.
    * float32 (``rtol=1e-6``; float32 cannot reach 1e-9): 2.3e-5 on 28x28 digits at 10-90 % removal and
      2e-4 on 224x224 images with 90 % removed in one blob (``benchmarks/bench_road.py`` prints it against
      the official imputer), 50 to 500 times below the default noise (0.01) that ROAD adds to every imputed
      value, so the imputed images follow the official distribution. It halves the memory traffic: about 2x
      faster than float64 on the CPU (13.6x the official imputer's speed on 100 digits, float64 5.9x).
      The official code solves in float64 and returns float32 images.

    **Noise and seeding.** For image ``i`` (in batch order), ``torch.randn((C, n_i))`` is drawn, ``n_i``
    removed pixels in row-major order: exactly the official ``randn_like(res.t())``. So with float32
    images and ``generator=None`` the noise equals the official imputer's under the same global torch
    seed; with a ``generator`` (int seed or ``torch.Generator``) the draws come from it and torch's global
    RNG is not touched. Because draws are per image, a batch gives the same result as its images one at a
    time with the same generator passed along. Draws are made on the generator's device (the inputs'
    device when ``generator`` is None) in the images' dtype.

    Args:
        images (Tensor): ``(B, C, H, W)`` floating point, finite, in the units the noise is meant in (the
            official code imputes un-normalised [0, 1] images: ``noise_std`` 0.01 is 1 % of the range).
        masks (Tensor): ``(B, 1, H, W)`` or ``(B, H, W)`` bool, **True = removed** (to be imputed). Every
            image must keep at least one pixel. (The official mask is the complement: 1 = kept.)
        noise_std (float): standard deviation of the added noise, >= 0. Default: 0.01 (official).
        generator (int or torch.Generator, optional): source of the noise. Default: None (global RNG).
        rtol (float, optional): CG stopping rule above, in (0, 1). Default: None (1e-9 in float64, 1e-6
            in float32).
        max_iter (int, optional): CG iteration limit; a ``RuntimeWarning`` names the systems that did not
            converge. Default: None (``10 (H + W) + 100``; 28x28 digits need at most about 150).
        dtype (torch.dtype, optional): the solver's precision, ``torch.float64`` or ``torch.float32``.
            Default: None (float64 for float64 images, float32 otherwise: pass ``torch.float64`` for the
            official solver's precision on float32 images).

    Returns:
        Tensor ``(B, C, H, W)``: images' dtype and device.

    Cost: no model pass. Per CG iteration about ten passes over the ``B C (H + 2) (W + 2)`` grid; the
    iterations grow with the widest hole (tens at 28x28, hundreds at 224x224). Systems leave the batch as
    they converge. Memory: about eight ``dtype`` copies of a solver batch: on the CPU about 2**18 grid cells
    (at least one image) whatever ``B``; on a GPU the whole batch.
    """
    removed = _check_imputer_arguments(images, masks, noise_std, rtol, max_iter, dtype)
    if dtype is None:
        dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    if rtol is None:
        rtol = 1e-9 if dtype == torch.float64 else 1e-6
    gen = check_generator(generator)
    out = images.detach().clone()
    if not bool(removed.any()):
        return out
    filled = _solve_harmonic_fill(images.detach(), removed, float(rtol), max_iter, dtype).to(images.dtype)
    noise_device = gen.device if gen is not None else images.device
    for i in range(images.shape[0]):
        where = removed[i]
        values = filled[i][:, where]
        if noise_std > 0 and values.shape[1] > 0:
            noise = torch.randn(values.shape, generator=gen, dtype=images.dtype, device=noise_device)
            values = values + noise_std * noise.to(images.device)
        out[i][:, where] = values
    return out


# ------------------------------------------------------------------------------------------------- ROAD
class ROADResult(NamedTuple):
    """Per-example results of :func:`road` with ``return_curves=True`` (``N`` examples, ``P`` percentages).

    Attributes:
        value (Tensor): ``(N,)`` what :func:`road` returns: ``morf.mean(1)``, ``lerf.mean(1)`` or
            ``combined.mean(1)`` for ``order`` = ``"morf"``, ``"lerf"``, ``"both"``.
        morf (Tensor or None): ``(N, P)`` score with the most relevant share ``p`` removed (lower is better).
        lerf (Tensor or None): ``(N, P)`` score with the least relevant share ``p`` removed (higher is better).
        combined (Tensor or None): ``(N, P)`` ``(lerf - morf) / 2`` when ``order="both"`` (higher is better).
        percentages (Tensor): ``(P,)`` float64, the shares removed.
    """

    value: Tensor
    morf: Optional[Tensor]
    lerf: Optional[Tensor]
    combined: Optional[Tensor]
    percentages: Tensor


def removed_pixel_counts(percentages: Sequence[float], n_pixels: int) -> Tensor:
    """Pixels removed at each share: ``int(n_pixels * p)`` exactly as the official code truncates: ``(P,)``."""
    return torch.tensor([int(n_pixels * float(p)) for p in percentages], dtype=torch.long)


def road_ranks(attributions: Tensor, jitter: Tensor) -> Tensor:
    r"""Rank of every pixel, 0 = most relevant: ``(N, H W)`` long (the official ordering).

    The map is summed over channels, min-max normalised per example, ``(a - min) / (max - min + 1e-5)``,
    the fixed ``jitter`` ``(H, W)`` is added (it breaks ties), and pixels are sorted descending (ties left
    after that by pixel index). ``attributions`` is ``(N, C, H, W)``.
    """
    summed = attributions.to(torch.float64).sum(1).flatten(1)
    low, high = summed.amin(1, keepdim=True), summed.amax(1, keepdim=True)
    normalised = (summed - low) / (high - low + _MINMAX_EPS)
    return group_ranks(normalised + jitter.to(normalised).reshape(1, -1))


def _class_indices(target: Any, n: int, device) -> Tensor:
    """One class per row for the accuracy score, or ValueError."""
    classes = class_indices(target, n, device)
    if classes is not None:
        return classes
    raise ValueError(
        "`score`='accuracy' needs `target` to name one class per example (an int, a list of ints or an "
        f"integer tensor of N entries, e.g. the labels), got {type(target).__name__}"
    )


def _accuracy(output: Tensor, target: Any, n: int) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise ValueError(
            f"`score`='accuracy' needs a model output of shape (N, classes), got {tuple(getattr(output, 'shape', ()))}"
        )
    return (output.argmax(1) == _class_indices(target, n, output.device)).to(torch.get_default_dtype())


def _check_road_arguments(inputs, attributions, order, imputer, score, jitter, show_progress, return_curves):
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise TypeError(
            "`inputs` must be one (N, C, H, W) image tensor (ROAD removes pixels), got "
            f"{type(inputs).__name__} of shape {tuple(getattr(inputs, 'shape', ()))}"
        )
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"`inputs` must be a floating-point tensor, got dtype {inputs.dtype}")
    n, _, h, w = inputs.shape
    if not isinstance(attributions, Tensor) or tuple(attributions.shape) not in (tuple(inputs.shape), (n, 1, h, w)):
        raise ValueError(
            f"`attributions` must be a tensor of shape {tuple(inputs.shape)} (the inputs') or {(n, 1, h, w)}, "
            f"got {type(attributions).__name__} of shape {tuple(getattr(attributions, 'shape', ()))}"
        )
    if not torch.isfinite(inputs).all():
        raise ValueError("`inputs` contains non-finite values (nan or inf)")
    if not torch.isfinite(attributions).all():
        raise ValueError("`attributions` contains non-finite values (nan or inf)")
    if order not in ("morf", "lerf", "both"):
        raise ValueError(f"`order` must be 'morf', 'lerf' or 'both', got {order!r}")
    if not callable(imputer):
        raise TypeError(f"`imputer` must be callable(images, masks, generator=...), got {type(imputer).__name__}")
    if not (score in ("accuracy", "softmax", "logit") or (callable(score) and not isinstance(score, str))):
        raise ValueError(f"`score` must be 'accuracy', 'softmax', 'logit' or a callable(output, target), got {score!r}")
    if isinstance(jitter, bool) or not isinstance(jitter, Real) or not math.isfinite(jitter) or jitter < 0:
        raise ValueError(f"`jitter` must be a finite number >= 0, got {jitter!r}")
    for name, flag in (("show_progress", show_progress), ("return_curves", return_curves)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {type(flag).__name__}")


def _impute_rows(imputer, images: Tensor, removed: Tensor, generator) -> Tensor:
    imputed = imputer(images, removed, generator=generator)
    if not isinstance(imputed, Tensor) or imputed.shape != images.shape:
        raise ValueError(
            f"`imputer` must return a tensor of the images' shape {tuple(images.shape)}, got "
            f"{type(imputed).__name__} of shape {tuple(getattr(imputed, 'shape', ()))}"
        )
    return imputed


def _road_result(scores: Tensor, orders: Tuple[str, ...], order: str, fractions: Tensor) -> ROADResult:
    curves = dict(zip(orders, scores.unbind(1)))
    morf, lerf = curves.get("morf"), curves.get("lerf")
    combined = (lerf - morf) / 2 if order == "both" else None
    main = {"morf": morf, "lerf": lerf, "both": combined}[order]
    return ROADResult(main.mean(1), morf, lerf, combined, fractions)


def road(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: Any = None,
    additional_forward_args: Any = None,
    percentages: Sequence[float] = DEFAULT_PERCENTAGES,
    order: str = "morf",
    imputer: Callable[..., Tensor] = noisy_linear_impute,
    score: ScoreSpec = "accuracy",
    max_examples_per_batch: Optional[int] = 64,
    show_progress: bool = False,
    generator: Union[None, int, torch.Generator] = None,
    return_curves: bool = False,
    jitter: float = DEFAULT_JITTER,
) -> Union[Tensor, ROADResult]:
    r"""ROAD (Rong et al., ICML 2022): the score after removing a share of the pixels, most relevant first
    (MoRF: lower is better) or least relevant first (LeRF: higher is better), imputed without retraining.

    Pixels are ranked by :func:`road_ranks` (channel sum, min-max normalised, plus a fixed ``jitter`` map
    drawn once per call from ``generator``). For each share ``p`` with ``k = int(H W p)``:

    * MoRF removes the ``k`` most relevant pixels; LeRF removes the ``k`` least relevant ones;
    * the removed pixels are filled by ``imputer`` (default :func:`noisy_linear_impute`, noise 0.01 in
      input units) and ``c_p = score(f(x_p))`` is recorded.

    ``road`` returns, per example, the **mean of the curve over the percentages**: ``mean_p MoRF(p)``,
    ``mean_p LeRF(p)``, or for ``order="both"`` ``mean_p (LeRF(p) - MoRF(p)) / 2`` (pytorch-grad-cam's
    ``ROADCombined``; higher is better: relevant pixels matter and irrelevant ones do not). With
    ``score="accuracy"`` the mean over examples of a curve is the paper's accuracy curve.

    **Deviations from the official code** (``tleemann/road_evaluation``, read at e6b9987), each on purpose:

    * LeRF: the official ``remove=False`` at ``th_p`` keeps the top ``int(H W th_p)`` pixels (``th_p`` is the
      share *kept*). Here both orders take ``p`` as the share *removed*, so the two curves share an x-axis;
      the official LeRF value at ``th_p`` is ours at ``p = 1 - th_p`` (up to one pixel of truncation).
    * The jitter map is drawn once per call, so MoRF masks are nested across percentages; the official
      draws one per ``ImputedDataset``, i.e. a new one per percentage, from NumPy's global RNG.
    * ``score="softmax"`` is the softmax probability of ``target``. The official "probability" is meant to be
      that of the predicted class but ``run_road`` passes no predictions, so it is always class 0's (bug).
    * Imputation uses :func:`noisy_linear_impute` (same system, same noise law, batched CG instead of
      ``spsolve``; agreement stated there). The official ``NoisyLinearImputer`` ignores its ``weighting``
      argument (bug); pass a different ``imputer`` instead.
    * Known bias: ROAD favours blurry maps; see this module's docstring (Song et al., arXiv:2304.13836).

    Args:
        forward_func (Callable): the model or any function of the inputs returning its output.
        inputs (Tensor): ``(N, C, H, W)`` images, in the units ``imputer`` expects (the official code
            imputes un-normalised [0, 1] images and normalises afterwards: put that normalisation inside
            ``forward_func`` to reproduce it).
        attributions (Tensor): ``(N, C, H, W)`` (the inputs' shape) or ``(N, 1, H, W)``; summed over channels.
        target (int, tuple, Tensor or list, optional): Captum target. For ``score="accuracy"`` one class
            per example (the labels, as in the paper). Default: None.
        additional_forward_args (Any, optional): extra arguments of ``forward_func``; tensors with ``N``
            rows are per example. Default: None.
        percentages (sequence of float): shares removed, each in (0, 1). Default: ``(0.1, 0.2, 0.3, 0.4,
            0.5, 0.7, 0.9)`` (official demo and paper).
        order (str): ``"morf"``, ``"lerf"`` or ``"both"``. Default: ``"morf"`` (``run_road``'s ``morf=True``).
        imputer (Callable): ``imputer(images (B, C, H, W), masks (B, 1, H, W) bool True = removed,
            generator=...) -> (B, C, H, W)``. Default: :func:`noisy_linear_impute` (official defaults; use
            ``functools.partial`` to change ``noise_std``).
        score (str or Callable): ``"accuracy"`` (``argmax f(x_p) == target``: what the paper plots and
            ``run_road`` returns first), ``"softmax"``, ``"logit"`` or a callable ``(output, target) ->
            (rows,)``. Default: ``"accuracy"``.
        max_examples_per_batch (int, optional): at most this many imputed images per imputation and per
            forward pass; bounds memory. Default: 64. None: all ``N P`` (x 2 for ``"both"``) at once.
        show_progress (bool): tqdm progress over batches. Default: False.
        generator (int or torch.Generator, optional): seeds the jitter map and the imputation noise; the
            global RNG is untouched when given. Results do not depend on ``max_examples_per_batch``
            (noise is drawn row by row in a fixed order). Default: None (global RNG).
        return_curves (bool): return a :class:`ROADResult` instead of the ``(N,)`` tensor. Default: False.
        jitter (float): scale of the tie-breaking map added to the normalised attribution. Default: 1e-4
            (official). 0 ranks ties by pixel index.

    Returns:
        ``(N,)`` on the inputs' device, or a :class:`ROADResult` with ``return_curves=True``. ``N = 0``
        gives empty results without calling the model.

    Cost: ``N P`` model passes (``2 N P`` for ``"both"``), no gradients, in batches of
    ``max_examples_per_batch``, and one imputation of as many images (see :func:`noisy_linear_impute`).
    """
    _check_road_arguments(inputs, attributions, order, imputer, score, jitter, show_progress, return_curves)
    fractions = check_fraction_sequence(percentages, "percentages")
    check_internal_batch_size(max_examples_per_batch, "max_examples_per_batch")
    n, _, h, w = inputs.shape
    check_target(target, n)
    if score == "accuracy" and n > 0:
        _class_indices(target, n, inputs.device)
    score_fn = _accuracy if score == "accuracy" else score_function(score)
    gen = check_generator(generator)
    orders = ("morf", "lerf") if order == "both" else (order,)
    n_p, n_o = len(fractions), len(orders)
    if n == 0:
        empty = inputs.new_zeros((0, n_p))
        result = _road_result(inputs.new_zeros((0, n_o, n_p)), orders, order, fractions)
        return result if return_curves else empty.mean(1)
    images = inputs.detach()
    jitter_map = jitter * torch.randn(
        (h, w), generator=gen, dtype=torch.float64, device=gen.device if gen is not None else images.device
    )
    ranks = road_ranks(attributions.detach().to(images.device), jitter_map)
    counts = removed_pixel_counts(fractions.tolist(), h * w).to(images.device)
    lerf_flags = torch.tensor([o == "lerf" for o in orders], device=images.device)
    per_example = n_o * n_p

    def make_rows(rows: Tensor) -> Tuple[Tensor]:
        example, rest = rows // per_example, rows % per_example
        k = counts[rest % n_p].unsqueeze(1)
        rank = ranks[example]
        removed = torch.where(lerf_flags[rest // n_p].unsqueeze(1), rank >= h * w - k, rank < k)
        return (_impute_rows(imputer, images[example], removed.reshape(-1, 1, h, w), gen),)

    row_examples = torch.arange(n, device=images.device).repeat_interleave(per_example)
    scores = evaluate_rows(
        forward_func,
        make_rows,
        row_examples,
        n,
        target,
        additional_forward_args,
        score_fn,
        max_examples_per_batch,
        show_progress,
        desc="road",
    )
    result = _road_result(scores.reshape(n, n_o, n_p), orders, order, fractions)
    return result if return_curves else result.value
