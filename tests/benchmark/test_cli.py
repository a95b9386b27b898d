"""The command line: one-line errors with exit code 2, and a --quick run end to end."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from captum.attr import IntegratedGradients

from captum_paths.benchmark.__main__ import main
from captum_paths.benchmark.engine import MAY_BE_NAN, metric_columns
from captum_paths.benchmark.methods import (
    ALL_METHOD_NAMES,
    METHOD_NAMES,
    OPTIONAL_METHOD_NAMES,
    PassCounter,
    method_specs,
    unavailable_reason,
)

NEW_METRICS = ("sic_aic", "map_similarity", "mu_fidelity", "road")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "ig,nosuch"], "unknown method(s) 'nosuch'"),
        (["--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["--dataset", "mnist", "--data-root", "/nonexistent/mnist"], "data folder not found"),
        (["--dataset", "imagenet", "--data-root", "/nonexistent/val", "--weights", "w.pt"], "--data-root"),
        (["--n-images", "0"], "--n-images must be a positive integer"),
        (["--n-images", "-3"], "--n-images must be a positive integer"),
        (["--n-images", "many"], "invalid int value"),
        (["--methods", "ig,ig"], "lists a method twice"),
        (["--bogus-flag"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    try:
        code = main(argv + ["--out", str(tmp_path), "--cache-dir", str(tmp_path)])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "captum_paths.benchmark", "--methods", "nosuch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("captum-paths-benchmark: error: unknown method(s) 'nosuch'")


def test_pass_counter_counts_forward_and_backward_rows():
    model = nn.Sequential(nn.Linear(4, 3))
    counter = PassCounter(model)
    IntegratedGradients(counter).attribute(torch.rand(5, 4), target=1, n_steps=7)
    assert counter.forward_rows == 35 and counter.backward_rows == 35
    counter.reset()
    with torch.no_grad():
        counter(torch.rand(2, 4))
    assert counter.forward_rows == 2 and counter.backward_rows == 0


def test_every_method_is_registered_with_its_knobs():
    specs = method_specs(28)
    assert tuple(specs) == ALL_METHOD_NAMES == METHOD_NAMES + OPTIONAL_METHOD_NAMES
    assert OPTIONAL_METHOD_NAMES == ("xrai",) and not set(METHOD_NAMES) & set(OPTIONAL_METHOD_NAMES)
    assert specs["samp"].params["eta"] is None and specs["samp++"].params["eta"] == 0.1
    assert specs["samp++"].params["momentum"] == 0.5 and specs["samp"].params["features_per_step"] == 10
    assert specs["eg"].params["baselines"] == "training images"
    assert method_specs(224)["samp"].params["features_per_step"] == 224 * 16
    assert method_specs(224)["ggig"].params["n_iterations"] == 100
    for spec in specs.values():
        assert unavailable_reason(spec) is None, spec.name  # every method is on main (PAIR is in the extras)


def test_a_method_whose_reference_package_is_missing_is_unavailable_and_says_how_to_get_it(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "saliency" else find_spec(name))
    reason = unavailable_reason(method_specs(28)["xrai"])
    assert "saliency" in reason and "captum_paths[benchmark]" in reason
    assert unavailable_reason(method_specs(28)["ig"]) is None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "--quick",
        "--n-images",
        "2",
        "--n-localization",
        "2",
        "--epochs",
        "1",
        "--no-progress",
        "--no-figures",
        "--cache-dir",
        str(out / "cache"),
        "--out",
        str(out),
    ]
    code = main(argv)
    return code, out


def test_quick_run_end_to_end_every_method_finite_every_metric_a_number(quick_run):
    code, out = quick_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == list(METHOD_NAMES)
    metrics = ("samp_deletion", "samp_insertion", "rise_deletion", "rise_insertion", "diffid", "pointing_game")
    for name, m in results["methods"].items():
        assert m["finite_attributions"], name
        for key in metrics:
            values = m["per_image"][key]
            assert len(values) == 2 and all(math.isfinite(v) for v in values), (name, key)
        assert m["forward_per_image"] >= (0 if name == "random" else 1)
        # the new columns: GGIG's similarities by default, and whichever costly metrics ran; finite means
        new = [c for c in metric_columns(NEW_METRICS) if c in m["per_image"]]
        assert set(metric_columns(["map_similarity"])) <= set(new), name
        for key in new:
            assert all(math.isfinite(v) for v in m["per_image"][key] if key not in MAY_BE_NAN), (name, key)
            assert math.isfinite(m["summary"][key]["mean"]) or key in MAY_BE_NAN, (name, key)
        assert m["threads"] and m["load_average_1min"]["max"] >= 0, name  # the timings' conditions
    # the recorded protocol knobs
    assert results["protocols"]["samp"]["auc"] == "mean" and results["protocols"]["rise"]["score"] == "softmax"
    assert results["model"]["train_config"]["epochs"] == 1
    md = (out / "results.md").read_text()
    assert "| SAMP++ |" in md and "## Further metrics" in md and "W. Jaccard ↑" in md
    assert "not enough images to decide (n = 2" in md and "**reproduced**" not in md
    assert results["environment"]["load_average_1min_per_rank"] and results["environment"]["threads"] >= 1
    # a second run loads both models from the cache instead of training them
    code = main(
        [
            "--quick",
            "--methods",
            "saliency",
            "--n-images",
            "2",
            "--n-localization",
            "2",
            "--epochs",
            "1",
            "--no-progress",
            "--no-figures",
            "--cache-dir",
            str(out / "cache"),
            "--out",
            str(out / "again"),
        ]
    )
    again = json.loads((out / "again" / "results.json").read_text())
    assert code == 0 and not again["model"]["trained_now"] and not again["model"]["localization_model"]["trained_now"]
    assert again["model"]["test_accuracy"] == results["model"]["test_accuracy"]


def test_random_methods_are_reproducible_under_the_seed():
    from captum_paths.benchmark.methods import MethodContext

    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(3, 1, 4, 4)
    target = torch.tensor([0, 1, 2])
    specs = method_specs(4, quick=True)
    ctx = MethodContext(x_reference=torch.rand(10, 1, 4, 4), seed=7)
    for name in ("eg", "agi", "random"):  # (SmoothGrad of this linear model is |w|, noise or not)
        first = specs[name].build(model, ctx)(x, target)
        import numpy as np

        np.random.rand(5)  # other code touching the global RNGs between runs changes nothing
        torch.rand(5)
        second = specs[name].build(model, ctx)(x, target)
        assert torch.equal(first, second), name
        other = specs[name].build(model, MethodContext(x_reference=ctx.x_reference, seed=8))(x, target)
        assert not torch.equal(first, other), name
