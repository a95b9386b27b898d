"""ReferenceBank: fitted neighbourhoods and densities, references, safe atomic save / validated load."""

import copy
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum_paths import ReferenceBank
from captum_paths.attr._core.reference_bank import _tensor_digest

G, M = 3, 6


def _logits(model, x, batch_size=256):
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


@pytest.fixture(scope="module")
def bank(digits, digits_cnn):
    return ReferenceBank(n_neighborhoods=G, n_references=M, random_state=0).fit(digits_cnn, digits.x_train)


def test_neighbourhoods_and_densities_match_a_direct_scikit_learn_run(bank, digits, digits_cnn):
    from sklearn.cluster import KMeans
    from sklearn.utils import check_random_state

    z = _logits(digits_cnn, digits.x_train)
    seeds = check_random_state(0).randint(np.iinfo(np.int32).max, size=1 + G)
    top = KMeans(n_clusters=G, n_init=3, max_iter=600, random_state=int(seeds[0]))
    labels = top.fit_predict(z)
    np.testing.assert_allclose(bank.centers_.numpy(), top.cluster_centers_, rtol=1e-6, atol=1e-6)
    assert bank.neighborhood_sizes_.tolist() == np.bincount(labels, minlength=G).tolist()
    expected_idx, expected_density = [], []
    for g in range(G):
        members = np.flatnonzero(labels == g)
        sub = KMeans(n_clusters=M, n_init=3, max_iter=600, random_state=int(seeds[1 + g]))
        sub_labels = sub.fit_predict(z[members])
        for s in range(M):
            in_sub = members[sub_labels == s]
            dist = np.linalg.norm(z[in_sub].astype(np.float64) - sub.cluster_centers_[s], axis=1)
            expected_idx.append(int(in_sub[dist.argmin()]))
            expected_density.append(len(in_sub) / len(members))
    assert bank.reference_indices_.tolist() == expected_idx
    np.testing.assert_allclose(bank.densities_.numpy(), expected_density, rtol=0, atol=1e-15)
    assert bank.offsets_.tolist() == [0, M, 2 * M, 3 * M]
    # the neighbourhood of a point is its nearest centre, as scikit-learn predicts it
    zt = _logits(digits_cnn, digits.x_test)
    assert bank.neighborhoods(torch.as_tensor(zt)).tolist() == top.predict(zt).tolist()


def test_densities_sum_to_one_and_references_are_training_inputs(bank, digits):
    sums = [float(bank.densities_[bank.offsets_[g] : bank.offsets_[g + 1]].sum()) for g in range(G)]
    np.testing.assert_allclose(sums, 1.0, atol=1e-12)
    assert int(bank.neighborhood_sizes_.sum()) == len(digits.x_train)
    assert len(bank.references_) == 1 and bank.input_shapes_ == ((1, 16, 16),)
    # the inputs themselves, bit for bit (not re-quantised copies)
    assert torch.equal(bank.references_[0], digits.x_train[bank.reference_indices_])
    probs, rows = bank.reference_probabilities()
    assert probs.shape == (G, M) and torch.equal(rows, torch.arange(G * M).reshape(G, M))


@pytest.mark.parametrize("kind", ["dataset", "loader"])
def test_dataset_and_sequential_loader_give_the_tensor_bank(bank, digits, digits_cnn, kind):
    ds = TensorDataset(digits.x_train, digits.y_train)
    data = ds if kind == "dataset" else DataLoader(ds, batch_size=100, shuffle=False)
    other = ReferenceBank(n_neighborhoods=G, n_references=M, random_state=0).fit(digits_cnn, data)
    assert torch.equal(other.reference_indices_, bank.reference_indices_)
    assert torch.equal(other.references_[0], bank.references_[0])
    assert torch.equal(other.densities_, bank.densities_)


def test_shuffled_loader_keeps_the_inputs_it_saw(digits, digits_cnn):
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_size=128, shuffle=True)
    b = ReferenceBank(n_neighborhoods=2, n_references=4, random_state=0).fit(digits_cnn, loader)
    flat_train = digits.x_train.reshape(len(digits.x_train), -1)
    for r in b.references_[0].reshape(len(b.densities_), -1):
        assert (flat_train == r).all(1).any()  # every reference is exactly one training input


def test_minibatch_kmeans_option_is_seeded_and_valid(digits, digits_cnn):
    kw = dict(n_neighborhoods=2, n_references=3, random_state=3, clustering="minibatch", minibatch_size=256)
    a = ReferenceBank(**kw).fit(digits_cnn, digits.x_train)
    b = ReferenceBank(**kw).fit(digits_cnn, digits.x_train)
    assert torch.equal(a.reference_indices_, b.reference_indices_) and torch.equal(a.centers_, b.centers_)
    assert torch.equal(a.references_[0], digits.x_train[a.reference_indices_])
    assert int(a.offsets_[-1]) == 6


