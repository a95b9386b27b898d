"""The work of a run, split into chunks that any rank can do in any order with the same result.

A run is a :class:`Workload`: one or two :class:`EvalSet` (a model and the images it explains: the main
set, and the synthetic localisation set of the pointing game) and the methods to compare. It is cut
into :class:`Task` s, one per (method, set, chunk), where a chunk is ``batch_size`` consecutive image
indices. Chunk boundaries depend on the image indices and ``batch_size`` only, never on the number of
ranks, so every image is explained in the same batch whatever K is, and:

* methods known to be deterministic (:data:`BATCHED_METHODS`) explain a whole chunk at once (after
  seeding from the chunk's first image);
* every other method (those that draw random numbers: LPI, expected gradients, AGI, SmoothGrad, the
  random floor, and any method not listed) explains one image at a time, every draw seeded from
  ``(seed, image index)``: torch's, numpy's and Python's global generators, and any ``torch.Generator``
  the method's ``explain`` closes over, are re-seeded before each image.

Rank r takes every K-th pending task (round-robin over (method, set, chunk), which spreads every
method's chunks over the ranks), appends one JSON line per finished chunk to its progress file
(:mod:`.progress`), and at the end sends its new records to rank 0, which merges them with the ones a
previous, interrupted run left behind (:func:`merge`).
"""

import hashlib
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from captum_paths.benchmark.distributed import DistInfo
from captum_paths.benchmark.methods import MethodContext, MethodSpec, PassCounter
from captum_paths.benchmark.progress import ProgressStore, SettingsMismatch
from captum_paths.benchmark.sources import ImageSource
from captum_paths.metrics._core.pic import PAIR_THRESHOLDS

__all__ = [
    "METRICS",
    "ALL_METRICS",
    "EXPENSIVE_METRICS",
    "METRIC_COLUMNS",
    "MAY_BE_NAN",
    "metric_columns",
    "BATCHED_METHODS",
    "EvalSet",
    "Workload",
    "RunOptions",
    "Task",
    "protocols_for",
    "image_seed",
    "metric_seed",
    "plan_tasks",
    "model_fingerprint",
    "settings_of",
    "execute",
    "merge",
    "environment",
]

# Every metric name that ``compare(metrics=...)`` accepts (the command line's ``--metrics`` validates against
# :data:`METRICS` for now); a name can fill several columns (:data:`METRIC_COLUMNS`).
ALL_METRICS = (
    "samp_deletion",
    "samp_insertion",
    "rise_deletion",
    "rise_insertion",
    "diffid",
    "pointing_game",
    "sic_aic",
    "map_similarity",
    "mu_fidelity",
    "road",
)
CAUSAL_METRICS = ALL_METRICS[:4]
# Too costly for ``make bench``'s 10-minute budget on a 2-core CPU, computed only when named. Per image x
# method on the digits CNN (1 torch thread, load below 1): mu-fidelity 34-37 ms, against SIC/AIC 19-24 ms,
# ROAD 9-10 ms, DiffID 7 ms and GGIG's similarities 0.3 ms; at 22 methods x 100 images SIC/AIC add about
# 50 s to a 7-minute default run, which GGIG's headline claim (its Table 2) is worth, and mu-fidelity
# would add about 80 s more. SIC/AIC leave NaN for the images PAIR's rules skip.
EXPENSIVE_METRICS = ("mu_fidelity",)
# The default selection: what a run computes unless told otherwise.
METRICS = tuple(m for m in ALL_METRICS if m not in EXPENSIVE_METRICS)
# The per-image columns each metric name fills (``map_similarity``'s reverse MSE is derived in :func:`merge`).
METRIC_COLUMNS = {
    "sic_aic": ("sic", "aic"),
    "map_similarity": ("ggig_spearman", "ggig_weighted_jaccard", "ggig_ssim", "ggig_mse", "ggig_reverse_mse"),
    "road": ("road_morf", "road_lerf", "road_combined"),
}
# Columns that may hold NaN for an image: SIC / AIC of the images PAIR's rules skip, and the correlations
# that are undefined when one side is constant: GGIG's Spearman of a constant map (e.g. an all-zero
# Grad-CAM; scipy's, as GGIG's code) and mu-fidelity when the subsets' attribution sums or output drops do
# not vary (e.g. an all-zero map). Summaries and claims leave such images out and say how many.
MAY_BE_NAN = frozenset({"sic", "aic", "ggig_spearman", "mu_fidelity"})


def metric_columns(metrics: Sequence[str]) -> Tuple[str, ...]:
    """The per-image columns (keys of ``per_image``) that the metric names ``metrics`` fill.

    Args:
        metrics (sequence of str): names from :data:`ALL_METRICS`.
    """
    return tuple(c for m in metrics for c in METRIC_COLUMNS.get(m, (m,)))


