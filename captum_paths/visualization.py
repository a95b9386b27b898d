"""Plots that Captum lacks: attribution paths, ablation paths and insertion/deletion curves.

Built on matplotlib and consistent with :mod:`captum.attr.visualization`: every function takes
``plt_fig_axis`` (an existing ``(figure, axis)`` to draw on, where a single axis makes sense),
``use_pyplot`` (``True``: create the figure with pyplot and show it; ``False``: a bare
``matplotlib.figure.Figure``, safe in scripts and headless runs) and returns ``(figure, axis)``
(or ``(figure, axes)`` for multi-panel plots). Attribution panels are drawn by Captum's own
:func:`captum.attr.visualization.visualize_image_attr`.

* :func:`plot_insertion_deletion_curves`: several methods' curves on one axis (mean, shaded std);
* :func:`visualize_samp_path`: points along a SAMP path with the attribution accumulated so far and
  the score curve from the path's start to its end (the SAMP paper's Figure 3);
* :func:`visualize_ablation_path`: the strip of masks along an ablation path with the score curve
  and the threshold where the class is lost (the ablation-path paper's Figure 1);
* :func:`plot_path_strip`: the generic strip-plus-curve both are built on;
* :func:`plot_attribution_grid`: images x methods (the benchmark's figure).
"""

from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "plot_insertion_deletion_curves",
    "plot_path_strip",
    "visualize_samp_path",
    "visualize_ablation_path",
    "plot_attribution_grid",
]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _new_figure(fig_size, use_pyplot: bool, nrows: int = 1, ncols: int = 1, **kwargs):
    if use_pyplot:
        import matplotlib.pyplot as plt

        return plt.subplots(nrows, ncols, figsize=fig_size, squeeze=False, **kwargs)
    from matplotlib.figure import Figure

    fig = Figure(figsize=fig_size)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def _show(use_pyplot: bool) -> None:
    if use_pyplot:
        import matplotlib.pyplot as plt

        plt.show()


