r"""Performance Information Curves: SIC and AIC (Kapishnikov et al., "XRAI", ICCV 2019).

Computed as PAIR saliency 0.2.1's ``saliency/metrics/pic.py`` computes them (``compute_pic_metric`` per
image, then ``aggregate_individual_pic_results``), re-implemented here in torch and batched across images
and thresholds. For an image ``I`` (quantised to 8 bits, as PAIR's images are ``uint8``), a saliency map
``S`` (H, W), a random seed mask ``R`` and thresholds ``tau_1 < ... < tau_T``:

1. ``Blur(I, M)`` keeps the pixels where ``M`` is true and fills every other pixel by *linear
   scattered-data interpolation* over the Delaunay triangulation of the kept pixels (scipy's Qhull, as
   PAIR's ``griddata(method='linear')``), the four corners always kept; rounded half-to-even to ``uint8``.
   It is not a Gaussian blur.
2. Start image ``I_0 = Blur(I, R)``; saliency-focused images ``I_k = Blur(I, M_k)``,
   ``M_k = (S >= Q_S(1 - tau_k)) | R`` with ``Q_S`` numpy's linear quantile (ties at the quantile are all
   revealed).
3. Information ``E`` of an image (a proxy): PAIR's byte length of a lossless WebP encoding, or the GGIG
   paper's Shannon entropy of the grey image. ``e_k = clip((E(I_k) - E(I_0)) / (E(I) - E(I_0)), 0, 1)``.
4. Performance ``P``: the softmax probability of the class (SIC), or 1 if the model's top-1 class is the
   class and 0 otherwise (AIC). ``p_k = clip((P(I_k) - P(I_0)) / (P(I) - P(I_0)), 0, 1)``, then the running
   maximum over ``k`` (``keep_monotonous``).
5. The points ``(e_k, p_k)``, ``(0, 0)`` and ``(1, 1)``, sorted by ``e`` (stably), are linearly
   interpolated (``np.interp`` rules) at ``x = j / D``, ``j = 0..D-1``, and ``(1, 1)`` is appended: a curve of
   ``D + 1`` points; its per-image AUC is the trapezoid rule.
6. An image is skipped (PAIR raises ``ComputePicMetricError``) when ``P(I) < min_pred_value``,
   ``E(I_0) >= E(I)`` or ``P(I_0) >= P(I)``. The aggregate curve is the per-``x`` median (or mean) of the
   kept images' curves, and the aggregate AUC is the trapezoid of that curve (not the median of the AUCs).

The model passes are batched; the CPU work that is not a tensor operation is one Qhull triangulation per
image and threshold (PAIR: one per channel, plus scipy's point location) and, for the WebP proxy, one
encoding per image and threshold.
"""

import io
import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_paths.attr._utils.validation import check_generator, check_positive_int, check_probability
from captum_paths.metrics._core._common import class_indices, evaluate_rows

__all__ = [
    "PAIR_THRESHOLDS",
    "PicCurve",
    "PicResult",
    "pic",
    "sic",
    "aic",
    "saliency_map",
    "linear_quantile",
    "threshold_masks",
    "random_seed_masks",
    "interpolate_from_mask",
    "webp_size",
    "grey_entropy",
    "normalize_points",
    "pic_curves",
    "trapezoid",
    "aggregate_curves",
    "quantize",
]

#: The thresholds of PAIR's docstring and notebook (its function has no default).
PAIR_THRESHOLDS = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75)
_REDUCTIONS = ("abs_sum", "sum_abs", "sum")
_SKIP_REASONS = ("kept", "prediction below min_pred_value", "start information >= original", "start score >= original")


# ------------------------------------------------------------------------------------------ result types
@dataclass(frozen=True)
class PicCurve:
    """One Performance Information Curve (SIC or AIC) of ``N`` images, ``T`` thresholds, ``D + 1`` points.

    Attributes:
        x (Tensor): ``(D + 1,)`` float64, ``j / D`` for ``j = 0..D`` (PAIR's ``curve_x``).
        curves (Tensor): ``(N, D + 1)`` float64 per-image curves (PAIR's ``curve_y``); NaN rows for skipped
            images.
        auc (Tensor): ``(N,)`` per-image trapezoid AUC (PAIR's ``auc``); NaN for skipped images.
        valid (Tensor): ``(N,)`` bool, the images kept (PAIR raises ``ComputePicMetricError`` for the others).
        skip_reason (Tensor): ``(N,)`` int8: 0 kept; 1 ``P(I) < min_pred_value``; 2 ``E(I_0) >= E(I)``;
            3 ``P(I_0) >= P(I)`` (the first that applies, in PAIR's order; see ``PicResult.SKIP_REASONS``).
        scores (Tensor): ``(N, T + 2)`` raw performance ``[P(I_0), P(I_1..T), P(I)]`` (PAIR's
            ``predictions``), in the model output's dtype.
        points (Tensor): ``(N, T)`` float64 normalised (clipped, running-max if ``keep_monotonous``) ``p_k``.
        aggregate_curve (Tensor): ``(D + 1,)`` median (or mean) over the kept images; NaN if none is kept.
        aggregate_auc (Tensor): ``()`` trapezoid AUC of ``aggregate_curve`` (PAIR's aggregated ``auc``).
    """

    x: Tensor
    curves: Tensor
    auc: Tensor
    valid: Tensor
    skip_reason: Tensor
    scores: Tensor
    points: Tensor
    aggregate_curve: Tensor
    aggregate_auc: Tensor


