"""Small models trained in seconds on the shipped data."""

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    "SmallDigitsCNN",
    "SampPaperCNN",
    "SAMP_REFERENCE_WIDTHS",
    "Normalized",
    "imagenet_resnet50",
    "train_classifier",
    "accuracy",
    "build_user_model",
]


class SmallDigitsCNN(nn.Module):
    """A small CNN for ``(N, 1, H, W)`` digit images with 10 logits (fast enough for tests)."""

    def __init__(self, channels: int = 8, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(2 * channels * 16, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    weight_decay: float = 0.0,
    lr_schedule: Optional[str] = None,
    show_progress: bool = False,
) -> nn.Module:
    """Adam on cross-entropy, seeded shuffling; returns the model in eval mode.

    ``lr_schedule="cosine"`` anneals the learning rate to 0 over the run (one step per batch), which
    makes the final accuracy stable from seed to seed; ``None`` keeps it constant.
    ``show_progress`` shows a tqdm bar over epochs.
    """
    if lr_schedule not in (None, "cosine"):
        raise ValueError(f"`lr_schedule` must be None or 'cosine', got {lr_schedule!r}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total_steps, 1)) if lr_schedule else None
    model.train()
    from tqdm import tqdm

    for _ in tqdm(range(epochs), desc="training", unit="epoch", disable=not show_progress, leave=False):
        perm = torch.randperm(len(x), generator=gen, device="cpu").to(x.device)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(len(x), 1)


# Channel widths of the SAMP authors' `SimpleCNN` (zbr17/ExplainAttr, src/bogd/models/simple_cnn.py),
# by number of input channels: MNIST (1) and CIFAR-10 (3).
SAMP_REFERENCE_WIDTHS = {1: (8, 24, 288, 864, 2592), 3: (24, 64, 512, 1536, 4608)}


class SampPaperCNN(nn.Module):
    r"""The SAMP paper's small CNN for MNIST / CIFAR-10: five convolutions and a linear head.

    Architecture (Zhang et al., ICLR 2024, Appendix A.3; layer types, kernels, strides and the
    reference widths read from the authors' ``SimpleCNN`` in zbr17/ExplainAttr)::

        conv 5x5, padding 1      -> LeakyReLU
        conv 2x2, stride 2       (a learned 2x downsampling, no activation)
        conv 4x4, padding 1      -> LeakyReLU
        conv 2x2, stride 2       (a learned 2x downsampling, no activation)
        conv 3x3, padding 1      -> LeakyReLU
        global max pool -> linear head (``n_classes`` logits)

    The reference widths are ``(8, 24, 288, 864, 2592)`` for 1-channel and
    ``(24, 64, 512, 1536, 4608)`` for 3-channel inputs. **Deviation:** by default the last three
    widths are divided by ``width_divisor=6`` (MNIST: ``(8, 24, 48, 144, 432)``): at full width one
    forward+backward pass costs about 43 ms per 28x28 image on a 2-core CPU (21 M parameters), which
    alone would put training over the benchmark's one-minute budget; the divided model costs about
    1 ms. Pass ``width_divisor=1`` for the reference widths, or ``widths`` explicitly.

    Args:
        in_channels (int): 1 (MNIST-like) or 3 (CIFAR-like) selects the reference widths; any
            other value needs ``widths``.
        n_classes (int): number of logits.
        width_divisor (int): divides the last three reference widths (rounded, at least 1).
        widths (sequence of 5 ints, optional): explicit widths; overrides the reference ones.
        negative_slope (float): LeakyReLU slope (PyTorch's default, the reference's activation).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width_divisor: int = 6,
        widths: Optional[tuple] = None,
        negative_slope: float = 0.01,
    ):
        super().__init__()
        if widths is None:
            if in_channels not in SAMP_REFERENCE_WIDTHS:
                raise ValueError(
                    f"`widths` is required for in_channels={in_channels} (reference widths exist for 1 and 3)"
                )
            if isinstance(width_divisor, bool) or not isinstance(width_divisor, int) or width_divisor < 1:
                raise ValueError(f"`width_divisor` must be a positive int, got {width_divisor!r}")
            ref = SAMP_REFERENCE_WIDTHS[in_channels]
            widths = ref[:2] + tuple(max(1, round(w / width_divisor)) for w in ref[2:])
        widths = tuple(int(w) for w in widths)
        if len(widths) != 5 or min(widths) < 1:
            raise ValueError(f"`widths` must be 5 positive ints, got {widths!r}")
        self.config = {
            "in_channels": in_channels,
            "n_classes": n_classes,
            "widths": list(widths),
            "negative_slope": negative_slope,
        }
        w = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w[0], 5, padding=1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(w[0], w[1], 2, stride=2),
            nn.Conv2d(w[1], w[2], 4, padding=1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(w[2], w[3], 2, stride=2),
            nn.Conv2d(w[3], w[4], 3, padding=1),
            nn.LeakyReLU(negative_slope),
            nn.AdaptiveMaxPool2d(1),
        )
        self.head = nn.Linear(w[4], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class Normalized(nn.Module):
    """``model((x - mean) / std)``: lets attributions and baselines live in [0, 1] pixel space."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_resnet50(weights_path) -> nn.Module:
    """torchvision's ResNet-50 with the user's own ImageNet weights file, behind ImageNet normalisation
    so that inputs are images in [0, 1]. Never downloads.

    Args:
        weights_path (str or Path): a state dict saved with ``torch.save`` (torchvision's own
            ``resnet50-*.pth`` files are), or a checkpoint dict holding it under ``"state_dict"``.
            It is read with ``weights_only=True``: no code in the file runs; a pickled whole model
            is refused (save its ``state_dict()`` instead).
    """
    import pickle

    import torchvision

    net = torchvision.models.resnet50(weights=None)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{weights_path}: not a plain state dict (a pickled model cannot be loaded safely); "
            f"save model.state_dict() instead ({str(exc).splitlines()[0]})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    net.load_state_dict(state)
    return Normalized(net, IMAGENET_MEAN, IMAGENET_STD).eval()


def build_user_model(spec: str) -> nn.Module:
    """The model built by ``spec = "package.module:function"`` (``function()`` returns an ``nn.Module``).

    The function is called with no arguments; it loads its own weights. The model is put in eval mode.

    Raises:
        ValueError: ``spec`` is not ``module:function``, the module or the function cannot be found, or
            the function returns something other than an ``nn.Module``.
    """
    import importlib

    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"--model must be 'module:function' (e.g. mypkg.models:build), got {spec!r}")
    module_name, func_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--model {spec!r}: cannot import {module_name!r}: {exc}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"--model {spec!r}: {module_name!r} has no function {func_name!r}")
    model = func()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r} must return a torch.nn.Module, got {type(model).__name__}")
    return model.eval()