def test_tuple_data_and_fit_leaves_the_model_alone(digits, digits_cnn):
    extra = torch.linspace(0, 1, len(digits.x_train)).unsqueeze(1).repeat(1, 3)

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = copy.deepcopy(digits_cnn)
            self.lin = torch.nn.Linear(3, 10)

        def forward(self, x, e):
            return self.cnn(x) + self.lin(e)

    model = TwoInputs().train()
    before = [p.detach().clone() for p in model.parameters()]
    b = ReferenceBank(n_neighborhoods=2, n_references=3, random_state=0).fit(model, (digits.x_train, extra))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert b.input_shapes_ == ((1, 16, 16), (3,))
    assert torch.equal(b.references_[1], extra[b.reference_indices_])
    # a DataLoader of (x, e, y) batches with n_inputs=2 gives the same bank
    loader = DataLoader(TensorDataset(digits.x_train, extra, digits.y_train), batch_size=200)
    b2 = ReferenceBank(n_neighborhoods=2, n_references=3, random_state=0).fit(model, loader, n_inputs=2)
    assert torch.equal(b2.reference_indices_, b.reference_indices_)


def test_save_load_round_trip_is_exact_and_atomic(bank, tmp_path):
    path = tmp_path / "bank.pt"
    path.write_bytes(b"old content")
    bank.save(path)
    assert sorted(os.listdir(tmp_path)) == ["bank.pt"]  # no temporary file left behind
    loaded = ReferenceBank.load(path)
    for name in [
        "centers_",
        "densities_",
        "offsets_",
        "reference_indices_",
        "neighborhood_sizes_",
        "reference_logits_",
    ]:
        a, b = getattr(bank, name), getattr(loaded, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert all(torch.equal(a, b) for a, b in zip(bank.references_, loaded.references_))
    assert loaded.input_shapes_ == bank.input_shapes_
    assert (loaded.n_neighborhoods, loaded.n_references) == (G, M)


def test_failed_save_keeps_the_old_file(bank, tmp_path, monkeypatch):
    path = tmp_path / "bank.pt"
    bank.save(path)
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as file:  # a partial write, then the failure
            file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        bank.save(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["bank.pt"]


def _rewrite(state, path, fix_digest=True):
    if fix_digest:
        state["sha256"] = _tensor_digest(state)
    torch.save(state, path)


def test_load_rejects_corrupted_truncated_newer_and_inconsistent_files(bank, tmp_path):
    good = tmp_path / "good.pt"
    bank.save(good)
    raw = good.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable ReferenceBank file"):
        ReferenceBank.load(truncated)

    # flip bytes inside the stored reference images: the file still unpickles, the checksum catches it
    state = bank._state()
    marker = state["references"][0].reshape(-1)[:8].numpy().tobytes()
    pos = raw.find(marker)
    assert pos > 0
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(raw[:pos] + bytes(b ^ 0xFF for b in raw[pos : pos + 8]) + raw[pos + 8 :])
    with pytest.raises(ValueError, match="checksum mismatch|not a readable"):
        ReferenceBank.load(corrupted)

    newer = bank._state()
    newer["version"] = 3
    _rewrite(newer, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="newer ReferenceBank format \\(version 3\\)"):
        ReferenceBank.load(tmp_path / "newer.pt")

    dens = bank._state()
    dens["densities"] = dens["densities"].clone()
    dens["densities"][M + 1] += 0.25
    _rewrite(dens, tmp_path / "dens.pt")
    with pytest.raises(ValueError, match="densities of neighbourhood 1 sum to 1.25"):
        ReferenceBank.load(tmp_path / "dens.pt")

    shapes = bank._state()
    shapes["input_shapes"] = [[1, 8, 8]]
    _rewrite(shapes, tmp_path / "shapes.pt")
    with pytest.raises(ValueError, match=r"`references`\[0\] must have shape \(18, 1, 8, 8\)"):
        ReferenceBank.load(tmp_path / "shapes.pt")

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a ReferenceBank file"):
        ReferenceBank.load(tmp_path / "other.pt")

    torch.save({"format": "captum_paths.ReferenceBank", "payload": np.random.RandomState(0)}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match="not a readable ReferenceBank file"):  # weights_only refuses it
        ReferenceBank.load(tmp_path / "pickle.pt")


class _Augmented(Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.5 * torch.rand_like(self.x[i])  # different on every read


def test_fit_errors(digits, digits_cnn):
    with pytest.raises(ValueError, match="n_neighborhoods"):
        ReferenceBank(n_neighborhoods=0)
    with pytest.raises(ValueError, match="n_references"):
        ReferenceBank(n_references=-2)
    with pytest.raises(ValueError, match="clustering"):
        ReferenceBank(clustering="dbscan")
    with pytest.raises(TypeError, match="random_state"):
        ReferenceBank(random_state="seed")
    with pytest.raises(ValueError, match="fewer than `n_neighborhoods`=5"):
        ReferenceBank(n_neighborhoods=5).fit(digits_cnn, digits.x_train[:3])
    with pytest.raises(TypeError, match="`data` must be"):
        ReferenceBank().fit(digits_cnn, 3.0)
    with pytest.raises(ValueError, match="same inputs on every read"):
        ReferenceBank(n_neighborhoods=2, n_references=2, random_state=0).fit(
            digits_cnn, _Augmented(digits.x_train[:200])
        )
    unfitted = ReferenceBank()
    assert not unfitted.is_fitted
    with pytest.raises(ValueError, match="not fitted"):
        unfitted.save("never-written.pt")
    assert not os.path.exists("never-written.pt")


def test_a_loaded_bank_for_another_input_shape_is_refused_by_name(bank, digits_cnn, tmp_path):
    from captum_paths import LocalPathIntegration

    bank.save(tmp_path / "bank16.pt")
    loaded = ReferenceBank.load(tmp_path / "bank16.pt")
    with pytest.raises(
        ValueError, match=r"shape \(1, 28, 28\) but the reference bank was fitted on inputs of shape \(1, 16, 16\)"
    ):
        LocalPathIntegration(digits_cnn, loaded).attribute(torch.zeros(2, 1, 28, 28), target=0)


def test_the_bank_keeps_the_fitting_models_logits_and_refuses_another(bank, digits, digits_cnn):
    with torch.no_grad():
        logits = digits_cnn(bank.references_[0])
    assert bank.reference_logits_.dtype == torch.float64 and bank.reference_logits_.shape == (G * M, 10)
    torch.testing.assert_close(bank.reference_logits_, logits.double(), rtol=0, atol=0)
    bank.check_model_logits(logits)  # the fitting model: accepted
    bank.check_model_logits(logits.double() + 1e-6)  # float64 / another device: within tolerance
    with pytest.raises(ValueError, match="fitted for another model"):
        bank.check_model_logits(logits * 1.1, "my model")
    with pytest.raises(ValueError, match=r"my model gives \(18, 5\) logits"):
        bank.check_model_logits(logits[:, :5], "my model")


def test_load_refuses_non_finite_references_and_densities(bank, tmp_path):
    refs = bank._state()
    refs["references"] = [refs["references"][0].clone()]
    refs["references"][0][3, 0, 2, 2] = float("nan")
    _rewrite(refs, tmp_path / "refs.pt")
    with pytest.raises(ValueError, match=r"`references`\[0\] contain nan or inf"):
        ReferenceBank.load(tmp_path / "refs.pt")
    dens = bank._state()
    dens["densities"] = dens["densities"].clone()
    dens["densities"][2] = float("inf")
    _rewrite(dens, tmp_path / "dens.pt")
    with pytest.raises(ValueError, match="`densities` must be finite"):
        ReferenceBank.load(tmp_path / "dens.pt")
    logits = bank._state()
    logits["reference_logits"] = logits["reference_logits"][:, :3].clone()
    _rewrite(logits, tmp_path / "logits.pt")
    with pytest.raises(ValueError, match=r"`reference_logits` must be a tensor of shape \(18, 10\)"):
        ReferenceBank.load(tmp_path / "logits.pt")
    missing = bank._state()
    del missing["reference_logits"]  # a version-2 file must carry them
    _rewrite(missing, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="missing field"):
        ReferenceBank.load(tmp_path / "missing.pt")


def test_a_version_1_file_still_loads(bank, tmp_path):
    state = bank._state()
    state["version"] = 1
    del state["reference_logits"]
    _rewrite(state, tmp_path / "v1.pt")
    old = ReferenceBank.load(tmp_path / "v1.pt")
    assert old.reference_logits_ is None and torch.equal(old.centers_, bank.centers_)
    old.check_model_logits(torch.zeros(G * M, 10))  # nothing to compare with: no error
    old.save(tmp_path / "again.pt")  # no logits: written as version 1 again
    assert old._state()["version"] == 1 and ReferenceBank.load(tmp_path / "again.pt").reference_logits_ is None
    assert bank._state()["version"] == 2


def test_load_to_a_device_that_is_not_there_says_so(bank, tmp_path):
    bank.save(tmp_path / "bank.pt")
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU (cuda:0 on a CPU-only machine)
    with pytest.raises(ValueError, match=r"`map_location`='cuda:\d+' names a device that is not available"):
        ReferenceBank.load(tmp_path / "bank.pt", map_location=absent)
    with pytest.raises(ValueError, match="`map_location` must name a torch device"):
        ReferenceBank.load(tmp_path / "bank.pt", map_location="gpu0")
    loaded = ReferenceBank.load(tmp_path / "bank.pt", map_location=torch.device("cpu"))
    assert loaded.references_[0].device.type == "cpu"


@pytest.mark.parametrize("kind", ["tensor", "dataset", "loader"])
def test_a_seeded_fit_leaves_the_global_random_states_alone(digits, digits_cnn, kind):
    data = {
        "tensor": digits.x_train,
        "dataset": TensorDataset(digits.x_train, digits.y_train),
        "loader": DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_size=128, shuffle=True),
    }[kind]
    torch.manual_seed(11)
    np.random.seed(11)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    ReferenceBank(n_neighborhoods=2, n_references=3, random_state=0).fit(digits_cnn, data)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
