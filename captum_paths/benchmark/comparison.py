"""``compare(model, data, ...)``: the benchmark's comparison on your own model and data.

From a notebook::

    from captum_paths.benchmark import compare
    result = compare(model, (images, labels), methods=["samp++", "ig", "saliency"], out="my-results")
    result          # the markdown table (also result.table); result.results has every number

Under torchrun (``torchrun --nproc_per_node=K my_script.py`` where the script calls ``compare``), every
rank explains its share of the images, rank 0 writes the files, and every rank returns the same table.
"""

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn

from captum_paths.benchmark import engine
from captum_paths.benchmark.distributed import env_world_size, setup
from captum_paths.benchmark.engine import ALL_METRICS, METRICS, EvalSet, RunOptions, Workload, protocols_for
from captum_paths.benchmark.methods import (
    ALL_METHOD_NAMES,
    METHOD_NAMES,
    MethodContext,
    method_specs,
    unavailable_reason,
)
from captum_paths.benchmark.progress import SettingsMismatch
from captum_paths.benchmark.sources import SubsetSource, as_source

__all__ = ["Comparison", "compare"]

N_REFERENCE_DEFAULT = 256


@dataclass
class Comparison:
    """What :func:`compare` returns.

    Attributes:
        table (str): the markdown table (one row per method, mean ± std over the images).
        results (dict): every per-image number, summary, protocol knob and cost (``results.json``).
        paths (dict): the files written (empty when ``out`` is None or on ranks other than 0).
    """

    table: str
    results: Dict[str, Any]
    paths: Dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.table

    def _repr_markdown_(self) -> str:
        return self.table


def _check_names(given, allowed: Sequence[str], argument: str, default: Optional[Sequence[str]] = None):
    if given is None:
        return list(allowed if default is None else default)
    if isinstance(given, str):
        given = [given]
    given = list(given)
    bad = [g for g in given if g not in allowed]
    if bad or not given or len(set(given)) != len(given):
        raise ValueError(f"`{argument}` must list distinct names from {', '.join(allowed)}; got {given!r}")
    return given


def _check_int(value, argument: str, minimum: int = 1):
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"`{argument}` must be an int >= {minimum} or None, got {value!r}")


def _protocols(image_size: int, n_features: int, overrides: Optional[Dict[str, Dict[str, Any]]]):
    protocols = protocols_for(image_size, n_features)
    for name, knobs in (overrides or {}).items():
        if name not in ("samp", "rise", "diffid", "pointing_game") or not isinstance(knobs, dict):
            raise ValueError(
                f"`protocols` maps 'samp', 'rise', 'diffid' or 'pointing_game' to a dict of knobs; got {name!r}: "
                f"{knobs!r}"
            )
        unknown = [k for k in knobs if k not in ("features_per_step", "ratios", "tolerance")]
        if unknown:
            raise ValueError(
                f"`protocols[{name!r}]` may set 'features_per_step', 'ratios' or 'tolerance', got {unknown}"
            )
        protocols[name].update(knobs)
    return protocols


@dataclass
class _Inputs:
    """The validated arguments of :func:`compare` (one object for the helpers)."""

    model: nn.Module
    source: Any
    reference: torch.Tensor
    regions: Optional[torch.Tensor]
    methods: list
    metrics: tuple
    opts: RunOptions
    protocol_overrides: Optional[Dict[str, Any]]
    quick: bool


@dataclass
class _Request:
    """What the caller of :func:`compare` chose (before validation)."""

    methods: Any
    metrics: Any
    out: Optional[str]
    reference: Any
    regions: Any
    n_images: Optional[int]
    seed: int
    batch_size: Optional[int]
    max_rows: Optional[int]


def _workload(inp: _Inputs) -> Workload:
    x0, _ = inp.source.get([0])
    image_size = x0.shape[-1]
    specs = method_specs(image_size, inp.quick)
    protocols = _protocols(image_size, x0.shape[-1] * x0.shape[-2], inp.protocol_overrides)
    ctx = MethodContext(
        x_reference=inp.reference.to(inp.opts.device),
        seed=inp.opts.seed,
        features_per_step=specs["samp"].params["features_per_step"],
        blur=protocols["blur"],
        internal_batch_size=inp.opts.max_rows if image_size >= 128 else None,
        quick=inp.quick,
    )
    main = EvalSet("main", inp.model, inp.source, ctx, protocols, inp.metrics, inp.regions)
    return Workload([main], inp.methods, specs)


