"""Writes the benchmark's results: a Table-1-style table (stdout and ``results.md``), ``results.json``
with every knob, the seed papers' headline claims checked on this run, and two figures."""

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from captum_paths.benchmark.progress import atomic_write_text

__all__ = [
    "COLUMNS",
    "EXTRA_COLUMNS",
    "MIN_IMAGES",
    "ALPHA",
    "format_table",
    "check_claims",
    "format_claims",
    "to_json",
    "write_results",
]

# (key in per_image, header, better direction, decimals)
COLUMNS: Tuple[Tuple[str, str, str, int], ...] = (
    ("samp_deletion", "SAMP Del ↓", "lower", 3),
    ("samp_insertion", "SAMP Ins ↑", "higher", 3),
    ("rise_deletion", "RISE Del ↓", "lower", 3),
    ("rise_insertion", "RISE Ins ↑", "higher", 3),
    ("diffid", "DiffID ↑", "higher", 3),
    ("pointing_game", "Pointing ↑", "higher", 2),
)
# The second table: the seed papers' other protocols and ROAD (``--metrics`` selects the costly ones).
EXTRA_COLUMNS: Tuple[Tuple[str, str, str, int], ...] = (
    ("sic", "SIC ↑", "higher", 3),
    ("aic", "AIC ↑", "higher", 3),
    ("mu_fidelity", "μ-fidelity ↑", "higher", 3),
    ("road_morf", "ROAD MoRF ↓", "lower", 3),
    ("road_lerf", "ROAD LeRF ↑", "higher", 3),
    ("road_combined", "ROAD comb. ↑", "higher", 3),
    ("ggig_spearman", "Spearman ↑", "higher", 3),
    ("ggig_weighted_jaccard", "W. Jaccard ↑", "higher", 3),
    ("ggig_ssim", "SSIM ↑", "higher", 3),
    ("ggig_reverse_mse", "Rev. MSE ↑", "higher", 3),
)
_COST = (
    ("seconds_per_image", "s / img", 3),
    ("forward_per_image", "fwd / img", 0),
    ("backward_per_image", "bwd / img", 0),
)


