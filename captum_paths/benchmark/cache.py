"""Trained-model cache: train on first use, reload afterwards, retrain when anything it depends on changes.

An entry is keyed by a SHA-256 hash of (a) the architecture (the model's class, its constructor
configuration and its module tree as printed by PyTorch), (b) the training configuration and (c) the
exact bytes of the training and test tensors. Changing any of the three gives a different key and
therefore a fresh training run; the old file is left alone. The entry records the test accuracy.

Location: ``$CAPTUM_PATHS_CACHE`` if set, else ``$XDG_CACHE_HOME/captum_paths``, else
``~/.cache/captum_paths``; the benchmark's ``--cache-dir`` flag overrides both.
"""

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["CACHE_ENV", "default_cache_dir", "cache_key", "CachedModel", "load_or_train"]

CACHE_ENV = "CAPTUM_PATHS_CACHE"
_FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    """``$CAPTUM_PATHS_CACHE``, else ``$XDG_CACHE_HOME/captum_paths``, else ``~/.cache/captum_paths``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "captum_paths"


def _architecture(model: nn.Module) -> Dict[str, Any]:
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": getattr(model, "config", None),
        "modules": repr(model),
    }


def cache_key(model: nn.Module, train_config: Dict[str, Any], tensors: Sequence[Tensor]) -> str:
    """SHA-256 hex digest of the architecture, the training configuration and the data's bytes."""
    h = hashlib.sha256()
    h.update(
        json.dumps({"format": _FORMAT_VERSION, "arch": _architecture(model)}, sort_keys=True, default=str).encode()
    )
    h.update(json.dumps(train_config, sort_keys=True, default=str).encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _safe_load(path: Path) -> Dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers only, no code runs. Entries written
    before the version was stored as a plain ``str`` hold a ``TorchVersion`` (a ``str`` subclass): allowed."""
    from torch.torch_version import TorchVersion

    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:
        return torch.load(path, map_location="cpu", weights_only=True)
    with safe([TorchVersion]):
        return torch.load(path, map_location="cpu", weights_only=True)


@dataclass
class CachedModel:
    """A model from the cache: ``trained`` says whether this call trained it (``False``: loaded)."""

    model: nn.Module
    key: str
    path: Path
    test_accuracy: float
    trained: bool
    train_seconds: float
    train_config: Dict[str, Any] = field(default_factory=dict)


def load_or_train(
    name: str,
    model: nn.Module,
    train_fn: Callable[[nn.Module], nn.Module],
    eval_fn: Callable[[nn.Module], float],
    train_config: Dict[str, Any],
    data: Sequence[Tensor],
    cache_dir: Optional[Union[str, Path]] = None,
    use_cache: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> CachedModel:
    """Load ``model``'s weights from the cache, or train it with ``train_fn`` and store it.

    Args:
        name (str): a readable prefix of the cache file name (e.g. ``"digits28-samp_cnn"``).
        model (nn.Module): a freshly constructed (untrained) model; its architecture is hashed.
        train_fn (callable): ``train_fn(model) -> model`` trains in place (seeded by the caller).
        eval_fn (callable): ``eval_fn(model) -> float``: the test accuracy recorded in the entry.
        train_config (dict): every training knob (epochs, lr, seed, ...); part of the key.
        data (sequence of tensors): training and test tensors; their bytes are part of the key.
        cache_dir (str or Path, optional): defaults to :func:`default_cache_dir`.
        use_cache (bool): ``False`` trains without reading or writing the cache.
        log (callable, optional): called with a one-line message before training starts.

    Returns:
        CachedModel with the model in eval mode.
    """
    key = cache_key(model, train_config, data)
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"{name}-{key[:20]}.pt"
    if use_cache and path.exists():
        try:
            entry = _safe_load(path)
            if entry.get("key") == key:
                model.load_state_dict(entry["state_dict"])
                return CachedModel(
                    model.eval(),
                    key,
                    path,
                    float(entry["test_accuracy"]),
                    False,
                    float(entry.get("train_seconds", 0.0)),
                    dict(entry.get("train_config", {})),
                )
        except Exception:  # a truncated or foreign file: retrain and overwrite it
            pass
    if log is not None:
        log(f"training {name} (no cached copy in {directory})" if use_cache else f"training {name} (cache off)")
    started = time.perf_counter()
    model = train_fn(model)
    seconds = time.perf_counter() - started
    model.eval()
    acc = float(eval_fn(model))
    if use_cache:
        directory.mkdir(parents=True, exist_ok=True)
        entry = {
            "key": key,
            "name": name,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "test_accuracy": acc,
            "train_seconds": seconds,
            "train_config": dict(train_config),
            "architecture": _architecture(model),
            "torch_version": str(torch.__version__),
        }
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(entry, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return CachedModel(model, key, path, acc, True, seconds, dict(train_config))
