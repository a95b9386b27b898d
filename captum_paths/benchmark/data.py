"""Data that ships with our dependencies: scikit-learn's handwritten digits, as images."""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DigitsSplit",
    "load_digits_images",
    "DataNotFoundError",
    "ImageSplit",
    "load_mnist",
    "load_cifar10",
    "load_image_folder",
    "LocalizationSet",
    "make_localization_set",
]


@dataclass
class DigitsSplit:
    """Train/test tensors: images ``(N, 1, size, size)`` in [0, 1], labels ``(N,)`` int64."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_images(size: int = 28, test_fraction: float = 0.25, seed: int = 0) -> DigitsSplit:
    """scikit-learn's 1,797 real 8x8 handwritten digits, scaled to ``size x size`` in [0, 1].

    Upscaling is bilinear (``align_corners=False``) from the 0..16 grey levels divided by 16. The
    train/test split is stratified by class and fixed by ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not isinstance(size, int) or size < 8:
        raise ValueError(f"`size` must be an int >= 8, got {size!r}")
    digits = load_digits()
    images = torch.as_tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=digits.target)
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return DigitsSplit(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


# ---------------------------------------------------------------------------------------------------
# Loaders for users who have the data (nothing downloads unless ``download=True`` is passed).


class DataNotFoundError(ValueError):
    """A data folder or file that the user pointed to does not exist or holds no data set."""


@dataclass
class ImageSplit:
    """Train/test images ``(N, C, H, W)`` in [0, 1] and int64 labels, with the class names."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    class_names: tuple = ()


def _require_folder(root, what: str):
    import pathlib

    if root is None:
        raise DataNotFoundError(f"{what} needs a data folder: pass --data-root")
    path = pathlib.Path(root).expanduser()
    return path


def _open_torchvision_splits(dataset_class, name: str, root, download: bool):
    """The train and test splits of a torchvision dataset under ``root``; a clear error if absent."""
    path = _require_folder(root, name)
    if not download and not path.is_dir():
        raise DataNotFoundError(f"{name} data folder not found: {path} (pass --download to fetch it)")
    try:
        return (
            dataset_class(str(path), train=True, download=download),
            dataset_class(str(path), train=False, download=download),
        )
    except RuntimeError as exc:
        raise DataNotFoundError(f"{name} not found under {path}: {exc}") from None


def load_mnist(root, download: bool = False) -> ImageSplit:
    """MNIST through torchvision (60,000 train / 10,000 test, 28x28), scaled to [0, 1]."""
    from torchvision import datasets

    train, test = _open_torchvision_splits(datasets.MNIST, "MNIST", root, download)

    def to_tensor(ds):
        return ds.data.float().div(255).unsqueeze(1), ds.targets.long()

    x_tr, y_tr = to_tensor(train)
    x_te, y_te = to_tensor(test)
    return ImageSplit(x_tr, y_tr, x_te, y_te, tuple(str(i) for i in range(10)))


def load_cifar10(root, download: bool = False) -> ImageSplit:
    """CIFAR-10 through torchvision (50,000 train / 10,000 test, 3x32x32), scaled to [0, 1]."""
    from torchvision import datasets

    train, test = _open_torchvision_splits(datasets.CIFAR10, "CIFAR-10", root, download)

    def to_tensor(ds):
        x = torch.as_tensor(ds.data).permute(0, 3, 1, 2).float().div(255)
        return x, torch.as_tensor(ds.targets, dtype=torch.long)

    x_tr, y_tr = to_tensor(train)
    x_te, y_te = to_tensor(test)
    return ImageSplit(x_tr, y_tr, x_te, y_te, tuple(train.classes))


def load_image_folder(root, n_test: int, n_reference: int = 64, seed: int = 0, size: int = 224) -> ImageSplit:
    """An ImageNet-style folder (one sub-folder per class, e.g. the 1,000 synsets of ImageNet val).

    Images are resized to 256 (short side) and centre-cropped to ``size`` (the torchvision ResNet
    protocol), kept in [0, 1] (normalisation lives in the model). Labels are the sorted sub-folder
    indices, i.e. ImageNet class indices when the folder has the 1,000 synset sub-folders. Only
    ``n_test + n_reference`` images are read: a seeded random draw, split into the evaluated images
    (``x_test``) and reference images (``x_train``, used by expected gradients and LPI's bank).
    """
    from torchvision import datasets, transforms

    path = _require_folder(root, "an image folder")
    if not path.is_dir():
        raise DataNotFoundError(f"image folder not found: {path}")
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(size), transforms.ToTensor()])
    try:
        ds = datasets.ImageFolder(str(path), transform=tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataNotFoundError(f"no class sub-folders with images under {path}: {exc}") from None
    n_total = len(ds)
    if n_total < n_test + 1:
        raise DataNotFoundError(f"{path} holds {n_total} images; need at least {n_test + 1}")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_total, generator=gen)
    test_idx = order[:n_test]
    ref_idx = order[n_test : n_test + min(n_reference, n_total - n_test)]

    def stack(indices):
        items = [ds[int(i)] for i in indices]
        return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items], dtype=torch.long)

    x_te, y_te = stack(test_idx)
    x_tr, y_tr = stack(ref_idx)
    return ImageSplit(x_tr, y_tr, x_te, y_te, tuple(ds.classes))


# ---------------------------------------------------------------------------------------------------
# A synthetic localisation set: the class is decided by one small pattern at a random place.

# 5x5 class patterns: the class of an image is the pattern it contains.
_CLASS_PATTERNS = (
    # plus
    ["..#..", "..#..", "#####", "..#..", "..#.."],
    # diagonal cross
    ["#...#", ".#.#.", "..#..", ".#.#.", "#...#"],
    # hollow square
    ["#####", "#...#", "#...#", "#...#", "#####"],
    # checkerboard
    ["#.#.#", ".#.#.", "#.#.#", ".#.#.", "#.#.#"],
)
# Distractors share strokes with the class patterns (bars, blocks, corners) but decide nothing.
_DISTRACTOR_PATTERNS = (
    [".....", ".....", "#####", ".....", "....."],
    ["..#..", "..#..", "..#..", "..#..", "..#.."],
    [".....", ".###.", ".###.", ".###.", "....."],
    ["#####", "#....", "#....", "#....", "#...."],
    ["#....", ".#...", "..#..", "...#.", "....#"],
)


def _pattern(rows) -> np.ndarray:
    return np.array([[c == "#" for c in r] for r in rows], dtype=np.float32)


@dataclass
class LocalizationSet:
    """Synthetic images ``(N, 1, S, S)`` in [0, 1], labels ``(N,)`` and ground-truth regions
    ``(N, S, S)`` bool (the class pattern's 5x5 box), for training and test."""

    x_train: Tensor
    y_train: Tensor
    regions_train: Tensor
    x_test: Tensor
    y_test: Tensor
    regions_test: Tensor
    class_names: tuple = ("plus", "cross", "square", "checker")


def _draw_localization_images(n: int, size: int, n_distractors: int, noise: float, rng: np.random.Generator):
    k = 5
    classes = [_pattern(p) for p in _CLASS_PATTERNS]
    distractors = [_pattern(p) for p in _DISTRACTOR_PATTERNS]
    x = np.zeros((n, 1, size, size), dtype=np.float32)
    y = rng.integers(0, len(classes), size=n)
    regions = np.zeros((n, size, size), dtype=bool)
    cells = size // (k + 1)  # a grid of (k+1)-pixel cells keeps patterns apart by at least 1 pixel
    for i in range(n):
        slots = rng.choice(cells * cells, size=1 + n_distractors, replace=False)
        # one random shift of the whole grid per image: patterns stay 1 pixel apart, anywhere
        shift_r, shift_c = (int(v) for v in rng.integers(0, size - cells * (k + 1) + 1, size=2))
        for j, slot in enumerate(slots):
            r0 = (slot // cells) * (k + 1) + shift_r
            c0 = (slot % cells) * (k + 1) + shift_c
            pat = classes[y[i]] if j == 0 else distractors[int(rng.integers(0, len(distractors)))]
            x[i, 0, r0 : r0 + k, c0 : c0 + k] = np.maximum(
                x[i, 0, r0 : r0 + k, c0 : c0 + k], pat * rng.uniform(0.6, 1.0)
            )
            if j == 0:
                regions[i, r0 : r0 + k, c0 : c0 + k] = True
    x = np.clip(x + noise * rng.standard_normal(x.shape).astype(np.float32), 0.0, 1.0)
    return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)), torch.from_numpy(regions)


def make_localization_set(
    n_train: int = 1200,
    n_test: int = 300,
    size: int = 28,
    n_distractors: int = 3,
    noise: float = 0.05,
    seed: int = 0,
) -> LocalizationSet:
    """A seeded synthetic set where the class is decided by one 5x5 pattern among distractors.

    Each ``size x size`` image holds one of four class patterns (plus, diagonal cross, hollow square,
    checkerboard) at a random place and ``n_distractors`` distractor patterns (bars, a block, a corner,
    a diagonal: strokes the class patterns share) elsewhere, on a grid that keeps them at least one
    pixel apart, with random intensities in [0.6, 1] and Gaussian noise of std ``noise``. The ground
    truth region is the class pattern's 5x5 box, so the pointing game can be scored offline.
    """
    if not isinstance(size, int) or size < 12:
        raise ValueError(f"`size` must be an int >= 12, got {size!r}")
    cells = size // 6
    if not isinstance(n_distractors, int) or not 0 <= n_distractors < cells * cells:
        raise ValueError(
            f"`n_distractors` must be an int in [0, {cells * cells - 1}] for size {size}, got {n_distractors!r}"
        )
    rng = np.random.default_rng(seed)
    x_tr, y_tr, r_tr = _draw_localization_images(n_train, size, n_distractors, noise, rng)
    x_te, y_te, r_te = _draw_localization_images(n_test, size, n_distractors, noise, rng)
    return LocalizationSet(x_tr, y_tr, r_tr, x_te, y_te, r_te)
