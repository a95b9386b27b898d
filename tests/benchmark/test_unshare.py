"""unshare_modules: one module per call site (what Captum's DeepLift needs), same function, model untouched."""

import warnings
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torchvision
from captum.attr import DeepLift

from captum_paths.benchmark.methods import MethodContext, PassCounter, method_specs
from captum_paths.benchmark.models import IMAGENET_MEAN, IMAGENET_STD, Normalized
from captum_paths.benchmark.unshare import unshare_modules


@pytest.fixture(autouse=True)
def _quiet_captum():
    with warnings.catch_warnings():  # Captum warns that it sets hooks and requires_grad on every call
        warnings.simplefilter("ignore", UserWarning)
        yield


def resnet18(**kw):
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, **kw).double().eval()


def images(n=2, size=64):
    return torch.rand(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def calls_per_module(model, x):
    """How often each module instance runs in one forward, by name (forward hooks)."""
    names = {id(m): name for name, m in model.named_modules()}
    calls = Counter()
    handles = [m.register_forward_hook(lambda m, i, o: calls.update([names[id(m)]])) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


def snapshot(model):
    """What unshare_modules must not change: the module tree, modes, hook counts, tensors (objects and values)."""
    rows = []
    for name, m in model.named_modules():
        own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        tensors = {k: (id(t), t.clone()) for k, t in own}
        rows.append((name, id(m), m.training, len(m._forward_hooks), len(m._forward_pre_hooks), tensors))
    return rows


def assert_same_snapshot(a, b):
    assert [row[:5] for row in a] == [row[:5] for row in b]
    for (*_, pa), (*_, pb) in zip(a, b):
        assert pa.keys() == pb.keys() and all(pa[k][0] == pb[k][0] and torch.equal(pa[k][1], pb[k][1]) for k in pa)


def test_resnet18_gets_one_relu_per_call_and_the_same_outputs():
    model, x = resnet18(), images()
    unshared = unshare_modules(model)
    assert torch.equal(unshared(x), model(x))
    assert calls_per_module(model, x)["layer1.0.relu"] == 2  # the reuse torchvision's BasicBlock makes
    assert set(calls_per_module(unshared, x).values()) == {1}
    assert {"layer1.0.relu", "layer1.0.relu_1", "layer4.1.relu_1"} <= dict(unshared.named_modules()).keys()
    assert "layer1.0.relu_2" not in dict(unshared.named_modules())
    # the same weights, as a copy of their own (no duplicate for the new ReLUs: they have none)
    pairs = list(zip(unshared.parameters(), model.parameters(), strict=True))
    assert all(torch.equal(a, b) and a is not b for a, b in pairs)


@pytest.mark.parametrize("train", [True, False])
def test_every_module_keeps_its_train_or_eval_mode(train):
    model = resnet18().train(train)
    model.layer2.eval()  # mixed modes survive as they are
    unshared = unshare_modules(model)
    modes = {name: m.training for name, m in unshared.named_modules()}
    assert {name: m.training for name, m in model.named_modules()}.items() <= modes.items()
    assert modes["layer1.0.relu_1"] == train and modes["layer2.0.relu_1"] is False


def test_deeplift_sums_to_the_output_difference_only_after_unsharing():
    model, x = resnet18(), images()
    with pytest.raises(RuntimeError, match="used more than once"):  # Captum refuses torchvision's ResNet
        DeepLift(model).attribute(x, baselines=0.0, target=3)
    unshared = unshare_modules(model)
    attributions, delta = DeepLift(unshared).attribute(x, baselines=0.0, target=3, return_convergence_delta=True)
    with torch.no_grad():
        difference = unshared(x)[:, 3] - unshared(torch.zeros_like(x))[:, 3]
    assert attributions.shape == x.shape and torch.isfinite(attributions).all()
    assert (difference.abs() > 1e-3).all()
    assert (delta.abs() <= 1e-10 * difference.abs()).all()  # summation-to-delta holds to rounding


def test_the_model_is_left_as_it_was_hooks_and_all():
    model, x = resnet18().train(), images()
    seen = []
    model.layer1[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    before = snapshot(model)
    unshared = unshare_modules(model)
    assert_same_snapshot(snapshot(model), before)
    unshared.eval()  # the copy's modes are its own
    assert all(m.training for m in model.modules())
    seen.clear()
    model.eval()
    with torch.no_grad():
        assert torch.equal(unshared(x), model(x))
    assert len(seen) == 2  # the hook on the rewritten block runs in the copy too


def test_a_model_without_reuse_is_returned_as_it_is():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2), nn.ReLU())
    assert unshare_modules(model) is model
    leaf = nn.Conv2d(3, 4, 3)
    assert unshare_modules(leaf) is leaf
    linear = nn.Linear(4, 4)
    tied = nn.Sequential(linear, linear)  # only a module with weights runs twice: nothing to copy
    assert unshare_modules(tied) is tied


def test_one_relu_registered_twice_in_a_sequential_gets_a_copy():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    unshared = unshare_modules(model)
    assert torch.equal(unshared(x), model(x))
    assert set(calls_per_module(unshared, x).values()) == {1}


class TiedLayerTwice(nn.Module):
    """A layer with weights applied twice (weight tying), with one activation module after each use."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 4)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.layer(self.act(self.layer(x))))


def test_a_module_with_weights_called_twice_stays_shared():
    model = TiedLayerTwice().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    unshared = unshare_modules(model)
    assert torch.equal(unshared(x), model(x))
    calls = calls_per_module(unshared, x)
    assert calls["layer"] == 2 and calls["act"] == calls["act_1"] == 1  # only the stateless module is copied
    assert "layer_1" not in dict(unshared.named_modules())
    attributions, delta = DeepLift(unshared).attribute(x, baselines=0.0, target=1, return_convergence_delta=True)
    assert delta.abs().max() < 1e-10


class DataDependentBranch(nn.Module):
    """A forward torch.fx cannot trace: whether the ReLU runs a second time depends on the input's values."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.linear(x))
        if x.sum() > 0:
            x = self.relu(x - 1)
        return x


def test_an_untraceable_forward_that_calls_a_stateless_module_is_a_clear_value_error():
    with pytest.raises(ValueError, match="^DataDependentBranch: DeepLift needs each module called once") as info:
        unshare_modules(DataDependentBranch())
    assert "relu" in str(info.value) and isinstance(info.value.__cause__, torch.fx.proxy.TraceError)
    with pytest.raises(ValueError, match=r"^Sequential: .*DataDependentBranch at '1'"):  # named where it sits
        unshare_modules(nn.Sequential(nn.Identity(), DataDependentBranch()))


class RowsSeen(nn.Module):
    """A wrapper torch.fx cannot trace (``len`` of the input) around a network with weights."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


def test_an_untraceable_wrapper_around_a_network_is_kept_and_the_network_unshared():
    model, x = RowsSeen(resnet18()), images()
    unshared = unshare_modules(model)
    assert type(unshared) is RowsSeen and unshared is not model and unshared.model.layer1 is not model.model.layer1
    assert torch.equal(unshared(x), model(x))
    assert set(calls_per_module(unshared, x).values()) == {1}
    assert unshared.rows == 2 + 2 and model.rows == 2  # the copy counts apart (calls_per_module forwards it too)


def test_the_benchmark_deeplift_method_runs_on_a_torchvision_resnet_and_counts_its_passes():
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    counter = PassCounter(Normalized(network, IMAGENET_MEAN, IMAGENET_STD))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 4, 2])
    ctx = MethodContext(x_reference=torch.rand(4, 3, 32, 32))
    explain = method_specs(32, quick=True)["deeplift"].build(counter, ctx)
    attributions = explain(x, target)
    assert attributions.shape == x.shape and torch.isfinite(attributions).all() and attributions.abs().sum() > 0
    # DeepLift forwards inputs and baselines in one batch and back-propagates it: the given counter sees those rows
    assert (counter.forward_rows, counter.backward_rows) == (2 * len(x), 2 * len(x))
    explain(x, target)
    assert (counter.forward_rows, counter.backward_rows) == (4 * len(x), 4 * len(x))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in counter.modules())  # Captum's removed
