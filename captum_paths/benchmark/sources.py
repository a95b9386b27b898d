"""Where the evaluated images come from: tensors, a map-style dataset, a DataLoader or an image folder.

A source is indexed by the *image index* of the run (0..N-1): the index that names an image in the
results, that seeds its random draws and that decides its chunk. Images are read a chunk at a time
(``get``), so a 50,000-image folder is never held in memory.
"""

import hashlib
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["ImageSource", "TensorSource", "DatasetSource", "SubsetSource", "as_source"]


def _hash_tensor(h, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())


class ImageSource:
    """Images ``(C, H, W)`` and optional int labels, addressed by image index."""

    description = "images"

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, indices: Sequence[int]) -> Tuple[Tensor, Optional[Tensor]]:
        """Images ``(len(indices), C, H, W)`` and their labels (``None`` when the data has none).

        Args:
            indices (sequence of int): image indices.
        """
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A SHA-256 that changes when the evaluated images change (part of a run's settings)."""
        raise NotImplementedError


class TensorSource(ImageSource):
    """Images and labels already in memory.

    Args:
        x (Tensor): images ``(N, C, H, W)``.
        y (Tensor, optional): labels ``(N,)``.
        description (str): how the results describe the data.
    """

    def __init__(self, x: Tensor, y: Optional[Tensor] = None, description: str = "tensors"):
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise TypeError(f"`x` must be a tensor of images (N, C, H, W), got {_describe(x)}")
        if y is not None and (not isinstance(y, Tensor) or y.shape != (len(x),)):
            raise TypeError(f"`y` must be a tensor of {len(x)} labels, got {_describe(y)}")
        self.x, self.y, self.description = x, y, description

    def __len__(self) -> int:
        return len(self.x)

    def get(self, indices):
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return self.x[idx], (self.y[idx] if self.y is not None else None)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        _hash_tensor(h, self.x)
        if self.y is not None:
            _hash_tensor(h, self.y)
        return h.hexdigest()


def _split_item(item: Any) -> Tuple[Tensor, Optional[int]]:
    if isinstance(item, (tuple, list)):
        x = item[0]
        y = item[1] if len(item) > 1 else None
    elif isinstance(item, dict) and "image" in item:
        x, y = item["image"], item.get("label")
    else:
        x, y = item, None
    if not isinstance(x, Tensor):
        raise TypeError(
            f"a dataset item must be an image tensor or (image, label), got {type(x).__name__}; "
            "add a transform such as torchvision.transforms.ToTensor()"
        )
    if isinstance(y, Tensor):
        y = int(y)
    return x, y


class DatasetSource(ImageSource):
    """A map-style dataset whose items are ``image`` or ``(image, label, ...)``.

    The fingerprint hashes the dataset's length, its file list when it has one (``samples`` of
    torchvision's ``ImageFolder``/``DatasetFolder``) and the first and last images.

    Args:
        dataset: anything with ``__len__`` and ``__getitem__``.
        description (str): how the results describe the data.
    """

    def __init__(self, dataset, description: Optional[str] = None):
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise TypeError(f"`dataset` must be a map-style dataset (len and indexing), got {type(dataset).__name__}")
        self.dataset = dataset
        self.description = description or f"{type(dataset).__name__} of {len(dataset)} images"

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, indices):
        items = [_split_item(self.dataset[int(i)]) for i in indices]
        x = torch.stack([a for a, _ in items])
        labels = [b for _, b in items]
        y = torch.as_tensor(labels, dtype=torch.long) if all(b is not None for b in labels) else None
        return x, y

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{type(self.dataset).__qualname__}:{len(self.dataset)}".encode())
        samples = getattr(self.dataset, "samples", None)
        if isinstance(samples, list):
            h.update(repr(samples).encode())
        if len(self.dataset):
            x, y = self.get([0, len(self.dataset) - 1])
            _hash_tensor(h, x)
            if y is not None:
                _hash_tensor(h, y)
        return h.hexdigest()


class SubsetSource(ImageSource):
    """The images ``indices`` of another source, renumbered 0..len-1.

    Args:
        source (ImageSource): the full source.
        indices (sequence of int): positions in ``source``.
    """

    def __init__(self, source: ImageSource, indices: Sequence[int]):
        self.source = source
        self.indices = [int(i) for i in indices]
        self.description = source.description

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, indices):
        return self.source.get([self.indices[int(i)] for i in indices])

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.source.fingerprint().encode())
        h.update(repr(self.indices).encode())
        return h.hexdigest()


def _describe(obj) -> str:
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return type(obj).__name__


def as_source(data, name: str = "data") -> ImageSource:
    """An :class:`ImageSource` for tensors ``x`` or ``(x, y)``, a map-style dataset or a DataLoader.

    A DataLoader over a map-style dataset contributes its dataset (its sampler and shuffling are
    ignored: images are evaluated in dataset order, so that image indices are stable); a DataLoader
    over an iterable dataset is read once into memory.

    Args:
        data: the images (see above).
        name (str): the argument's name, for error messages.
    """
    if isinstance(data, ImageSource):
        return data
    if isinstance(data, Tensor):
        return TensorSource(data)
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, Tensor) for d in data):
        return TensorSource(data[0], data[1])
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(data, DataLoader):
        if not isinstance(data.dataset, IterableDataset):
            return DatasetSource(data.dataset)
        xs, ys = [], []
        for batch in data:
            if isinstance(batch, (tuple, list)):
                xs.append(batch[0])
                ys.append(batch[1] if len(batch) > 1 else None)
            else:
                xs.append(batch)
                ys.append(None)
        y = torch.cat(ys) if ys and all(v is not None for v in ys) else None
        return TensorSource(torch.cat(xs), y, description="iterable DataLoader")
    if hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, (str, bytes, dict)):
        return DatasetSource(data)
    raise TypeError(
        f"`{name}` must be an image tensor (N, C, H, W), a pair (images, labels), a map-style dataset or a "
        f"DataLoader, got {_describe(data)}"
    )
