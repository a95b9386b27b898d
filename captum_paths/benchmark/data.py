"""Data that ships with our dependencies: scikit-learn's handwritten digits, as images."""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DigitsSplit", "load_digits_images"]


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
    train_idx, test_idx = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    return DigitsSplit(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])