# Tags mixed into a metric's per-image seed, so that no two metrics (nor the methods) share a stream.
_METRIC_TAGS = {"sic_aic": 1, "road": 2, "mu_fidelity": 3}
# Methods known to draw no random numbers (with the benchmark's fixed baselines): explained a chunk at a
# time. Every other method, including any added later, is explained one image at a time with every
# generator seeded from (seed, image index): slower for batched methods, never wrong.
BATCHED_METHODS = frozenset(
    {
        "samp",
        "samp++",
        "ggig",
        "ablation",
        "guided-ig",
        "blur-ig",
        "ig",
        "ig-idgi",
        "guided-ig-idgi",
        "blur-ig-idgi",
        "deeplift",
        "gradcam",
        "saliency",
        "ixg",
    }
)
N_SHOW = 6  # images of the attribution figure


def protocols_for(image_size: int, n_features: int) -> Dict[str, Any]:
    """Every knob of the metric protocols (recorded in the results).

    Args:
        image_size (int): image width in pixels; 128 or more selects the ImageNet-sized knobs.
        n_features (int): pixels per image (recorded).
    """
    large = image_size >= 128
    blur = (31, 5.0) if large else (11, 5.0)
    return {
        "target": "class predicted by the model on the input",
        "samp": {
            "paper": "Zhang et al. 2024 (SAMP), Table 1",
            "score": "logit",
            "auc": "mean",
            "normalize": True,
            "features_per_step": 224 * 8 if large else 10,
            "deletion_substrate": "zeros",
            "insertion_substrate": f"GaussianBlur(klen={blur[0]}, sigma={blur[1]})",
        },
        "rise": {
            "paper": "Petsiuk et al. 2018 (RISE)",
            "score": "softmax",
            "auc": "trapezoid",
            "normalize": False,
            "features_per_step": image_size,
            "deletion_substrate": "zeros",
            "insertion_substrate": "GaussianBlur(klen=11, sigma=5.0)",
        },
        "diffid": {
            "paper": "Yang et al. 2023 (LPI)",
            "ratios": [round(0.1 * i, 1) for i in range(1, 10)],
            "fill": "mean of the preserved pixels",
            "absolute": True,
            "score": "logit ratio to the input",
            "reported": "area (trapezoid over ratios) of insertion - deletion",
        },
        "pointing_game": {
            "paper": "Zhang et al. 2016",
            "tolerance": 1,
            "hit": "argmax of the channel-summed attribution within tolerance px of the box",
        },
        **_costly_and_ggig_protocols(),
        "blur": blur,
        "n_features": n_features,
    }


def _costly_and_ggig_protocols() -> Dict[str, Any]:
    """The knobs of SIC / AIC, GGIG's map-input similarities, mu-fidelity and ROAD (``"quick"``: the
    overrides of a ``--quick`` run, applied by :func:`_knobs`)."""
    return {
        "sic_aic": {
            "paper": "Kapishnikov et al. 2019 (XRAI), as PAIR saliency's pic.py; GGIG Table 2",
            "information": "webp",
            "information_note": "PAIR's proxy (lossless WebP size). The GGIG paper's grey-level entropy skips "
            "most digits: the start image, interpolated from a few seed pixels, has more distinct grey levels "
            "than the digit itself",
            "thresholds": list(PAIR_THRESHOLDS),
            "seed_fraction": 0.01,
            "min_pred_value": 0.5,
            "pixel_range": [0.0, 1.0],
            "saliency_reduction": "abs_sum",
            "reported": "per-image AUC, mean over the images PAIR's rules keep (P(I) >= 0.5, start image "
            "below the input in information and score); the paper's number is the AUC of the median curve",
            "seed": "seed masks drawn per image from (seed, image index)",
            "quick": {"thresholds": [0.005, 0.05, 0.25, 0.75]},
        },
        "map_similarity": {
            "paper": "Rahman et al. (GGIG), Table 1",
            "measures": ["spearman", "weighted_jaccard", "ssim", "reverse_mse"],
            "input_scaling": "none (images already in [0, 1])",
            "map_scaling": "abs_max (|a| / max |a|; the authors' maps were absolute values)",
            "ssim_data_range": 2.0,
            "reverse_mse_pool": "max MSE over every method and image of the run (as the authors pooled)",
        },
        "mu_fidelity": {
            "paper": "Bhatt et al. 2020; SAMP paper appendix A.5.4",
            "correlation": "pearson",
            "subset_size": 0.2,
            "n_subsets": 100,
            "baseline": "zeros",
            "score": "logit",
            "seed": "subsets drawn per image from (seed, image index)",
            "quick": {"n_subsets": 20},
        },
        "road": {
            "paper": "Rong et al. 2022 (ROAD)",
            "percentages": [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9],
            "imputer": "noisy linear (noise_std 0.01), conjugate gradient rtol 1e-6",
            "noise_std": 0.01,
            "rtol": 1e-6,
            "score": "accuracy",
            "reported": "mean over the percentages of MoRF (lower is better), LeRF (higher is better) and "
            "(LeRF - MoRF) / 2 (higher is better)",
            "seed": "tie-breaking jitter and imputation noise drawn per image from (seed, image index)",
            "quick": {"percentages": [0.1, 0.5, 0.9]},
        },
    }