def _hwc(image: Any) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` -> ``(H, W, C)`` numpy (Captum's visualisation layout)."""
    arr = _to_numpy(image)
    if arr.ndim == 2:
        return arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an image of shape (C, H, W) or (H, W), got {arr.shape}")
    return np.transpose(arr, (1, 2, 0))


def _imshow(ax, image: Any) -> None:
    img = _hwc(image)
    if img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=min(0.0, img.min()), vmax=max(1.0, img.max()))
    else:
        ax.imshow(np.clip(img, 0, 1))
    ax.set_xticks([])
    ax.set_yticks([])


def _attr_panel(
    ax, fig, attribution: Any, image: Any = None, sign: str = "all", method: str = "heat_map", outlier_perc: float = 2
) -> None:
    import warnings

    from captum.attr import visualization as viz

    attr = _hwc(attribution)
    img = _hwc(image) if image is not None else None
    if method != "heat_map" and img is None:
        method = "heat_map"
    try:
        with warnings.catch_warnings():  # near-zero maps make Captum warn about normalising by ~0
            warnings.simplefilter("ignore")
            viz.visualize_image_attr(
                attr, img, method=method, sign=sign, plt_fig_axis=(fig, ax), outlier_perc=outlier_perc, use_pyplot=False
            )
    except AssertionError:
        # Captum refuses to normalise a map with nothing to show under ``sign`` (e.g. all zeros,
        # as the attribution accumulated at a path's first point is): draw it as the empty map it is
        ax.imshow(np.ones(attr.shape[:2]), cmap="gray", vmin=0, vmax=1)  # white, as Captum draws zero
    ax.set_xticks([])
    ax.set_yticks([])


# ------------------------------------------------------------------------------------------ curves


def _curve_arrays(value: Any) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[float]]:
    """Accepts ``(fractions, curves)`` or the ``(auc, curves, fractions)`` of the metrics'
    ``return_curves=True``; ``curves`` is ``(K+1,)`` or ``(N, K+1)``. Returns x, mean, std, auc."""
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise TypeError("each curve must be (fractions, curves) or (auc, curves, fractions)")
    auc = None
    if len(value) == 3:
        auc_v, curves, fractions = value
        auc = float(_to_numpy(auc_v).mean())
    else:
        fractions, curves = value
    x = _to_numpy(fractions).reshape(-1)
    c = _to_numpy(curves)
    if c.ndim == 1:
        mean, std = c, None
    elif c.ndim == 2:
        mean, std = c.mean(0), (c.std(0) if c.shape[0] > 1 else None)
    else:
        raise ValueError(f"curves must be (K+1,) or (N, K+1), got shape {c.shape}")
    if mean.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} fractions but curves have {mean.shape[0]} points")
    return x, mean, std, auc


def plot_insertion_deletion_curves(
    curves: Mapping[str, Any],
    plt_fig_axis: Optional[Tuple[Any, Any]] = None,
    title: Optional[str] = None,
    xlabel: str = "fraction of pixels moved",
    ylabel: str = "score",
    show_std: bool = True,
    fig_size: Tuple[float, float] = (6, 4),
    use_pyplot: bool = True,
):
    """Insertion or deletion curves of several methods on one axis.

    Args:
        curves (mapping): method name -> ``(fractions, curves)`` or the ``(auc, curves, fractions)``
            returned by :func:`captum_paths.metrics.deletion` / ``insertion`` with
            ``return_curves=True``. ``curves`` is one curve ``(K+1,)`` or one per example
            ``(N, K+1)`` (the mean is drawn, with a band of one std when ``show_std``). With an AUC
            the legend shows it.
        plt_fig_axis (tuple, optional): ``(figure, axis)`` to draw on.
        title, xlabel, ylabel (str): labels.
        show_std (bool): shade mean ± std over examples.
        fig_size (tuple): size of a new figure.
        use_pyplot (bool): as in :mod:`captum.attr.visualization`.

    Returns:
        ``(figure, axis)``.
    """
    if not curves:
        raise ValueError("`curves` is empty: pass at least one method's curve")
    if plt_fig_axis is not None:
        fig, ax = plt_fig_axis
    else:
        fig, axes = _new_figure(fig_size, use_pyplot)
        ax = axes[0, 0]
    for name, value in curves.items():
        x, mean, std, auc = _curve_arrays(value)
        label = f"{name} (AUC {auc:.3f})" if auc is not None else str(name)
        (line,) = ax.plot(x, mean, label=label)
        if show_std and std is not None:
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    if plt_fig_axis is None:
        _show(use_pyplot)
    return fig, ax


# ------------------------------------------------------------------------------------------ paths


def plot_path_strip(
    points: Any,
    point_positions: Any,
    curve_x: Any,
    curve_y: Any,
    point_attributions: Any = None,
    threshold: Optional[float] = None,
    threshold_label: str = "threshold",
    markers: Optional[Mapping[str, float]] = None,
    points_are_masks: bool = False,
    curve_label: str = "score",
    xlabel: str = "position along the path",
    title: Optional[str] = None,
    sign: str = "all",
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
):
    """A strip of path points (and optionally their attributions) above the score curve.

    Args:
        points: ``(T, C, H, W)`` images along the path, or ``(T, H, W)`` masks with
            ``points_are_masks=True`` (drawn in [0, 1], 1 = ablated).
        point_positions: ``(T,)`` where each point lies on the curve's x axis (marked on the curve).
        curve_x, curve_y: ``(L,)`` the score curve.
        point_attributions: optional ``(T, C, H, W)`` attribution at each point (a second strip).
        threshold: optional y value drawn as a horizontal line; the first x where the curve falls
            below it is marked.
        markers (mapping, optional): label -> x position, drawn as labelled vertical lines (e.g. the
            time at which the class is lost). NaN positions are skipped.
        title, curve_label, xlabel (str): labels. ``sign``: Captum's sign for attribution panels.
        fig_size, use_pyplot: as in :mod:`captum.attr.visualization`.

    Returns:
        ``(figure, axes)`` with ``axes`` a 2-D array: strip row(s) then one curve axis spanning them.
    """
    pts = _to_numpy(points)
    pos = _to_numpy(point_positions).reshape(-1)
    t = pts.shape[0]
    if t == 0 or pos.shape[0] != t:
        raise ValueError(f"`points` ({t}) and `point_positions` ({pos.shape[0]}) must be non-empty and match")
    if points_are_masks and pts.ndim != 3:
        raise ValueError(f"masks must be (T, H, W), got {pts.shape}")
    if not points_are_masks and pts.ndim != 4:
        raise ValueError(f"points must be (T, C, H, W), got {pts.shape}")
    cx, cy = _to_numpy(curve_x).reshape(-1), _to_numpy(curve_y).reshape(-1)
    if cx.shape != cy.shape:
        raise ValueError(f"curve_x {cx.shape} and curve_y {cy.shape} differ")
    rows = 2 + (point_attributions is not None)
    fig_size = fig_size or (max(6.0, 1.5 * t), 1.6 * (rows - 1) + 3.0)
    fig, axes = _new_figure(fig_size, use_pyplot, rows, t, gridspec_kw={"height_ratios": [1] * (rows - 1) + [1.6]})
    for j in range(t):
        ax = axes[0, j]
        if points_are_masks:
            ax.imshow(pts[j], cmap="magma", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            _imshow(ax, pts[j])
        ax.set_title(f"{pos[j]:.2f}", fontsize="small")
        if point_attributions is not None:
            _attr_panel(axes[1, j], fig, _to_numpy(point_attributions)[j], sign=sign)
    gs = axes[-1, 0].get_subplotspec().get_gridspec()
    for ax in axes[-1, :]:
        ax.remove()
    curve_ax = fig.add_subplot(gs[-1, :])
    curve_ax.plot(cx, cy, label=curve_label)
    marks = np.interp(pos, cx, cy) if cx.size > 1 else np.repeat(cy, t)
    curve_ax.plot(pos, marks, "o", color="black", markersize=4, label="points shown")
    if threshold is not None:
        curve_ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=threshold_label)
        below = np.nonzero(cy < threshold)[0]
        if below.size:
            curve_ax.axvline(cx[below[0]], color="red", linestyle=":", linewidth=1)
    styles = iter(["--", ":", "-."] * 4)
    for label, x_pos in (markers or {}).items():
        if x_pos is not None and np.isfinite(x_pos):
            curve_ax.axvline(x_pos, color="red", linestyle=next(styles), linewidth=1, label=f"{label} ({x_pos:.2f})")
    curve_ax.set_xlabel(xlabel)
    curve_ax.set_ylabel(curve_label)
    curve_ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    new_axes = np.empty((rows, t), dtype=object)
    new_axes[:-1] = axes[:-1]
    new_axes[-1, :] = curve_ax
    _show(use_pyplot)
    return fig, new_axes


def visualize_samp_path(
    path: Any,
    example: int = 0,
    direction: str = "insertion",
    input_index: int = 0,
    show_attributions: bool = True,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
):
    """Points along one SAMP path, the attribution accumulated up to each, and the score curve.

    The SAMP paper's Figure 3: with ``direction="insertion"`` the path runs from the blurred image to
    the input, and the curve is the target score against the share of the L1 distance covered.

    Args:
        path (SampPath): from ``SampAttribution.attribute(..., return_path=True)``.
        example (int): which example of the batch.
        direction (str): ``"insertion"`` or ``"deletion"``; must be one of ``path.directions``.
        input_index (int): which input tensor, for tuple inputs.
        show_attributions (bool): add the strip of accumulated attributions.
        title, fig_size, use_pyplot: as in :mod:`captum.attr.visualization`.

    Returns:
        ``(figure, axes)`` (see :func:`plot_path_strip`).
    """
    if direction not in tuple(path.directions):
        raise ValueError(
            f"`direction` must be one of the path's directions {tuple(path.directions)}, got {direction!r}"
        )
    n = path.scores.shape[0]
    if not isinstance(example, int) or not -n <= example < n:
        raise ValueError(f"`example` must be an int index into the {n} examples, got {example!r}")
    d = tuple(path.directions).index(direction)
    length = int(path.lengths[example, d])
    fractions = _to_numpy(path.fractions[example, d, :length])
    scores = _to_numpy(path.scores[example, d, :length])
    points = path.snapshots[input_index][example, d]
    attrs = path.snapshot_attributions[input_index][example, d] if show_attributions else None
    if _to_numpy(points).ndim != 4:
        raise ValueError("visualize_samp_path draws image inputs (N, C, H, W)")
    # a snapshot is the first point whose covered fraction reached the requested one
    positions = [
        fractions[min(np.searchsorted(fractions, f - 1e-9), length - 1)] for f in _to_numpy(path.snapshot_fractions)
    ]
    start, end = ("blurred input", "input") if direction == "insertion" else ("input", "baseline")
    return plot_path_strip(
        points,
        positions,
        fractions,
        scores,
        point_attributions=attrs,
        curve_label="target score",
        xlabel=f"fraction of the L1 distance covered ({start} -> {end})",
        title=title or f"SAMP {direction} path, example {example}",
        fig_size=fig_size,
        use_pyplot=use_pyplot,
    )


def _field(obj: Any, *names: str):
    for n in names:
        if isinstance(obj, Mapping) and n in obj:
            return obj[n]
        if hasattr(obj, n):
            return getattr(obj, n)
    raise AttributeError(f"the ablation-path result has none of the fields {names}")


def visualize_ablation_path(
    result: Any,
    example: int = 0,
    n_masks: int = 8,
    input_index: int = 0,
    title: Optional[str] = None,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = True,
):
    """The masks along an ablation path, the score curve and the threshold where the class is lost.

    The ablation-path paper's Figure 1: ``n_masks`` masks :math:`\\varphi(t)` at evenly spaced path
    points (1 = ablated to the baseline, drawn bright), above the target score along the path, with
    the threshold marked: the time at which the target stops being the model's top class
    (``threshold_time``) and, when present, the time at which the score fell by ``drop_fraction``.

    Args:
        result (AblationPathResult): from ``AblationPath.attribute(..., return_path=True)``; uses
            ``times`` ``(T,)``, ``masks`` ``(N, T, H, W)`` (or ``(N, T, C, H, W)``: averaged over
            channels; a tuple for tuple inputs: ``input_index`` picks one), ``scores`` ``(N, T)``,
            ``threshold_time`` and ``drop_time`` ``(N,)`` (NaN: never reached) and ``score_kind``.
        example (int): which example.
        n_masks (int): masks shown, evenly spaced over the path, both ends included.
        input_index (int): which input tensor, for tuple inputs.
        title, fig_size, use_pyplot: as in :mod:`captum.attr.visualization`.

    Returns:
        ``(figure, axes)`` (see :func:`plot_path_strip`).
    """
    masks = _field(result, "masks")
    if isinstance(masks, tuple):
        masks = masks[input_index]
    masks = _to_numpy(masks)
    if masks.ndim == 5:
        masks = masks.mean(2)
    if masks.ndim != 4:
        raise ValueError(f"masks must be (N, T, H, W) or (N, T, C, H, W), got {masks.shape}")
    scores = _to_numpy(_field(result, "scores"))
    n, t = masks.shape[:2]
    if not isinstance(example, int) or not -n <= example < n:
        raise ValueError(f"`example` must be an int index into the {n} examples, got {example!r}")
    if isinstance(n_masks, bool) or not isinstance(n_masks, int) or n_masks < 1:
        raise ValueError(f"`n_masks` must be a positive int, got {n_masks!r}")
    try:
        times = _to_numpy(_field(result, "times")).reshape(-1)
    except AttributeError:
        times = np.linspace(0.0, 1.0, t)
    markers = {}
    for label, names in (("class lost", ("threshold_time",)), ("score dropped", ("drop_time",))):
        try:
            markers[label] = float(_to_numpy(_field(result, *names)).reshape(-1)[example])
        except AttributeError:
            pass
    try:
        kind = str(_field(result, "score_kind"))
    except AttributeError:
        kind = "score"
    pick = np.unique(np.round(np.linspace(0, t - 1, min(n_masks, t))).astype(int))
    return plot_path_strip(
        masks[example, pick],
        times[pick],
        times,
        scores[example],
        markers=markers,
        points_are_masks=True,
        curve_label=f"target {kind}",
        xlabel="t (share of the image ablated)",
        title=title or f"Ablation path, example {example}",
        fig_size=fig_size,
        use_pyplot=use_pyplot,
    )


# ------------------------------------------------------------------------------------------- grid


def plot_attribution_grid(
    images: Any,
    attributions: Mapping[str, Any],
    titles: Optional[Sequence[str]] = None,
    sign: str = "all",
    shift_nonnegative: bool = False,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = False,
):
    """Images (rows) x methods (columns): the input, then each method's attribution heat map.

    Args:
        images: ``(N, C, H, W)``.
        attributions (mapping): method name -> ``(N, C, H, W)`` attributions of the same images.
        titles (sequence of str, optional): one per image (row label).
        sign (str): Captum's ``sign`` (``"all"``, ``"positive"``, ``"absolute_value"``, ...).
        shift_nonnegative (bool): draw a map with no negative value minus its minimum, so that a
            constant offset (e.g. ablation-path saliency :math:`\\int (1 - \\varphi)\\,dt`, about 0.5
            everywhere) does not saturate the colour scale. Rankings, which the metrics use, are
            unchanged by it. Default: False (draw the maps as they are).
        fig_size, use_pyplot: as in :mod:`captum.attr.visualization` (default: no pyplot).

    Returns:
        ``(figure, axes)`` with ``axes`` of shape ``(N, 1 + len(attributions))``.
    """
    imgs = _to_numpy(images)
    if imgs.ndim != 4:
        raise ValueError(f"`images` must be (N, C, H, W), got {imgs.shape}")
    n = imgs.shape[0]
    for name, a in attributions.items():
        if _to_numpy(a).shape != imgs.shape:
            raise ValueError(f"attributions of {name!r} have shape {_to_numpy(a).shape}, images {imgs.shape}")
    cols = 1 + len(attributions)
    fig, axes = _new_figure(fig_size or (1.6 * cols, 1.6 * n), use_pyplot, n, cols)
    for i in range(n):
        _imshow(axes[i, 0], imgs[i])
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize="small")
        for j, (name, a) in enumerate(attributions.items(), start=1):
            amap = _to_numpy(a)[i]
            if shift_nonnegative and amap.min() >= 0:
                amap = amap - amap.min()
            _attr_panel(axes[i, j], fig, amap, sign=sign)
            if i == 0:
                axes[i, j].set_title(name, fontsize="small")
    if n:
        axes[0, 0].set_title("input", fontsize="small")
    _show(use_pyplot)
    return fig, axes
