"""The fitted reference bank of Local Path Integration (Yang et al., AAAI 2023).

LPI integrates gradients along straight paths from references drawn from the input's *local*
neighbourhood of the distribution the model learned. The bank estimates that distribution once, from
training data, in the model's logit space:

1. collect the model's logits ``z_i = f(x_i)`` over the training inputs (one batched, no-grad pass);
2. cluster them with K-means into ``n_neighborhoods`` neighbourhoods with centres ``c_g``;
3. cluster each neighbourhood again into ``n_references`` sub-clusters with centres ``c_{g,m}``;
4. keep as reference ``r_{g,m}`` the training input whose logits are nearest to ``c_{g,m}`` among the
   sub-cluster's members (the input itself, not a re-quantised copy), with the density
   ``p_{g,m} = |sub-cluster m| / |neighbourhood g|``, so that ``sum_m p_{g,m} = 1``.

At attribution time an input's neighbourhood is the nearest centre ``c_g`` to its logits, and references
are drawn from ``{r_{g,m}}`` with probabilities ``p_{g,m}``.

Banks are saved as a dictionary of plain tensors, numbers and strings read back with
``torch.load(weights_only=True)`` (no arbitrary unpickling), written atomically, and checked on load
(format, version, shapes, densities, a SHA-256 of the content).
"""

import hashlib
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_paths._io import atomic_path
from captum_paths.attr._utils.progress import progress_bar
from captum_paths.attr._utils.validation import check_positive_int

__all__ = ["ReferenceBank"]

_FORMAT = "captum_paths.ReferenceBank"
_FORMAT_VERSION = 2  # 2: + reference_logits (identify the fitting model); 1 still loads
_DENSITY_ATOL = 1e-6


def _split_item(item: Any, n_inputs: Optional[int], what: str) -> Tuple[Tensor, ...]:
    """The model inputs of one dataset item or loader batch.

    A tensor is the input. A tuple/list holds the inputs first, then anything else (labels): its first
    ``n_inputs`` elements are the inputs (the first one only when ``n_inputs`` is None, the usual
    ``(x, y)`` convention).
    """
    if isinstance(item, Tensor):
        parts: Tuple[Any, ...] = (item,)
        if n_inputs not in (None, 1):
            raise ValueError(f"`n_inputs`={n_inputs} but {what} is a single tensor")
    elif isinstance(item, (tuple, list)) and len(item) > 0:
        k = 1 if n_inputs is None else n_inputs
        if k > len(item):
            raise ValueError(f"`n_inputs`={n_inputs} but {what} has only {len(item)} element(s)")
        parts = tuple(item[:k])
    else:
        raise TypeError(
            f"{what} must be a tensor or a tuple/list starting with the model inputs, got {type(item).__name__}"
        )
    out = []
    for p in parts:
        if not isinstance(p, Tensor):
            p = torch.as_tensor(p)
        out.append(p)
    return tuple(out)


