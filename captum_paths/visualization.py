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

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "plot_insertion_deletion_curves",
    "plot_path_strip",
    "visualize_samp_path",
    "visualize_ablation_path",
    "plot_attribution_grid",
    "method_styles",
    "curves_legend_title",
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
    ax,
    fig,
    attribution: Any,
    image: Any = None,
    sign: str = "all",
    method: str = "heat_map",
    outlier_perc: float = 2,
    cmap: Any = None,
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
                attr,
                img,
                method=method,
                sign=sign,
                plt_fig_axis=(fig, ax),
                outlier_perc=outlier_perc,
                cmap=cmap,
                use_pyplot=False,
            )
    except AssertionError:
        # Captum refuses to normalise a map with nothing to show under ``sign`` (e.g. all zeros,
        # as the attribution accumulated at a path's first point is): draw it as the empty map it is
        ax.imshow(np.ones(attr.shape[:2]), cmap="gray", vmin=0, vmax=1)  # white, as Captum draws zero
    ax.set_xticks([])
    ax.set_yticks([])


# ------------------------------------------------------------------------------------------ curves

_LINE_STYLES = ("-", "--", ":")  # with 10 colours, a (colour, style) pair is unique for 30 methods


def method_styles(names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Line styles that tell up to 30 methods apart: the i-th name gets colour ``C{i % 10}`` of the
    ``tab10`` cycle and line style ``i % 3`` of solid, dashed, dotted, so that neighbours (e.g. SAMP
    and SAMP++) differ in both colour and style. Pass the same ``names`` for every panel of a figure."""
    from matplotlib import colormaps

    colours = colormaps["tab10"].colors
    return {
        name: {"color": colours[i % 10], "linestyle": _LINE_STYLES[i % 3], "linewidth": 1.6}
        for i, name in enumerate(names)
    }


def _curve_arrays(value: Any, band: Optional[str] = "std"):
    """Accepts ``(fractions, curves)``, the ``(auc, curves, fractions)`` of the metrics'
    ``return_curves=True`` (``curves`` is ``(K+1,)`` or ``(N, K+1)``), or a mapping with
    ``fractions``, ``mean`` and optionally ``std`` (the benchmark's aggregated curves).
    Returns x, the mean curve, the band ``(low, high)`` or None, the AUC or None and N or None."""
    if isinstance(value, Mapping):
        return _curve_from_summary(value, band)
    if not isinstance(value, (tuple, list)) or len(value) not in (2, 3):
        raise TypeError("each curve must be (fractions, curves), (auc, curves, fractions) or a mapping with 'mean'")
    auc = None
    if len(value) == 3:
        auc_v, curves, fractions = value
        auc = float(_to_numpy(auc_v).mean())
    else:
        fractions, curves = value
    x = _to_numpy(fractions).reshape(-1)
    c = _to_numpy(curves)
    if c.ndim not in (1, 2):
        raise ValueError(f"curves must be (K+1,) or (N, K+1), got shape {c.shape}")
    if c.shape[-1] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} fractions but curves have {c.shape[-1]} points")
    if c.ndim == 1:
        return x, c, None, auc, None
    return x, c.mean(0), _band(c, band), auc, c.shape[0]


def _band(c: np.ndarray, band: Optional[str]):
    if band is None or c.shape[0] < 2:
        return None
    if band == "std":
        mean, std = c.mean(0), c.std(0)
        return mean - std, mean + std
    return np.percentile(c, 25, axis=0), np.percentile(c, 75, axis=0)


def _curve_from_summary(value: Mapping[str, Any], band: Optional[str]):
    if "fractions" not in value or "mean" not in value:
        raise TypeError("a curve given as a mapping needs 'fractions' and 'mean' (and optionally 'std')")
    x = _to_numpy(value["fractions"]).reshape(-1)
    mean = _to_numpy(value["mean"]).reshape(-1)
    if mean.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} fractions but curves have {mean.shape[0]} points")
    if band == "iqr":
        raise ValueError("band='iqr' needs per-example curves (N, K+1); a mean/std summary only allows band='std'")
    spread = None
    if band == "std" and value.get("std") is not None:
        std = _to_numpy(value["std"]).reshape(-1)
        spread = (mean - std, mean + std)
    n = value.get("n")
    return x, mean, spread, None, (int(n) if n is not None else None)


_BAND_TEXT = {"std": "± 1 std over images", "iqr": "interquartile range over images"}


def curves_legend_title(
    band: Optional[str], n_images: Optional[int], band_methods: Optional[Sequence[str]] = None
) -> str:
    """What the lines and bands of :func:`plot_insertion_deletion_curves` show, e.g.
    ``"n = 6 images; lines: mean, band: ± 1 std over images"`` (``band_methods``: the methods with a
    band, when not all have one)."""
    what = "lines: mean over images"
    if band and (band_methods is None or band_methods):
        what = f"lines: mean, band: {_BAND_TEXT[band]}"
        if band_methods is not None:
            what += f"\n(band for {', '.join(band_methods)} only)"
    return f"n = {n_images} images; {what}" if n_images else what


def _place_legend(ax, legend: Any, owns_figure: bool, title: Optional[str]) -> None:
    if legend in (None, False):
        return
    if legend == "auto":
        legend = "outside" if owns_figure else "inside"
    common = {"fontsize": "small", "title": title, "title_fontsize": "small", "alignment": "left"}
    if legend == "outside":  # to the right of the axis, clear of the data
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **common)
    elif legend == "inside":
        ax.legend(**common)
    else:
        raise ValueError(f"`legend` must be 'auto', 'outside', 'inside' or None, got {legend!r}")


def plot_insertion_deletion_curves(
    curves: Mapping[str, Any],
    plt_fig_axis: Optional[Tuple[Any, Any]] = None,
    title: Optional[str] = None,
    xlabel: str = "fraction of pixels moved",
    ylabel: str = "score",
    show_std: bool = True,
    fig_size: Tuple[float, float] = (6, 4),
    use_pyplot: bool = True,
    band: Optional[str] = "std",
    legend: Optional[str] = "auto",
    styles: Optional[Mapping[str, Mapping[str, Any]]] = None,
    n_images: Optional[int] = None,
    band_methods: Optional[Sequence[str]] = None,
):
    """Insertion or deletion curves of several methods on one axis: the mean over examples, a
    spread band, and a legend whose title says what the band is and over how many images.

    Args:
        curves (mapping): method name -> ``(fractions, curves)``, the ``(auc, curves, fractions)``
            returned by :func:`captum_paths.metrics.deletion` / ``insertion`` with
            ``return_curves=True``, or a mapping ``{"fractions", "mean", "std"(, "n")}`` (curves
            already aggregated, as the benchmark stores them). ``curves`` is one curve ``(K+1,)`` or
            one per example ``(N, K+1)``. With an AUC the legend shows it.
        plt_fig_axis (tuple, optional): ``(figure, axis)`` to draw on.
        title, xlabel, ylabel (str): labels.
        show_std (bool): draw the band at all (kept for compatibility; ``band=None`` does the same).
        fig_size (tuple): size of a new figure.
        use_pyplot (bool): as in :mod:`captum.attr.visualization`.
        band (str or None): ``"std"`` (mean ± 1 std over examples, default), ``"iqr"`` (25th to
            75th percentile; needs per-example curves) or ``None``.
        legend (str or None): ``"outside"`` (right of the axis, clear of the data), ``"inside"``
            (matplotlib's best place), ``None`` (none: e.g. for one shared legend per figure) or
            ``"auto"`` (default: outside on a figure made here, inside on a given axis, where a
            legend outside could cover the caller's other panels).
        styles (mapping, optional): method name -> keyword arguments of ``ax.plot`` (colour,
            line style, ...); default :func:`method_styles` of the names in order.
        n_images (int, optional): the number of images behind the curves, for the legend title;
            default: N of the per-example curves (or the ``"n"`` of the mappings) when known.
        band_methods (sequence of str, optional): the methods that get a band (default: all); with
            many methods, bands on a few (e.g. the two a claim compares) keep the lines readable.

    Returns:
        ``(figure, axis)``.
    """
    if not curves:
        raise ValueError("`curves` is empty: pass at least one method's curve")
    if band not in (None, "std", "iqr"):
        raise ValueError(f"`band` must be 'std', 'iqr' or None, got {band!r}")
    band = band if show_std else None
    if plt_fig_axis is not None:
        fig, ax = plt_fig_axis
    else:
        fig, axes = _new_figure(fig_size, use_pyplot)
        ax = axes[0, 0]
    styles = {**method_styles(list(curves)), **(styles or {})}
    counts = []
    for name, value in curves.items():
        with_band = band if band_methods is None or name in band_methods else None
        counts.append(_draw_curve(ax, name, value, with_band, styles.get(name, {})))
    known = [c for c in counts if c is not None]
    n_images = n_images if n_images is not None else (known[0] if known and len(set(known)) == 1 else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    if title:
        ax.set_title(title)
    banded = None if band_methods is None else [n for n in curves if n in band_methods]
    _place_legend(ax, legend, plt_fig_axis is None, curves_legend_title(band, n_images, banded))
    if plt_fig_axis is None:
        _show(use_pyplot)
    return fig, ax


def _draw_curve(ax, name: str, value: Any, band: Optional[str], style: Mapping[str, Any]) -> Optional[int]:
    x, mean, spread, auc, n = _curve_arrays(value, band)
    label = f"{name} (AUC {auc:.3f})" if auc is not None else str(name)
    (line,) = ax.plot(x, mean, label=label, **style)
    if spread is not None:
        from matplotlib.colors import to_rgba

        colour = line.get_color()  # thin edges in the line's colour: overlapping bands stay attributable
        ax.fill_between(x, *spread, facecolor=to_rgba(colour, 0.12), edgecolor=to_rgba(colour, 0.6), linewidth=0.6)
    return n


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

# Captum's signed heat-map colours (red: against the target, white: 0, green: for it)
_SIGN_CMAPS = {"positive": "Greens", "negative": "Reds", "absolute_value": "Blues"}


def _signed_cmap(sign: str):
    if sign == "all":
        from matplotlib.colors import LinearSegmentedColormap

        return LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])
    return _SIGN_CMAPS[sign]


def _column_signed(name: str, maps: np.ndarray, signed: Any) -> bool:
    """Whether a column is drawn on the signed scale: ``signed`` as given (a bool, or a mapping by
    method name), else auto: signed when any channel-summed map of the column has a negative value."""
    if isinstance(signed, Mapping):
        signed = signed.get(name)
    if signed is not None:
        return bool(signed)
    return bool((maps.sum(axis=1) < 0).any())


def _colorbar_specs(kinds: Sequence[bool], sign: str, unsigned_cmap: str):
    """One colour bar per kind of column present: (key, cmap, vmin, vmax, ticks, tick labels, label)."""
    specs = []
    if any(kinds):
        if sign == "all":
            ticks, text = [-1, 0, 1], ["-1: against the class", "0", "+1: for the class"]
        else:
            ticks, text = [0, 1], ["0", "1"]
        label = "signed maps: attribution / the map's scale" + ("" if sign == "all" else f" (sign={sign!r})")
        specs.append(("signed", _signed_cmap(sign), -1.0 if sign == "all" else 0.0, 1.0, ticks, text, label))
    if not all(kinds):
        label = "unsigned maps (no value < 0): importance / the map's scale"
        specs.append(("unsigned", unsigned_cmap, 0.0, 1.0, [0, 0.5, 1], ["0", "0.5", "1"], label))
    return specs


def _grid_caption(unsigned_names: Sequence[str], outlier_perc: float) -> str:
    text = (
        f"Each map is divided by its own scale (the value under which {100 - outlier_perc:g}% of the map's "
        "|attribution| mass lies) and clipped: colours compare pixels within one map, not across maps."
    )
    if unsigned_names:
        text += f" Unsigned columns, drawn from 0 on the sequential scale: {', '.join(unsigned_names)}."
    return text + " White: zero (or an all-zero map)."


class _BarLayout(NamedTuple):
    x0: float  # the grid's left edge (inches)
    side_by_side: bool
    bar_w: float
    caption: List[str]  # wrapped lines
    height: float  # inches needed below the grid


def _bar_layout(w_in: float, n_bars: int, caption: str) -> _BarLayout:
    """Where the colour bars and caption go: side by side when each bar gets 4 inches, else stacked."""
    import textwrap

    x0 = min(0.125 * w_in, 0.6)
    avail = w_in - x0 - 0.3
    side = n_bars > 1 and avail >= 4.8 * n_bars
    bar_w = min(5.0, avail / n_bars - 0.8 if side else avail)
    lines = textwrap.wrap(caption, width=max(30, int((w_in - x0 - 0.2) * 13)))
    rows = 1 if side else n_bars
    return _BarLayout(x0, side, bar_w, lines, 0.35 + 0.19 * len(lines) + 0.85 * rows)


def _add_grid_colorbars(fig, specs, layout: _BarLayout) -> list:
    """Horizontal colour bars under the grid (side by side or stacked), the caption below them;
    returns their axes, labelled ``"colorbar:signed"`` / ``"colorbar:unsigned"``."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    w_in, h_in = fig.get_size_inches()
    fig.subplots_adjust(bottom=layout.height / h_in, left=layout.x0 / w_in)
    caption_top = 0.1 + 0.19 * len(layout.caption)
    caxes = []
    for k, (key, cmap, vmin, vmax, ticks, text, label) in enumerate(specs):
        left = layout.x0 + (k * (layout.bar_w + 0.8) if layout.side_by_side else 0.0)
        row = 0 if layout.side_by_side else len(specs) - 1 - k  # stacked: the first bar on top
        bottom = caption_top + 0.4 + 0.85 * row
        rect = [left / w_in, bottom / h_in, layout.bar_w / w_in, 0.12 / h_in]
        cax = fig.add_axes(rect, label=f"colorbar:{key}")
        bar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), cax=cax, orientation="horizontal")
        bar.set_ticks(ticks, labels=text, fontsize="small")
        cax.set_title(label, fontsize="small")
        caxes.append(cax)
    fig.text(layout.x0 / w_in, 0.1 / h_in, "\n".join(layout.caption), fontsize="small", va="bottom", ha="left")
    return caxes


def plot_attribution_grid(
    images: Any,
    attributions: Mapping[str, Any],
    titles: Optional[Sequence[str]] = None,
    sign: str = "all",
    shift_nonnegative: bool = False,
    fig_size: Optional[Tuple[float, float]] = None,
    use_pyplot: bool = False,
    signed: Any = None,
    colorbar: bool = True,
    unsigned_cmap: str = "Purples",
    outlier_perc: float = 2,
    title: Optional[str] = None,
):
    """Images (rows) x methods (columns): the input, then each method's attribution heat map, with
    colour bars and a caption saying what the colours mean.

    Signed columns (attributions for and against the target) use Captum's diverging red-white-green
    map on [-1, 1] (with ``sign="all"``). Unsigned columns (no negative value in any of the column's
    maps, e.g. an ablation-path saliency in [0, 1], Saliency, Grad-CAM) use a sequential map on
    [0, 1] from 0 (``unsigned_cmap``), so that they neither look like "all positive evidence" nor
    borrow the signed scale. Every map is divided by its own scale (Captum's ``outlier_perc``).

    Args:
        images: ``(N, C, H, W)``.
        attributions (mapping): method name -> ``(N, C, H, W)`` attributions of the same images.
        titles (sequence of str, optional): one per image (row label).
        sign (str): Captum's ``sign`` for the signed columns (``"all"``, ``"positive"``, ...).
        shift_nonnegative (bool): draw a map with no negative value minus its minimum, so that a
            constant offset does not fill the scale. Rankings, which the metrics use, are unchanged by
            it, but the scale no longer starts at the map's 0. Default: False.
        fig_size, use_pyplot: as in :mod:`captum.attr.visualization` (default: no pyplot). The
            colour bars and caption add 1.5 to 3 inches below the grid.
        signed (None, bool or mapping): which columns are signed; None (default): auto, per column;
            a bool: every column; a mapping method name -> bool (missing names: auto).
        colorbar (bool): add the colour bars (one per kind of column present) and the caption.
        unsigned_cmap (str): the sequential colour map of unsigned columns.
        outlier_perc (float): Captum's ``outlier_perc`` (the share of |attribution| mass clipped).
        title (str, optional): the figure's title, just above the grid.

    Returns:
        ``(figure, axes)`` with ``axes`` of shape ``(N, 1 + len(attributions))``; the colour bars are
        the figure's axes labelled ``"colorbar:signed"`` / ``"colorbar:unsigned"``.
    """
    imgs = _to_numpy(images)
    if imgs.ndim != 4:
        raise ValueError(f"`images` must be (N, C, H, W), got {imgs.shape}")
    maps = {name: _to_numpy(a) for name, a in attributions.items()}
    for name, a in maps.items():
        if a.shape != imgs.shape:
            raise ValueError(f"attributions of {name!r} have shape {a.shape}, images {imgs.shape}")
    kinds = [_column_signed(name, a, signed) for name, a in maps.items()]
    n, cols = imgs.shape[0], 1 + len(maps)
    w, h = fig_size or (1.6 * cols, 1.6 * n)
    specs = _colorbar_specs(kinds, sign, unsigned_cmap) if colorbar and maps else []
    unsigned_names = [name for name, s in zip(maps, kinds) if not s]
    layout = _bar_layout(w, len(specs), _grid_caption(unsigned_names, outlier_perc)) if specs else None
    h += (layout.height if layout else 0.0) + (0.5 if title else 0.0)
    fig, axes = _new_figure((w, h), use_pyplot, n, cols)
    if title:
        fig.subplots_adjust(top=1 - 0.55 / h)
        fig.suptitle(title, y=1 - 0.1 / h, va="top")
    for i in range(n):
        _imshow(axes[i, 0], imgs[i])
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize="small")
        for j, ((name, a), is_signed) in enumerate(zip(maps.items(), kinds), start=1):
            _grid_panel(axes[i, j], fig, a[i], is_signed, sign, shift_nonnegative, unsigned_cmap, outlier_perc)
            if i == 0:
                axes[i, j].set_title(name, fontsize="small")
    if n:
        axes[0, 0].set_title("input", fontsize="small")
    if layout is not None:
        _add_grid_colorbars(fig, specs, layout)
    _show(use_pyplot)
    return fig, axes


def _grid_panel(ax, fig, amap, is_signed, sign, shift_nonnegative, unsigned_cmap, outlier_perc) -> None:
    if shift_nonnegative and amap.min() >= 0:
        amap = amap - amap.min()
    if is_signed:
        _attr_panel(ax, fig, amap, sign=sign, outlier_perc=outlier_perc, cmap=_signed_cmap(sign))
    else:
        _attr_panel(ax, fig, amap, sign="positive", outlier_perc=outlier_perc, cmap=unsigned_cmap)