def _fmt(mean: float, std: float, decimals: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def format_table(
    results: Dict[str, Any], columns: Sequence[Tuple[str, str, str, int]] = COLUMNS, cost: bool = True
) -> str:
    """A markdown table: one row per method, mean ± std over the images, the best entry in bold.

    Args:
        results (dict): the run's results.
        columns (sequence): ``(key, header, better direction, decimals)`` of the metric columns; those no
            method has are left out. Default: :data:`COLUMNS`.
        cost (bool): append the cost columns (seconds, forward and backward passes per image).
    """
    methods = results["methods"]
    cols = [c for c in columns if any(c[0] in m["summary"] for m in methods.values())]
    if not cols and not cost:
        return ""
    best = {}
    for key, _, direction, _ in cols:
        vals = {
            n: m["summary"][key]["mean"]
            for n, m in methods.items()
            if key in m["summary"] and n != "random" and not math.isnan(m["summary"][key]["mean"])
        }
        if vals:
            best[key] = (min if direction == "lower" else max)(vals, key=vals.get)
    cost_cols = _COST if cost else ()
    header = ["Method"] + [c[1] for c in cols] + [c[1] for c in cost_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, m in methods.items():
        row = [m["label"]]
        for key, _, _, dec in cols:
            if key not in m["summary"]:
                row.append("n/a")
                continue
            s = m["summary"][key]
            cell = _fmt(s["mean"], s["std"], dec)
            row.append(f"**{cell}**" if best.get(key) == name else cell)
        for key, _, dec in cost_cols:
            row.append(f"{m[key]:.{dec}f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# A claim is decided only on at least this many images (pairs with a value for both methods) ...
MIN_IMAGES = 30
# ... and only when the paired Wilcoxon signed-rank test gives p below this.
ALPHA = 0.05


def _paired(results, a: str, b: str, key: str, direction: str) -> Optional[Dict[str, Any]]:
    """Is method ``a`` better than ``b`` on ``key``? Mean difference, wins and a paired test over the
    images where both have a value (SIC / AIC have none for the images PAIR's rules skip)."""
    methods = results["methods"]
    if a not in methods or b not in methods or key not in methods[a]["per_image"] or key not in methods[b]["per_image"]:
        return None
    va = np.asarray(methods[a]["per_image"][key], dtype=float)
    vb = np.asarray(methods[b]["per_image"][key], dtype=float)
    both = np.isfinite(va) & np.isfinite(vb)
    va, vb = va[both], vb[both]
    diff = va - vb if direction == "higher" else vb - va  # > 0 means a is better
    p = float("nan")
    if len(diff) > 1 and np.any(diff != diff[0]):
        from scipy.stats import wilcoxon

        try:
            p = float(wilcoxon(diff).pvalue)
        except ValueError:
            pass
    return {
        "a": a,
        "b": b,
        "metric": key,
        "better": direction,
        "mean_a": float(va.mean()) if len(va) else float("nan"),
        "mean_b": float(vb.mean()) if len(vb) else float("nan"),
        "a_better_on_mean": bool(len(diff) and diff.mean() > 0),
        "images_a_better": int((diff > 0).sum()),
        "images_b_better": int((diff < 0).sum()),
        "n": int(len(diff)),
        "wilcoxon_p": p,
    }


# The seed papers' own claims, each as a comparison of two methods on one metric, on the paper's protocol:
# SAMP Table 1 (insertion / deletion), LPI Table 1 (DiffID), GGIG Tables 1-2 (map-input similarity, SIC,
# AIC), and the ablation-path paper's localisation (pointing game).
_SAMP, _LPI, _GGIG = "SAMP paper (Table 1)", "LPI paper (Table 1)", "GGIG paper"
CLAIMS = (
    (f"{_SAMP}: SAMP++ beats IG on deletion (SAMP protocol)", "samp++", "ig", "samp_deletion", "lower"),
    (f"{_SAMP}: SAMP++ beats IG on insertion (SAMP protocol)", "samp++", "ig", "samp_insertion", "higher"),
    (f"{_SAMP}: SAMP++ beats Blur IG on deletion (SAMP protocol)", "samp++", "blur-ig", "samp_deletion", "lower"),
    (f"{_SAMP}: SAMP++ beats Blur IG on insertion (SAMP protocol)", "samp++", "blur-ig", "samp_insertion", "higher"),
    (f"{_SAMP}: SAMP++ beats Guided IG on deletion (SAMP protocol)", "samp++", "guided-ig", "samp_deletion", "lower"),
    (
        f"{_SAMP}: SAMP++ beats Guided IG on insertion (SAMP protocol)",
        "samp++",
        "guided-ig",
        "samp_insertion",
        "higher",
    ),
    (f"{_LPI}: LPI's DiffID above IG", "lpi", "ig", "diffid", "higher"),
    (f"{_LPI}: LPI's DiffID above expected gradients", "lpi", "eg", "diffid", "higher"),
    (f"{_LPI}: LPI's DiffID above AGI", "lpi", "agi", "diffid", "higher"),
    (f"{_GGIG} (Table 2): GGIG's SIC above IG's", "ggig", "ig", "sic", "higher"),
    (f"{_GGIG} (Table 2): GGIG's AIC above IG's", "ggig", "ig", "aic", "higher"),
    (
        f"{_GGIG} (Table 1): GGIG's map more like its input than IG's (Spearman)",
        "ggig",
        "ig",
        "ggig_spearman",
        "higher",
    ),
    (
        f"{_GGIG} (Table 1): GGIG's map more like its input than IG's (weighted Jaccard)",
        "ggig",
        "ig",
        "ggig_weighted_jaccard",
        "higher",
    ),
    (f"{_GGIG} (Table 1): GGIG's map more like its input than IG's (SSIM)", "ggig", "ig", "ggig_ssim", "higher"),
    (
        f"{_GGIG} (Table 1): GGIG's map more like its input than IG's (reverse MSE)",
        "ggig",
        "ig",
        "ggig_reverse_mse",
        "higher",
    ),
    (
        "Ablation-path paper: AblationPath's saliency localises (pointing game above IG)",
        "ablation",
        "ig",
        "pointing_game",
        "higher",
    ),
    (
        "Ablation-path paper: AblationPath's saliency localises (pointing game above Random)",
        "ablation",
        "random",
        "pointing_game",
        "higher",
    ),
)
# The ``--metrics`` name that computes each claim's column.
_METRIC_OF_COLUMN = {
    "road_morf": "road",
    "road_lerf": "road",
    "road_combined": "road",
    "sic": "sic_aic",
    "aic": "sic_aic",
    "ggig_spearman": "map_similarity",
    "ggig_weighted_jaccard": "map_similarity",
    "ggig_ssim": "map_similarity",
    "ggig_reverse_mse": "map_similarity",
}


def _verdict(r: Dict[str, Any], min_images: int, alpha: float) -> Tuple[str, bool, bool]:
    """``(verdict text, reproduced, decided)`` of one paired comparison."""
    if r["n"] < min_images:
        return f"not enough images to decide (n = {r['n']}, at least {min_images} needed)", False, False
    p = r["wilcoxon_p"]
    if not (p < alpha):  # also NaN: no difference at all
        return f"NOT reproduced: no significant difference (p = {p:.2g} >= {alpha})", False, True
    if r["a_better_on_mean"]:
        return "reproduced", True, True
    return "NOT reproduced: the opposite holds", False, True


def _unmeasured(results: Dict[str, Any], a: str, b: str, key: str) -> str:
    """Why a claim could not be measured on this run."""
    methods = results["methods"]
    missing = [m for m in (a, b) if m not in methods]
    if missing:
        return f"not measured: method(s) {', '.join(missing)} not run (`--methods`)"
    return f"not measured: metric not computed (select `{_METRIC_OF_COLUMN.get(key, key)}` in `metrics=`)"


def check_claims(results: Dict[str, Any], min_images: int = MIN_IMAGES, alpha: float = ALPHA) -> List[Dict[str, Any]]:
    """Every claim of :data:`CLAIMS` on this run: reproduced only with ``n >= min_images`` images, a paired
    Wilcoxon ``p < alpha`` and the first method better on the mean; claims the run cannot measure are
    listed with the reason (``measured`` False).

    Args:
        results (dict): the run's results (``methods`` with ``per_image`` values).
        min_images (int): the fewest paired images on which a claim is decided. Default :data:`MIN_IMAGES`.
        alpha (float): the significance level. Default :data:`ALPHA`.
    """
    out = []
    for text, a, b, key, direction in CLAIMS:
        r = _paired(results, a, b, key, direction)
        if r is None:
            reason = _unmeasured(results, a, b, key)
            out.append(
                dict(claim=text, a=a, b=b, metric=key, measured=False, decided=False, reproduced=False, verdict=reason)
            )
            continue
        verdict, reproduced, decided = _verdict(r, min_images, alpha)
        out.append(dict(r, claim=text, measured=True, decided=decided, reproduced=reproduced, verdict=verdict))
    return out


def format_claims(claims: Sequence[Dict[str, Any]]) -> str:
    if not claims:
        return "(no claim could be checked: a method it needs was not run)"
    lines = []
    for c in claims:
        if not c.get("measured", True):
            lines.append(f"- {c['claim']}: {c['verdict']}")
            continue
        verdict = c.get("verdict") or ("reproduced" if c["reproduced"] else "NOT reproduced")
        lines.append(
            f"- {c['claim']}: **{verdict}** (means {c['mean_a']:.3f} vs {c['mean_b']:.3f}; {c['a']} better on "
            f"{c['images_a_better']}/{c['n']} images, worse on {c['images_b_better']}; "
            f"Wilcoxon p = {c['wilcoxon_p']:.2g})"
        )
    return "\n".join(lines)


def to_json(results: Dict[str, Any]) -> str:
    """Everything except the tensors kept for the figures (keys starting with ``_``)."""
    public = {k: v for k, v in results.items() if not k.startswith("_")}
    return json.dumps(public, indent=1, default=_json_default, allow_nan=True)


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)


def _accuracy_text(model: Dict[str, Any]) -> str:
    acc = model.get("test_accuracy")
    if acc is None:
        return "accuracy unknown (the data has no labels)"
    return f"test accuracy {acc:.4f} on {model.get('accuracy_on', 'the evaluated images')}"


def _timing_conditions(results: Dict[str, Any]) -> str:
    """Threads, cores and the 1-minute load average under which the timings were taken."""
    env = results["environment"]
    loads = [m["load_average_1min"] for m in results["methods"].values() if m.get("load_average_1min")]
    threads = sorted({t for m in results["methods"].values() for t in m.get("threads", [])}) or [
        env.get("threads", "?")
    ]
    ranks = env.get("world_size", 1)
    text = (
        f"{'/'.join(map(str, threads))} torch thread(s)"
        + (f" in each of {ranks} processes" if ranks > 1 else "")
        + f" on {env.get('cpu_count', '?')} cores"
    )
    if loads:
        low, high = min(x["min"] for x in loads), max(x["max"] for x in loads)
        text += f", 1-minute load average {low:.2f}-{high:.2f} during the methods' chunks"
    return text


def _extra_caption(results: Dict[str, Any]) -> List[str]:
    """The second table's caption: the protocols of its columns and the default and costly metrics."""
    from captum_paths.benchmark.engine import EXPENSIVE_METRICS, METRICS, _knobs

    quick = bool(results["config"].get("quick"))
    present = {k for m in results["methods"].values() for k in m["summary"]}
    prot = {k: _knobs(results["protocols"], k, quick) for k in METRICS + EXPENSIVE_METRICS if k in results["protocols"]}
    parts = []
    if "sic" in present and "sic_aic" in prot:
        p = prot["sic_aic"]
        parts.append(
            f"SIC / AIC = PAIR's performance information curves ({p['information']} information proxy, "
            f"{len(p['thresholds'])} thresholds), per-image AUC, mean over the images PAIR's rules keep "
            f"(P(I) >= {p['min_pred_value']}; results.json: summary n)"
        )
    if "mu_fidelity" in present and "mu_fidelity" in prot:
        p = prot["mu_fidelity"]
        parts.append(
            f"μ-fidelity = {p['correlation'].capitalize()} correlation over {p['n_subsets']} random "
            f"{p['subset_size']:.0%} pixel subsets set to 0 (logit drop)"
        )
    if "road_combined" in present and "road" in prot:
        shares = ", ".join(map(str, prot["road"]["percentages"]))
        parts.append(
            f"ROAD = accuracy after noisy linear imputation, mean over removal shares {shares}; "
            "combined = (LeRF - MoRF) / 2 (ROAD favours blurry maps)"
        )
    if "ggig_spearman" in present:
        parts.append(
            "Spearman / W. Jaccard / SSIM / Rev. MSE = GGIG Table 1's similarity of |map| / max |map| to the input "
            "(reverse MSE pooled over every method and image)"
        )
    costly = ", ".join(f"`{m}`" for m in EXPENSIVE_METRICS)
    default = ", ".join(f"`{m}`" for m in METRICS)
    cheap = " Quick run: the metrics' cheapest settings (fewer thresholds, subsets, shares)." if quick else ""
    return [
        "; ".join(parts) + "." if parts else "",
        f"Default metrics: {default}. Costly, computed only when selected by name (`metrics=`): {costly} (per image x "
        "method cost in results.json: metric_seconds_per_image)." + cheap,
    ]


def markdown_report(results: Dict[str, Any]) -> str:
    """The whole ``results.md``: data and model, the tables, the protocols, the claims, the run's cost.

    Args:
        results (dict): what :func:`captum_paths.benchmark.runner.run_benchmark` or ``compare`` returns.
    """
    cfg, model, prot = results["config"], results["model"], results["protocols"]
    env = results["environment"]
    extra = format_table(results, EXTRA_COLUMNS, cost=False)
    lines = [
        "# captum_paths benchmark",
        "",
        f"Data: {results['data']['name']} ({results['data']['source']}; {results['data']['split']}); "
        f"{cfg['n_images']} test images, seed {cfg['seed']}. Model: {model['architecture']}, "
        f"{_accuracy_text(model)}.",
        f"Pointing game: {cfg.get('n_localization', 0)} synthetic localisation images"
        + (
            f", model test accuracy {model['localization_model']['test_accuracy']:.4f}."
            if "localization_model" in model
            else "."
        ),
        "",
        format_table(results),
        "",
        "Mean ± std over the images (best non-random entry in bold). Protocols: "
        f"SAMP = logit, curve / input logit, mean of points, {prot['samp']['features_per_step']} px per step; "
        f"RISE = softmax, trapezoid AUC, {prot['rise']['features_per_step']} px per step; deletion to zeros, "
        "insertion from blur; DiffID = area of insertion - deletion over ratios 0.1..0.9 (mean fill); "
        "pointing game tolerance "
        f"{prot['pointing_game']['tolerance']} px. Target: {prot['target']}. Cost columns exclude one-off set-up "
        "(LPI's bank fit), which results.json records as setup_seconds. Timings: "
        f"{_timing_conditions(results)} (per method in results.json: load_average_1min, threads).",
        "",
    ]
    if extra:
        lines += ["## Further metrics", "", extra, ""]
    lines += [line for line in _extra_caption(results) if line] + [""]
    lines += [
        "## Claims of the seed papers on this run",
        "",
        f"A claim is reproduced when, on at least {MIN_IMAGES} images, the first method has the better mean and a "
        f"paired Wilcoxon signed-rank test gives p < {ALPHA}; with fewer images it is not decided. Each paper is "
        "judged on its own protocol.",
        "",
        format_claims(results.get("claims", [])),
        "",
        f"Total time {results['total_seconds']:.0f} s wall, {results.get('total_cpu_seconds', float('nan')):.0f} s CPU "
        f"({_timing_conditions(results)}; load average at the end {_load_text(env)}); torch {env['torch']}, "
        f"captum {env['captum']}, device {env['device']}.",
    ]
    return "\n".join(lines) + "\n"


def _load_text(env: Dict[str, Any]) -> str:
    load = env.get("load_average")
    return " / ".join(f"{v:.2f}" for v in load) + " (1 / 5 / 15 min)" if load else "unknown"


def write_results(results: Dict[str, Any], out: str, figures: bool = True) -> Dict[str, Path]:
    """Write ``results.md``, ``results.json`` and (with ``figures``) ``attributions.png`` and
    ``curves.png`` into ``out``; returns the paths written."""
    directory = Path(out).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    results.setdefault("claims", check_claims(results))
    paths = {"markdown": directory / "results.md", "json": directory / "results.json"}
    atomic_write_text(paths["markdown"], markdown_report(results))
    atomic_write_text(paths["json"], to_json(results))
    if figures and "_images" in results and results.get("_attributions"):
        paths.update(_write_figures(results, directory))
    return paths


# The curves figure shows a selection, so that its lines stay readable: the seed papers' methods,
# the baselines their claims compare with, and the random floor. Runs with few methods show all.
CURVE_METHODS = ("samp", "samp++", "lpi", "ggig", "ablation", "ig", "eg", "random")
# Bands (± 1 std over images) on the SAMP paper's headline pair only: eight overlapping bands hide the lines
BAND_METHODS = ("samp++", "ig")
_PANELS = (
    ("samp", "SAMP protocol: logit / input logit", "logit / input logit"),
    ("rise", "RISE protocol: softmax", "softmax probability of the target"),
)
_DIRECTIONS = (
    ("deletion", "Deletion (lower is better)", "fraction of pixels deleted (set to 0)"),
    ("insertion", "Insertion (higher is better)", "fraction of pixels inserted (into the blurred image)"),
)


def _write_figures(results: Dict[str, Any], directory: Path) -> Dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {"attributions": directory / "attributions.png"}
    fig = _attribution_figure(results)
    _save_figure(fig, paths["attributions"])
    plt.close(fig)
    fig = _curves_figure(results)
    if fig is not None:
        paths["curves"] = directory / "curves.png"
        _save_figure(fig, paths["curves"])
        plt.close(fig)
    return paths


def _attribution_figure(results: Dict[str, Any]):
    from captum_paths.visualization import plot_attribution_grid

    labels = {n: m["label"] for n, m in results["methods"].items()}
    n_show = min(6, len(results["_images"]))
    fig, _ = plot_attribution_grid(
        results["_images"][:n_show],
        {labels[n]: a[:n_show] for n, a in results["_attributions"].items()},
        titles=[f"pred {int(t)}" for t in results["_targets"][:n_show]],
        title=f"Attributions of the first {n_show} test images for the predicted class (rows), by method (columns)",
    )
    return fig


def _curve_selection(results: Dict[str, Any]) -> Tuple[List[str], str]:
    """The methods drawn in the curves figure and a sentence saying which."""
    curves = results["curves"]
    every = [n for n in results["methods"] if curves.get(n)]
    picked = [n for n in CURVE_METHODS if n in every]
    if len(every) <= len(CURVE_METHODS) or not picked:
        return every, f"all {len(every)} methods"
    return picked, (
        f"{len(picked)} of {len(every)} methods: the seed papers' methods, the baselines their claims compare "
        "with and Random (all methods: results.md)"
    )


def _curves_figure(results: Dict[str, Any]):
    """Insertion and deletion curves under both protocols (rows) with one shared legend; None if no
    method has curves."""
    from captum_paths.visualization import curves_legend_title, method_styles, plot_insertion_deletion_curves

    names, selection = _curve_selection(results)
    rows = [
        r for r in _PANELS if any(all(f"{r[0]}_{d[0]}" in results["curves"][n] for n in names) for d in _DIRECTIONS)
    ]
    if not names or not rows:
        return None
    import matplotlib.pyplot as plt

    labels = {n: results["methods"][n]["label"] for n in names}
    styles = method_styles([labels[n] for n in names])
    banded = [labels[n] for n in names if n in BAND_METHODS] if len(names) > 3 else []
    banded = banded or [labels[n] for n in names]
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.6 * len(rows)), squeeze=False)
    for (proto, row_title, ylabel), ax_row in zip(rows, axes):
        for (direction, title, xlabel), ax in zip(_DIRECTIONS, ax_row):
            kind = f"{proto}_{direction}"
            curves = {labels[n]: results["curves"][n][kind] for n in names if kind in results["curves"][n]}
            if not curves:
                ax.set_visible(False)
                continue
            plot_insertion_deletion_curves(
                curves,
                (fig, ax),
                f"{title}\n{row_title}",
                xlabel,
                ylabel,
                styles=styles,
                legend=None,
                band_methods=banded,
            )
    n_images = results["config"]["n_images"]
    handles, texts = next(ax for ax in axes.ravel() if ax.get_visible()).get_legend_handles_labels()
    fig.legend(
        handles,
        texts,
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        fontsize="small",
        title=curves_legend_title("std", n_images, banded if len(banded) < len(names) else None),
        title_fontsize="small",
        alignment="left",
    )
    fig.suptitle(f"Insertion and deletion curves on {n_images} test images; {selection}", fontsize="medium")
    fig.tight_layout()
    return fig


def _save_figure(fig, path: Path) -> None:
    """``fig.savefig`` to a temporary file in the same folder, then renamed into place."""
    from captum_paths._io import atomic_path

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
