"""Models named by ``--model module:function`` in the tests (a user's builder)."""

import torch.nn as nn


class Tiny224(nn.Module):
    """A cheap classifier for 3x224x224 images in [0, 1] (stands in for an ImageNet model)."""

    def __init__(self, n_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.head = nn.Linear(32, n_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def build_tiny224() -> nn.Module:
    import torch

    torch.manual_seed(0)
    return Tiny224().eval()


def build_not_a_model():
    return "not a model"
