"""The pointing game (Zhang, Bargal, Lin, Brandt, Shen, Sclaroff, "Top-down neural attention by
excitation backprop", ECCV 2016 / IJCV 2018)."""

import math
from numbers import Real
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["pointing_game", "boxes_to_masks", "attribution_peaks", "peak_masks"]

Regions = Union[Tensor, Sequence[Sequence[Sequence[float]]]]


def attribution_peaks(maps: Tensor) -> Tuple[Tensor, Tensor]:
    """Row and column of the maximum of every ``(N, H, W)`` map (the first in row-major order on ties)."""
    n, h, w = maps.shape
    flat_index = maps.reshape(n, h * w).argmax(dim=1)
    return flat_index // w, flat_index % w


def peak_masks(maps: Tensor) -> Tensor:
    """Every pixel where an ``(N, H, W)`` map reaches its maximum: ``(N, H, W)`` bool; all False for a
    constant map (all-zero included), which points nowhere."""
    n, h, w = maps.shape
    flat = maps.reshape(n, h * w)
    top = flat.amax(dim=1, keepdim=True) if h * w else flat[:, :0]
    informative = (flat != top).any(dim=1, keepdim=True)
    return ((flat == top) & informative).reshape(n, h, w)


def boxes_to_masks(boxes: Regions, n: int, height: int, width: int, device) -> Tensor:
    """Rasterise boxes ``(x_min, y_min, x_max, y_max)`` (0-based pixel indices, ends inclusive) into
    ``(N, H, W)`` boolean masks. ``boxes``: a ``(N, 4)`` or ``(N, B, 4)`` tensor, or a list with one list
    of boxes per example (possibly empty). Boxes are clipped to the image."""
    if isinstance(boxes, Tensor):
        if boxes.dim() == 2 and boxes.shape == (n, 4):
            per_example = [boxes[i : i + 1] for i in range(n)]
        elif boxes.dim() == 3 and boxes.shape[0] == n and boxes.shape[2] == 4:
            per_example = [boxes[i] for i in range(n)]
        else:
            raise ValueError(
                f"`regions` must be boxes of shape (N, 4) or (N, B, 4) with N = {n}, or a boolean (N, H, W) "
                f"mask; got a {boxes.dtype} tensor of shape {tuple(boxes.shape)}"
            )
    else:
        if len(boxes) != n:
            raise ValueError(f"`regions` must hold one list of boxes per example ({n}), got {len(boxes)}")
        per_example = []
        for i, bx in enumerate(boxes):
            t = torch.as_tensor(bx, dtype=torch.float64).reshape(-1, 4) if len(bx) else torch.zeros(0, 4)
            if t.dim() != 2 or t.shape[1] != 4:
                raise ValueError(f"`regions`[{i}] must be a list of (x_min, y_min, x_max, y_max) boxes")
            per_example.append(t)
    ys = torch.arange(height, device=device).reshape(1, height, 1)
    xs = torch.arange(width, device=device).reshape(1, 1, width)
    masks = torch.zeros(n, height, width, dtype=torch.bool, device=device)
    for i, b in enumerate(per_example):
        if b.numel() == 0:
            continue
        b = b.to(device=device, dtype=torch.float64)
        if not torch.isfinite(b).all() or bool((b[:, 2] < b[:, 0]).any() or (b[:, 3] < b[:, 1]).any()):
            raise ValueError(f"`regions`[{i}]: boxes must be finite with x_max >= x_min and y_max >= y_min")
        x0, y0, x1, y1 = (b[:, k].reshape(-1, 1, 1) for k in range(4))
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        masks[i] = inside.any(0)
    return masks


