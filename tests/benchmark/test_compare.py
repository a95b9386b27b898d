"""compare() on a user's model and data; the ImageNet-sized path (224x224) with every method and metric."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from captum_paths.benchmark import METHOD_NAMES, METRICS, compare
from captum_paths.benchmark.__main__ import main
from captum_paths.benchmark.engine import EXPENSIVE_METRICS, MAY_BE_NAN, metric_columns


class RowBound(nn.Module):
    """Records the largest batch the model is asked to forward (the memory bound of a run)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.max_rows = 0

    def forward(self, x):
        self.max_rows = max(self.max_rows, len(x))
        return self.model(x)


@pytest.fixture(scope="module")
def small(digits, digits_cnn):
    return digits_cnn, digits.x_test[:5], digits.y_test[:5], digits.x_train[:200]


def test_tensors_dataset_and_dataloader_give_the_same_table(small, tmp_path):
    model, x, y, ref = small
    kw = dict(methods=["ig", "lpi", "random"], reference=ref, quick=True, batch_size=2, threads=1)
    a = compare(model, (x, y), out=str(tmp_path), **kw)
    b = compare(model, TensorDataset(x, y), **kw)
    c = compare(model, DataLoader(TensorDataset(x, y), batch_size=4, shuffle=True), **kw)
    for other in (b, c):
        for name in kw["methods"]:
            mine, theirs = a.results["methods"][name]["per_image"], other.results["methods"][name]["per_image"]
            assert set(mine) == set(theirs)
            for key in mine:  # SIC / AIC are NaN for the images PAIR's rules skip: NaN == NaN here
                assert mine[key] == pytest.approx(theirs[key], rel=0, abs=0, nan_ok=True), (name, key)
    assert str(a) == a.table and a._repr_markdown_().startswith("| Method |") and "| LPI |" in a.table
    assert set(a.paths) == {"markdown", "json", "attributions", "curves"}
    saved = json.loads(Path(a.paths["json"]).read_text())
    assert saved["config"]["n_images"] == 5 and saved["model"]["test_accuracy"] == a.results["model"]["test_accuracy"]
    assert "pointing_game" not in saved["methods"]["ig"]["per_image"]  # no regions given
    assert not model.training


def test_a_chunk_size_changes_nothing_for_the_random_methods(small):
    model, x, y, ref = small
    kw = dict(methods=["lpi", "eg", "random"], metrics=["diffid"], reference=ref, quick=True, threads=1)
    one = compare(model, x, batch_size=1, **kw)
    three = compare(model, x, batch_size=3, **kw)
    for name in kw["methods"]:
        v1 = one.results["methods"][name]["per_image"]["diffid"]
        v3 = three.results["methods"][name]["per_image"]["diffid"]
        assert v1 == pytest.approx(v3, rel=1e-5, abs=1e-6), name


def test_new_metrics_finite_and_per_image_whatever_the_chunking(small):
    """SIC / AIC, mu-fidelity, ROAD and GGIG's similarities draw per image from (seed, image index): the
    same values whatever the chunk size (hence whatever the number of ranks); a different seed moves them."""
    model, x, y, ref = small
    metrics = ["sic_aic", "map_similarity", "mu_fidelity", "road"]
    kw = dict(methods=["eg", "random"], metrics=metrics, reference=ref, quick=True, threads=1, figures=False)
    one = compare(model, x, batch_size=1, **kw).results
    three = compare(model, x, batch_size=3, **kw).results
    for name in kw["methods"]:
        per_one, per_three = one["methods"][name]["per_image"], three["methods"][name]["per_image"]
        assert set(per_one) == set(metric_columns(metrics))
        for key, values in per_one.items():
            assert len(values) == 5 and values == pytest.approx(per_three[key], rel=1e-5, abs=1e-6, nan_ok=True), key
            assert math.isfinite(one["methods"][name]["summary"][key]["mean"]), (name, key)
        assert all(math.isfinite(v) for k, v in per_one.items() if k not in MAY_BE_NAN for v in v)
        assert set(one["methods"][name]["metric_seconds_per_image"]) == set(metrics)
    other = compare(model, x, batch_size=3, seed=1, **kw).results["methods"]["random"]["per_image"]
    assert other["mu_fidelity"] != one["methods"]["random"]["per_image"]["mu_fidelity"]
    # the quick knobs are the recorded ones
    assert one["protocols"]["road"]["quick"]["percentages"] == [0.1, 0.5, 0.9]


def test_pointing_game_with_regions_and_clear_errors(small):
    model, x, y, ref = small
    regions = torch.zeros(len(x), 16, 16, dtype=torch.bool)
    regions[:, 4:8, 4:8] = True
    r = compare(model, x, methods=["saliency"], metrics=["pointing_game"], regions=regions)
    assert set(r.results["methods"]["saliency"]["per_image"]) == {"pointing_game"}
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        compare(lambda t: t, x)
    with pytest.raises(TypeError, match="`data` must be"):
        compare(model, "images/")
    with pytest.raises(ValueError, match="`methods` must list"):
        compare(model, x, methods=["nosuch"])
    with pytest.raises(ValueError, match="needs `regions`"):
        compare(model, x, methods=["saliency"], metrics=["pointing_game"])
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1"):
        compare(model, x, batch_size=0)
    with pytest.raises(ValueError, match=r"`protocols\['rise'\]` may set"):
        compare(model, x, methods=["saliency"], protocols={"rise": {"blur": 3}})