def compare(
    model: nn.Module,
    data,
    methods: Optional[Sequence[str]] = None,
    metrics: Optional[Sequence[str]] = None,
    out: Optional[str] = None,
    *,
    reference=None,
    regions: Optional[torch.Tensor] = None,
    n_images: Optional[int] = None,
    seed: int = 0,
    batch_size: Optional[int] = None,
    max_rows: Optional[int] = None,
    device=None,
    quick: bool = False,
    protocols: Optional[Dict[str, Dict[str, Any]]] = None,
    figures: bool = True,
    overwrite: bool = False,
    show_progress: bool = False,
    threads: Optional[int] = None,
) -> Comparison:
    """Compare attribution methods on ``model`` and ``data`` under the seed papers' protocols.

    Every method explains the class the model predicts on each image. The numbers are the same as the
    command-line benchmark's, on your model and images; under torchrun the images are shared out over
    the ranks with the same per-image results.

    Args:
        model (nn.Module): a classifier returning logits for images ``(N, C, H, W)``; put in eval mode
            for the run (its mode is restored afterwards).
        data: the evaluated images: a tensor ``(N, C, H, W)``, a pair ``(images, labels)``, a map-style
            dataset of ``image`` or ``(image, label)`` items, or a DataLoader (its dataset is used in
            index order). With labels, the model's accuracy on the images is reported.
        methods (sequence of str, optional): names from ``ALL_METHOD_NAMES`` (default: ``METHOD_NAMES``; the
            optional ones, ``OPTIONAL_METHOD_NAMES``, run only when named).
        metrics (sequence of str, optional): names from ``ALL_METRICS`` (default: ``METRICS``, i.e. all but
            the costly ``EXPENSIVE_METRICS``, ``mu_fidelity``; ``pointing_game`` only with ``regions``).
        out (str, optional): folder for ``results.md``, ``results.json``, the figures and ``progress/``
            (which makes an interrupted call resumable). None writes nothing.
        reference (optional): reference images for expected gradients and LPI's bank (a tensor, pair,
            dataset or DataLoader as for ``data``; at most 256 are read). Default: the first 256
            evaluated images.
        regions (Tensor, optional): ``(N, H, W)`` bool ground-truth boxes for the pointing game.
        n_images (int, optional): evaluate a seeded random draw of this many images (default: all).
        seed (int): seed of the draw and of every per-image random choice.
        batch_size (int, optional): images per chunk (default 25; 1 on images of 128 px or more).
        max_rows (int, optional): perturbed images per forward pass in the metrics (default
            ``8 * batch_size``; 16 on images of 128 px or more); also the methods' internal batch on
            large images. Bounds memory.
        device (str or torch.device, optional): default: the model's device. ``"cuda"`` under torchrun
            means each rank's own GPU.
        quick (bool): the benchmark's reduced method budgets (LPI, GGIG, EG, AblationPath) and the metrics'
            cheapest settings (mu-fidelity's subsets, ROAD's percentages).
        protocols (dict, optional): protocol knobs to change, e.g. ``{"rise": {"features_per_step": 448}}``
            (``step`` of "samp" / "rise", ``ratios`` of "diffid", ``tolerance`` of "pointing_game").
        figures (bool): write ``attributions.png`` and ``curves.png`` into ``out``.
        overwrite (bool): discard the progress in ``out`` instead of refusing other settings.
        show_progress (bool): a progress bar (rank 0).
        threads (int, optional): torch CPU threads during the call (restored afterwards). None keeps
            torch's setting; under torchrun on one machine, pass ``cores // ranks`` (small batches on
            oversubscribed cores run many times slower).

    Returns:
        Comparison with ``table``, ``results`` and ``paths``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or ``data`` is of an unsupported type.
        ValueError: an unknown method or metric, a bad count, a folder ``out`` holding other settings.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    for value, argument in ((n_images, "n_images"), (batch_size, "batch_size"), (max_rows, "max_rows")):
        _check_int(value, argument)
    _check_int(seed, "seed", minimum=0)
    _check_int(threads, "threads")
    if seed is None:
        raise ValueError("`seed` must be an int >= 0, got None")
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        if device.type == "cuda" and env_world_size() > 1:
            device = "cuda"  # under torchrun: each rank's own GPU (LOCAL_RANK)
    dist = setup(str(device))
    was_training, threads_before = model.training, torch.get_num_threads()
    model.eval().to(dist.device)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            req = _Request(methods, metrics, out, reference, regions, n_images, seed, batch_size, max_rows)
            inp = _inputs(model, data, req)
            inp.opts.device, inp.opts.overwrite, inp.quick = dist.device, overwrite, quick
            inp.opts.show_progress = show_progress and dist.is_main
            inp.opts.log = print if (dist.is_main and show_progress) else (lambda _: None)
            inp.protocol_overrides = protocols
            return _compare(inp, dist, figures)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads_before)
        dist.teardown()


def _inputs(model: nn.Module, data, req: _Request) -> _Inputs:
    """Validate the request; the images, references, methods, metrics and run options."""
    source = as_source(data, "data")
    if len(source) == 0:
        raise ValueError("`data` holds no images")
    if req.n_images is not None and req.n_images < len(source):
        order = torch.randperm(len(source), generator=torch.Generator().manual_seed(req.seed))
        source = SubsetSource(source, order[: req.n_images].sort().values.tolist())
    methods = _check_names(req.methods, ALL_METHOD_NAMES, "methods", default=METHOD_NAMES)
    regions = req.regions
    specs = method_specs(28)
    missing = [f"{m} ({unavailable_reason(specs[m])})" for m in methods if unavailable_reason(specs[m])]
    if missing:
        raise ValueError(f"`methods`: not available in this build: {', '.join(missing)}")
    default_metrics = [m for m in METRICS if m != "pointing_game" or regions is not None]
    metrics = tuple(_check_names(req.metrics, ALL_METRICS, "metrics") if req.metrics is not None else default_metrics)
    if "pointing_game" in metrics and regions is None:
        raise ValueError("`metrics` includes 'pointing_game', which needs `regions` (N, H, W) bool boxes")
    if regions is not None and (not isinstance(regions, torch.Tensor) or len(regions) != len(source)):
        raise ValueError(f"`regions` must be a tensor with one (H, W) box per image ({len(source)}), got {regions!r}")
    ref_source = as_source(req.reference, "reference") if req.reference is not None else source
    ref, _ = ref_source.get(range(min(len(ref_source), N_REFERENCE_DEFAULT)))
    x0, _ = source.get([0])
    large = x0.shape[-1] >= 128
    batch = req.batch_size if req.batch_size is not None else (1 if large else 25)
    rows = req.max_rows if req.max_rows is not None else (16 if large else 8 * batch)
    opts = RunOptions(seed=req.seed, batch_size=batch, max_rows=rows, device=torch.device("cpu"), out=req.out)
    return _Inputs(model, source, ref, regions, methods, metrics, opts, None, False)


def _compare(inp: _Inputs, dist, figures: bool) -> Comparison:
    from captum_paths.benchmark.report import check_claims, format_table, write_results

    started, cpu_started = time.perf_counter(), time.process_time()
    workload = _workload(inp)
    extra = {"dataset": inp.source.description, "quick": inp.quick}
    try:
        done = engine.execute(workload, inp.opts, engine.settings_of(workload, inp.opts, extra), dist)
    except SettingsMismatch as exc:
        raise ValueError(str(exc)) from None
    results, paths = None, {}
    if done is not None:
        results = _results(inp, workload, done, dist)
        results["total_seconds"] = time.perf_counter() - started
        results["total_cpu_seconds"] = time.process_time() - cpu_started
        results["claims"] = check_claims(results)
        if inp.opts.out is not None:
            paths = write_results(results, inp.opts.out, figures=figures)
    public = dist.broadcast({k: v for k, v in results.items() if not k.startswith("_")} if results else None)
    return Comparison(format_table(public), results if results is not None else public, paths)


def _results(inp: _Inputs, workload: Workload, done, dist) -> Dict[str, Any]:
    """Rank 0: the results dict (as the command line's) from every chunk record."""
    records, shown, rank_seconds = done
    merged = engine.merge(records, workload, inp.opts.batch_size)
    main = workload.sets[0]
    acc = None
    if merged["labels"] is not None:
        acc = sum(int(t == y) for t, y in zip(merged["targets"], merged["labels"])) / len(merged["targets"])
    n_show = min(engine.N_SHOW, len(main.source))
    images, _ = main.source.get(list(range(n_show)))
    return {
        "methods": merged["methods"],
        "curves": merged["curves"],
        "config": {
            "n_images": len(main.source),
            "n_localization": 0,
            "seed": inp.opts.seed,
            "methods": list(workload.methods),
            "metrics": list(inp.metrics),
            "batch_size": inp.opts.batch_size,
            "max_rows": inp.opts.max_rows,
            "quick": inp.quick,
        },
        "data": {"name": "user data", "source": main.source.description, "split": "as given"},
        "model": {
            "architecture": type(inp.model).__name__,
            "test_accuracy": acc,
            "accuracy_on": "the evaluated images",
            "fingerprint": engine.model_fingerprint(inp.model),
        },
        "protocols": main.protocols,
        "environment": engine.environment(inp.opts.device, dist, rank_seconds),
        "_images": images.cpu(),
        "_targets": torch.as_tensor(merged["targets"][:n_show]),
        "_labels": None,
        "_attributions": engine.shown_attributions(shown, workload, inp.opts.batch_size),
    }
