"""Small analytic models shared by the metric tests."""

import torch
import torch.nn as nn


class LinearScore(nn.Module):
    """``f(x) = sum(w * x)`` per example, shape ``(N, 1)``; optional per-example ``scale`` argument."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())

    def forward(self, x, scale=None):
        out = (x * self.weight).flatten(1).sum(1, keepdim=True)
        return out if scale is None else out * scale.reshape(-1, 1)


class LinearClasses(nn.Module):
    """``f(x)_c = sum(W_c * x) + b_c``: a linear classifier on flattened inputs, ``(N, C)``."""

    def __init__(self, in_features: int, n_classes: int, seed: int = 0, dtype=torch.float64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(n_classes, in_features, generator=g, dtype=dtype))
        self.bias = nn.Parameter(torch.randn(n_classes, generator=g, dtype=dtype))

    def forward(self, x):
        return x.flatten(1) @ self.weight.T + self.bias


class TwoInputLinear(nn.Module):
    """``f(a, b) = sum(u * a) + sum(v * b)``, shape ``(N, 1)``."""

    def __init__(self, u: torch.Tensor, v: torch.Tensor):
        super().__init__()
        self.u, self.v = nn.Parameter(u.clone()), nn.Parameter(v.clone())

    def forward(self, a, b):
        return ((a * self.u).flatten(1).sum(1) + (b * self.v).flatten(1).sum(1)).unsqueeze(1)


def small_cnn(seed: int = 0, channels: int = 3, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return model.to(dtype).eval()