def _nearest_rows(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``points`` to each row of ``centers`` (squared Euclidean)."""
    d = ((points[None, :, :].astype(np.float64) - centers[:, None, :].astype(np.float64)) ** 2).sum(-1)
    return d.argmin(axis=1)


def nearest_centers(logits: Tensor, centers: Tensor) -> Tensor:
    """Index of the nearest centre (Euclidean) to each row of ``logits``: ``(N, K), (G, K) -> (N,)``."""
    z = logits.reshape(logits.shape[0], -1).to(dtype=torch.float64)
    c = centers.to(device=z.device, dtype=torch.float64)
    return torch.cdist(z, c).argmin(dim=1)


def _kmeans(n_clusters: int, clustering: str, n_init: int, max_iter: int, minibatch_size: int, seed: int):
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if clustering == "kmeans":
        return KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
    return MiniBatchKMeans(
        n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, batch_size=minibatch_size, random_state=seed
    )


def _tensor_digest(state: Dict[str, Any]) -> str:
    """SHA-256 over every field of a saved bank except the digest itself, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(state):
        if key == "sha256":
            continue
        value = state[key]
        h.update(key.encode())
        tensors = value if isinstance(value, (list, tuple)) else [value]
        for v in tensors:
            if isinstance(v, Tensor):
                t = v.detach().cpu().contiguous()
                h.update(str(t.dtype).encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(repr(v).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- fitting steps
@dataclass
class _FitSource:
    """Where ``fit`` reads the training inputs: the batches of its one pass, and how to read rows back.

    ``fetch(indices)`` returns the model inputs of those training rows; ``None`` when the data cannot be read
    back by position (a shuffled loader, an iterable dataset): the pass then keeps its inputs on the CPU
    (``keep_all``). ``n_total`` is the number of examples when known (for the progress bar).
    """

    batches: Iterable[Tuple[Tensor, ...]]
    fetch: Optional[Callable[[Sequence[int]], Tuple[Tensor, ...]]]
    n_total: Optional[int]

    @property
    def keep_all(self) -> bool:
        return self.fetch is None


@dataclass
class _FitRun:
    """One fit's model, device and source, and what its pass found (per-example input shapes, kept inputs)."""

    model: Any
    device: Optional[torch.device]
    source: _FitSource
    show_progress: bool
    input_shapes: Optional[Tuple[Tuple[int, ...], ...]] = None
    kept_inputs: Optional[Tuple[Tensor, ...]] = None


def _fit_source(data: Any, n_inputs: Optional[int], batch_size: int) -> _FitSource:
    """The batches and read-back of a tensor, a tuple of tensors, a DataLoader or a map-style dataset."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, Tensor) or (isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data)):
        return _tensor_source((data,) if isinstance(data, Tensor) else tuple(data), n_inputs, batch_size)
    if isinstance(data, DataLoader):
        return _loader_source(data, n_inputs)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return _FitSource(
            (_split_item(b, n_inputs, "a `data` batch") for b in loader),
            _dataset_fetch(data, loader.collate_fn, n_inputs),
            len(data),
        )
    raise TypeError(
        f"`data` must be a tensor, a tuple of tensors, a Dataset or a DataLoader, got {type(data).__name__}"
    )


def _tensor_source(tensors: Tuple[Tensor, ...], n_inputs: Optional[int], batch_size: int) -> _FitSource:
    if n_inputs is not None and n_inputs != len(tensors):
        raise ValueError(f"`n_inputs`={n_inputs} but `data` holds {len(tensors)} tensor(s)")
    if any(t.dim() == 0 for t in tensors) or len({t.shape[0] for t in tensors}) != 1:
        raise ValueError("every tensor in `data` must have the same batch size (dim 0)")
    n_total = tensors[0].shape[0]

    def fetch(idx: Sequence[int]) -> Tuple[Tensor, ...]:
        index = torch.as_tensor(list(idx), dtype=torch.long)
        return tuple(t[index.to(t.device)] for t in tensors)

    return _FitSource((tuple(t[s] for t in tensors) for s in _slices(n_total, batch_size)), fetch, n_total)


def _loader_source(loader: Any, n_inputs: Optional[int]) -> _FitSource:
    """A loader is read back through its dataset only when its order is the dataset's (sequential sampler)."""
    from torch.utils.data import SequentialSampler

    n_total = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
    batches = (_split_item(b, n_inputs, "a `data` batch") for b in loader)
    sequential = (
        isinstance(loader.sampler, SequentialSampler)
        and loader.batch_sampler is not None
        and type(loader.batch_sampler).__name__ == "BatchSampler"
        and hasattr(loader.dataset, "__getitem__")
    )
    fetch = _dataset_fetch(loader.dataset, loader.collate_fn, n_inputs) if sequential else None
    return _FitSource(batches, fetch, n_total)


def _dataset_fetch(dataset: Any, collate_fn: Callable, n_inputs: Optional[int]):
    def fetch(idx: Sequence[int]) -> Tuple[Tensor, ...]:
        items = [dataset[int(i)] for i in idx]
        return _split_item(collate_fn(items), n_inputs, "a `data` item")

    return fetch


def _collect_logits(run: _FitRun) -> Tensor:
    """The fit's one pass: ``(N, K)`` logits on the CPU (and, when the source cannot be read back, its inputs)."""
    chunks: List[Tensor] = []
    kept: List[Tuple[Tensor, ...]] = []
    bar_args = dict(total=run.source.n_total, desc="ReferenceBank logits", unit="ex")
    with torch.no_grad(), progress_bar(run.show_progress, **bar_args) as bar:
        for batch in run.source.batches:
            shapes = tuple(tuple(t.shape[1:]) for t in batch)
            if run.input_shapes is None:
                run.input_shapes = shapes
            elif shapes != run.input_shapes:
                raise ValueError("every batch of `data` must have the same per-example input shapes")
            out = run.model(*(t.to(run.device) if run.device is not None else t for t in batch))
            if not isinstance(out, Tensor):
                raise TypeError(f"`model` must return a torch.Tensor, got {type(out).__name__}")
            chunks.append(out.detach().reshape(out.shape[0], -1).cpu())
            if run.source.keep_all:
                kept.append(tuple(t.detach().cpu() for t in batch))
            bar.update(batch[0].shape[0])
    if not chunks:
        raise ValueError("`data` is empty")
    if kept:
        run.kept_inputs = tuple(torch.cat(parts) for parts in zip(*kept))
    logits = torch.cat(chunks)
    if not torch.isfinite(logits).all():
        raise ValueError("the model's logits over `data` contain nan or inf")
    return logits


def _read_references(run: _FitRun, indices: List[int]) -> Tuple[Tensor, ...]:
    """The training inputs at ``indices``, read back from the source (or from the inputs the pass kept)."""
    if run.source.keep_all:
        index = torch.as_tensor(indices, dtype=torch.long)
        references = tuple(t[index] for t in run.kept_inputs)
    else:
        references = run.source.fetch(indices)
    for i, (r, shape) in enumerate(zip(references, run.input_shapes)):
        if tuple(r.shape[1:]) != shape or r.shape[0] != len(indices):
            raise ValueError(f"reading the references back from `data` gave input {i} of shape {tuple(r.shape)}")
    return references


@contextmanager
def _global_rng_kept(keep: bool) -> Iterator[None]:
    """Restore torch's (CPU) and numpy's global random states on exit when ``keep``."""
    if not keep:
        yield
        return
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(numpy_state)


class ReferenceBank:
    r"""Local reference distribution of Local Path Integration, fitted on training data.

    Fitting (Yang et al., AAAI 2023, "Local Path Integration for Attribution"): the model's logits
    :math:`z_i = f(x_i)` over the training inputs are clustered by K-means into ``n_neighborhoods``
    neighbourhoods; each neighbourhood's logits are clustered again into ``n_references`` sub-clusters.
    Every sub-cluster contributes one reference, the training input whose logits lie nearest its
    centre, with density :math:`p_{g,m} = |S_{g,m}| / |N_g|` (its share of the neighbourhood).
    :class:`~captum_paths.LocalPathIntegration` draws an input's references from the neighbourhood of
    its nearest centre with these densities.

    Paper and code defaults: the authors' README runs 1 and 11 neighbourhoods with 10 and 20 references
    (``-center_num 1,11 -ref_num 10,20``); their attribution scripts default to one neighbourhood and 20
    references, and the paper's ablations use 20 references. Defaults here: ``n_neighborhoods=11``,
    ``n_references=20``. K-means as in the authors' code: ``n_init=3``, ``max_iter=600``.

    Deviations from the authors' code (documented bugs not copied, see DESIGN.md section 4):
    the references are taken by the index of the training example they were computed from, in the
    same pass (the reference code re-reads the data and saves them one batch off, as PNGs re-quantised
    to 8 bits); every neighbourhood keeps its own densities (the reference code loads the last
    cluster's densities for all). The nearest input to a sub-centre is searched among the sub-cluster's
    members (the reference code searches the whole neighbourhood; after Lloyd's iterations converge
    these agree except on ties at a border) so that a reference always carries its own sub-cluster's
    share. A neighbourhood with fewer members than ``n_references`` gets one sub-cluster per member;
    sub-clusters left empty by K-means (duplicate logits) are dropped.

    Args:
        n_neighborhoods (int): number of neighbourhoods (first-level K-means clusters). Default 11.
        n_references (int): references (sub-clusters) per neighbourhood. Default 20.
        random_state (int, numpy RandomState or None): seeds every K-means run. An int gives identical
            banks on every fit. The first K-means uses ``seeds[0]`` and neighbourhood ``g``'s sub-clustering
            ``seeds[1 + g]``, where ``seeds = check_random_state(random_state).randint(2**31 - 1,
            size=1 + n_neighborhoods)``.
        clustering (str): ``"kmeans"`` (scikit-learn ``KMeans``, default) or ``"minibatch"``
            (``MiniBatchKMeans``, whose working memory is ``minibatch_size`` rows at a time instead of
            several copies of all logits: use it when the logits of the training set do not fit
            comfortably in memory).
        n_init (int): K-means restarts, best inertia kept. Default 3 (authors' code).
        max_iter (int): K-means iterations per restart. Default 600 (authors' code).
        minibatch_size (int): rows per ``MiniBatchKMeans`` step. Default 1024.

    Fitted attributes (after :meth:`fit` or :meth:`load`):
        centers_ (Tensor): ``(G, K)`` float64 neighbourhood centres in logit space.
        references_ (tuple of Tensor): one tensor per model input, ``(R, *input_shape)``: all references,
            neighbourhood by neighbourhood.
        densities_ (Tensor): ``(R,)`` float64, summing to one within each neighbourhood.
        offsets_ (Tensor): ``(G + 1,)`` long: references of neighbourhood ``g`` are rows
            ``offsets_[g]:offsets_[g + 1]``.
        reference_indices_ (Tensor): ``(R,)`` long: the position of each reference in the training data.
        reference_logits_ (Tensor or None): ``(R, K)`` float64, the fitting model's logits on the references:
            they identify the model (see :meth:`check_model_logits`). ``None`` for a bank loaded from a
            version-1 file.
        neighborhood_sizes_ (Tensor): ``(G,)`` long: training examples per neighbourhood.
        input_shapes_ (tuple of tuple): per-example shape of each model input.
    """

    def __init__(
        self,
        n_neighborhoods: int = 11,
        n_references: int = 20,
        random_state: Any = None,
        clustering: str = "kmeans",
        n_init: int = 3,
        max_iter: int = 600,
        minibatch_size: int = 1024,
    ) -> None:
        self.n_neighborhoods = check_positive_int(n_neighborhoods, "n_neighborhoods")
        self.n_references = check_positive_int(n_references, "n_references")
        if not (
            random_state is None
            or isinstance(random_state, np.random.RandomState)
            or (isinstance(random_state, Integral) and not isinstance(random_state, bool))
        ):
            raise TypeError(
                f"`random_state` must be None, an int or a numpy RandomState, got {type(random_state).__name__}"
            )
        self.random_state = random_state
        if clustering not in ("kmeans", "minibatch"):
            raise ValueError(f"`clustering` must be 'kmeans' or 'minibatch', got {clustering!r}")
        self.clustering = clustering
        self.n_init = check_positive_int(n_init, "n_init")
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.minibatch_size = check_positive_int(minibatch_size, "minibatch_size")

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        model: Any,
        data: Any,
        n_inputs: Optional[int] = None,
        batch_size: int = 256,
        show_progress: bool = False,
    ) -> "ReferenceBank":
        """Collect ``model``'s logits over ``data`` and build the bank. Returns ``self``.

        Args:
            model (callable): the model (``model(*inputs)`` returns ``(B, ...)`` logits, flattened to
                ``(B, K)`` for clustering). It is run as given (its train/eval mode is not changed:
                put it in eval mode first), without gradients.
            data: the training inputs: a tensor ``(N, ...)``; a tuple of tensors (a multi-input model);
                a map-style ``torch.utils.data.Dataset``; or a ``DataLoader``. Dataset items and loader
                batches are a tensor or a tuple/list whose first ``n_inputs`` elements are the model
                inputs (the rest, e.g. labels, are not inputs).
            n_inputs (int, optional): number of model inputs at the start of each item/batch. Default:
                every tensor of a tensor/tuple ``data``; the first element of a dataset item or batch.
            batch_size (int): examples per forward pass for tensors and datasets. Default 256.
            show_progress (bool): show a progress bar over the pass. Default False.

        References are recovered by position: for tensors and datasets by indexing; for a loader
        whose dataset is map-style and whose sampler is sequential (``shuffle=False``) by indexing its
        dataset; for any other loader (shuffled, iterable datasets) the inputs of the pass are kept on
        the CPU. Each reference is checked to reproduce the logits it was selected by: a dataset whose
        items change between reads (random augmentation) or a model in training mode raises an error.
        The references' logits are kept (``reference_logits_``): they identify the fitting model, and
        :class:`~captum_paths.LocalPathIntegration` refuses a model whose logits on the references differ.

        With ``random_state`` set, torch's and numpy's global random states are restored after the fit
        (a loader's iteration draws its base seed from torch's global generator): fitting a seeded bank
        does not change what the rest of a program draws.
        """
        if not callable(model):
            raise TypeError(f"`model` must be callable, got {type(model).__name__}")
        if n_inputs is not None:
            n_inputs = check_positive_int(n_inputs, "n_inputs")
        batch_size = check_positive_int(batch_size, "batch_size")
        with _global_rng_kept(self.random_state is not None):
            source = _fit_source(data, n_inputs, batch_size)
            run = _FitRun(model, self._model_device(model), source, show_progress)
            logits = _collect_logits(run)
            if logits.shape[0] < self.n_neighborhoods:
                raise ValueError(
                    f"`data` has {logits.shape[0]} example(s), fewer than `n_neighborhoods`={self.n_neighborhoods}"
                )
            centers, groups, densities, ref_idx, sizes = self._cluster(logits.numpy())
            references = _read_references(run, ref_idx.tolist())
            reference_logits = logits[torch.as_tensor(ref_idx)]
            self._check_references_reproduce(model, run.device, references, reference_logits)
        offsets = np.concatenate([[0], np.cumsum([len(g) for g in groups])])
        self.centers_ = torch.as_tensor(centers, dtype=torch.float64)
        self.references_ = tuple(r.detach().cpu().clone() for r in references)
        self.reference_logits_: Optional[Tensor] = reference_logits.to(torch.float64)
        self.densities_ = torch.as_tensor(densities, dtype=torch.float64)
        self.offsets_ = torch.as_tensor(offsets, dtype=torch.long)
        self.reference_indices_ = torch.as_tensor(ref_idx, dtype=torch.long)
        self.neighborhood_sizes_ = torch.as_tensor(sizes, dtype=torch.long)
        self.input_shapes_ = tuple(run.input_shapes)
        return self

    @staticmethod
    def _model_device(model: Any) -> Optional[torch.device]:
        params = getattr(model, "parameters", None)
        if callable(params):
            for p in params():
                return p.device
        return None

    def _seeds(self) -> np.ndarray:
        from sklearn.utils import check_random_state

        rng = check_random_state(self.random_state)
        return rng.randint(np.iinfo(np.int32).max, size=1 + self.n_neighborhoods)

    def _cluster(self, logits: np.ndarray):
        """Two-level K-means on ``(N, K)`` logits: centres, per-neighbourhood reference rows and densities."""
        seeds = self._seeds()
        with warnings.catch_warnings():
            # duplicate logits make K-means find fewer distinct clusters: handled (empty ones dropped)
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            top = _kmeans(
                self.n_neighborhoods, self.clustering, self.n_init, self.max_iter, self.minibatch_size, int(seeds[0])
            )
            labels = top.fit_predict(logits)
            centers = top.cluster_centers_
            groups, densities, ref_idx, sizes = [], [], [], []
            for g in range(self.n_neighborhoods):
                members = np.flatnonzero(labels == g)
                sizes.append(len(members))
                if len(members) == 0:
                    raise ValueError(f"neighbourhood {g} is empty (duplicate logits?): use fewer `n_neighborhoods`")
                m = min(self.n_references, len(members))
                sub = _kmeans(m, self.clustering, self.n_init, self.max_iter, self.minibatch_size, int(seeds[1 + g]))
                sub_labels = sub.fit_predict(logits[members])
                rows = []
                for s in range(m):
                    in_sub = np.flatnonzero(sub_labels == s)
                    if len(in_sub) == 0:
                        continue
                    nearest = in_sub[_nearest_rows(logits[members[in_sub]], sub.cluster_centers_[s : s + 1])[0]]
                    rows.append(int(members[nearest]))
                    densities.append(len(in_sub) / len(members))
                ref_idx.extend(rows)
                groups.append(rows)
        return centers, groups, np.asarray(densities, dtype=np.float64), np.asarray(ref_idx, dtype=np.int64), sizes

    @staticmethod
    def _check_references_reproduce(model, device, references, expected_logits: Tensor) -> None:
        with torch.no_grad():
            out = model(*(r.to(device) if device is not None else r for r in references))
        if not _logits_agree(out, expected_logits):
            raise ValueError(
                "the references read back from `data` do not reproduce the logits they were selected by: "
                "`data` must return the same inputs on every read (no random augmentation) and `model` "
                "must be deterministic (eval mode)"
            )

    # ------------------------------------------------------------------ use
    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "centers_")

    def check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(
                "this ReferenceBank is not fitted: call `fit(model, data)` or `ReferenceBank.load(path)` first"
            )

    @property
    def n_logits(self) -> int:
        self.check_fitted()
        return int(self.centers_.shape[1])

    def check_model_logits(self, logits: Tensor, what: str = "the model") -> None:
        """Refuse a model other than the fitting one: ``logits`` are its outputs on ``references_``.

        Args:
            logits (Tensor): ``(R, ...)`` the model's outputs on the bank's ``R`` references (flattened to
                ``(R, K)``), in the order of ``references_``.
            what (str): how the error names the model.

        Raises ``ValueError`` when the number of logits differs or any differs from the fitting model's
        (``reference_logits_``) beyond relative 1e-3 / absolute 1e-4 of the largest logit: the bank's
        neighbourhoods live in the fitting model's logit space and mean nothing to another model. A bank
        loaded from a version-1 file has no logits to compare: nothing is checked (callers may warn).
        """
        self.check_fitted()
        if self.reference_logits_ is None:
            return
        flat = logits.detach().reshape(logits.shape[0], -1)
        expected = self.reference_logits_
        if tuple(flat.shape) != tuple(expected.shape):
            raise ValueError(
                f"{what} gives {tuple(flat.shape)} logits on the reference bank's references but the bank was "
                f"fitted on a model giving {tuple(expected.shape)}: fit a ReferenceBank for this model"
            )
        if not _logits_agree(flat, expected):
            diff = float((flat.cpu().to(torch.float64) - expected).abs().max())
            raise ValueError(
                f"the reference bank was fitted for another model: {what}'s logits on the bank's references "
                f"differ from the fitting model's by up to {diff:.3g} (largest fitted logit "
                f"{float(expected.abs().max()):.3g}); fit a ReferenceBank with this model "
                "(`ReferenceBank(...).fit(model, data)`)"
            )

    def neighborhoods(self, logits: Tensor) -> Tensor:
        """Neighbourhood of each row of ``logits`` ``(N, ...)``: the nearest centre, shape ``(N,)`` long."""
        self.check_fitted()
        flat = logits.reshape(logits.shape[0], -1)
        if flat.shape[1] != self.n_logits:
            raise ValueError(
                f"the model output has {flat.shape[1]} value(s) per example but the bank was fitted on "
                f"{self.n_logits} logits"
            )
        return nearest_centers(flat, self.centers_)

    def reference_probabilities(self) -> Tuple[Tensor, Tensor]:
        """Padded per-neighbourhood densities and reference rows: ``(G, M)`` float64 and ``(G, M)`` long.

        Row ``g`` lists neighbourhood ``g``'s references (global row ids into ``references_``) and their
        densities; padding has density 0 (never drawn) and row id 0.
        """
        self.check_fitted()
        counts = (self.offsets_[1:] - self.offsets_[:-1]).tolist()
        width = max(counts)
        probs = torch.zeros(len(counts), width, dtype=torch.float64)
        rows = torch.zeros(len(counts), width, dtype=torch.long)
        for g, c in enumerate(counts):
            start = int(self.offsets_[g])
            probs[g, :c] = self.densities_[start : start + c]
            rows[g, :c] = torch.arange(start, start + c)
        return probs, rows

    def to(self, device: Union[str, torch.device]) -> "ReferenceBank":
        """Move the references to ``device`` (in place; returns ``self``). Centres and densities stay on CPU."""
        self.check_fitted()
        self.references_ = tuple(r.to(device) for r in self.references_)
        return self

    # ------------------------------------------------------------------ persistence
    def _state(self) -> Dict[str, Any]:
        self.check_fitted()
        state: Dict[str, Any] = {
            "format": _FORMAT,
            # without the references' logits (a bank loaded from a version-1 file) the content is version 1
            "version": _FORMAT_VERSION if self.reference_logits_ is not None else 1,
            "n_neighborhoods": self.n_neighborhoods,
            "n_references": self.n_references,
            "centers": self.centers_.cpu(),
            "references": [r.detach().cpu().contiguous() for r in self.references_],
            "densities": self.densities_.cpu(),
            "offsets": self.offsets_.cpu(),
            "reference_indices": self.reference_indices_.cpu(),
            "neighborhood_sizes": self.neighborhood_sizes_.cpu(),
            "input_shapes": [list(s) for s in self.input_shapes_],
        }
        if self.reference_logits_ is not None:  # a bank loaded from a version-1 file has none
            state["reference_logits"] = self.reference_logits_.cpu()
        state["sha256"] = _tensor_digest(state)
        return state

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the bank to ``path`` atomically (a temporary file in the same folder, then a rename).

        The file holds plain tensors, ints, strings and lists only, read back by :meth:`load` with
        ``torch.load(weights_only=True)``. Format version 2: version 1 plus the references' logits
        (``reference_logits``, which identify the fitting model); a bank loaded from a version-1 file, which has
        none, is written as version 1 again.
        """
        state = self._state()
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: Any = "cpu") -> "ReferenceBank":
        """Read a bank written by :meth:`save`, without arbitrary unpickling, and validate it.

        Args:
            path (str or PathLike): the file.
            map_location: where the tensors go, as for ``torch.load``. Default ``"cpu"``. A device (string or
                ``torch.device``) that this machine does not have raises ``ValueError`` saying so.

        Files of format version 1 (before the references' logits were saved) still load; such a bank has
        ``reference_logits_ = None`` and cannot be checked against a model (LocalPathIntegration warns).

        Raises ``ValueError`` naming what is wrong: unreadable (corrupted or truncated) file, not a
        ReferenceBank, a newer format version than this package reads, a checksum mismatch, inconsistent
        shapes, non-finite centres, references, logits or densities, or densities that are negative or do
        not sum to one within a neighbourhood.
        """
        path = os.fspath(path)
        _check_map_location(map_location)
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # corrupted, truncated, or holding objects that need unpickling
            raise ValueError(
                f"{path!r} is not a readable ReferenceBank file (corrupted, truncated or not written by "
                f"ReferenceBank.save): {type(exc).__name__}: {str(exc)[:300]}"
            ) from exc
        _check_header(state, path)
        bank = cls(n_neighborhoods=state["n_neighborhoods"], n_references=state["n_references"])
        bank._set_validated(state, path)
        return bank

    def _set_validated(self, state: Dict[str, Any], path: str) -> None:
        """Check every field of a loaded state (see :class:`_StateCheck`), then set the fitted attributes."""
        check = _StateCheck(state, path, self.n_neighborhoods, self.n_references)
        check.tensors()
        counts = check.offsets()
        check.input_shapes_and_references()
        check.densities(counts)
        check.reference_logits()
        self.centers_ = state["centers"].to(torch.float64)
        self.references_ = tuple(state["references"])
        logits = state.get("reference_logits")
        self.reference_logits_ = None if logits is None else logits.to(torch.float64)
        self.densities_ = state["densities"].to(torch.float64)
        self.offsets_ = state["offsets"]
        self.reference_indices_ = state["reference_indices"].to(torch.long)
        self.neighborhood_sizes_ = state["neighborhood_sizes"].to(torch.long)
        self.input_shapes_ = tuple(tuple(s) for s in state["input_shapes"])

    def __repr__(self) -> str:
        fitted = (
            f", fitted: {int(self.offsets_[-1])} references, inputs {list(self.input_shapes_)}, {self.n_logits} logits"
            if self.is_fitted
            else ", not fitted"
        )
        return f"ReferenceBank(n_neighborhoods={self.n_neighborhoods}, n_references={self.n_references}{fitted})"


def _slices(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _logits_agree(got: Tensor, expected: Tensor) -> bool:
    """Whether two ``(R, K)`` logit tables agree: relative 1e-3, absolute 1e-4 of the largest logit (at least 1).

    Loose enough for float32 vs float64 and CPU vs GPU runs of one model, tight enough to tell models apart.
    """
    got = got.detach().reshape(got.shape[0], -1).cpu().to(torch.float64)
    expected = expected.detach().cpu().to(torch.float64)
    if got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    return bool(torch.allclose(got, expected, rtol=1e-3, atol=1e-4 * max(scale, 1.0)))


# ---------------------------------------------------------------------------------- loading steps
def _check_map_location(map_location: Any) -> None:
    """A device ``map_location`` must exist here (else torch's error would read as a corrupted file)."""
    if not isinstance(map_location, (str, torch.device)):
        return  # a dict or a function: torch.load applies it
    try:
        device = torch.device(map_location)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"`map_location` must name a torch device, got {map_location!r}: {exc}") from exc
    try:
        torch.empty(0, device=device)
    except Exception as exc:  # no such backend, or an index beyond the devices present
        raise ValueError(
            f"`map_location`={map_location!r} names a device that is not available on this machine "
            f"({type(exc).__name__}: {str(exc)[:200]}); load to 'cpu' and move the bank with `.to(device)`"
        ) from exc


def _check_header(state: Any, path: str) -> None:
    """Format tag, a version this package reads, every required field and the checksum."""
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"{path!r} is not a ReferenceBank file (missing format tag {_FORMAT!r})")
    version = state.get("version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path!r}: invalid format version {version!r}")
    if version > _FORMAT_VERSION:
        raise ValueError(
            f"{path!r} was written by a newer ReferenceBank format (version {version}); this version of "
            f"captum_paths reads versions up to {_FORMAT_VERSION}: upgrade captum_paths"
        )
    required = [
        "n_neighborhoods",
        "n_references",
        "centers",
        "references",
        "densities",
        "offsets",
        "reference_indices",
        "neighborhood_sizes",
        "input_shapes",
        "sha256",
    ] + (["reference_logits"] if version >= 2 else [])
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"{path!r}: missing field(s) {missing}")
    if _tensor_digest(state) != state["sha256"]:
        raise ValueError(f"{path!r}: checksum mismatch, the file content is corrupted")