def test_imagenet_sized_path_every_method_every_metric_memory_bounded(tmp_path):
    """224x224 images, the ImageNet settings (SAMP 224*16 px per step, GGIG's and the metrics' 224
    knobs, blur 31/5), every method and metric, on a cheap stand-in model; forwards stay bounded."""
    from user_models import build_tiny224

    model = RowBound(build_tiny224())
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    regions = torch.zeros(1, 224, 224, dtype=torch.bool)
    regions[:, 100:140, 100:140] = True
    ref = torch.rand(16, 3, 224, 224)
    # SIC / AIC at 224 x 224 cost about 2 s per method even at --quick: every method runs the other metrics,
    # IG all of the costly ones below
    cheap = [m for m in METRICS if m != "sic_aic"]
    r = compare(model, x, metrics=cheap, regions=regions, reference=ref, quick=True, threads=1)
    res = r.results
    assert list(res["methods"]) == list(METHOD_NAMES)
    assert (
        res["protocols"]["samp"]["features_per_step"] == 224 * 8
        and res["protocols"]["rise"]["features_per_step"] == 224
    )
    assert tuple(res["protocols"]["blur"]) == (31, 5.0)
    assert res["methods"]["samp"]["params"]["features_per_step"] == 224 * 16
    assert res["config"]["batch_size"] == 1 and res["config"]["max_rows"] == 16
    for name, m in res["methods"].items():
        assert m["finite_attributions"], name
        assert set(m["per_image"]) == set(metric_columns(cheap)), name
        assert all(torch.isfinite(torch.tensor(v)).all() for k, v in m["per_image"].items() if k not in MAY_BE_NAN), (
            name
        )
    assert len(res["curves"]["ig"]["rise_deletion"]["mean"]) == 224 + 1
    # the costly metrics at 224 x 224 too, bounded the same way
    costly_names = list(EXPENSIVE_METRICS) + ["sic_aic"]
    costly = compare(model, x, methods=["ig"], metrics=costly_names, quick=True, threads=1, figures=False)
    per_image = costly.results["methods"]["ig"]["per_image"]
    assert set(per_image) == set(metric_columns(costly_names))
    assert all(math.isfinite(v[0]) for k, v in per_image.items() if k not in MAY_BE_NAN)
    # one image per chunk and at most max_rows perturbed images per metric forward: no forward grows
    # with the number of images or of steps; the widest are a method's own fixed sample batch (LIME's
    # 50 perturbations), LPI's bank fit over the 16 reference images and AblationPath's 16 path points
    assert model.max_rows <= 64


def test_cli_image_folder_with_a_user_model(tmp_path):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(2):
            pixels = (torch.rand(240, 260, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(tmp_path / "data" / cls / f"{i}.png")
    argv = ["--dataset", "folder", "--data-root", str(tmp_path / "data"), "--model", "user_models:build_tiny224"]
    argv += ["--methods", "saliency,random", "--n-images", "2", "--n-localization", "0", "--no-progress"]
    argv += ["--metrics", "rise_deletion,rise_insertion,diffid"]  # the data path is tested, not the metrics
    argv += ["--no-figures", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert res["config"]["n_images"] == 2 and res["data"]["name"] == "folder"
    assert res["model"]["architecture"] == "user model user_models:build_tiny224"
    assert len(res["methods"]["saliency"]["per_image"]["diffid"]) == 2
    assert res["protocols"]["rise"]["features_per_step"] == 224


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "user_models:build_not_a_model"], "must return a torch.nn.Module"),
        (["--model", "nosuchmodule_xyz:build"], "cannot import"),
        (["--model", "no-colon"], "--model must be 'module:function'"),
    ],
)
def test_cli_bad_model_is_one_line(extra, message, tmp_path, capsys):
    argv = ["--dataset", "folder", "--data-root", str(tmp_path), "--methods", "saliency", "--out", str(tmp_path)]
    (tmp_path / "a").mkdir()
    from PIL import Image

    for i in range(2):
        Image.new("RGB", (32, 32)).save(tmp_path / "a" / f"{i}.png")
    code = main(argv + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_resnet50_random_weights_224_every_method_every_metric(tmp_path):
    """torchvision ResNet-50 (weights=None: nothing downloads) on one synthetic 224x224 image: every
    method at the --quick budgets, every metric at coarse steps (the costly part: a ResNet-50 pass
    costs about 0.1 s forward, 0.5 s forward+backward on one CPU thread)."""
    import torchvision

    from captum_paths.benchmark.models import IMAGENET_MEAN, IMAGENET_STD, Normalized

    torch.manual_seed(0)
    model = RowBound(Normalized(torchvision.models.resnet50(weights=None), IMAGENET_MEAN, IMAGENET_STD).eval())
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    regions = torch.zeros(1, 224, 224, dtype=torch.bool)
    regions[:, 80:150, 80:150] = True
    coarse = {
        "samp": {"features_per_step": 224 * 56},
        "rise": {"features_per_step": 224 * 56},
        "diffid": {"ratios": [0.3, 0.6, 0.9]},
    }
    methods = list(METHOD_NAMES)
    r = compare(
        model,
        x,
        methods=methods,
        metrics=list(METRICS),
        regions=regions,
        reference=torch.rand(12, 3, 224, 224),
        quick=True,
        protocols=coarse,
        threads=1,
        out=str(tmp_path),
    )
    assert list(r.results["methods"]) == methods
    for name, m in r.results["methods"].items():
        assert m["finite_attributions"], name
        assert set(m["per_image"]) == set(metric_columns(METRICS)), name
        assert all(torch.isfinite(torch.tensor(v)).all() for k, v in m["per_image"].items() if k not in MAY_BE_NAN), (
            name
        )
    assert model.max_rows <= 64  # as in the cheap-model test: no forward grows with images or steps
    assert (tmp_path / "attributions.png").exists()
