"""Resumable results: the settings of a run and its finished work, kept in ``<out>/progress/``.

Layout::

    progress/settings.json      everything that decides the numbers (written once, by rank 0)
    progress/rank-<r>.jsonl     one JSON line per finished chunk of images, appended by rank r
    progress/attr-<...>.pt      attributions of the first images (for the figures), torch.save

**Why JSON lines, one file per rank, and not SQLite.** Every rank appends only to its own file, so
ranks never contend for a lock, and the folder may live on a network file system shared by the nodes
of a multi-node job (SQLite's locking is documented as unreliable on NFS). A chunk's line is written
with one ``write`` followed by ``flush`` and ``os.fsync``; a process killed mid-write leaves at most a
torn last line, which :meth:`ProgressStore.load` skips (and the next append starts on a fresh line), so
a chunk is either recorded whole or recomputed. The files are plain text: ``jq`` and ``grep`` read them.
The other files are written to a temporary name in the same folder and ``os.replace``-d into place.

A folder whose ``settings.json`` differs from the current run's settings is refused
(:class:`SettingsMismatch`), never mixed; ``overwrite=True`` clears it first. The one difference
allowed is the set of methods: a run may drop methods (say one that fails on your model) or add
some; the methods both runs name must have the same knobs, and finished ones are reused.
"""

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import torch

from captum_paths._io import atomic_path

__all__ = ["ProgressStore", "SettingsMismatch", "atomic_write_text", "atomic_torch_save"]

_FORMAT = 1


class SettingsMismatch(ValueError):
    """The results folder holds a run made with other settings."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Args:
        path (Path): the destination.
        text (str): the content (UTF-8).
    """
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``.

    Args:
        obj: tensors and plain containers (so that ``torch.load(weights_only=True)`` reads them).
        path (Path): the destination.
    """
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _differences(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a, default=str)[:60]} -> {json.dumps(b, default=str)[:60]}")
    return out


class ProgressStore:
    """The ``progress/`` folder of one results folder, seen from one rank.

    Args:
        out (str or Path): the results folder (``--out``); ``progress/`` is created inside it.
        rank (int): this process's rank; it appends to ``rank-<rank>.jsonl`` only.
    """

    def __init__(self, out, rank: int = 0):
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
            raise ValueError(f"`rank` must be a non-negative int, got {rank!r}")
        self.root = Path(out).expanduser() / "progress"
        self.rank = rank

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.json"

    def check_settings(self, settings: Dict[str, Any], overwrite: bool = False) -> bool:
        """Adopt ``settings`` for this folder (rank 0 only).

        Args:
            settings (dict): JSON-serialisable description of everything that decides the results.
            overwrite (bool): delete previous progress instead of refusing a folder with other settings.

        Returns:
            True when the folder already held progress of these settings (a resumed run).

        Raises:
            SettingsMismatch: the folder holds a run with different settings (and ``overwrite`` is off).
        """
        settings = json.loads(json.dumps({"format": _FORMAT, **settings}, default=str))
        if overwrite and self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        if self.settings_path.exists():
            try:
                old = json.loads(self.settings_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {"unreadable": True}
            merged = self._merge_methods(old, settings)
            if merged != old:
                atomic_write_text(self.settings_path, json.dumps(merged, indent=1, sort_keys=True))
            return True
        if any(self.root.glob("rank-*.jsonl")):
            raise SettingsMismatch(f"{self.root} holds results without settings.json; pass --overwrite to discard them")
        atomic_write_text(self.settings_path, json.dumps(settings, indent=1, sort_keys=True))
        return False

    def _merge_methods(self, old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
        """The folder's settings after this run: the same everything, and methods with the same knobs.

        A run may name fewer or more methods than the folder holds (its finished methods are reused,
        new ones are added); a method with other knobs, or any other difference, is refused.
        """
        old_methods, new_methods = old.get("methods", {}), new.get("methods", {})
        rest_old = {k: v for k, v in old.items() if k != "methods"}
        rest_new = {k: v for k, v in new.items() if k != "methods"}
        diff = _differences(rest_old, rest_new)
        if isinstance(old_methods, dict) and isinstance(new_methods, dict):
            shared = [m for m in new_methods if m in old_methods]
            diff += _differences({m: old_methods[m] for m in shared}, {m: new_methods[m] for m in shared}, "methods.")
        else:
            diff.append("methods")
        if diff:
            shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
            raise SettingsMismatch(
                f"results folder {self.root.parent} holds a run with other settings ({shown}); "
                "choose another --out, or pass --overwrite to discard it"
            )
        return dict(old, methods={**old_methods, **new_methods})

    def load(self) -> Dict[str, Dict[str, Any]]:
        """Every complete record in every rank's file, by key (a torn last line is skipped)."""
        records: Dict[str, Dict[str, Any]] = {}
        for path in sorted(self.root.glob("rank-*.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.endswith("\n"):
                        continue  # torn by a crash mid-write
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(rec, dict) and "key" in rec:
                        records[rec["key"]] = rec
        return records

    def append(self, records: Iterable[Dict[str, Any]]) -> None:
        """Append records to this rank's file: one write, flushed and fsync-ed.

        Args:
            records (iterable of dict): JSON-serialisable records, each with a ``"key"``.
        """
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in records)
        if not text:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"rank-{self.rank}.jsonl"
        with open(path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a torn line from a killed run: start on a fresh line
                    text = "\n" + text
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def attribution_path(self, key: str) -> Path:
        """The file of a task's shown attributions (``key`` is the task key)."""
        return self.root / f"attr-{key.replace('/', '_')}.pt"

    def save_attributions(self, key: str, indices: List[int], attributions: torch.Tensor) -> None:
        """Keep the attributions of some images of a chunk (for the figures).

        Args:
            key (str): the task key.
            indices (list of int): the image indices of the rows of ``attributions``.
            attributions (Tensor): their attributions.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(
            {"indices": list(indices), "attributions": attributions.detach().cpu()}, self.attribution_path(key)
        )

    def load_attributions(self, key: str) -> Optional[Dict[str, Any]]:
        """What :meth:`save_attributions` kept for task ``key`` (``weights_only=True``), or None."""
        path = self.attribution_path(key)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)
