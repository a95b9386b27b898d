"""Map-versus-input similarity: the measures of Table 1 (MNIST) of the GGIG paper (Rahman, Lewis, Plis,
"Geometrically Guided Integrated Gradients").

How alike is an attribution map to the image it explains? On MNIST a map that follows the strokes of the
digit scores high. The GGIG authors rescale both to [0, 1] and report, per method, the median (and std)
over the test images of four measures: Spearman rank correlation, weighted Jaccard, SSIM and the
normalised (reverse) MSE. The functions here are pure (no model): tensors in, one value per example out.
"""

from numbers import Real
from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from captum_paths.metrics._core._common import spearman
from captum_paths.metrics._core.sanity import ssim_of_maps

__all__ = [
    "map_input_similarity",
    "rescale_input",
    "rescale_map",
    "spearman_similarity",
    "weighted_jaccard",
    "ssim",
    "mse",
    "reverse_mse",
    "MEASURES",
]

MEASURES = ("spearman", "weighted_jaccard", "ssim", "reverse_mse", "mse")
_INPUT_SCALINGS = ("ggig", "minmax", "none")
_MAP_SCALINGS = ("max", "abs_max", "minmax", "none")


def _pair(a: Tensor, b: Tensor, name_a: str = "a", name_b: str = "b") -> tuple:
    """Both as float64 ``(N, D)`` after the shape and finiteness checks."""
    for name, t in ((name_a, a), (name_b, b)):
        if not isinstance(t, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(
                f"`{name}` must have a batch dimension and at least one feature, got shape {tuple(t.shape)}"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"`{name}` contains non-finite values (nan or inf)")
    if a.shape != b.shape:
        raise ValueError(f"`{name_a}` of shape {tuple(a.shape)} and `{name_b}` of shape {tuple(b.shape)} must match")
    return a.detach().to(torch.float64).flatten(1), b.detach().to(torch.float64).flatten(1)


def rescale_input(x: Tensor, scaling: str = "ggig") -> Tensor:
    """Input to [0, 1], per example: ``"ggig"`` = ``(clip(x, -1, 1) + 1) / 2`` (the GGIG code on MNIST
    normalised with mean 0.1307, std 0.3081: background ~0.288, strokes saturate at 1; the paper calls it
    "rescaled to [0, 1]"), ``"minmax"`` = ``(x - min) / (max - min)`` (constant examples give 0), ``"none"``."""
    if scaling not in _INPUT_SCALINGS:
        raise ValueError(f"`input_scaling` must be one of {_INPUT_SCALINGS}, got {scaling!r}")
    x = x.detach().to(torch.float64)
    if scaling == "ggig":
        return (x.clamp(-1, 1) + 1) / 2
    if scaling == "minmax":
        return _minmax(x)
    return x


def rescale_map(a: Tensor, scaling: str = "max") -> Tensor:
    """Attribution map rescaling, per example: ``"max"`` = ``a / max(a)`` (the GGIG code: no absolute value,
    no shift; a map whose maximum is not positive is left as it is), ``"abs_max"`` = ``|a| / max|a|``,
    ``"minmax"`` = ``(a - min) / (max - min)``, ``"none"``. All-zero maps stay zero."""
    if scaling not in _MAP_SCALINGS:
        raise ValueError(f"`map_scaling` must be one of {_MAP_SCALINGS}, got {scaling!r}")
    a = a.detach().to(torch.float64)
    if scaling == "minmax":
        return _minmax(a)
    if scaling == "none":
        return a
    if scaling == "abs_max":
        a = a.abs()
    peak = a.flatten(1).max(1).values.reshape((-1,) + (1,) * (a.dim() - 1))
    return a / torch.where(peak > 0, peak, torch.ones_like(peak))


def _minmax(t: Tensor) -> Tensor:
    flat = t.flatten(1)
    shape = (-1,) + (1,) * (t.dim() - 1)
    low, high = flat.min(1).values.reshape(shape), flat.max(1).values.reshape(shape)
    span = high - low
    return (t - low) / torch.where(span > 0, span, torch.ones_like(span))


def spearman_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of the flattened ``(N, ...)`` tensors: ``(N,)``; average ranks for ties
    (scipy's ``spearmanr``, which the GGIG code calls); ``nan`` when either example is constant."""
    a, b = _pair(a, b)
    return spearman(a, b)


def weighted_jaccard(a: Tensor, b: Tensor) -> Tensor:
    r"""Weighted Jaccard (Ruzicka) similarity ``\sum_i min(a_i, b_i) / \sum_i max(a_i, b_i)`` of
    ``(N, ...)`` tensors (meant for non-negative values): ``(N,)``; 1 for identical maps, 0 for disjoint
    supports, ``nan`` when both are zero everywhere."""
    a, b = _pair(a, b)
    return torch.minimum(a, b).sum(1) / torch.maximum(a, b).sum(1)


def ssim(a: Tensor, b: Tensor, window: int = 7, data_range: float = 2.0) -> Tensor:
    """Mean SSIM of ``(N, H, W)`` or ``(N, C, H, W)`` images: ``(N,)`` (the mean over channels for ``C > 1``,
    as ``skimage``'s ``channel_axis``).

    ``skimage.metrics.structural_similarity`` with its defaults, as the GGIG code calls it: a 7x7 uniform
    window, sample covariances, ``K1 = 0.01``, ``K2 = 0.03``, the mean over the windows inside the image
    (:func:`~captum_paths.metrics._core.sanity.ssim_of_maps`, the sanity checks' SSIM). ``data_range``
    defaults to 2, the value the skimage of that time inferred for float64 images (the range of the dtype,
    -1..1); pass 1 for the range of [0, 1] maps (current skimage requires it explicitly). Images smaller
    than the window give ``nan``.
    """
    if isinstance(data_range, bool) or not isinstance(data_range, Real) or not data_range > 0:
        raise ValueError(f"`data_range` must be a positive number, got {data_range!r}")
    _pair(a, b)
    if a.dim() not in (3, 4):
        raise ValueError(f"SSIM needs (N, H, W) or (N, C, H, W) images, got shape {tuple(a.shape)}")
    n = a.shape[0]
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    planes = ssim_of_maps(
        a64.reshape((-1,) + a.shape[-2:]), b64.reshape((-1,) + b.shape[-2:]), window, float(data_range)
    )
    return planes.reshape(n, -1).mean(1)


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference per example: ``(N,)`` (the GGIG code's ``sum((d - g)^2) / (H W)`` for one
    channel; the mean over all ``C H W`` elements otherwise)."""
    a, b = _pair(a, b)
    return (a - b).pow(2).mean(1)


def reverse_mse(mse_values: Tensor, max_mse: Optional[float] = None) -> Tensor:
    """GGIG's "normalised (reverse) MSE" ``1 - MSE / max MSE``: 1 for a map equal to the input, 0 for the
    worst of the pool.

    The authors take the maximum over *every* row of their results table (all method variants, classes and
    images), so the value depends on the pool: pass ``max_mse`` (e.g. the maximum of :func:`mse` over all
    the methods compared) to reproduce that; by default the pool is the ``N`` values given. A zero maximum
    (all maps equal to their inputs) gives 1.
    """
    if not isinstance(mse_values, Tensor) or mse_values.dim() != 1:
        raise ValueError(f"`mse_values` must be a 1-d tensor of MSEs, got {type(mse_values).__name__}")
    if not torch.isfinite(mse_values).all() or bool((mse_values < 0).any()):
        raise ValueError("`mse_values` must be finite and non-negative")
    if max_mse is None:
        peak = mse_values.max() if mse_values.numel() else mse_values.new_zeros(())
    elif isinstance(max_mse, bool) or not isinstance(max_mse, Real) or not max_mse >= 0 or max_mse == float("inf"):
        raise ValueError(f"`max_mse` must be a finite non-negative number, got {max_mse!r}")
    else:
        peak = mse_values.new_tensor(float(max_mse))
    if mse_values.numel() and bool((mse_values > peak).any()):
        raise ValueError(f"`max_mse` = {float(peak)} is below the largest MSE {float(mse_values.max())}")
    return 1 - mse_values / torch.where(peak > 0, peak, torch.ones_like(peak))


def map_input_similarity(
    inputs: Tensor,
    attributions: Tensor,
    measures: Sequence[str] = ("spearman", "weighted_jaccard", "ssim", "reverse_mse"),
    input_scaling: str = "ggig",
    map_scaling: str = "max",
    ssim_data_range: float = 2.0,
    max_mse: Optional[float] = None,
) -> Dict[str, Tensor]:
    r"""GGIG Table 1: similarity of each attribution map to its input, one value per example and measure.

    Both are rescaled first (:func:`rescale_input`, :func:`rescale_map`): by default as the GGIG code does
    on MNIST, ``d = (clip(x, -1, 1) + 1) / 2`` and ``g = a / max(a)`` (the authors' maps were probably
    absolute values already: pass ``attributions.abs()`` or ``map_scaling="abs_max"`` for signed methods).
    Then per example, on the flattened ``d`` and ``g``:

    * ``"spearman"``: Spearman rank correlation (:func:`spearman_similarity`);
    * ``"weighted_jaccard"``: ``sum min(g, d) / sum max(g, d)`` (:func:`weighted_jaccard`);
    * ``"ssim"``: skimage-default SSIM with ``data_range=ssim_data_range`` (:func:`ssim`);
    * ``"reverse_mse"``: ``1 - MSE / max MSE`` over the pool (:func:`reverse_mse`); ``"mse"``: the raw MSE.

    Higher is more similar for all but ``"mse"``. The paper reports the median and std over 1000 MNIST
    test images (9000-9999) per method. Left out: the Pearson correlation and "relevance percent"
    ``sum(d g) / sum(g)`` that the GGIG code also computes but the table does not show. No model passes.

    Args:
        inputs (Tensor): ``(N, ...)`` the explained inputs (``(N, C, H, W)`` or ``(N, H, W)`` for SSIM), finite.
        attributions (Tensor): the maps, exactly the shape of ``inputs``, finite.
        measures (sequence of str): any of ``"spearman", "weighted_jaccard", "ssim", "reverse_mse", "mse"``.
            Default: the table's four.
        input_scaling (str): ``"ggig"``, ``"minmax"`` or ``"none"`` (see :func:`rescale_input`). Default:
            ``"ggig"`` (for inputs normalised to about zero mean and unit std; ``"minmax"`` for pixel values).
        map_scaling (str): ``"max"``, ``"abs_max"``, ``"minmax"`` or ``"none"``. Default: ``"max"`` (GGIG).
        ssim_data_range (float): SSIM's ``data_range``. Default: 2 (GGIG's skimage; 1 is the [0, 1] range).
        max_mse (float, optional): the pool maximum of ``"reverse_mse"``. Default: None (these ``N``).

    Returns:
        dict from each requested measure to an ``(N,)`` float64 tensor on the inputs' device.
    """
    if isinstance(measures, str) or not all(isinstance(m, str) for m in measures):
        raise TypeError(f"`measures` must be a sequence of measure names from {MEASURES}, got {measures!r}")
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(f"`measures` must be a non-empty selection of {MEASURES}, got {list(measures)!r}")
    _pair(inputs, attributions, "inputs", "attributions")
    if "ssim" in measures and inputs.dim() not in (3, 4):
        raise ValueError(f"the 'ssim' measure needs (N, H, W) or (N, C, H, W) inputs, got shape {tuple(inputs.shape)}")
    d, g = rescale_input(inputs, input_scaling), rescale_map(attributions, map_scaling)
    out: Dict[str, Tensor] = {}
    for name in measures:
        if name == "spearman":
            out[name] = spearman_similarity(g, d)
        elif name == "weighted_jaccard":
            out[name] = weighted_jaccard(g, d)
        elif name == "ssim":
            out[name] = ssim(d, g, data_range=ssim_data_range)
        elif name == "mse":
            out[name] = mse(d, g)
        else:
            out[name] = reverse_mse(mse(d, g), max_mse)
    return out
