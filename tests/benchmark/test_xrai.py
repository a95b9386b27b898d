"""XRAI in the benchmark: PAIR saliency's XRAI on our model, named only (not in the default run)."""

import numpy as np
import pytest
import torch

from captum_paths.benchmark import METHOD_NAMES, compare
from captum_paths.benchmark.methods import MethodContext, PassCounter, method_specs

pytest.importorskip("saliency")
pytestmark = pytest.mark.usefixtures("one_thread")


def pair_example_call_model(model, target):
    """PAIR's own PyTorch recipe for ``call_model_function`` (its examples notebook): HWC images in, the
    gradients of the target class's output out."""
    from saliency.core.base import INPUT_OUTPUT_GRADIENTS

    def call_model(images, call_model_args=None, expected_keys=None):
        images = torch.tensor(np.transpose(np.asarray(images), (0, 3, 1, 2)), dtype=torch.float32, requires_grad=True)
        outputs = model(images)[:, target]
        grads = torch.autograd.grad(outputs, images, grad_outputs=torch.ones_like(outputs))[0]
        return {INPUT_OUTPUT_GRADIENTS: np.transpose(grads.detach().numpy(), (0, 2, 3, 1))}

    return call_model


def test_xrai_is_pairs_xrai_on_each_image_shared_by_its_channels(digits, digits_cnn):
    from saliency.core.xrai import XRAI

    x, y = digits.x_test[:2], digits.y_test[:2]
    counter = PassCounter(digits_cnn.eval())
    ctx = MethodContext(x_reference=digits.x_train[:10])
    maps = method_specs(16)["xrai"].build(counter, ctx)(x, y)
    assert maps.shape == x.shape and maps.dtype == x.dtype and torch.isfinite(maps).all()
    # IG from two baselines, 100 path points each, one batch per baseline
    assert counter.forward_rows == counter.backward_rows == 2 * 2 * 100
    for i in range(2):
        image = x[i].permute(1, 2, 0).double().numpy()
        expected = XRAI().GetMask(image, pair_example_call_model(digits_cnn, int(y[i])), batch_size=100)
        np.testing.assert_allclose(maps[i, 0].numpy(), expected, rtol=1e-6, atol=1e-7)
    assert not torch.equal(maps[0], maps[1])


def test_xrai_runs_only_when_named(digits, digits_cnn):
    assert "xrai" not in METHOD_NAMES
    x, y = digits.x_test[:2], digits.y_test[:2]
    result = compare(digits_cnn, (x, y), methods=["xrai", "random"], metrics=["diffid"], quick=True, threads=1)
    assert list(result.results["methods"]) == ["xrai", "random"] and "| XRAI |" in result.table
    assert result.results["methods"]["xrai"]["params"]["algorithm"] == "full"
    with pytest.raises(ValueError, match="nope"):
        compare(digits_cnn, (x, y), methods=["xrai", "nope"], quick=True)
