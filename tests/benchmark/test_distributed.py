"""torchrun sharding, resuming and refusing: the same per-image numbers whatever runs them."""

import json
import os
import subprocess
import sys

import pytest

from captum_paths.benchmark import engine
from captum_paths.benchmark.__main__ import main

# --quick, further reduced: 4 digits in chunks of 1, 2 localisation images, a deterministic method
# explained a chunk at a time (samp++) and two random ones explained per image: expected gradients
# (torch's and numpy's global generators) and the random floor (a generator of its own)
ARGS = [
    "--quick",
    "--n-images",
    "4",
    "--n-localization",
    "2",
    "--epochs",
    "1",
    "--batch-size",
    "1",
    "--methods",
    "samp++,eg,random",
    "--no-figures",
    "--no-progress",
]
N_CHUNKS = 3 * (4 + 2)  # methods x (main + localisation chunks)


def _results(out):
    return json.loads((out / "results.json").read_text())


def _assert_same_numbers(a, b):
    assert list(a["methods"]) == list(b["methods"])
    for name in a["methods"]:
        pa, pb = a["methods"][name]["per_image"], b["methods"][name]["per_image"]
        assert set(pa) == set(pb), name
        for key in pa:
            assert pa[key] == pytest.approx(pb[key], rel=1e-9, abs=1e-12, nan_ok=True), (name, key)
        for kind, curve in a["curves"][name].items():
            assert curve["mean"] == pytest.approx(b["curves"][name][kind]["mean"], rel=1e-9, abs=1e-12)
            assert curve["std"] == pytest.approx(b["curves"][name][kind]["std"], rel=1e-6, abs=1e-9)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-rank gloo run under torchrun (fresh model cache), then the single-process run."""
    root = tmp_path_factory.mktemp("dist")
    cache = root / "cache"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "captum_paths.benchmark", *ARGS, "--cache-dir", str(cache), "--out", str(root / "two")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(ARGS + ["--cache-dir", str(cache), "--out", str(root / "one")]) == 0
    return root, proc


def test_two_gloo_ranks_equal_one_process(runs):
    root, proc = runs
    two, one = _results(root / "two"), _results(root / "one")
    assert two["environment"]["world_size"] == 2 and two["environment"]["backend"] == "gloo"
    assert one["environment"]["world_size"] == 1
    assert len(two["environment"]["compute_seconds_per_rank"]) == 2
    _assert_same_numbers(one, two)
    assert two["model"]["test_accuracy"] == one["model"]["test_accuracy"]
    # both ranks did work, each in its own progress file, and every chunk was done once
    lines = [(root / "two" / "progress" / f"rank-{r}.jsonl").read_text().splitlines() for r in (0, 1)]
    assert all(lines) and sum(map(len, lines)) == N_CHUNKS
    # rank 0 trained and cached each model once; the other rank loaded them
    assert two["model"]["trained_now"] and not one["model"]["trained_now"]
    assert len(list((root / "cache").glob("*.pt"))) == 2
    assert proc.stdout.count("training digits28-samp_cnn") == 1

    # the same table (cost columns aside) in both results.md
    def rows(out):
        text = (out / "results.md").read_text()
        return [line.rsplit("|", 4)[0] for line in text.splitlines() if line.startswith("| SAMP++")]

    assert rows(root / "two") == rows(root / "one")


def test_interrupted_run_resumes_to_the_same_results(runs, tmp_path, monkeypatch):
    root, _ = runs
    out = tmp_path / "resumed"
    argv = ARGS + ["--cache-dir", str(root / "cache"), "--out", str(out)]
    real = engine._run_task
    calls = []

    def dies_after_five(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt  # as if the job were killed during the sixth chunk
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_run_task", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    progress = out / "progress" / "rank-0.jsonl"
    assert len(progress.read_text().splitlines()) == 5 and not (out / "results.json").exists()
    with open(progress, "a") as f:  # and killed in the middle of writing a line
        f.write('{"key": "random/main/3", "per_im')
    calls.clear()
    monkeypatch.setattr(engine, "_run_task", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert main(argv) == 0
    assert len(calls) == N_CHUNKS - 5  # only what was not done
    _assert_same_numbers(_results(root / "one"), _results(out))
    # a third run of the same command computes nothing and ends with the same results
    calls.clear()
    assert main(argv) == 0 and not calls
    _assert_same_numbers(_results(root / "one"), _results(out))


def test_a_folder_from_other_settings_is_refused(runs, capsys, tmp_path):
    import shutil

    root, _ = runs
    out = tmp_path / "one"
    shutil.copytree(root / "one", out)  # the other tests compare with the original
    before = (out / "results.json").read_text()
    argv = ARGS + ["--cache-dir", str(root / "cache"), "--out", str(out)]
    n = argv.index("--n-images")
    other = argv[:n] + ["--n-images", "3"] + argv[n + 2 :]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err and "n_images: 4 -> 3" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert (out / "results.json").read_text() == before  # nothing mixed in, nothing rewritten
    # fewer methods is not other settings: the finished ones are reused, nothing is computed
    methods = argv.index("--methods")
    fewer = argv[: methods + 1] + ["random,eg"] + argv[methods + 2 :]
    assert main(fewer) == 0 and "resuming" in capsys.readouterr().out
    again = _results(out)
    assert list(again["methods"]) == ["random", "eg"]
    assert again["methods"]["eg"]["per_image"] == json.loads(before)["methods"]["eg"]["per_image"]


def test_settings_may_differ_in_the_set_of_methods_only(tmp_path):
    from captum_paths.benchmark.progress import ProgressStore, SettingsMismatch

    store = ProgressStore(tmp_path)
    base = {"seed": 0, "methods": {"ig": {"n_steps": 50}, "eg": {"n_samples": 20}}}
    assert store.check_settings(base) is False
    assert store.check_settings({"seed": 0, "methods": {"ig": {"n_steps": 50}, "lpi": {"n": 3}}}) is True
    assert set(json.loads(store.settings_path.read_text())["methods"]) == {"ig", "eg", "lpi"}
    with pytest.raises(SettingsMismatch, match=r"methods\.ig\.n_steps: 50 -> 32"):
        store.check_settings({"seed": 0, "methods": {"ig": {"n_steps": 32}}})
    with pytest.raises(SettingsMismatch, match="seed: 0 -> 1"):
        store.check_settings({"seed": 1, "methods": {"ig": {"n_steps": 50}}})
    assert store.check_settings({"seed": 1, "methods": {}}, overwrite=True) is False


def test_per_image_seeds_depend_on_seed_and_index_only():
    assert engine.image_seed(0, 3) == engine.image_seed(0, 3)
    assert len({engine.image_seed(s, i) for s in range(3) for i in range(50)}) == 150