def pointing_game(
    attributions: Tensor,
    regions: Regions,
    tolerance: float = 15,
    absolute: bool = False,
) -> Tensor:
    r"""The pointing game: a hit when the attribution map's maximum lies on (or within ``tolerance``
    pixels of) the annotated region. The hit rate over a data set is ``hits.float().mean()``.

    The map ``M`` of an example is its attribution summed over channels for ``(N, C, H, W)`` attributions
    (or taken as is for ``(N, H, W)``). With ``P = argmax M`` the set of its maximal pixels,

    .. math:: \mathrm{hit} = [\min M < \max M] \wedge \forall p \in P\ \exists q \in \mathrm{region}:
              \|p - q\|_2 \le \mathrm{tolerance}

    (Zhang et al. use 15 pixels on their image resolution; TorchRay's implementation uses a strict ``<``,
    which differs only at exact integer distances). **Tie rule**: a map whose maximum is shared by several
    pixels is a hit only if every one of them is near the region (TorchRay takes the first in row-major
    order, which lets a flat map score by the position of its first pixel); a constant map (all-zero
    included) points nowhere and is never a hit. NaN or infinite attributions raise ``ValueError``.

    Args:
        attributions (Tensor): ``(N, H, W)`` or ``(N, C, H, W)`` attributions (e.g. a Captum output for
            an image batch).
        regions (Tensor or list): where the object is: a boolean ``(N, H, W)`` (or ``(N, 1, H, W)``)
            mask; boxes ``(x_min, y_min, x_max, y_max)`` in 0-based pixel indices with inclusive ends, as
            a ``(N, 4)`` or ``(N, B, 4)`` tensor or a list with one list of boxes per example (an example
            with no box can never be hit).
        tolerance (float): the pixel tolerance (Euclidean distance). Default: 15.
        absolute (bool): point with the absolute value of the channel sum. Default: False.

    Returns:
        ``(N,)`` bool tensor of hits on the attributions' device (empty for ``N = 0``). No model passes.
    """
    if not isinstance(attributions, Tensor):
        raise TypeError(f"`attributions` must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.dim() == 4:
        maps = attributions.detach().sum(1)
    elif attributions.dim() == 3:
        maps = attributions.detach()
    else:
        raise ValueError(f"`attributions` must have shape (N, H, W) or (N, C, H, W), got {tuple(attributions.shape)}")
    if not torch.isfinite(maps).all():
        bad = ~torch.isfinite(attributions.detach())
        raise ValueError(
            f"`attributions` must be finite, got {int(bad.sum())} NaN or infinite value(s) (the first at index "
            f"{tuple(int(v) for v in bad.nonzero()[0])}); replace them (e.g. torch.nan_to_num) or drop those examples"
        )
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"`tolerance` must be a non-negative number of pixels, got {tolerance!r}")
    if absolute:
        maps = maps.abs()
    n, h, w = maps.shape
    device = maps.device
    if isinstance(regions, Tensor) and regions.dtype == torch.bool:
        masks = regions.squeeze(1) if regions.dim() == 4 and regions.shape[1] == 1 else regions
        if masks.shape != (n, h, w):
            raise ValueError(
                f"`regions` mask must have shape {(n, h, w)} (or {(n, 1, h, w)}) to match the attributions, "
                f"got {tuple(regions.shape)}"
            )
        masks = masks.to(device)
    elif isinstance(regions, (Tensor, list, tuple)):
        masks = boxes_to_masks(regions, n, h, w, device)
    else:
        raise TypeError(
            "`regions` must be a boolean (N, H, W) mask, a (N, 4) / (N, B, 4) box tensor or a list of "
            f"lists of boxes, got {type(regions).__name__}"
        )
    return _every_peak_near(peak_masks(maps), masks, float(tolerance))


def _every_peak_near(peaks: Tensor, masks: Tensor, tolerance: float) -> Tensor:
    """``(N,)``: the example has a peak and every peak pixel lies within ``tolerance`` of a region pixel.

    The region is dilated by the disk ``{d : ||d||_2 <= tolerance}`` (a convolution with that disk, counts
    in float64, exact for integer counts), so the cost does not depend on the number of tied peaks."""
    n, h, w = peaks.shape
    r = min(int(math.floor(tolerance)), h + w)  # beyond h + w the disk covers the whole image anyway
    d = torch.arange(-r, r + 1, device=peaks.device, dtype=torch.float64)
    disk = ((d.reshape(-1, 1) ** 2 + d.reshape(1, -1) ** 2) <= tolerance**2).to(torch.float64)
    counts = torch.nn.functional.conv2d(
        masks.to(torch.float64).unsqueeze(1), disk.reshape(1, 1, 2 * r + 1, -1), padding=r
    )
    near = counts.squeeze(1) > 0.5
    return peaks.reshape(n, h * w).any(dim=1) & (near | ~peaks).reshape(n, h * w).all(dim=1)