@dataclass
class _StateCheck:
    """The consistency checks of a loaded state, one method per group of fields; each raises ``ValueError``
    naming the file and the field."""

    state: Dict[str, Any]
    path: str
    n_neighborhoods: int
    n_references: int

    def bad(self, msg: str) -> ValueError:
        return ValueError(f"{self.path!r}: {msg}")

    @property
    def n_rows(self) -> int:
        return int(self.state["offsets"][-1])

    def tensors(self) -> None:
        for name in ("centers", "densities", "offsets", "reference_indices", "neighborhood_sizes"):
            if not isinstance(self.state[name], Tensor):
                raise self.bad(f"`{name}` must be a tensor, got {type(self.state[name]).__name__}")
        centers, g = self.state["centers"], self.n_neighborhoods
        if centers.dim() != 2 or centers.shape[0] != g or not centers.dtype.is_floating_point:
            raise self.bad(f"`centers` must be a float ({g}, K) tensor, got {tuple(centers.shape)} {centers.dtype}")
        if not torch.isfinite(centers).all():
            raise self.bad("`centers` contain nan or inf")

    def offsets(self) -> Tensor:
        """Checks ``offsets`` and returns the references per neighbourhood, ``(G,)``."""
        offsets, g = self.state["offsets"], self.n_neighborhoods
        if offsets.shape != (g + 1,) or offsets.dtype != torch.long:
            raise self.bad(
                f"`offsets` must be a long tensor of shape ({g + 1},), got {tuple(offsets.shape)} {offsets.dtype}"
            )
        counts = offsets[1:] - offsets[:-1]
        if int(offsets[0]) != 0 or bool((counts < 1).any()) or bool((counts > self.n_references).any()):
            raise self.bad(
                f"`offsets` must start at 0 and give between 1 and {self.n_references} references per neighbourhood"
            )
        r = self.n_rows
        if self.state["reference_indices"].shape != (r,) or self.state["neighborhood_sizes"].shape != (g,):
            raise self.bad(f"`reference_indices` must have shape ({r},) and `neighborhood_sizes` ({g},)")
        return counts

    def input_shapes_and_references(self) -> None:
        shapes, references, r = self.state["input_shapes"], self.state["references"], self.n_rows
        if (
            not isinstance(shapes, list)
            or not shapes
            or not all(isinstance(s, list) and all(isinstance(d, int) and d >= 0 for d in s) for s in shapes)
        ):
            raise self.bad("`input_shapes` must be a non-empty list of lists of non-negative ints")
        if not isinstance(references, list) or len(references) != len(shapes):
            raise self.bad(f"`references` must be a list of {len(shapes)} tensor(s), one per input")
        for i, (ref, shape) in enumerate(zip(references, shapes)):
            if not isinstance(ref, Tensor) or tuple(ref.shape) != (r, *shape):
                got = tuple(ref.shape) if isinstance(ref, Tensor) else type(ref).__name__
                raise self.bad(f"`references`[{i}] must have shape {(r, *shape)}, got {got}")
            if ref.dtype.is_floating_point and not bool(torch.isfinite(ref).all()):
                raise self.bad(f"`references`[{i}] contain nan or inf")

    def densities(self, counts: Tensor) -> None:
        densities, g, r = self.state["densities"], self.n_neighborhoods, self.n_rows
        if densities.shape != (r,) or not densities.dtype.is_floating_point:
            raise self.bad(f"`densities` must be a float tensor of shape ({r},), got {tuple(densities.shape)}")
        if not torch.isfinite(densities).all() or bool((densities < 0).any()):
            raise self.bad("`densities` must be finite and non-negative")
        group = torch.repeat_interleave(torch.arange(g), counts.cpu())
        sums = torch.zeros(g, dtype=torch.float64).index_add_(0, group, densities.cpu().to(torch.float64))
        wrong = torch.nonzero((sums - 1).abs() > _DENSITY_ATOL).reshape(-1)
        if wrong.numel():
            k = int(wrong[0])
            raise self.bad(f"the densities of neighbourhood {k} sum to {float(sums[k]):.9g}, not 1")

    def reference_logits(self) -> None:
        """Version 2: ``(R, K)`` finite float logits of the references (``K`` = the centres' width)."""
        logits = self.state.get("reference_logits")
        if logits is None and self.state["version"] < 2:
            return
        k = self.state["centers"].shape[1]
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (self.n_rows, k):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise self.bad(f"`reference_logits` must be a tensor of shape ({self.n_rows}, {k}), got {got}")
        if not logits.dtype.is_floating_point or not bool(torch.isfinite(logits).all()):
            raise self.bad("`reference_logits` must be finite floats")