def _knobs(protocols: Dict[str, Any], metric: str, quick: bool) -> Dict[str, Any]:
    """A metric's recorded knobs, with its ``quick`` overrides applied in quick mode."""
    knobs = dict(protocols[metric])
    overrides = knobs.pop("quick", {})
    return dict(knobs, **overrides) if quick else knobs


@dataclass
class EvalSet:
    """A model and the images it explains.

    Attributes:
        name (str): ``"main"`` or ``"localization"`` (part of every task key).
        model (nn.Module): the classifier, eval mode, on the run's device.
        source (ImageSource): the evaluated images, by image index.
        ctx (MethodContext): what the methods may use besides the model (reference images, seed, ...).
        protocols (dict): from :func:`protocols_for`.
        metrics (tuple of str): the metrics computed on this set (a subset of :data:`ALL_METRICS`).
        regions (Tensor, optional): ``(N, H, W)`` bool ground-truth boxes for the pointing game.
    """

    name: str
    model: nn.Module
    source: ImageSource
    ctx: MethodContext
    protocols: Dict[str, Any]
    metrics: Tuple[str, ...]
    regions: Optional[Tensor] = None


@dataclass
class Workload:
    """The methods to run on some evaluation sets; ``specs`` maps a method name to its spec."""

    sets: List[EvalSet]
    methods: List[str]
    specs: Dict[str, MethodSpec]


@dataclass
class RunOptions:
    """The options of the private drivers (one object instead of many parameters).

    Attributes:
        seed (int): root of every per-image seed.
        batch_size (int): images per chunk (the unit of batching, of resuming and of sharding).
        max_rows (int): perturbed inputs per forward pass in the metrics (bounds memory).
        device (torch.device): where images are moved.
        out (str, optional): results folder holding ``progress/``; None keeps nothing on disk.
        overwrite (bool): discard progress of other settings instead of refusing the folder.
        show_progress (bool): a tqdm bar on rank 0.
        log (callable): prints one line (rank 0's ``print``, a no-op elsewhere).
    """

    seed: int
    batch_size: int
    max_rows: int
    device: torch.device
    out: Optional[str] = None
    overwrite: bool = False
    show_progress: bool = False
    log: Callable[[str], None] = print


@dataclass(frozen=True)
class Task:
    """One method on one chunk (``batch_size`` consecutive image indices) of one evaluation set."""

    method: str
    set_name: str
    chunk: int

    @property
    def key(self) -> str:
        return f"{self.method}/{self.set_name}/{self.chunk}"


def image_seed(seed: int, index: int) -> int:
    """A 32-bit seed from ``(seed, image index)`` only (numpy's SeedSequence mixing).

    Args:
        seed (int): the run's seed.
        index (int): the image index (position in the evaluated set).
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def metric_seed(seed: int, index: int, tag: int, slot: int = 0) -> int:
    """A 32-bit seed of one metric's draws for one image: from ``(seed, image index, metric tag, slot)`` only.

    Args:
        seed (int): the run's seed.
        index (int): the image index.
        tag (int): the metric's tag (:data:`_METRIC_TAGS`), so that metrics never share a stream.
        slot (int): a further split (ROAD: one stream per perturbed copy of the image).
    """
    entropy = [int(seed), int(index), 1000 + int(tag), int(slot)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def _generators(seed: int, indices: Sequence[int], tag: int) -> List[torch.Generator]:
    return [torch.Generator().manual_seed(metric_seed(seed, i, tag)) for i in indices]


def _reseed(explain: Callable, seed: int) -> None:
    """Seed the global generators and every ``torch.Generator`` ``explain`` closes over.

    Args:
        explain (callable): a method's ``explain(inputs, target)`` closure.
        seed (int): the seed.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    for cell in getattr(explain, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, torch.Generator):
            value.manual_seed(seed)


