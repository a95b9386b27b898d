"""Runs every method on real data under the seed papers' protocols and collects per-image numbers.

Protocols (every knob is also written to ``results.json``):

* **SAMP paper** insertion / deletion (Zhang et al. 2024, Table 1): raw target logit, curve divided by
  the input's logit, AUC = mean of the curve's points; ``10`` pixels per step on MNIST/CIFAR-sized
  images (``224 * 8`` on ImageNet-sized ones, the authors' metric step); deletion ends at zeros,
  insertion starts from the RISE blur (kernel 11, sigma 5; 31/5 on ImageNet-sized images).
* **RISE** insertion / deletion (Petsiuk et al. 2018): softmax probability, trapezoid AUC, no
  normalisation, one image row of pixels per step (RISE's 224 pixels on 224x224 images), same
  substrates with the 11/5 blur.
* **DiffID** (LPI, Yang et al. 2023): ratios 0.1..0.9, removed pixels set to the mean of the kept
  ones, logit ratio to the input's logit; the reported number is the area of insertion - deletion.
* **Pointing game** (Zhang et al. 2016) on the synthetic localisation set: a hit when the maximum of
  the channel-summed attribution lies within ``tolerance`` pixels of the class pattern's box.

Every method explains the class the model predicts on the input, as RISE and SAMP do; the same
target is scored by every metric.

The run has four steps: :func:`_load_sets` (data and models; under torchrun rank 0 trains and caches,
the other ranks wait and load), :func:`_options` (the run's options object), :func:`engine.execute`
(this rank's chunks, recorded in ``<out>/progress`` so that an interrupted run resumes) and
:func:`_assemble` (rank 0 merges every rank's records into the results dict that ``report`` writes).
"""

import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from captum_paths.benchmark import engine
from captum_paths.benchmark.cache import load_or_train
from captum_paths.benchmark.data import (
    DataNotFoundError,
    load_cifar10,
    load_digits_images,
    load_mnist,
    make_localization_set,
)
from captum_paths.benchmark.distributed import DistInfo, setup
from captum_paths.benchmark.engine import ALL_METRICS, METRICS, EvalSet, RunOptions, Workload, protocols_for
from captum_paths.benchmark.methods import (
    ALL_METHOD_NAMES,
    METHOD_NAMES,
    MethodContext,
    method_specs,
    unavailable_reason,
)
from captum_paths.benchmark.models import (
    SampPaperCNN,
    accuracy,
    build_user_model,
    imagenet_resnet50,
    train_classifier,
)
from captum_paths.benchmark.progress import SettingsMismatch
from captum_paths.benchmark.sources import DatasetSource, ImageSource, SubsetSource, TensorSource

__all__ = [
    "DATASETS",
    "METRICS",
    "ALL_METRICS",
    "BenchmarkError",
    "BenchmarkConfig",
    "validate_config",
    "run_benchmark",
    "train_config_for",
    "protocols_for",
]

DATASETS = ("digits", "mnist", "cifar10", "imagenet", "folder")
QUICK_N_IMAGES = 6
QUICK_N_LOCALIZATION = 6
LOCALIZATION_N_TRAIN = 2000
N_REFERENCE_FOLDER = 64  # reference images drawn from an image folder (expected gradients, LPI's bank)


class BenchmarkError(ValueError):
    """A problem with what the user asked for: reported as one line, exit code 2."""


