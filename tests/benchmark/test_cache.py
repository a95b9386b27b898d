"""The trained-model cache: loaded when nothing changed, retrained when anything it depends on does."""

import torch
import torch.nn as nn

from captum_paths.benchmark.cache import CACHE_ENV, cache_key, default_cache_dir, load_or_train


class Tiny(nn.Module):
    def __init__(self, hidden=3):
        super().__init__()
        self.config = {"hidden": hidden}
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net(x)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(8, 4, generator=g), torch.randint(0, 2, (8,), generator=g)


def _run(tmp_path, model=None, config=None, data=None, calls=None):
    x, y = data if data is not None else _data()
    torch.manual_seed(0)
    model = model if model is not None else Tiny()
    config = config if config is not None else {"epochs": 1, "lr": 0.1}

    def train(m):
        calls.append(1)
        opt = torch.optim.SGD(m.parameters(), lr=config["lr"])
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
        return m

    def evaluate(m):
        return float((m(x).argmax(1) == y).float().mean())

    return load_or_train("tiny", model, train, evaluate, config, (x, y), cache_dir=tmp_path)


def test_second_call_loads_the_same_weights_and_accuracy(tmp_path):
    calls = []
    first = _run(tmp_path, calls=calls)
    second = _run(tmp_path, calls=calls)
    assert first.trained and not second.trained and len(calls) == 1
    assert first.path == second.path and first.path.exists()
    assert second.test_accuracy == first.test_accuracy
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert not second.model.training


def test_changing_architecture_config_or_data_retrains(tmp_path):
    calls = []
    base = _run(tmp_path, calls=calls)
    arch = _run(tmp_path, model=Tiny(hidden=5), calls=calls)
    conf = _run(tmp_path, config={"epochs": 1, "lr": 0.2}, calls=calls)
    data = _run(tmp_path, data=_data(seed=1), calls=calls)
    assert arch.trained and conf.trained and data.trained and len(calls) == 4
    assert len({base.key, arch.key, conf.key, data.key}) == 4
    # and each of them is now cached on its own
    again = _run(tmp_path, model=Tiny(hidden=5), calls=calls)
    assert not again.trained and len(calls) == 4


def test_key_covers_the_module_tree_not_just_the_config():
    x, y = _data()
    a, b = Tiny(), Tiny()
    b.net[1] = nn.Tanh()  # same config dict, different architecture
    assert cache_key(a, {}, (x,)) != cache_key(b, {}, (x,))
    assert cache_key(a, {}, (x,)) == cache_key(Tiny(), {}, (x,))  # weights do not matter, only structure


def test_a_corrupt_entry_is_retrained_and_replaced(tmp_path):
    calls = []
    first = _run(tmp_path, calls=calls)
    first.path.write_bytes(b"not a checkpoint")
    second = _run(tmp_path, calls=calls)
    assert second.trained and len(calls) == 2
    assert not _run(tmp_path, calls=calls).trained


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "captum_paths"