def plan_tasks(workload: Workload, batch_size: int) -> List[Task]:
    """Every task of the run, in a fixed order: method, then set, then chunk.

    Args:
        workload (Workload): sets and methods.
        batch_size (int): images per chunk.
    """
    out = []
    for method in workload.methods:
        for s in workload.sets:
            n_chunks = (len(s.source) + batch_size - 1) // batch_size
            out.extend(Task(method, s.name, c) for c in range(n_chunks))
    return out


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class, module tree and every parameter and buffer.

    Args:
        model (nn.Module): the model.
    """
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}".encode())
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def settings_of(workload: Workload, opts: RunOptions, extra: Dict[str, Any]) -> Dict[str, Any]:
    """Everything that decides the per-image numbers of a run (its resumable identity).

    Args:
        workload (Workload): the sets and methods.
        opts (RunOptions): seed, batch size and the metrics' batch bound.
        extra (dict): anything else the caller wants a resumed run to agree on.
    """
    return {
        "methods": {m: workload.specs[m].params for m in workload.methods},
        "seed": opts.seed,
        "batch_size": opts.batch_size,
        "max_rows": opts.max_rows,
        "device_type": opts.device.type,
        "sets": {
            s.name: {
                "n_images": len(s.source),
                "images": s.source.fingerprint(),
                "model": model_fingerprint(s.model),
                "metrics": list(s.metrics),
                "protocols": s.protocols,
            }
            for s in workload.sets
        },
        **extra,
    }


# ------------------------------------------------------------------------------------ one chunk


@dataclass
class _Scoring:
    """What the metrics of one chunk need: the model, the chunk's images, maps and targets, and the knobs."""

    model: nn.Module
    x: Tensor
    attr: Tensor
    target: Tensor
    indices: List[int]
    seed: int
    protocols: Dict[str, Any]
    max_rows: int
    quick: bool


def _causal_metrics(sc: _Scoring, metrics: Sequence[str], seconds: Dict[str, float]):
    """Per-image values and curves of the causal metrics and DiffID under the recorded protocols."""
    from captum_paths import Blur
    from captum_paths.metrics import deletion, diffid, insertion

    samp_p, rise_p = sc.protocols["samp"], sc.protocols["rise"]
    substrates = {
        "samp_deletion": (deletion, samp_p, "zeros"),
        "samp_insertion": (insertion, samp_p, Blur(*sc.protocols["blur"])),
        "rise_deletion": (deletion, rise_p, "zeros"),
        "rise_insertion": (insertion, rise_p, Blur(11, 5.0)),
    }
    out, curves = {}, {}
    for key in CAUSAL_METRICS:
        if key not in metrics:
            continue
        t0 = time.perf_counter()
        fn, p, substrate = substrates[key]
        auc, curve, fractions = fn(
            sc.model,
            sc.x,
            sc.attr,
            target=sc.target,
            features_per_step=p["features_per_step"],
            substrate=substrate,
            score=p["score"],
            auc=p["auc"],
            normalize=p["normalize"],
            return_curves=True,
            max_examples_per_batch=sc.max_rows,
        )
        out[key], curves[key] = auc, (fractions, curve)
        seconds[key] = time.perf_counter() - t0
    if "diffid" in metrics:
        t0 = time.perf_counter()
        ratios = sc.protocols["diffid"]["ratios"]
        out["diffid"] = diffid(
            sc.model, sc.x, sc.attr, target=sc.target, ratios=ratios, fill="mean", max_examples_per_batch=sc.max_rows
        ).area
        seconds["diffid"] = time.perf_counter() - t0
    return out, curves


def _sic_aic(sc: _Scoring) -> Dict[str, Tensor]:
    """SIC and AIC per image (NaN where PAIR's rules skip the image); seed masks per image."""
    from captum_paths.metrics import pic
    from captum_paths.metrics._core.pic import random_seed_masks

    p = _knobs(sc.protocols, "sic_aic", sc.quick)
    h, w = sc.x.shape[-2:]
    gens = _generators(sc.seed, sc.indices, _METRIC_TAGS["sic_aic"])
    masks = torch.cat([random_seed_masks(1, h, w, p["seed_fraction"], g) for g in gens])
    result = pic(
        sc.model,
        sc.x,
        sc.attr,
        target=sc.target,
        thresholds=p["thresholds"],
        information=p["information"],
        pixel_range=tuple(p["pixel_range"]),
        saliency_reduction=p["saliency_reduction"],
        seed_masks=masks,
        min_pred_value=p["min_pred_value"],
        max_examples_per_batch=sc.max_rows,
    )
    return {"sic": result.sic.auc, "aic": result.aic.auc}


def _map_similarity(sc: _Scoring) -> Dict[str, Tensor]:
    """GGIG Table 1 measures per image; the raw MSE (``ggig_mse``), pooled into reverse MSE by :func:`merge`."""
    from captum_paths.metrics import map_input_similarity

    p = _knobs(sc.protocols, "map_similarity", sc.quick)
    r = map_input_similarity(
        sc.x,
        sc.attr,
        measures=("spearman", "weighted_jaccard", "ssim", "mse"),
        input_scaling="none",
        map_scaling="abs_max",
        ssim_data_range=p["ssim_data_range"],
    )
    return {f"ggig_{k}": v for k, v in r.items()}