@dataclass
class BenchmarkConfig:
    """Everything ``python -m captum_paths.benchmark`` can be asked (one field per flag; see ``--help``).

    ``batch_size`` None is 25 images per chunk on small images and 1 on images of 128 px or more;
    ``max_rows`` None is ``8 * batch_size`` perturbed inputs per metric forward pass (16 on large
    images): both bound memory, and both are part of a run's settings because they fix the batches.
    """

    dataset: str = "digits"
    methods: Optional[Sequence[str]] = None  # None: every available method
    metrics: Optional[Sequence[str]] = None  # None: every metric
    n_images: Optional[int] = None  # None: 100 (6 with quick)
    n_localization: Optional[int] = None  # None: 50 (6 with quick); 0 skips the pointing game
    seed: int = 0
    device: str = "cpu"
    out: str = "benchmark-results"
    data_root: Optional[str] = None
    weights: Optional[str] = None
    model: Optional[str] = None  # "module:function" building the user's model
    download: bool = False
    cache_dir: Optional[str] = None
    use_cache: bool = True
    batch_size: Optional[int] = None
    max_rows: Optional[int] = None
    epochs: Optional[int] = None
    threads: Optional[int] = 1
    quick: bool = False
    show_progress: bool = True
    figures: bool = True
    overwrite: bool = False
    dist_timeout: float = 6 * 3600.0
    explicit_methods: bool = field(default=False, repr=False)

    def resolved_n_images(self) -> int:
        return self.n_images if self.n_images is not None else (QUICK_N_IMAGES if self.quick else 100)

    def resolved_n_localization(self) -> int:
        if self.n_localization is not None:
            return self.n_localization
        return QUICK_N_LOCALIZATION if self.quick else 50


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_numbers(cfg: BenchmarkConfig) -> None:
    positive = {"--n-images": cfg.n_images, "--batch-size": cfg.batch_size, "--max-rows": cfg.max_rows}
    positive["--epochs"] = cfg.epochs
    for flag, value in positive.items():
        if value is not None and (not _is_int(value) or value <= 0):
            raise BenchmarkError(f"{flag} must be a positive integer, got {value!r}")
    if cfg.n_localization is not None and (not _is_int(cfg.n_localization) or cfg.n_localization < 0):
        raise BenchmarkError(f"--n-localization must be a non-negative integer, got {cfg.n_localization!r}")
    if cfg.threads is not None and (not _is_int(cfg.threads) or cfg.threads < 0):
        raise BenchmarkError(f"--threads must be a non-negative integer, got {cfg.threads!r}")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise BenchmarkError(f"--seed must be a non-negative integer, got {cfg.seed!r}")
    if not isinstance(cfg.dist_timeout, (int, float)) or isinstance(cfg.dist_timeout, bool) or cfg.dist_timeout <= 0:
        raise BenchmarkError(f"--dist-timeout must be a positive number of seconds, got {cfg.dist_timeout!r}")


def _check_data(cfg: BenchmarkConfig) -> None:
    if cfg.dataset in ("mnist", "cifar10"):
        if cfg.data_root is None:
            raise BenchmarkError(f"--dataset {cfg.dataset} needs --data-root (the torchvision data folder)")
        if not cfg.download and not Path(cfg.data_root).expanduser().is_dir():
            raise BenchmarkError(f"data folder not found: {cfg.data_root} (pass --download to fetch {cfg.dataset})")
    if cfg.dataset in ("imagenet", "folder"):
        if cfg.data_root is None or not Path(cfg.data_root).expanduser().is_dir():
            raise BenchmarkError(
                f"--dataset {cfg.dataset} needs --data-root, an existing image folder; got {cfg.data_root!r}"
            )
        if cfg.model is None and (cfg.weights is None or not Path(cfg.weights).expanduser().is_file()):
            raise BenchmarkError(
                f"--dataset {cfg.dataset} needs --model module:function, or --weights, a ResNet-50 weights file; "
                f"got {cfg.weights!r}"
            )
    if cfg.model is not None and (not isinstance(cfg.model, str) or cfg.model.count(":") != 1):
        raise BenchmarkError(f"--model must be 'module:function', got {cfg.model!r}")


def _check_methods(cfg: BenchmarkConfig) -> List[str]:
    specs = method_specs(28, cfg.quick)
    names = list(cfg.methods) if cfg.methods is not None else list(METHOD_NAMES)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise BenchmarkError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(ALL_METHOD_NAMES)}"
        )
    if not names:
        raise BenchmarkError("--methods is empty")
    if len(set(names)) != len(names):
        raise BenchmarkError(f"--methods lists a method twice: {', '.join(names)}")
    if cfg.metrics is not None:
        bad = [m for m in cfg.metrics if m not in ALL_METRICS]
        if bad or not cfg.metrics:
            raise BenchmarkError(f"--metrics must list some of {', '.join(ALL_METRICS)}; got {', '.join(cfg.metrics)}")
    runnable = []
    for n in names:
        reason = unavailable_reason(specs[n])
        if reason is None:
            runnable.append(n)
        elif cfg.methods is not None:
            raise BenchmarkError(f"method {n!r} is not available: {reason}")
        else:
            print(f"note: skipping {n!r}: {reason}")
    return runnable


