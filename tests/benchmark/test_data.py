"""The benchmark's data: the fixed digits split, the synthetic localisation set, the loaders' errors."""

import pytest
import torch

from captum_paths.benchmark.data import (
    DataNotFoundError,
    load_cifar10,
    load_digits_images,
    load_image_folder,
    load_mnist,
    make_localization_set,
)


def test_digits_split_is_fixed_by_seed_and_disjoint():
    a = load_digits_images(size=28, seed=0)
    b = load_digits_images(size=28, seed=0)
    c = load_digits_images(size=28, seed=1)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_test, c.x_test)
    assert a.x_train.shape[1:] == (1, 28, 28) and len(a.x_train) + len(a.x_test) == 1797
    assert float(a.x_train.min()) >= 0 and float(a.x_train.max()) <= 1
    # stratified: every class in both parts, in about the same proportion
    assert torch.bincount(a.y_test, minlength=10).min() >= 40
    # no test image is also a training image (the 1,797 digits contain no exact duplicates across the split)
    flat_tr, flat_te = a.x_train.flatten(1), a.x_test.flatten(1)
    assert torch.cdist(flat_te[:50], flat_tr).min() > 0


def test_localization_set_ground_truth_matches_the_class_pattern():
    s = make_localization_set(n_train=40, n_test=20, seed=3)
    again = make_localization_set(n_train=40, n_test=20, seed=3)
    assert torch.equal(s.x_train, again.x_train) and torch.equal(s.regions_test, again.regions_test)
    assert s.x_train.shape == (40, 1, 28, 28) and s.regions_train.shape == (40, 28, 28)
    assert set(s.y_train.tolist()) <= {0, 1, 2, 3}
    # one 5x5 box per image, and the pattern of the image's class is drawn inside it
    from captum_paths.benchmark.data import _CLASS_PATTERNS, _pattern

    for x, y, r in zip(s.x_train, s.y_train, s.regions_train):
        assert int(r.sum()) == 25
        rows, cols = r.nonzero(as_tuple=True)
        box = x[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        pat = torch.from_numpy(_pattern(_CLASS_PATTERNS[int(y)])).bool()
        # strokes are bright (>= 0.6 minus noise), background inside the box is dark
        assert box[pat].min() > box[~pat].max()


def test_localization_set_rejects_bad_sizes():
    with pytest.raises(ValueError, match="size"):
        make_localization_set(size=8)
    with pytest.raises(ValueError, match="n_distractors"):
        make_localization_set(n_distractors=40)


def test_loaders_never_download_and_say_what_is_missing(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataNotFoundError, match="MNIST"):
        load_mnist(missing)
    with pytest.raises(DataNotFoundError, match="CIFAR-10"):
        load_cifar10(missing)
    with pytest.raises(DataNotFoundError, match="image folder"):
        load_image_folder(missing, n_test=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError):
        load_mnist(tmp_path / "empty")  # exists but holds no MNIST: no download attempted
    assert not any((tmp_path / "empty").rglob("*.gz"))


def test_image_folder_loader_reads_a_seeded_draw(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    s = load_image_folder(tmp_path, n_test=4, n_reference=2, seed=0, size=24)
    assert s.x_test.shape == (4, 3, 24, 24) and s.x_train.shape == (2, 3, 24, 24)
    assert s.class_names == ("a", "b")
    again = load_image_folder(tmp_path, n_test=4, n_reference=2, seed=0, size=24)
    assert torch.equal(s.x_test, again.x_test)


def _write_idx(path, array, magic_type=8):
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.tobytes())


def test_mnist_loader_reads_torchvision_layout_offline(tmp_path):
    import numpy as np

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    _write_idx(raw / "train-images-idx3-ubyte", train_x)
    _write_idx(raw / "train-labels-idx1-ubyte", [1, 2, 3, 4, 5])
    _write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    _write_idx(raw / "t10k-labels-idx1-ubyte", [7, 8, 9])
    s = load_mnist(tmp_path)
    assert s.x_train.shape == (5, 1, 28, 28) and s.x_test.shape == (3, 1, 28, 28)
    assert s.y_test.tolist() == [7, 8, 9]
    assert torch.allclose(s.x_train[2, 0], torch.as_tensor(train_x[2] / 255.0, dtype=torch.float32))