def _mu_fidelity(sc: _Scoring) -> Dict[str, Tensor]:
    """mu-fidelity per image, the pixel subsets drawn per image from ``(seed, image index)``."""
    from captum_paths.metrics import mu_fidelity
    from captum_paths.metrics._core.fidelity import subset_count
    from captum_paths.metrics._core.sensitivity import random_subsets

    p = _knobs(sc.protocols, "mu_fidelity", sc.quick)
    n_pixels = sc.x.shape[-2] * sc.x.shape[-1]
    k = subset_count(p["subset_size"], n_pixels)
    gens = _generators(sc.seed, sc.indices, _METRIC_TAGS["mu_fidelity"])
    subsets = torch.cat([random_subsets(1, p["n_subsets"], n_pixels, k, g, sc.x.device) for g in gens])
    value = mu_fidelity(
        sc.model,
        sc.x,
        sc.attr,
        target=sc.target,
        subsets=subsets,
        correlation=p["correlation"],
        score=p["score"],
        max_examples_per_batch=sc.max_rows,
    )
    return {"mu_fidelity": value}


class _RowNoiseImputer:
    """ROAD's noisy linear imputer whose noise for perturbed copy ``slot`` of image ``i`` comes from
    ``(seed, image index, slot)``: ``road`` hands the copies over in row order (image-major), so the
    values do not depend on the batching nor on the other images of the chunk."""

    def __init__(self, seed: int, indices: Sequence[int], per_image: int, noise_std: float, rtol: float):
        self.seed, self.indices, self.per_image = seed, list(indices), per_image
        self.noise_std, self.rtol, self.next_row = noise_std, rtol, 0

    def __call__(self, images: Tensor, masks: Tensor, generator=None) -> Tensor:
        from captum_paths.metrics import noisy_linear_impute

        filled = noisy_linear_impute(images, masks, noise_std=0.0, rtol=self.rtol)
        noise = []
        for row in range(self.next_row, self.next_row + len(images)):
            image, slot = self.indices[row // self.per_image], row % self.per_image
            g = torch.Generator().manual_seed(metric_seed(self.seed, image, _METRIC_TAGS["road"], 1 + slot))
            noise.append(torch.randn(images.shape[1:], generator=g, dtype=images.dtype))
        self.next_row += len(images)
        removed = masks.reshape(len(images), 1, *images.shape[-2:]).to(images.device)
        return torch.where(removed, filled + self.noise_std * torch.stack(noise).to(images.device), filled)


def _road(sc: _Scoring) -> Dict[str, Tensor]:
    """ROAD MoRF, LeRF and combined per image; jitter and noise per image from ``(seed, image index)``."""
    from captum_paths.metrics import road
    from captum_paths.metrics._core.road import _MINMAX_EPS, DEFAULT_JITTER

    p = _knobs(sc.protocols, "road", sc.quick)
    n, _, h, w = sc.x.shape
    summed = sc.attr.detach().to(torch.float64).sum(1).flatten(1)
    low, high = summed.amin(1, keepdim=True), summed.amax(1, keepdim=True)
    ranked = (summed - low) / (high - low + _MINMAX_EPS)  # the official normalisation, then its jitter
    gens = _generators(sc.seed, sc.indices, _METRIC_TAGS["road"])
    jitter = torch.stack([torch.randn(h * w, generator=g, dtype=torch.float64) for g in gens]).to(ranked.device)
    ranked = (ranked + DEFAULT_JITTER * jitter).reshape(n, 1, h, w)
    imputer = _RowNoiseImputer(sc.seed, sc.indices, 2 * len(p["percentages"]), p["noise_std"], p["rtol"])
    result = road(
        sc.model,
        sc.x,
        ranked,
        target=sc.target,
        percentages=p["percentages"],
        order="both",
        imputer=imputer,
        score=p["score"],
        max_examples_per_batch=sc.max_rows,
        return_curves=True,
        jitter=0.0,
    )
    return {"road_morf": result.morf.mean(1), "road_lerf": result.lerf.mean(1), "road_combined": result.value}


_EXTRA_METRICS = {"sic_aic": _sic_aic, "map_similarity": _map_similarity, "mu_fidelity": _mu_fidelity, "road": _road}


def _metrics_for(sc: _Scoring, metrics: Sequence[str]):
    """Per-image values, curves and the seconds each metric took on the chunk."""
    seconds: Dict[str, float] = {}
    out, curves = _causal_metrics(sc, metrics, seconds)
    for name, fn in _EXTRA_METRICS.items():
        if name in metrics:
            t0 = time.perf_counter()
            out.update(fn(sc))
            seconds[name] = time.perf_counter() - t0
    return out, curves, seconds


def _load_average() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _explain_chunk(method: str, explain, x: Tensor, target: Tensor, first_index: int, seed: int) -> Tensor:
    def call(xs, ts):
        a = explain(xs, ts)
        return (a[0] if isinstance(a, tuple) else a).detach()  # methods returning (attributions, extra)

    if method in BATCHED_METHODS:
        _reseed(explain, image_seed(seed, first_index))
        return call(x, target)
    parts = []
    for i in range(len(x)):
        _reseed(explain, image_seed(seed, first_index + i))
        parts.append(call(x[i : i + 1], target[i : i + 1]))
    return torch.cat(parts)


@dataclass
class _Built:
    """A method built for one evaluation set on this rank."""

    explain: Callable
    counter: PassCounter
    setup_seconds: float


def _run_task(task: Task, s: EvalSet, built: _Built, opts: RunOptions) -> Tuple[Dict[str, Any], Optional[Tensor]]:
    """Explain and score one chunk; returns its record and the attributions of its shown images."""
    start = task.chunk * opts.batch_size
    indices = list(range(start, min(start + opts.batch_size, len(s.source))))
    x, labels = s.source.get(indices)
    x = x.to(opts.device)
    with torch.no_grad():
        target = s.model(x).argmax(1)
    built.counter.reset()
    t0 = time.perf_counter()
    attr = _explain_chunk(task.method, built.explain, x, target, start, opts.seed)
    seconds = time.perf_counter() - t0
    finite = bool(torch.isfinite(attr).all())
    if not finite:
        warnings.warn(f"{task.method}: non-finite attributions (replaced by 0 for the metrics)", stacklevel=2)
        attr = torch.nan_to_num(attr, nan=0.0, posinf=0.0, neginf=0.0)
    t1 = time.perf_counter()
    quick = bool(getattr(s.ctx, "quick", False))
    scoring = _Scoring(s.model, x, attr, target, indices, opts.seed, s.protocols, opts.max_rows, quick)
    per_image, curves, metric_seconds = _metrics_for(scoring, s.metrics)
    if "pointing_game" in s.metrics and s.regions is not None:
        from captum_paths.metrics import pointing_game

        regions = s.regions[torch.as_tensor(indices)].to(opts.device)
        per_image["pointing_game"] = pointing_game(attr, regions, tolerance=s.protocols["pointing_game"]["tolerance"])
    record = {
        "key": task.key,
        "method": task.method,
        "set": task.set_name,
        "chunk": task.chunk,
        "indices": indices,
        "targets": target.cpu().tolist(),
        "labels": labels.tolist() if labels is not None else None,
        "per_image": {k: v.detach().cpu().double().tolist() for k, v in per_image.items()},
        "curves": {
            k: {
                "fractions": f.detach().cpu().double().tolist(),
                "sum": c.detach().cpu().double().sum(0).tolist(),
                "sumsq": c.detach().cpu().double().pow(2).sum(0).tolist(),
            }
            for k, (f, c) in curves.items()
        },
        "seconds": seconds,
        "forward": built.counter.forward_rows,
        "backward": built.counter.backward_rows,
        "metrics_seconds": time.perf_counter() - t1,
        "metric_seconds": metric_seconds,
        "setup_seconds": built.setup_seconds,
        "finite": finite,
        # the conditions of these timings: the 1-minute load average after the chunk, torch's threads
        "load_average": _load_average(),
        "threads": torch.get_num_threads(),
    }
    n_show = max(0, min(N_SHOW - start, len(indices))) if task.set_name == "main" else 0
    return record, (attr[:n_show].detach().cpu() if n_show else None)


def _run_tasks(tasks: List[Task], workload: Workload, opts: RunOptions, store: Optional[ProgressStore]):
    """This rank's share: build each method once per set (lazily), run its chunks, record each one."""
    from tqdm import tqdm

    sets = {s.name: s for s in workload.sets}
    built: Dict[Tuple[str, str], _Built] = {}
    records, shown = [], {}
    with tqdm(total=len(tasks), desc="chunks", unit="chunk", disable=not opts.show_progress, leave=False) as bar:
        for task in tasks:
            s = sets[task.set_name]
            if (task.method, task.set_name) not in built:
                counter = PassCounter(s.model)
                t0 = time.perf_counter()
                explain = workload.specs[task.method].build(counter, s.ctx)
                built[task.method, task.set_name] = _Built(explain, counter, time.perf_counter() - t0)
            record, attr = _run_task(task, s, built[task.method, task.set_name], opts)
            if store is not None:
                if attr is not None:  # the attributions first: a record implies its figure data exists
                    store.save_attributions(task.key, record["indices"][: len(attr)], attr)
                store.append([record])
            records.append(record)
            if attr is not None:
                shown[task.key] = attr
            bar.set_postfix_str(f"{workload.specs[task.method].label}")
            bar.update(1)
    return records, shown


# -------------------------------------------------------------------------------------- the run


def _adopt_folder(opts: RunOptions, settings: Dict[str, Any], dist: DistInfo):
    """Rank 0 checks the folder's settings and loads its finished records; every rank learns the verdict."""
    store = ProgressStore(opts.out, dist.rank) if opts.out is not None else None
    verdict, done = None, {}
    if dist.is_main and store is not None:
        try:
            resumed = store.check_settings(settings, overwrite=opts.overwrite)
            done = store.load()
            if resumed:
                opts.log(f"resuming: {len(done)} finished chunk(s) in {store.root}")
        except SettingsMismatch as exc:
            verdict = str(exc)
    verdict, done_keys = dist.broadcast((verdict, sorted(done)))
    if verdict is not None:
        raise SettingsMismatch(verdict)
    return store, done, set(done_keys)


def execute(workload: Workload, opts: RunOptions, settings: Dict[str, Any], dist: DistInfo):
    """Run this rank's share of the pending tasks; rank 0 returns every record and the shown attributions.

    Args:
        workload (Workload): sets and methods.
        opts (RunOptions): run options.
        settings (dict): the run's identity (:func:`settings_of`), checked against the results folder.
        dist (DistInfo): this process's rank and the collectives.

    Returns:
        ``(records by key, attributions by key, (wall, CPU seconds, 1-minute load average before and
        after) of each rank's share)`` on rank 0;
        ``None`` on the other ranks.
    """
    store, done, done_keys = _adopt_folder(opts, settings, dist)
    pending = [t for t in plan_tasks(workload, opts.batch_size) if t.key not in done_keys]
    mine = pending[dist.rank :: dist.world_size]
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), _load_average()
    records, shown = _run_tasks(mine, workload, opts, store)
    seconds = (time.perf_counter() - t0, time.process_time() - cpu0, load0, _load_average())
    gathered = dist.gather((records, shown, seconds))
    if not dist.is_main:
        return None
    all_records, all_shown = dict(done), {}
    for recs, sh, _ in gathered:
        all_records.update({r["key"]: r for r in recs})
        all_shown.update(sh)
    if store is not None:
        for key in done:
            if key not in all_shown:
                saved = store.load_attributions(key)
                if saved is not None:
                    all_shown[key] = saved["attributions"]
    return all_records, all_shown, [g[2] for g in gathered]