def validate_config(cfg: BenchmarkConfig) -> List[str]:
    """Check everything the user chose before any work; returns the methods to run.

    Raises:
        BenchmarkError: unknown dataset, method or metric, a method that this build lacks but was asked
            for by name, a non-positive count, a missing data folder, weights file or model, an
            unusable device.
    """
    if cfg.dataset not in DATASETS:
        raise BenchmarkError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    _check_numbers(cfg)
    try:
        device = torch.device(cfg.device)
    except RuntimeError as exc:
        raise BenchmarkError(f"--device {cfg.device!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(f"--device {cfg.device!r}: CUDA is not available on this machine")
    _check_data(cfg)
    return _check_methods(cfg)


# --------------------------------------------------------------------------------------------- data


def train_config_for(dataset: str, epochs: Optional[int] = None, quick: bool = False) -> Dict[str, Any]:
    """Training knobs of the cached models (every one is part of the cache key).

    ``quick`` halves the default epochs (a smoke run; its models are cached separately and are a
    little less accurate, which results.json records). An explicit ``epochs`` wins.
    """
    base = {"optimizer": "adam", "lr": 2e-3, "lr_schedule": "cosine", "batch_size": 64, "weight_decay": 0.0, "seed": 0}
    default_epochs = {"digits": 6, "localization": 8, "mnist": 2, "cifar10": 10}[dataset]
    if dataset == "localization":
        base.update(lr=3e-3, n_train=LOCALIZATION_N_TRAIN)
    if quick:
        default_epochs = max(1, default_epochs // 2)
    return dict(base, epochs=epochs if epochs is not None else default_epochs)


def _train(
    model: nn.Module, x: Tensor, y: Tensor, cfg: Dict[str, Any], device: torch.device, show_progress: bool = False
) -> nn.Module:
    torch.manual_seed(cfg["seed"])
    model.to(device)
    return train_classifier(
        model,
        x.to(device),
        y.to(device),
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        lr=cfg["lr"],
        seed=cfg["seed"],
        weight_decay=cfg["weight_decay"],
        lr_schedule=cfg["lr_schedule"],
        show_progress=show_progress,
    )


def _frozen(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)  # attributions need input gradients only
    return model


def _cached_cnn(name: str, split, in_channels: int, n_classes: int, train_cfg, cfg: BenchmarkConfig, dist: DistInfo):
    """The SAMP paper's CNN trained on ``split``: loaded from the cache, or trained once.

    Under torchrun rank 0 trains and caches it while the others wait on a barrier, then load it;
    without the cache (``--no-cache``) rank 0's weights are broadcast instead.
    """
    device = dist.device

    def build(use_cache: bool):
        torch.manual_seed(train_cfg["seed"])  # the initial weights depend on the seed only
        model = SampPaperCNN(in_channels=in_channels, n_classes=n_classes)
        return load_or_train(
            name,
            model,
            train_fn=lambda m: _train(m, split.x_train, split.y_train, train_cfg, device, cfg.show_progress),
            eval_fn=lambda m: accuracy(m.to(device), split.x_test.to(device), split.y_test.to(device)),
            train_config=train_cfg,
            data=(split.x_train, split.y_train, split.x_test, split.y_test),
            cache_dir=cfg.cache_dir,
            use_cache=use_cache,
            log=print if dist.is_main else (lambda m: print(f"[rank {dist.rank}] {m}")),  # a rank that trains says so
        )

    if cfg.use_cache or not dist.distributed:
        entry = dist.rank0_first(lambda: build(cfg.use_cache))
    else:
        entry = build(False) if dist.is_main else None
        state = dist.broadcast({k: v.cpu() for k, v in entry.model.state_dict().items()} if entry else None)
        meta = dist.broadcast((entry.test_accuracy, entry.train_seconds) if entry else None)
        if entry is None:
            torch.manual_seed(train_cfg["seed"])
            model = SampPaperCNN(in_channels=in_channels, n_classes=n_classes)
            model.load_state_dict(state)
            from captum_paths.benchmark.cache import CachedModel

            entry = CachedModel(model, "", Path(""), meta[0], True, meta[1], dict(train_cfg))
    _frozen(entry.model, device)
    return entry


def _user_model(cfg: BenchmarkConfig, dist: DistInfo) -> nn.Module:
    """The model of ``--model module:function``, frozen on the run's device (errors are one line)."""
    try:
        return _frozen(build_user_model(cfg.model), dist.device)
    except ValueError as exc:
        raise BenchmarkError(str(exc)) from None


def _pick(n_total: int, n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=gen)[: min(n, n_total)].sort().values


@dataclass
class _Main:
    """The main evaluation set before it becomes an :class:`EvalSet`."""

    source: ImageSource
    x_reference: Tensor
    model: nn.Module
    data_info: Dict[str, Any]
    model_info: Dict[str, Any]


def _load_builtin(cfg: BenchmarkConfig, dist: DistInfo, n_images: int) -> _Main:
    """digits, MNIST or CIFAR-10: a seeded draw of test images, the training split as references."""
    if cfg.dataset == "digits":
        split = load_digits_images(size=28, seed=cfg.seed)
        info = {
            "name": "digits",
            "source": "sklearn.datasets.load_digits, bilinear 8x8 -> 28x28, [0, 1]",
            "split": f"stratified 75/25, seed {cfg.seed}",
        }
    else:
        loader = load_mnist if cfg.dataset == "mnist" else load_cifar10
        split = loader(cfg.data_root, download=cfg.download)
        info = {
            "name": cfg.dataset,
            "source": f"torchvision {cfg.dataset} under {cfg.data_root}",
            "split": "official train/test",
        }
    idx = _pick(len(split.x_test), n_images, cfg.seed)
    source = TensorSource(split.x_test[idx], split.y_test[idx], description=info["name"])
    if cfg.model is not None:
        model = _user_model(cfg, dist)
        return _Main(source, split.x_train, model, info, {"architecture": f"user model {cfg.model}"})
    tc = train_config_for(cfg.dataset, cfg.epochs, cfg.quick)
    prefix = "digits28" if cfg.dataset == "digits" else cfg.dataset
    entry = _cached_cnn(f"{prefix}-samp_cnn", split, split.x_train.shape[1], 10, tc, cfg, dist)
    model_info = {
        "architecture": "SampPaperCNN " + json.dumps(entry.model.config),
        "train_config": tc,
        "test_accuracy": entry.test_accuracy,
        "accuracy_on": f"the full test split ({len(split.y_test)} images)",
        "cache_file": str(entry.path),
        "trained_now": entry.trained,
        "train_seconds": round(entry.train_seconds, 2),
    }
    return _Main(source, split.x_train, entry.model, info, model_info)


def _load_folder(cfg: BenchmarkConfig, dist: DistInfo, n_images: int) -> _Main:
    """An ImageFolder (ImageNet-style): images read a chunk at a time; the user's model or ResNet-50."""
    from torchvision import datasets, transforms

    root = Path(cfg.data_root).expanduser()
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataNotFoundError(f"no class sub-folders with images under {root}: {exc}") from None
    if len(ds) < 2:
        raise DataNotFoundError(f"{root} holds {len(ds)} image(s); need at least 2")
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed))
    n_eval = min(n_images, len(ds) - 1)  # keep at least one reference image
    test_idx = order[:n_eval].sort().values.tolist()
    ref_idx = order[n_eval : n_eval + N_REFERENCE_FOLDER].tolist()
    full = DatasetSource(ds, description=f"image folder {root}")
    x_reference, _ = full.get(ref_idx)
    if cfg.model is not None:
        model, arch = _user_model(cfg, dist), f"user model {cfg.model}"
    else:
        try:
            model, arch = imagenet_resnet50(cfg.weights), "torchvision resnet50"
        except ValueError as exc:
            raise BenchmarkError(str(exc)) from None
    info = {
        "name": cfg.dataset,
        "source": f"image folder {root} (resize 256, centre crop 224)",
        "split": f"seeded draw (seed {cfg.seed}) of {n_eval} evaluated and {len(ref_idx)} reference images",
    }
    model_info = {"architecture": arch, "weights": str(cfg.weights), "accuracy_on": "the evaluated images"}
    return _Main(SubsetSource(full, test_idx), x_reference, _frozen(model, dist.device), info, model_info)


