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

__all__ = [
    "METRICS",
    "BATCHED_METHODS",
    "EvalSet",
    "Workload",
    "RunOptions",
    "Task",
    "protocols_for",
    "image_seed",
    "plan_tasks",
    "model_fingerprint",
    "settings_of",
    "execute",
    "merge",
    "environment",
]

METRICS = ("samp_deletion", "samp_insertion", "rise_deletion", "rise_insertion", "diffid", "pointing_game")
CAUSAL_METRICS = METRICS[:4]
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
        "blur": blur,
        "n_features": n_features,
    }


@dataclass
class EvalSet:
    """A model and the images it explains.

    Attributes:
        name (str): ``"main"`` or ``"localization"`` (part of every task key).
        model (nn.Module): the classifier, eval mode, on the run's device.
        source (ImageSource): the evaluated images, by image index.
        ctx (MethodContext): what the methods may use besides the model (reference images, seed, ...).
        protocols (dict): from :func:`protocols_for`.
        metrics (tuple of str): the metrics computed on this set (a subset of :data:`METRICS`).
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


def _metrics_for(model, x, attr, target, protocols, metrics: Sequence[str], max_rows: int):
    """Per-image values and curves of the causal metrics and DiffID under the recorded protocols."""
    from captum_paths import Blur
    from captum_paths.metrics import deletion, diffid, insertion

    samp_p, rise_p = protocols["samp"], protocols["rise"]
    substrates = {
        "samp_deletion": (deletion, samp_p, "zeros"),
        "samp_insertion": (insertion, samp_p, Blur(*protocols["blur"])),
        "rise_deletion": (deletion, rise_p, "zeros"),
        "rise_insertion": (insertion, rise_p, Blur(11, 5.0)),
    }
    out, curves = {}, {}
    for key in CAUSAL_METRICS:
        if key not in metrics:
            continue
        fn, p, substrate = substrates[key]
        auc, curve, fractions = fn(
            model,
            x,
            attr,
            target=target,
            features_per_step=p["features_per_step"],
            substrate=substrate,
            score=p["score"],
            auc=p["auc"],
            normalize=p["normalize"],
            return_curves=True,
            max_examples_per_batch=max_rows,
        )
        out[key], curves[key] = auc, (fractions, curve)
    if "diffid" in metrics:
        ratios = protocols["diffid"]["ratios"]
        out["diffid"] = diffid(
            model, x, attr, target=target, ratios=ratios, fill="mean", max_examples_per_batch=max_rows
        ).area
    return out, curves


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
    per_image, curves = _metrics_for(s.model, x, attr, target, s.protocols, s.metrics, opts.max_rows)
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
        "setup_seconds": built.setup_seconds,
        "finite": finite,
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
        ``(records by key, attributions by key, (wall, CPU) seconds of each rank's share)`` on rank 0;
        ``None`` on the other ranks.
    """
    store, done, done_keys = _adopt_folder(opts, settings, dist)
    pending = [t for t in plan_tasks(workload, opts.batch_size) if t.key not in done_keys]
    mine = pending[dist.rank :: dist.world_size]
    t0, cpu0 = time.perf_counter(), time.process_time()
    records, shown = _run_tasks(mine, workload, opts, store)
    seconds = (time.perf_counter() - t0, time.process_time() - cpu0)
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
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()) if arr.size else float("nan"),
        "std": float(arr.std()) if arr.size else float("nan"),
        "n": int(arr.size),
    }


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
            "per_image": per_image,
            "summary": {k: _summary(v) for k, v in per_image.items()},
        }
        curves[name] = _merged_curves(recs, n) if recs[0]["curves"] else {}
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
    ):
        if key in s:
            parts.append(f"{text} {s[key]['mean']:{fmt}}")
    log(f"{entry['label']:>17}: " + " ".join(parts) + f" | {entry['seconds_per_image']:.3f} s/img")


def environment(device, dist: DistInfo, rank_seconds: List[Tuple[float, float]]) -> Dict[str, Any]:
    """Versions, device, threads and the ranks' (wall, CPU) compute seconds, for the results.

    Args:
        device (torch.device): this rank's device.
        dist (DistInfo): the process group's size and backend.
        rank_seconds (list of (float, float)): each rank's wall and CPU seconds of its share.
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
        "compute_seconds_per_rank": [w for w, _ in rank_seconds],
        "compute_cpu_seconds_per_rank": [c for _, c in rank_seconds],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
