"""Shared fixtures: real digits and a small CNN trained on them in about a second."""

import pytest
import torch

from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SmallDigitsCNN, accuracy, train_classifier


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-tensor tests (thread hand-offs cost more than the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn digits at 16x16 (train/test split fixed by seed)."""
    return load_digits_images(size=16, seed=0)


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """A small CNN trained on the digits (eval mode, float32); test accuracy above 85%."""
    torch.manual_seed(0)
    model = train_classifier(SmallDigitsCNN(), digits.x_train, digits.y_train, epochs=8, seed=0)
    for p in model.parameters():
        p.requires_grad_(True)
    assert accuracy(model, digits.x_test, digits.y_test) > 0.85
    return model


@pytest.fixture(scope="session")
def digits_cnn64(digits_cnn):
    """The same CNN in float64, for exact batched-vs-single comparisons."""
    import copy

    return copy.deepcopy(digits_cnn).double().eval()