def _localization_set(cfg: BenchmarkConfig, dist: DistInfo, n_loc: int, model_info: Dict[str, Any]) -> EvalSet:
    ltc = train_config_for("localization", cfg.epochs, cfg.quick)
    loc_set = make_localization_set(n_train=ltc["n_train"], n_test=max(300, n_loc), seed=cfg.seed)
    entry = _cached_cnn("localization28-samp_cnn", loc_set, 1, 4, ltc, cfg, dist)
    idx = _pick(len(loc_set.x_test), n_loc, cfg.seed)
    model_info["localization_model"] = {
        "architecture": "SampPaperCNN " + json.dumps(entry.model.config),
        "train_config": ltc,
        "test_accuracy": entry.test_accuracy,
        "trained_now": entry.trained,
    }
    if dist.is_main:
        print(f"localisation model: test accuracy {entry.test_accuracy:.4f}")
    protocols = protocols_for(28, 28 * 28)
    protocols["pointing_game"]["data"] = "synthetic localisation set, 28x28"
    ctx = MethodContext(
        x_reference=loc_set.x_train.to(dist.device),
        seed=cfg.seed,
        features_per_step=10,
        blur=(11, 5.0),
        quick=cfg.quick,
    )
    source = TensorSource(loc_set.x_test[idx], loc_set.y_test[idx], description="synthetic localisation set")
    return EvalSet("localization", entry.model, source, ctx, protocols, ("pointing_game",), loc_set.regions_test[idx])


