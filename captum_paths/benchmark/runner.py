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
"""

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from captum_paths.benchmark.cache import load_or_train
from captum_paths.benchmark.data import (
    DataNotFoundError,
    load_cifar10,
    load_digits_images,
    load_image_folder,
    load_mnist,
    make_localization_set,
)
from captum_paths.benchmark.methods import (
    METHOD_NAMES,
    MethodContext,
    PassCounter,
    method_specs,
    unavailable_reason,
)
from captum_paths.benchmark.models import SampPaperCNN, accuracy, imagenet_resnet50, train_classifier

__all__ = ["DATASETS", "BenchmarkError", "BenchmarkConfig", "validate_config", "run_benchmark", "train_config_for"]

DATASETS = ("digits", "mnist", "cifar10", "imagenet")
QUICK_N_IMAGES = 6
QUICK_N_LOCALIZATION = 6
LOCALIZATION_N_TRAIN = 2000


class BenchmarkError(ValueError):
    """A problem with what the user asked for: reported as one line, exit code 2."""


@dataclass
class BenchmarkConfig:
    dataset: str = "digits"
    methods: Optional[Sequence[str]] = None  # None: every available method
    n_images: Optional[int] = None  # None: 100 (6 with quick)
    n_localization: Optional[int] = None  # None: 50 (6 with quick); 0 skips the pointing game
    seed: int = 0
    device: str = "cpu"
    out: str = "benchmark-results"
    data_root: Optional[str] = None
    weights: Optional[str] = None
    download: bool = False
    cache_dir: Optional[str] = None
    use_cache: bool = True
    batch_size: int = 25
    epochs: Optional[int] = None
    threads: Optional[int] = 1
    quick: bool = False
    show_progress: bool = True
    figures: bool = True
    explicit_methods: bool = field(default=False, repr=False)

    def resolved_n_images(self) -> int:
        return self.n_images if self.n_images is not None else (QUICK_N_IMAGES if self.quick else 100)

    def resolved_n_localization(self) -> int:
        if self.n_localization is not None:
            return self.n_localization
        return QUICK_N_LOCALIZATION if self.quick else 50


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_config(cfg: BenchmarkConfig) -> List[str]:
    """Check everything the user chose before any work; returns the methods to run.

    Raises:
        BenchmarkError: unknown dataset or method, a method that this build lacks but was asked for
            by name, ``n_images <= 0``, a missing data folder or weights file, an unusable device.
    """
    if cfg.dataset not in DATASETS:
        raise BenchmarkError(f"unknown dataset {cfg.dataset!r}; choose one of: {', '.join(DATASETS)}")
    if cfg.n_images is not None and (not _is_int(cfg.n_images) or cfg.n_images <= 0):
        raise BenchmarkError(f"--n-images must be a positive integer, got {cfg.n_images!r}")
    if cfg.n_localization is not None and (not _is_int(cfg.n_localization) or cfg.n_localization < 0):
        raise BenchmarkError(f"--n-localization must be a non-negative integer, got {cfg.n_localization!r}")
    if not _is_int(cfg.batch_size) or cfg.batch_size <= 0:
        raise BenchmarkError(f"--batch-size must be a positive integer, got {cfg.batch_size!r}")
    if cfg.epochs is not None and (not _is_int(cfg.epochs) or cfg.epochs <= 0):
        raise BenchmarkError(f"--epochs must be a positive integer, got {cfg.epochs!r}")
    if cfg.threads is not None and (not _is_int(cfg.threads) or cfg.threads < 0):
        raise BenchmarkError(f"--threads must be a non-negative integer, got {cfg.threads!r}")
    if not _is_int(cfg.seed) or cfg.seed < 0:
        raise BenchmarkError(f"--seed must be a non-negative integer, got {cfg.seed!r}")
    try:
        device = torch.device(cfg.device)
    except RuntimeError as exc:
        raise BenchmarkError(f"--device {cfg.device!r} is not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchmarkError(f"--device {cfg.device!r}: CUDA is not available on this machine")
    if cfg.dataset in ("mnist", "cifar10"):
        if cfg.data_root is None:
            raise BenchmarkError(f"--dataset {cfg.dataset} needs --data-root (the torchvision data folder)")
        if not cfg.download and not Path(cfg.data_root).expanduser().is_dir():
            raise BenchmarkError(f"data folder not found: {cfg.data_root} (pass --download to fetch {cfg.dataset})")
    if cfg.dataset == "imagenet":
        if cfg.data_root is None or not Path(cfg.data_root).expanduser().is_dir():
            raise BenchmarkError(
                f"--dataset imagenet needs --data-root, an existing image folder; got {cfg.data_root!r}"
            )
        if cfg.weights is None or not Path(cfg.weights).expanduser().is_file():
            raise BenchmarkError(f"--dataset imagenet needs --weights, a ResNet-50 weights file; got {cfg.weights!r}")
    specs = method_specs(28, cfg.quick)
    names = list(cfg.methods) if cfg.methods is not None else list(METHOD_NAMES)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise BenchmarkError(
            f"unknown method(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(METHOD_NAMES)}"
        )
    if not names:
        raise BenchmarkError("--methods is empty")
    if len(set(names)) != len(names):
        raise BenchmarkError(f"--methods lists a method twice: {', '.join(names)}")
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


def _cached_cnn(name: str, split, in_channels: int, n_classes: int, train_cfg, cfg: BenchmarkConfig, device):
    torch.manual_seed(train_cfg["seed"])  # the initial weights depend on the seed only
    model = SampPaperCNN(in_channels=in_channels, n_classes=n_classes)
    entry = load_or_train(
        name,
        model,
        train_fn=lambda m: _train(m, split.x_train, split.y_train, train_cfg, device, cfg.show_progress),
        eval_fn=lambda m: accuracy(m.to(device), split.x_test.to(device), split.y_test.to(device)),
        train_config=train_cfg,
        data=(split.x_train, split.y_train, split.x_test, split.y_test),
        cache_dir=cfg.cache_dir,
        use_cache=cfg.use_cache,
        log=print,
    )
    entry.model.to(device).eval()
    for p in entry.model.parameters():
        p.requires_grad_(False)  # attributions need input gradients only
    return entry


def _load_main(cfg: BenchmarkConfig, device: torch.device, n_images: int):
    """The evaluated images, their reference (training) images, the model and its description."""
    if cfg.dataset == "digits":
        split = load_digits_images(size=28, seed=cfg.seed)
        tc = train_config_for("digits", cfg.epochs, cfg.quick)
        entry = _cached_cnn("digits28-samp_cnn", split, 1, 10, tc, cfg, device)
        info = {
            "name": "digits",
            "source": "sklearn.datasets.load_digits, bilinear 8x8 -> 28x28, [0, 1]",
            "split": f"stratified 75/25, seed {cfg.seed}",
        }
    elif cfg.dataset in ("mnist", "cifar10"):
        loader = load_mnist if cfg.dataset == "mnist" else load_cifar10
        split = loader(cfg.data_root, download=cfg.download)
        tc = train_config_for(cfg.dataset, cfg.epochs, cfg.quick)
        channels = split.x_train.shape[1]
        entry = _cached_cnn(f"{cfg.dataset}-samp_cnn", split, channels, 10, tc, cfg, device)
        info = {
            "name": cfg.dataset,
            "source": f"torchvision {cfg.dataset} under {cfg.data_root}",
            "split": "official train/test",
        }
    else:
        split = load_image_folder(cfg.data_root, n_test=n_images, n_reference=64, seed=cfg.seed)
        model = imagenet_resnet50(cfg.weights).to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        acc = accuracy(model, split.x_test.to(device), split.y_test.to(device), batch_size=16)
        info = {"name": "imagenet", "source": f"image folder {cfg.data_root}", "split": "seeded draw"}
        model_info = {
            "architecture": "torchvision resnet50",
            "weights": str(cfg.weights),
            "test_accuracy": acc,
            "accuracy_on": "the evaluated images",
        }
        return split, model, info, model_info
    model_info = {
        "architecture": "SampPaperCNN " + json.dumps(entry.model.config),
        "train_config": tc,
        "test_accuracy": entry.test_accuracy,
        "accuracy_on": f"the full test split ({len(split.y_test)} images)",
        "cache_file": str(entry.path),
        "trained_now": entry.trained,
        "train_seconds": round(entry.train_seconds, 2),
    }
    return split, entry.model, info, model_info


def _pick(n_total: int, n: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=gen)[: min(n, n_total)].sort().values


# -------------------------------------------------------------------------------------- protocols


def protocols_for(image_size: int, n_features: int) -> Dict[str, Any]:
    large = image_size >= 128
    blur = (31, 5.0) if large else (11, 5.0)
    return {
        "target": "class predicted by the model on the input",
        "samp": {
            "paper": "Zhang et al. 2024 (SAMP), Table 1",
            "score": "logit",
            "auc": "mean",
            "normalize": True,
            "step": 224 * 8 if large else 10,
            "deletion_substrate": "zeros",
            "insertion_substrate": f"Blur(klen={blur[0]}, sigma={blur[1]})",
        },
        "rise": {
            "paper": "Petsiuk et al. 2018 (RISE)",
            "score": "softmax",
            "auc": "trapezoid",
            "normalize": False,
            "step": image_size,
            "deletion_substrate": "zeros",
            "insertion_substrate": "Blur(klen=11, sigma=5.0)",
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
            "data": "synthetic localisation set, 28x28",
            "tolerance": 1,
            "hit": "argmax of the channel-summed attribution within tolerance px of the box",
        },
        "blur": blur,
        "n_features": n_features,
    }


def _metrics_for(model, x, attr, target, protocols, batch_size):
    from captum_paths import Blur
    from captum_paths.metrics import deletion, diffid, insertion

    samp_p, rise_p = protocols["samp"], protocols["rise"]
    blur = Blur(*protocols["blur"])
    rise_blur = Blur(11, 5.0)
    out = {}
    kw = dict(target=target, max_examples_per_batch=batch_size * 8)
    sd, sdc, fr_sd = deletion(
        model,
        x,
        attr,
        step=samp_p["step"],
        substrate="zeros",
        score="logit",
        auc="mean",
        normalize=True,
        return_curves=True,
        **kw,
    )
    si, sic, fr_si = insertion(
        model,
        x,
        attr,
        step=samp_p["step"],
        substrate=blur,
        score="logit",
        auc="mean",
        normalize=True,
        return_curves=True,
        **kw,
    )
    rd, rdc, fr_rd = deletion(
        model,
        x,
        attr,
        step=rise_p["step"],
        substrate="zeros",
        score="softmax",
        auc="trapezoid",
        normalize=False,
        return_curves=True,
        **kw,
    )
    ri, ric, fr_ri = insertion(
        model,
        x,
        attr,
        step=rise_p["step"],
        substrate=rise_blur,
        score="softmax",
        auc="trapezoid",
        normalize=False,
        return_curves=True,
        **kw,
    )
    d = diffid(
        model,
        x,
        attr,
        target=target,
        ratios=protocols["diffid"]["ratios"],
        fill="mean",
        max_examples_per_batch=batch_size * 8,
    )
    out["samp_deletion"], out["samp_insertion"] = sd, si
    out["rise_deletion"], out["rise_insertion"] = rd, ri
    out["diffid"] = d.area
    curves = {
        "samp_deletion": (fr_sd, sdc),
        "samp_insertion": (fr_si, sic),
        "rise_deletion": (fr_rd, rdc),
        "rise_insertion": (fr_ri, ric),
    }
    return out, curves


def _pointing(attr: Tensor, regions: Tensor, tolerance: int) -> Tensor:
    from captum_paths.metrics import pointing_game

    return pointing_game(attr, regions, tolerance=tolerance)


def _explain_all(explain, counter: PassCounter, x: Tensor, target: Tensor, batch_size: int, bar=None):
    """Attributions of every image, batch by batch; returns (attributions, seconds, fwd rows, bwd rows)."""
    counter.reset()
    chunks = []
    started = time.perf_counter()
    for i in range(0, len(x), batch_size):
        a = explain(x[i : i + batch_size], target[i : i + batch_size])
        if isinstance(a, tuple):  # methods returning (attributions, extra)
            a = a[0]
        chunks.append(a.detach())
        if bar is not None:
            bar.update(len(x[i : i + batch_size]))
    seconds = time.perf_counter() - started
    return torch.cat(chunks), seconds, counter.forward_rows, counter.backward_rows


def _summary(values) -> Dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()) if arr.size else float("nan"),
        "std": float(arr.std()) if arr.size else float("nan"),
        "n": int(arr.size),
    }


# ------------------------------------------------------------------------------------------- run


def run_benchmark(cfg: BenchmarkConfig) -> Dict[str, Any]:
    """Run the benchmark described by ``cfg``; returns the results dict that the report writes.

    torch's thread count is set to ``cfg.threads`` for the run and restored afterwards.
    """
    methods = validate_config(cfg)
    threads_before = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            # Captum's Saliency / InputXGradient warn that they switch on input gradients: expected
            warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients")
            if cfg.threads:  # 0 / None: keep torch's default
                torch.set_num_threads(cfg.threads)
            return _run(cfg, methods)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: BenchmarkConfig, methods: List[str]) -> Dict[str, Any]:
    from tqdm import tqdm

    device = torch.device(cfg.device)
    n_images = cfg.resolved_n_images()
    n_loc = cfg.resolved_n_localization()
    started = time.perf_counter()
    cpu_started = time.process_time()
    torch.manual_seed(cfg.seed)

    try:
        split, model, data_info, model_info = _load_main(cfg, device, n_images)
    except DataNotFoundError as exc:
        raise BenchmarkError(str(exc)) from None
    print(
        f"model: {model_info['architecture']}; test accuracy {model_info['test_accuracy']:.4f} "
        f"({'trained now' if model_info.get('trained_now') else 'loaded'})"
    )
    idx = _pick(len(split.x_test), n_images, cfg.seed)
    x = split.x_test[idx].to(device)
    with torch.no_grad():
        target = model(x).argmax(1)
    labels = split.y_test[idx].to(device)
    image_size = x.shape[-1]
    specs = method_specs(image_size, cfg.quick)
    protocols = protocols_for(image_size, x.shape[-1] * x.shape[-2])
    x_reference = split.x_train.to(device)
    ctx = MethodContext(
        x_reference=x_reference,
        seed=cfg.seed,
        samp_step=specs["samp"].params["step_size"],
        blur=protocols["blur"],
        show_progress=False,
        quick=cfg.quick,
    )

    loc = None
    if n_loc > 0:
        ltc = train_config_for("localization", cfg.epochs, cfg.quick)
        loc_set = make_localization_set(n_train=ltc["n_train"], n_test=max(300, n_loc), seed=cfg.seed)
        loc_entry = _cached_cnn("localization28-samp_cnn", loc_set, 1, 4, ltc, cfg, device)
        loc_idx = _pick(len(loc_set.x_test), n_loc, cfg.seed)
        loc_x = loc_set.x_test[loc_idx].to(device)
        with torch.no_grad():
            loc_target = loc_entry.model(loc_x).argmax(1)
        loc = {
            "x": loc_x,
            "target": loc_target,
            "regions": loc_set.regions_test[loc_idx].to(device),
            "model": loc_entry.model,
            "ctx": MethodContext(
                x_reference=loc_set.x_train.to(device), seed=cfg.seed, samp_step=10, blur=(11, 5.0), quick=cfg.quick
            ),
        }
        model_info["localization_model"] = {
            "architecture": "SampPaperCNN " + json.dumps(loc_entry.model.config),
            "train_config": ltc,
            "test_accuracy": loc_entry.test_accuracy,
            "trained_now": loc_entry.trained,
        }
        print(f"localisation model: test accuracy {loc_entry.test_accuracy:.4f}")

    results: Dict[str, Any] = {"methods": {}, "curves": {}}
    attributions: Dict[str, Tensor] = {}
    counter = PassCounter(model)
    for name in methods:
        spec = specs[name]
        t_setup = time.perf_counter()
        explain = spec.build(counter, ctx)
        setup_seconds = time.perf_counter() - t_setup
        with tqdm(
            total=len(x), desc=f"{spec.label:>17}", unit="img", disable=not cfg.show_progress, leave=False
        ) as bar:
            attr, seconds, fwd, bwd = _explain_all(explain, counter, x, target, cfg.batch_size, bar)
        finite = bool(torch.isfinite(attr).all())
        if not finite:
            warnings.warn(f"{name}: non-finite attributions (replaced by 0 for the metrics)", stacklevel=2)
            attr = torch.nan_to_num(attr, nan=0.0, posinf=0.0, neginf=0.0)
        t_metrics = time.perf_counter()
        with tqdm(total=1, desc=f"{'metrics':>17}", disable=not cfg.show_progress, leave=False) as bar:
            per_image, curves = _metrics_for(model, x, attr, target, protocols, cfg.batch_size)
            bar.update(1)
        metrics_seconds = time.perf_counter() - t_metrics
        entry = {
            "label": spec.label,
            "params": spec.params,
            "finite_attributions": finite,
            "setup_seconds": setup_seconds,
            "metrics_seconds": metrics_seconds,
            "seconds_per_image": seconds / len(x),
            "forward_per_image": fwd / len(x),
            "backward_per_image": bwd / len(x),
            "per_image": {k: v.detach().cpu().double().tolist() for k, v in per_image.items()},
        }
        if loc is not None:
            loc_counter = PassCounter(loc["model"])
            loc_explain = spec.build(loc_counter, loc["ctx"])
            with tqdm(
                total=len(loc["x"]),
                desc=f"{spec.label + ' (loc)':>17}",
                unit="img",
                disable=not cfg.show_progress,
                leave=False,
            ) as bar:
                loc_attr, _, _, _ = _explain_all(loc_explain, loc_counter, loc["x"], loc["target"], cfg.batch_size, bar)
            loc_attr = torch.nan_to_num(loc_attr, nan=0.0, posinf=0.0, neginf=0.0)
            hits = _pointing(loc_attr, loc["regions"], protocols["pointing_game"]["tolerance"])
            entry["per_image"]["pointing_game"] = hits.detach().cpu().double().tolist()
        entry["summary"] = {k: _summary(v) for k, v in entry["per_image"].items()}
        results["methods"][name] = entry
        results["curves"][name] = {
            k: {
                "fractions": f.detach().cpu().double().tolist(),
                "mean": c.detach().cpu().double().mean(0).tolist(),
                "std": c.detach().cpu().double().std(0, unbiased=False).tolist(),
            }
            for k, (f, c) in curves.items()
        }
        attributions[name] = attr.detach().cpu()
        s = entry["summary"]
        print(
            f"{spec.label:>17}: SAMP del {s['samp_deletion']['mean']:.3f} ins {s['samp_insertion']['mean']:.3f} | "
            f"RISE del {s['rise_deletion']['mean']:.3f} ins {s['rise_insertion']['mean']:.3f} | "
            f"DiffID {s['diffid']['mean']:.3f}"
            + (f" | pointing {s['pointing_game']['mean']:.2f}" if "pointing_game" in s else "")
            + f" | {entry['seconds_per_image']:.3f} s/img"
        )

    results["config"] = {k: v for k, v in asdict(cfg).items() if k != "explicit_methods"}
    results["config"].update(
        n_images=len(x), n_localization=(len(loc["x"]) if loc is not None else 0), methods=list(methods)
    )
    results["data"] = data_info
    results["model"] = model_info
    results["protocols"] = protocols
    results["environment"] = _environment(device)
    results["total_seconds"] = time.perf_counter() - started
    results["total_cpu_seconds"] = time.process_time() - cpu_started
    results["_images"] = x.detach().cpu()  # for the figures; not written to JSON
    results["_targets"] = target.detach().cpu()
    results["_labels"] = labels.detach().cpu()
    results["_attributions"] = attributions
    return results


def _environment(device) -> Dict[str, Any]:
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
    }