# ------------------------------------------------------------------------------------ the merge


def _summary(values) -> Dict[str, float]:
    """Mean and std over the images with a value (SIC / AIC are NaN for the images PAIR's rules skip)."""
    arr = np.asarray(values, dtype=np.float64)
    kept = arr[np.isfinite(arr)]
    out = {
        "mean": float(kept.mean()) if kept.size else float("nan"),
        "std": float(kept.std()) if kept.size else float("nan"),
        "n": int(kept.size),
    }
    if kept.size < arr.size:
        out["n_without_value"] = int(arr.size - kept.size)
    return out


def _timing_of(recs: List[Dict[str, Any]], n: int) -> Dict[str, Any]:
    """Each metric's seconds per image and the conditions of the timings (load average, torch threads)."""
    per_metric: Dict[str, float] = {}
    for r in recs:
        for k, v in r.get("metric_seconds", {}).items():
            per_metric[k] = per_metric.get(k, 0.0) + v / n
    loads = [r["load_average"] for r in recs if r.get("load_average") is not None]
    return {
        "metric_seconds_per_image": per_metric,
        "load_average_1min": {"min": min(loads), "mean": sum(loads) / len(loads), "max": max(loads)} if loads else None,
        "threads": sorted({r["threads"] for r in recs if "threads" in r}),
    }