def _load_sets(cfg: BenchmarkConfig, dist: DistInfo, methods: List[str]):
    """Step 1: the data and models; returns the workload, the data and model descriptions."""
    n_images = cfg.resolved_n_images()
    try:
        main = (_load_folder if cfg.dataset in ("imagenet", "folder") else _load_builtin)(cfg, dist, n_images)
    except DataNotFoundError as exc:
        raise BenchmarkError(str(exc)) from None
    if dist.is_main and main.model_info.get("test_accuracy") is not None:
        print(
            f"model: {main.model_info['architecture']}; test accuracy {main.model_info['test_accuracy']:.4f} "
            f"({'trained now' if main.model_info.get('trained_now') else 'loaded'})"
        )
    x0, _ = main.source.get([0])
    image_size = x0.shape[-1]
    specs = method_specs(image_size, cfg.quick)
    protocols = protocols_for(image_size, x0.shape[-1] * x0.shape[-2])
    metrics = tuple(m for m in (cfg.metrics or METRICS) if m != "pointing_game")
    ctx = MethodContext(
        x_reference=main.x_reference.to(dist.device),
        seed=cfg.seed,
        features_per_step=specs["samp"].params["features_per_step"],
        blur=protocols["blur"],
        internal_batch_size=_resolved_max_rows(cfg, image_size) if image_size >= 128 else None,
        quick=cfg.quick,
    )
    sets = [EvalSet("main", main.model, main.source, ctx, protocols, metrics)]
    n_loc = cfg.resolved_n_localization()
    if n_loc > 0 and (cfg.metrics is None or "pointing_game" in cfg.metrics):
        sets.append(_localization_set(cfg, dist, n_loc, main.model_info))
    return Workload(sets, methods, specs), main.data_info, main.model_info


def _resolved_batch_size(cfg: BenchmarkConfig, image_size: int) -> int:
    if cfg.batch_size is not None:
        return cfg.batch_size
    return 1 if image_size >= 128 else 25


def _resolved_max_rows(cfg: BenchmarkConfig, image_size: int) -> int:
    if cfg.max_rows is not None:
        return cfg.max_rows
    return 16 if image_size >= 128 else 8 * _resolved_batch_size(cfg, image_size)