@dataclass(frozen=True)
class PicResult:
    """SIC and AIC from the same images and model passes, and what they share.

    Attributes:
        sic (PicCurve): softmax information curve.
        aic (PicCurve): accuracy information curve.
        information (Tensor): ``(N, T + 2)`` float64 raw information ``[E(I_0), E(I_1..T), E(I)]``.
        information_points (Tensor): ``(N, T)`` float64 normalised, clipped ``e_k`` (NaN where
            ``E(I) = E(I_0)``).
        target (Tensor): ``(N,)`` long, the class scored per image.
        thresholds (Tensor): ``(T,)`` float64.
    """

    SKIP_REASONS = _SKIP_REASONS

    sic: PicCurve
    aic: PicCurve
    information: Tensor
    information_points: Tensor
    target: Tensor
    thresholds: Tensor


# ----------------------------------------------------------------------------------------- pure pieces
def saliency_map(attributions: Tensor, reduction: str = "abs_sum") -> Tensor:
    r"""Per-pixel saliency ``(N, H, W)`` of attributions ``(N, C, H, W)``.

    ``"abs_sum"``: :math:`|\sum_c A_c|` (PAIR's notebook); ``"sum_abs"``: :math:`\sum_c |A_c|`;
    ``"sum"``: :math:`\sum_c A_c` (signed). PAIR leaves this choice to the caller. Half precision is
    promoted to float32; float32 / float64 are kept (the thresholds depend on the dtype, as numpy's do).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`saliency_reduction` must be one of {_REDUCTIONS}, got {reduction!r}")
    a = attributions if attributions.dtype in (torch.float32, torch.float64) else attributions.float()
    if reduction == "abs_sum":
        return a.sum(1).abs()
    if reduction == "sum_abs":
        return a.abs().sum(1)
    return a.sum(1)


def linear_quantile(values: Tensor, q: float) -> Tensor:
    """numpy's ``np.quantile(v, q)`` (method ``'linear'``) of every row of ``values`` ``(N, D)``: ``(N,)``.

    Bit-identical to numpy for float32 and float64 rows: virtual index ``(D - 1) q`` in float64, then
    numpy's two-sided lerp in the rows' dtype (``b - (b - a)(1 - g)`` when ``g >= 0.5``).
    """
    d = values.shape[1]
    s = values.sort(dim=1).values
    virtual = (d - 1) * float(q)
    if virtual >= d - 1:
        return s[:, -1]
    if virtual < 0:
        return s[:, 0]
    lo = math.floor(virtual)
    gamma = virtual - lo
    a, b = s[:, lo], s[:, lo + 1]
    diff = b - a
    if gamma >= 0.5:
        return b - diff * torch.tensor(1 - gamma, dtype=s.dtype, device=s.device)
    return a + diff * torch.tensor(gamma, dtype=s.dtype, device=s.device)


def threshold_masks(saliency: Tensor, thresholds: Sequence[float], seed_masks: Tensor, ties: str = "pair") -> Tensor:
    """Reveal masks ``(N, T, H, W)`` bool of saliency ``(N, H, W)`` at each threshold, united with the seeds.

    ``ties="pair"`` (PAIR, default): ``S >= Q_S(1 - tau)`` (numpy's linear quantile), so pixels tied at
    the quantile are all revealed: a map whose lower half is zero reveals the whole image at
    ``tau = 0.5``. ``ties="rank"`` (fix): exactly ``k = D - ceil((D - 1)(1 - tau))`` pixels (what
    ``"pair"`` reveals when there are no ties), ties broken by pixel index, lower first.
    ``seed_masks`` ``(N, H, W)`` bool are OR-ed in.
    """
    n, h, w = saliency.shape
    flat = saliency.reshape(n, h * w)
    out = torch.empty((n, len(thresholds), h * w), dtype=torch.bool, device=saliency.device)
    if ties == "rank":
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=flat.device).expand(n, -1))
    for k, tau in enumerate(thresholds):
        if ties == "pair":
            out[:, k] = flat >= linear_quantile(flat, 1 - tau).unsqueeze(1)
        else:
            out[:, k] = ranks < h * w - math.ceil((h * w - 1) * (1 - tau))
    return (out | seed_masks.reshape(n, 1, h * w)).reshape(n, len(thresholds), h, w)


def random_seed_masks(
    n: int, height: int, width: int, fraction: float = 0.01, generator: Optional[torch.Generator] = None
) -> Tensor:
    """``(n, height, width)`` bool masks with exactly ``int(height * width * fraction)`` true pixels each
    (PAIR's ``generate_random_mask``: uniform without replacement; drawn from ``generator``, not numpy)."""
    k = int(height * width * fraction)
    order = torch.rand((n, height * width), generator=generator).argsort(dim=1)
    mask = torch.zeros((n, height * width), dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask.reshape(n, height, width)


def _triangulation_weights(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of the false pixels of ``mask`` (H, W) from its true pixels over scipy's Delaunay
    triangulation: ``(unknown (P,), vertices (P, 3), weights (P, 3))``, flat pixel indices, float64 weights.

    The points are the true pixels in ``np.argwhere`` order, as float64, so Qhull triangulates exactly what
    ``griddata`` does. Point location is exact integer arithmetic: only triangles of doubled area > 1 can
    hold a grid point other than their vertices (Pick), and a pixel on an edge shared by two triangles takes
    the first (both give the same value up to rounding well below float32's, which the rounding absorbs).
    """
    from scipy.spatial import Delaunay

    h, w = mask.shape
    known, unknown = np.flatnonzero(mask), np.flatnonzero(~mask)
    pts = np.stack([known // w, known % w], 1)
    simplices = Delaunay(pts.astype(np.float64)).simplices
    v = pts[simplices]  # (S, 3, 2) int
    area2 = (v[:, 1, 0] - v[:, 0, 0]) * (v[:, 2, 1] - v[:, 0, 1]) - (v[:, 1, 1] - v[:, 0, 1]) * (
        v[:, 2, 0] - v[:, 0, 0]
    )
    big = np.flatnonzero(np.abs(area2) > 1)
    lo, hi = v[big].min(1), v[big].max(1)
    extent = hi - lo + 1
    counts = extent[:, 0] * extent[:, 1]
    tri = np.repeat(np.arange(len(big)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    p = np.stack([lo[tri, 0] + offset // extent[tri, 1], lo[tri, 1] + offset % extent[tri, 1]], 1)
    vt, a2 = v[big][tri], area2[big][tri]
    # barycentric numerators: doubled signed areas of (p, v_{i+1}, v_{i+2}), exact in int64
    bary = (
        np.stack(
            [
                (vt[:, j1, 0] - p[:, 0]) * (vt[:, j2, 1] - p[:, 1])
                - (vt[:, j1, 1] - p[:, 1]) * (vt[:, j2, 0] - p[:, 0])
                for j1, j2 in ((1, 2), (2, 0), (0, 1))
            ],
            1,
        )
        * np.sign(a2)[:, None]
    )
    flat_p = p[:, 0] * w + p[:, 1]
    inside = (bary >= 0).all(1) & ~mask.reshape(-1)[flat_p]
    flat_p, first = np.unique(flat_p[inside], return_index=True)
    if len(flat_p) != len(unknown):  # the corners make the hull the whole image: every pixel is located
        raise RuntimeError(f"located {len(flat_p)} of {len(unknown)} pixels in the triangulation")
    sel = np.flatnonzero(inside)[first]
    vertices = known[simplices[big][tri[sel]]]
    return flat_p, vertices, bary[sel] / np.abs(a2[sel])[:, None]


def interpolate_from_mask(images: Tensor, masks: Tensor) -> Tensor:
    """PAIR's ``create_blurred_image`` for a batch: ``images`` ``(B, C, H, W)`` uint8, ``masks`` ``(B, H, W)``
    bool (true = keep): ``(B, C, H, W)`` uint8.

    The four corners are forced into every mask; a full mask returns the image. Each false pixel gets the
    linear (barycentric) interpolation, over the Delaunay triangulation of the kept pixels, of their values,
    computed in float64, stored in float32 and rounded half-to-even, exactly as PAIR does. PAIR's
    ``fill_value`` (the channel mean) is never used: the corners make the hull the whole image. One Qhull
    triangulation per image (PAIR: one per channel); the interpolation itself is one batched gather.
    """
    b, c, h, w = images.shape
    masks = masks.clone()
    masks[:, [0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
    out = images.reshape(b, c, h * w).to(torch.float32)
    masks_np = masks.cpu().numpy()
    unknown, vertices, weights = [], [], []
    for i in range(b):
        if masks_np[i].all():
            continue
        u, v, wt = _triangulation_weights(masks_np[i])
        unknown.append(u + i * h * w)
        vertices.append(v + i * h * w)
        weights.append(wt)
    if unknown:
        dev = images.device
        u = torch.from_numpy(np.concatenate(unknown)).to(dev)
        v = torch.from_numpy(np.concatenate(vertices)).to(dev)
        wt = torch.from_numpy(np.concatenate(weights)).to(dev)
        src = images.reshape(b, c, h * w).transpose(0, 1).reshape(c, b * h * w).to(torch.float64)
        values = (src[:, v] * wt).sum(-1).to(torch.float32)
        flat = out.transpose(0, 1).reshape(c, b * h * w)
        flat[:, u] = values
        out = flat.reshape(c, b, h * w).transpose(0, 1)
    return out.round().to(torch.uint8).reshape(b, c, h, w)


def webp_size(images: Tensor) -> Tensor:
    """PAIR's ``estimate_image_entropy``: byte length of the lossless WebP encoding (PIL, ``lossless=True,
    quality=100``) of each ``(B, C, H, W)`` uint8 image, ``C`` in {1 (encoded as 'L', as PAIR's ``[H, W]``
    arrays), 3, 4}: ``(B,)`` float64. Sizes depend on the Pillow / libwebp build."""
    from PIL import Image

    arrays = images.cpu().permute(0, 2, 3, 1).numpy()
    sizes = []
    for a in arrays:
        buffer = io.BytesIO()
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(buffer, format="webp", lossless=True, quality=100)
        sizes.append(buffer.tell())
    return torch.tensor(sizes, dtype=torch.float64)


def grey_entropy(images: Tensor) -> Tensor:
    r"""The GGIG paper's information proxy: Shannon entropy (nats) of the distinct grey values of each
    ``(B, C, H, W)`` uint8 image: :math:`-\sum_v p_v \ln p_v`, ``p_v`` the share of pixels of grey value ``v``
    (no binning): ``(B,)`` float64.

    Grey is skimage's ``rgb2gray`` of the image as floats in [0, 1] (``0.2125 R + 0.7154 G + 0.0721 B``) for
    ``C = 3``, the image itself for ``C = 1``. (GGIG applies it to the image holding only the revealed
    pixels; here it is the proxy of PAIR's pipeline, applied to the saliency-focused images.)
    """
    b, c = images.shape[:2]
    x = images.to(torch.float64) / 255.0
    if c == 3:
        grey = x[:, 0] * 0.2125 + x[:, 1] * 0.7154 + x[:, 2] * 0.0721
    else:
        grey = x[:, 0]
    s = grey.reshape(b, -1).sort(dim=1).values
    new = torch.ones_like(s, dtype=torch.bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    run = new.cumsum(1) - 1
    counts = torch.zeros_like(s).scatter_add_(1, run, torch.ones_like(s))
    p = counts / s.shape[1]
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)


def quantize(inputs: Tensor, low: Union[float, Tensor], high: Union[float, Tensor]) -> Tensor:
    """Model inputs ``(N, C, H, W)`` in ``[low, high]`` as uint8 ``round(255 (x - low) / (high - low))``,
    clamped to 0..255 (PAIR's images are uint8; the model sees ``low + u (high - low) / 255``)."""
    return ((inputs - low) / (high - low) * 255).round().clamp(0, 255).to(torch.uint8)


def normalize_points(values: Tensor, start: Tensor, original: Tensor, running_max: bool = False) -> Tensor:
    """``clip((v - start) / (original - start), 0, 1)`` of ``values`` ``(N, T)`` with ``start``, ``original``
    ``(N,)`` (PAIR's normalisation of information and of predictions, in the inputs' dtype); with
    ``running_max`` the running maximum over ``T`` (PAIR's ``keep_monotonous``)."""
    out = ((values - start.unsqueeze(1)) / (original - start).unsqueeze(1)).clamp(0, 1)
    return out.cummax(dim=1).values if running_max and out.shape[1] else out


def pic_curves(information: Tensor, performance: Tensor, num_data_points: int = 1000) -> Tuple[Tensor, Tensor]:
    """PAIR's per-image curve: ``(x (D + 1,), y (N, D + 1))`` float64 from points ``(e, p)`` ``(N, T)``.

    Appends ``(0, 0)`` and ``(1, 1)`` after the ``T`` points, sorts by ``e`` stably (scipy ``interp1d``'s
    mergesort), and evaluates ``np.interp``: at ``x`` the point ``j`` is the last with ``e_j <= x``; ``y = p_j``
    if ``e_j == x`` or ``j`` is last, else the line to point ``j + 1``. ``x_j = j / D`` for ``j < D``, then
    ``(1, 1)``. NaN rows in, NaN rows out.
    """
    n, t = information.shape
    dev = information.device
    e = torch.cat([information.double(), torch.zeros(n, 1, device=dev), torch.ones(n, 1, device=dev)], 1)
    p = torch.cat([performance.double(), torch.zeros(n, 1, device=dev), torch.ones(n, 1, device=dev)], 1)
    e, order = torch.sort(e, dim=1, stable=True)
    p = p.gather(1, order)
    x = torch.arange(num_data_points, dtype=torch.float64, device=dev) * (1.0 / num_data_points)
    j = (torch.searchsorted(e.contiguous(), x.expand(n, -1).contiguous(), right=True) - 1).clamp(0, t + 1)
    j1 = (j + 1).clamp(max=t + 1)
    e0, e1, p0, p1 = e.gather(1, j), e.gather(1, j1), p.gather(1, j), p.gather(1, j1)
    slope = (p1 - p0) / torch.where(e1 > e0, e1 - e0, torch.ones_like(e0))
    y = torch.where((e0 == x) | (j == t + 1), p0, slope * (x - e0) + p0)
    ones = torch.ones(1, dtype=torch.float64, device=dev)
    y = torch.cat([y, ones.expand(n, 1)], 1)
    return torch.cat([x, ones]), torch.where(torch.isnan(e).any(1, keepdim=True), torch.full_like(y, float("nan")), y)


def trapezoid(y: Tensor, x: Tensor) -> Tensor:
    """``np.trapezoid(y, x)`` along the last dim: ``sum((x[i+1] - x[i]) (y[i+1] + y[i]) / 2)``."""
    return ((x[1:] - x[:-1]) * (y[..., 1:] + y[..., :-1]) / 2.0).sum(-1)


def aggregate_curves(curves: Tensor, valid: Tensor, method: str = "median") -> Tensor:
    """Per-point ``"median"`` (numpy's: mean of the two middle values for an even count) or ``"mean"`` of
    the ``valid`` rows of ``curves`` ``(N, D + 1)``: ``(D + 1,)``; NaN when no row is valid (PAIR raises)."""
    if method not in ("median", "mean"):
        raise ValueError(f"`aggregate` must be 'median' or 'mean', got {method!r}")
    kept = curves[valid]
    m = kept.shape[0]
    if m == 0:
        return torch.full(curves.shape[1:], float("nan"), dtype=curves.dtype, device=curves.device)
    if method == "mean":
        return kept.mean(0)
    s = kept.sort(dim=0).values
    return (s[(m - 1) // 2] + s[m // 2]) / 2


# ------------------------------------------------------------------------------------------ validation
def _check_thresholds(thresholds: Any) -> Tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in thresholds)
    except TypeError:
        raise TypeError(f"`thresholds` must be a sequence of numbers in (0, 1], got {thresholds!r}") from None
    if not vals:
        raise ValueError("`thresholds` must not be empty")
    if not all(0 < t <= 1 for t in vals) or any(b <= a for a, b in zip(vals, vals[1:])):
        raise ValueError(f"`thresholds` must be strictly ascending numbers in (0, 1] (PAIR's order), got {vals}")
    return vals


def _check_target(target: Any, n: int, device) -> Optional[Tensor]:
    """One class index per image, or None (the model's top-1 class on the quantised input)."""
    if target is None:
        return None
    classes = class_indices(target, n, device)
    if classes is not None:
        return classes
    if isinstance(target, Tensor):
        raise ValueError(
            f"`target` tensor must hold 1 or {n} integer class indices, got dtype {target.dtype} and "
            f"shape {tuple(target.shape)}"
        )
    raise TypeError(
        f"`target` must be None, an int, a list of {n} ints or an integer tensor of 1 or {n} entries (one class "
        f"per image), got {type(target).__name__}"
    )


def _check_range(pixel_range: Any, inputs: Tensor) -> Tuple[Any, Any]:
    if not isinstance(pixel_range, (tuple, list)) or len(pixel_range) != 2:
        raise TypeError(f"`pixel_range` must be a pair (low, high), got {pixel_range!r}")
    ends = []
    for v in pixel_range:
        if isinstance(v, Tensor):
            v = v.to(device=inputs.device, dtype=inputs.dtype)
            try:
                torch.broadcast_shapes(v.shape, inputs.shape[1:])
            except RuntimeError:
                raise ValueError(
                    f"`pixel_range` tensors must broadcast to one image {tuple(inputs.shape[1:])}, got {tuple(v.shape)}"
                ) from None
        elif isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(v):
            raise TypeError(f"`pixel_range` entries must be finite numbers or tensors, got {v!r}")
        ends.append(v)
    if not bool(torch.all(torch.as_tensor(ends[1] - ends[0]) > 0)):
        raise ValueError(f"`pixel_range` needs high > low, got {pixel_range!r}")
    return ends[0], ends[1]


def _check_images(inputs: Any, attributions: Any) -> None:
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        raise ValueError(f"`inputs` must be one (N, C, H, W) tensor, got {getattr(inputs, 'shape', type(inputs))}")
    if not inputs.dtype.is_floating_point:
        raise TypeError(f"`inputs` must be a floating-point tensor, got dtype {inputs.dtype}")
    n, c, h, w = inputs.shape
    if h < 2 or w < 2:
        raise ValueError(f"`inputs` images must be at least 2x2 (the corners span the image), got {h}x{w}")
    if not isinstance(attributions, Tensor) or attributions.shape not in ((n, c, h, w), (n, 1, h, w)):
        raise ValueError(
            f"`attributions` must have the inputs' shape {(n, c, h, w)} or {(n, 1, h, w)}, got "
            f"{tuple(getattr(attributions, 'shape', ())) or type(attributions).__name__}"
        )
    if not torch.isfinite(inputs).all() or not torch.isfinite(attributions).all():
        raise ValueError("`inputs` and `attributions` must be finite (no nan or inf)")


def _information_function(information: Any, channels: int) -> Callable[[Tensor], Tensor]:
    if information == "webp":
        if channels not in (1, 3, 4):
            raise ValueError(f"`information`='webp' encodes 1, 3 or 4 channels, the inputs have {channels}")
        return webp_size
    if information == "entropy":
        return grey_entropy
    if callable(information) and not isinstance(information, str):
        return lambda images: torch.as_tensor(information(images), dtype=torch.float64).reshape(images.shape[0])
    raise ValueError(f"`information` must be 'webp', 'entropy' or a callable(uint8 images), got {information!r}")


def _check_options(opts: dict, n: int, h: int, w: int) -> None:
    check_probability(opts["seed_fraction"], "seed_fraction")
    for name in ("keep_monotonous", "show_progress"):
        if not isinstance(opts[name], bool):
            raise TypeError(f"`{name}` must be a bool, got {type(opts[name]).__name__}")
    mpv = opts["min_pred_value"]
    if isinstance(mpv, bool) or not isinstance(mpv, Real) or not math.isfinite(mpv):
        raise ValueError(f"`min_pred_value` must be a finite number, got {mpv!r}")
    check_positive_int(opts["num_data_points"], "num_data_points")
    check_positive_int(opts["max_examples_per_batch"], "max_examples_per_batch")
    if opts["aggregate"] not in ("median", "mean"):
        raise ValueError(f"`aggregate` must be 'median' or 'mean', got {opts['aggregate']!r}")
    if opts["ties"] not in ("pair", "rank"):
        raise ValueError(f"`ties` must be 'pair' (PAIR's quantile rule) or 'rank', got {opts['ties']!r}")
    if opts["saliency_reduction"] not in _REDUCTIONS:
        raise ValueError(f"`saliency_reduction` must be one of {_REDUCTIONS}, got {opts['saliency_reduction']!r}")
    seeds = opts["seed_masks"]
    if seeds is not None and (not isinstance(seeds, Tensor) or seeds.dtype != torch.bool or seeds.shape != (n, h, w)):
        raise ValueError(
            f"`seed_masks` must be a bool tensor of shape {(n, h, w)}, got "
            f"{getattr(seeds, 'dtype', type(seeds).__name__)} {tuple(getattr(seeds, 'shape', ()))}"
        )


# ------------------------------------------------------------------------------------------- pipeline
def _softmax_rows(out: Tensor, target: Any, n_rows: int) -> Tensor:
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != n_rows:
        raise ValueError(f"the model must return (rows, classes) logits, got {tuple(getattr(out, 'shape', ()))}")
    return torch.softmax(out, dim=1)


def _prob_and_hit(out: Tensor, target: Tensor, n_rows: int) -> Tensor:
    probs = _softmax_rows(out, None, n_rows)
    target = target.to(probs.device).reshape(-1, 1).expand(n_rows, 1)
    hit = (probs.argmax(1, keepdim=True) == target).to(probs.dtype)
    return torch.cat([probs.gather(1, target), hit], 1)


def _metric(perf: Tensor, info: Tensor, e: Tensor, opts: dict) -> PicCurve:
    """One PicCurve from raw performance ``(N, T + 2)`` and information ``(N, T + 2)``, ``[start, k, original]``."""
    start, original = perf[:, 0], perf[:, -1]
    reason = torch.zeros(perf.shape[0], dtype=torch.int8, device=perf.device)
    reason[start >= original] = 3
    reason[(info[:, 0] >= info[:, -1]).to(perf.device)] = 2
    reason[~(original >= opts["min_pred_value"])] = 1  # NaN (image never forwarded) counts as below
    valid = reason == 0
    points = normalize_points(perf[:, 1:-1], start, original, opts["keep_monotonous"]).double()
    e = torch.where(valid.unsqueeze(1).to(e.device), e, torch.full_like(e, float("nan")))
    x, curves = pic_curves(e, points.to(e.device), opts["num_data_points"])
    auc = trapezoid(curves, x)
    agg = aggregate_curves(curves, valid.to(curves.device), opts["aggregate"])
    return PicCurve(x, curves, auc, valid, reason, perf, points, agg, trapezoid(agg, x))


def _images_of_rows(ctx: dict, examples: Tensor, k: Tensor) -> Tensor:
    """The uint8 images of rows (example, k): k = 0 the start image, k >= 1 threshold k's image."""
    uniq, inverse = torch.unique(examples, return_inverse=True)
    masks = threshold_masks(ctx["saliency"][uniq], ctx["thresholds"], ctx["seeds"][uniq], ctx["ties"])
    masks = torch.cat([ctx["seeds"][uniq].unsqueeze(1), masks], 1)[inverse, k]
    return interpolate_from_mask(ctx["u8"][examples], masks)


def _evaluate(ctx: dict, forward_func, additional_forward_args, opts: dict):
    """Scores ``(N, T + 2, 2)`` (softmax prob, top-1 hit) and information ``(N, T + 2)``, NaN where skipped."""
    n, t = ctx["u8"].shape[0], len(ctx["thresholds"])
    batch, progress = opts["max_examples_per_batch"], opts["show_progress"]
    all_rows = torch.arange(n, device=ctx["device"])
    probs = evaluate_rows(
        forward_func,
        lambda r: (ctx["to_model"](ctx["u8"][r]),),
        all_rows,
        n,
        None,
        additional_forward_args,
        _softmax_rows,
        batch,
        progress,
        desc="PIC inputs",
    )
    target = probs.argmax(1) if ctx["target"] is None else ctx["target"]
    scores = torch.full((n, t + 2, 2), float("nan"), dtype=probs.dtype, device=probs.device)
    scores[:, -1, 0] = probs.gather(1, target.unsqueeze(1)).squeeze(1)
    scores[:, -1, 1] = (probs.argmax(1) == target).to(probs.dtype)
    info = torch.full((n, t + 2), float("nan"), dtype=torch.float64)
    active = all_rows[(scores[:, -1] >= opts["min_pred_value"]).any(1)]  # kept by SIC or AIC
    if len(active) == 0:
        return scores, info, target
    info[active.cpu(), -1] = ctx["info_fn"](ctx["u8"][active])
    row_examples = active.repeat_interleave(t + 1)
    row_k = torch.arange(t + 1, device=ctx["device"]).repeat(len(active))

    def make_rows(rows: Tensor) -> Tuple[Tensor]:
        images = _images_of_rows(ctx, row_examples[rows], row_k[rows])
        info[row_examples[rows].cpu(), row_k[rows].cpu()] = ctx["info_fn"](images)
        return (ctx["to_model"](images),)

    rest = evaluate_rows(
        forward_func, make_rows, row_examples, n, target, additional_forward_args, _prob_and_hit, batch, progress, "PIC"
    )
    scores[active, : t + 1] = rest.reshape(len(active), t + 1, 2)
    return scores, info, target


def pic(
    forward_func: Callable,
    inputs: Tensor,
    attributions: Tensor,
    target: Any = None,
    additional_forward_args: Any = None,
    thresholds: Sequence[float] = PAIR_THRESHOLDS,
    information: Union[str, Callable[[Tensor], Any]] = "webp",
    pixel_range: Tuple[Any, Any] = (0.0, 1.0),
    saliency_reduction: str = "abs_sum",
    ties: str = "pair",
    seed_fraction: float = 0.01,
    seed_masks: Optional[Tensor] = None,
    min_pred_value: float = 0.8,
    keep_monotonous: bool = True,
    num_data_points: int = 1000,
    aggregate: str = "median",
    max_examples_per_batch: int = 256,
    show_progress: bool = False,
    generator: Union[None, int, torch.Generator] = None,
) -> PicResult:
    r"""SIC and AIC (Kapishnikov et al., XRAI, ICCV 2019) exactly as PAIR saliency 0.2.1 computes them.

    See the module docstring for the steps. Both curves come from the same images and model passes: per
    image, one pass on the input and, unless both ``P(I) < min_pred_value`` for SIC and the class is not
    the top-1 (AIC), ``T + 1`` more (start image and thresholds): at most ``N (T + 2)`` rows, batched.

    **Reproducing PAIR**: ``pic(model, x, attr, target=model(x).argmax(1), information="webp",
    saliency_reduction="abs_sum", seed_masks=<PAIR's random_mask per image>, min_pred_value=..., ...)``
    with the defaults below; ``result.sic`` equals ``compute_pic_metric`` with a softmax ``pred_func`` and
    ``aggregate_individual_pic_results``, ``result.aic`` the same with the 0/1 accuracy ``pred_func``.

    Deviations from PAIR: the images are the model inputs quantised to 8 bits (``pixel_range``), not
    separate ``uint8`` arrays; seed masks come from ``generator`` (PAIR: numpy's global RNG); skipped
    images are flagged (``valid``, ``skip_reason``) instead of raising; ``ties="rank"`` fixes PAIR's
    quantile ties (see :func:`threshold_masks`), default ``"pair"`` (faithful).

    Args:
        forward_func (Callable): the model, returning ``(rows, classes)`` logits (softmax is applied).
        inputs (Tensor): ``(N, C, H, W)`` images in ``pixel_range``, ``H, W >= 2``.
        attributions (Tensor): ``(N, C, H, W)`` or ``(N, 1, H, W)``; reduced per pixel by
            ``saliency_reduction`` (higher = more important).
        target (int, list, Tensor, optional): the class per image (int, ``N`` ints, or a tensor of 1 or
            ``N``). Default None: the model's top-1 class on the quantised input (PAIR's notebook).
        additional_forward_args (Any, optional): extra model arguments; tensors with ``N`` rows are per image.
        thresholds (sequence of float): ascending fractions in (0, 1] of the most salient pixels revealed.
            Default: PAIR's 13 (0.005 ... 0.75).
        information (str or Callable): ``"webp"`` (PAIR: lossless WebP byte length, :func:`webp_size`),
            ``"entropy"`` (GGIG: :func:`grey_entropy`) or a callable of uint8 images ``(B, C, H, W)``
            returning ``(B,)``. Default ``"webp"``.
        pixel_range (pair of float or Tensor): ``(low, high)`` mapped to 0..255; tensors broadcast to one
            image ``(C, H, W)`` (e.g. per-channel ranges of normalised inputs). Default ``(0, 1)``.
        saliency_reduction (str): see :func:`saliency_map`. Default ``"abs_sum"`` (PAIR's notebook).
        ties (str): ``"pair"`` or ``"rank"``, see :func:`threshold_masks`. Default ``"pair"``.
        seed_fraction (float): share of pixels in each random seed mask, in [0, 1]. Default 0.01 (PAIR).
        seed_masks (Tensor, optional): ``(N, H, W)`` bool seed masks to use instead (e.g. PAIR's).
        min_pred_value (float): images with ``P(I)`` below it are skipped. Default 0.8 (PAIR's function;
            its notebook uses 0.5). Applies to both curves (AIC's ``P(I)`` is 0 or 1).
        keep_monotonous (bool): running maximum of the normalised scores. Default True (PAIR, the paper).
        num_data_points (int): ``D``, curve points before the appended ``x = 1``. Default 1000.
        aggregate (str): ``"median"`` (PAIR's default) or ``"mean"`` over the kept images.
        max_examples_per_batch (int): at most this many images per forward pass (and interpolated at once).
            Default 256.
        show_progress (bool): tqdm bars over the forward batches. Default False.
        generator (int or torch.Generator, optional): seed of the seed masks (torch's global RNG is not
            touched when given). Default None (torch's global RNG).

    Returns:
        :class:`PicResult` (``.sic``, ``.aic``: :class:`PicCurve`). ``N = 0`` gives empty tensors and NaN
        aggregates.
    """
    opts = dict(locals())
    _check_images(inputs, attributions)
    n, c, h, w = inputs.shape
    thresholds = _check_thresholds(thresholds)
    _check_options(opts, n, h, w)
    tgt = _check_target(target, n, inputs.device)
    low, high = _check_range(pixel_range, inputs)
    info_fn = _information_function(information, c)
    gen = check_generator(generator)
    u8 = quantize(inputs.detach(), low, high)
    seeds = seed_masks if seed_masks is not None else random_seed_masks(n, h, w, seed_fraction, gen)
    ctx = {
        "u8": u8,
        "device": inputs.device,
        "saliency": saliency_map(attributions.detach().to(inputs.device), saliency_reduction),
        "seeds": seeds.to(inputs.device),
        "thresholds": thresholds,
        "ties": ties,
        "target": tgt,
        "info_fn": info_fn,
        "to_model": lambda u: u.to(inputs.dtype) * (high - low) / 255 + low,
    }
    if n == 0:
        scores = torch.empty((0, len(thresholds) + 2, 2), dtype=inputs.dtype, device=inputs.device)
        info, tgt = torch.empty((0, len(thresholds) + 2), dtype=torch.float64), torch.empty(0, dtype=torch.long)
    else:
        scores, info, tgt = _evaluate(ctx, forward_func, additional_forward_args, opts)
    e = normalize_points(info[:, 1:-1], info[:, 0], info[:, -1]).to(scores.device)
    curves = [_metric(scores[..., i], info, e, opts) for i in (0, 1)]
    return PicResult(curves[0], curves[1], info, e, tgt, torch.tensor(thresholds, dtype=torch.float64))


def sic(forward_func: Callable, inputs: Tensor, attributions: Tensor, **kwargs) -> PicCurve:
    """Softmax Information Curve: ``pic(...).sic`` (same arguments as :func:`pic`; AIC costs nothing more)."""
    return pic(forward_func, inputs, attributions, **kwargs).sic


def aic(forward_func: Callable, inputs: Tensor, attributions: Tensor, **kwargs) -> PicCurve:
    """Accuracy Information Curve: ``pic(...).aic`` (same arguments as :func:`pic`)."""
    return pic(forward_func, inputs, attributions, **kwargs).aic