def _add_reverse_mse(methods: Dict[str, Dict[str, Any]]) -> None:
    """GGIG's reverse MSE ``1 - MSE / max MSE``, the maximum pooled over every method and image (as the
    authors pooled over their whole table): the values depend on the methods run."""
    values = [v for m in methods.values() for v in m["per_image"].get("ggig_mse", []) if math.isfinite(v)]
    if not values:
        return
    peak = max(values) if max(values) > 0 else 1.0
    for m in methods.values():
        if "ggig_mse" in m["per_image"]:
            m["per_image"]["ggig_reverse_mse"] = [1 - v / peak for v in m["per_image"]["ggig_mse"]]
            m["summary"]["ggig_reverse_mse"] = _summary(m["per_image"]["ggig_reverse_mse"])


def _records_of(records: Dict[str, Dict[str, Any]], method: str, s: EvalSet, batch_size: int):
    n_chunks = (len(s.source) + batch_size - 1) // batch_size
    keys = [Task(method, s.name, c).key for c in range(n_chunks)]
    missing = [k for k in keys if k not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} chunk(s) of {method} on the {s.name} set have no result: {missing[:3]}")
    return [records[k] for k in keys]


def _merged_curves(recs: List[Dict[str, Any]], n: int) -> Dict[str, Dict[str, List[float]]]:
    out = {}
    for kind in recs[0]["curves"]:
        total = np.sum([r["curves"][kind]["sum"] for r in recs], axis=0)
        total_sq = np.sum([r["curves"][kind]["sumsq"] for r in recs], axis=0)
        mean = total / n
        out[kind] = {
            "fractions": recs[0]["curves"][kind]["fractions"],
            "mean": mean.tolist(),
            "std": np.sqrt(np.maximum(total_sq / n - mean**2, 0.0)).tolist(),
        }
    return out