def _options(cfg: BenchmarkConfig, dist: DistInfo, image_size: int) -> RunOptions:
    """Step 2: the options object of the drivers."""
    return RunOptions(
        seed=cfg.seed,
        batch_size=_resolved_batch_size(cfg, image_size),
        max_rows=_resolved_max_rows(cfg, image_size),
        device=dist.device,
        out=cfg.out,
        overwrite=cfg.overwrite,
        show_progress=cfg.show_progress and dist.is_main,
        log=print if dist.is_main else (lambda _: None),
    )


# ------------------------------------------------------------------------------------------- run


def run_benchmark(cfg: BenchmarkConfig) -> Optional[Dict[str, Any]]:
    """Run the benchmark described by ``cfg``; returns the results dict that the report writes.

    Under torchrun every rank computes its share and rank 0 returns the results; the other ranks
    return ``None``. torch's thread count is set to ``cfg.threads`` for the run and restored afterwards.

    Args:
        cfg (BenchmarkConfig): the run.

    Raises:
        BenchmarkError: a bad setting, missing data, or a results folder holding other settings.
    """
    methods = validate_config(cfg)
    threads_before = torch.get_num_threads()
    dist = setup(cfg.device, cfg.dist_timeout)
    try:
        with warnings.catch_warnings():
            # Captum's Saliency / InputXGradient warn that they switch on input gradients: expected
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            if cfg.threads:  # 0 / None: keep torch's default
                torch.set_num_threads(cfg.threads)
            return _run(cfg, methods, dist)
    finally:
        torch.set_num_threads(threads_before)
        dist.teardown()


def _run(cfg: BenchmarkConfig, methods: List[str], dist: DistInfo) -> Optional[Dict[str, Any]]:
    started, cpu_started = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.seed)
    workload, data_info, model_info = _load_sets(cfg, dist, methods)
    main = workload.sets[0]
    opts = _options(cfg, dist, main.source.get([0])[0].shape[-1])
    extra = {"dataset": cfg.dataset, "quick": cfg.quick}
    try:
        settings = engine.settings_of(workload, opts, extra)
        done = engine.execute(workload, opts, settings, dist)
    except SettingsMismatch as exc:
        raise BenchmarkError(str(exc)) from None
    if done is None:
        return None
    run = _RunFacts(cfg, dist, started, cpu_started, data_info, model_info)
    return _assemble(workload, opts, done, run)


@dataclass
class _RunFacts:
    """What the results record about the run besides the per-method numbers."""

    cfg: Any
    dist: DistInfo
    started: float
    cpu_started: float
    data_info: Dict[str, Any]
    model_info: Dict[str, Any]


def _assemble(workload: Workload, opts: RunOptions, done: Tuple, run: _RunFacts) -> Dict[str, Any]:
    """Step 4 (rank 0): the results dict from every chunk record."""
    records, shown, rank_seconds = done
    merged = engine.merge(records, workload, opts.batch_size)
    for name, entry in merged["methods"].items():
        engine.log_summary(name, entry, opts.log)
    main = workload.sets[0]
    if merged["labels"] is not None and run.model_info.get("test_accuracy") is None:
        hits = sum(int(t == y) for t, y in zip(merged["targets"], merged["labels"]))
        run.model_info["test_accuracy"] = hits / max(len(merged["targets"]), 1)
    config = {k: v for k, v in asdict(run.cfg).items() if k != "explicit_methods"}
    config.update(
        n_images=len(main.source),
        n_localization=sum(len(s.source) for s in workload.sets[1:]),
        methods=list(workload.methods),
        batch_size=opts.batch_size,
        max_rows=opts.max_rows,
    )
    n_show = min(engine.N_SHOW, len(main.source))
    images, labels = main.source.get(list(range(n_show)))
    return {
        "methods": merged["methods"],
        "curves": merged["curves"],
        "config": config,
        "data": run.data_info,
        "model": run.model_info,
        "protocols": main.protocols,
        "environment": engine.environment(opts.device, run.dist, rank_seconds),
        "total_seconds": time.perf_counter() - run.started,
        "total_cpu_seconds": time.process_time() - run.cpu_started,
        "_images": images.cpu(),  # for the figures; not written to JSON
        "_targets": torch.as_tensor(merged["targets"][:n_show]),
        "_labels": labels.cpu() if labels is not None else None,
        "_attributions": engine.shown_attributions(shown, workload, opts.batch_size),
    }