def merge(records: Dict[str, Dict[str, Any]], workload: Workload, batch_size: int) -> Dict[str, Any]:
    """Per-method entries and mean curves from the chunk records, in image-index order.

    The chunks are combined in chunk order, so the merged numbers do not depend on which rank
    computed which chunk.

    Args:
        records (dict): every chunk record by key.
        workload (Workload): sets and methods.
        batch_size (int): images per chunk.
    """
    main = workload.sets[0]
    others = workload.sets[1:]
    methods, curves = {}, {}
    for name in workload.methods:
        spec = workload.specs[name]
        recs = _records_of(records, name, main, batch_size)
        n = len(main.source)
        per_image = {k: [v for r in recs for v in r["per_image"][k]] for k in recs[0]["per_image"]}
        finite = all(r["finite"] for r in recs)
        setup = max(r["setup_seconds"] for r in recs)
        for s in others:
            loc = _records_of(records, name, s, batch_size)
            for k in loc[0]["per_image"]:
                per_image[k] = [v for r in loc for v in r["per_image"][k]]
        methods[name] = {
            "label": spec.label,
            "params": spec.params,
            "finite_attributions": finite,
            "setup_seconds": setup,
            "metrics_seconds": sum(r["metrics_seconds"] for r in recs),
            "seconds_per_image": sum(r["seconds"] for r in recs) / n,
            "forward_per_image": sum(r["forward"] for r in recs) / n,
            "backward_per_image": sum(r["backward"] for r in recs) / n,
            **_timing_of(recs, n),
            "per_image": per_image,
            "summary": {k: _summary(v) for k, v in per_image.items()},
        }
        curves[name] = _merged_curves(recs, n) if recs[0]["curves"] else {}
    _add_reverse_mse(methods)
    first = _records_of(records, workload.methods[0], main, batch_size) if workload.methods else []
    labels = [r["labels"] for r in first]
    return {
        "methods": methods,
        "curves": curves,
        "targets": [t for r in first for t in r["targets"]],
        "labels": [v for part in labels for v in part] if all(p is not None for p in labels) else None,
    }


def shown_attributions(shown: Dict[str, Tensor], workload: Workload, batch_size: int) -> Dict[str, Tensor]:
    """The attributions of the first images of the main set, by method (for the figure).

    Args:
        shown (dict): attributions of the shown images by task key.
        workload (Workload): sets and methods.
        batch_size (int): images per chunk.
    """
    main = workload.sets[0]
    n_show = min(N_SHOW, len(main.source))
    out = {}
    for name in workload.methods:
        parts = [shown.get(Task(name, main.name, c).key) for c in range((n_show + batch_size - 1) // batch_size)]
        if all(p is not None for p in parts) and parts:
            out[name] = torch.cat(parts)[:n_show]
    return out


def log_summary(name: str, entry: Dict[str, Any], log: Callable[[str], None]) -> None:
    """One line per method: the means of its metrics and its cost.

    Args:
        name (str): the method's name.
        entry (dict): its merged entry (label, summary, seconds_per_image).
        log (callable): prints the line.
    """
    s = entry["summary"]
    parts = []
    for key, text, fmt in (
        ("samp_deletion", "SAMP del", ".3f"),
        ("samp_insertion", "ins", ".3f"),
        ("rise_deletion", "| RISE del", ".3f"),
        ("rise_insertion", "ins", ".3f"),
        ("diffid", "| DiffID", ".3f"),
        ("pointing_game", "| pointing", ".2f"),
        ("sic", "| SIC", ".3f"),
        ("aic", "AIC", ".3f"),
        ("mu_fidelity", "| mu-fid", ".3f"),
        ("road_combined", "| ROAD", ".3f"),
    ):
        if key in s:
            parts.append(f"{text} {s[key]['mean']:{fmt}}")
    log(f"{entry['label']:>17}: " + " ".join(parts) + f" | {entry['seconds_per_image']:.3f} s/img")


def environment(device, dist: DistInfo, rank_seconds: List[Tuple[float, float]]) -> Dict[str, Any]:
    """Versions, device, threads, load and the ranks' (wall, CPU) compute seconds, for the results.

    Args:
        device (torch.device): this rank's device.
        dist (DistInfo): the process group's size and backend.
        rank_seconds (list of tuples): each rank's wall and CPU seconds of its share, optionally followed
            by the 1-minute load average before and after it.
    """
    import platform

    import captum

    import captum_paths

    return {
        "torch": torch.__version__,
        "captum": captum.__version__,
        "captum_paths": captum_paths.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "world_size": dist.world_size,
        "backend": torch.distributed.get_backend() if dist.distributed else None,
        "compute_seconds_per_rank": [r[0] for r in rank_seconds],
        "compute_cpu_seconds_per_rank": [r[1] for r in rank_seconds],
        "load_average_1min_per_rank": [{"before": r[2], "after": r[3]} for r in rank_seconds if len(r) >= 4],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
