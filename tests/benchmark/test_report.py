"""The table, the claims check and the JSON / markdown / figure writers."""

import json
import math

import torch

from captum_paths.benchmark.report import check_claims, format_claims, format_table, to_json, write_results


def _method(label, values, extra=None):
    per_image = {k: list(v) for k, v in values.items()}
    summary = {}
    for k, v in per_image.items():
        t = torch.tensor(v, dtype=torch.float64)
        summary[k] = {"mean": float(t.mean()), "std": float(t.std(unbiased=False)), "n": len(v)}
    return dict(
        {
            "label": label,
            "params": {"n_steps": 50},
            "per_image": per_image,
            "summary": summary,
            "seconds_per_image": 0.5,
            "forward_per_image": 50.0,
            "backward_per_image": 50.0,
            "finite_attributions": True,
            "setup_seconds": 0.0,
        },
        **(extra or {}),
    )


def _results():
    return {
        "methods": {
            "samp++": _method(
                "SAMP++",
                {"samp_deletion": [0.1, 0.2, 0.3], "samp_insertion": [0.9, 0.8, 0.7], "diffid": [0.5, 0.5, 0.5]},
            ),
            "ig": _method(
                "IG", {"samp_deletion": [0.3, 0.4, 0.2], "samp_insertion": [0.5, 0.6, 0.7], "diffid": [0.2, 0.3, 0.4]}
            ),
            "random": _method(
                "Random",
                {"samp_deletion": [0.0, 0.0, 0.0], "samp_insertion": [1.0, 1.0, 1.0], "diffid": [0.0, 0.1, 0.0]},
            ),
        },
        "curves": {},
        "config": {"n_images": 3, "seed": 0, "n_localization": 0},
        "data": {"name": "digits", "source": "test", "split": "test"},
        "model": {"architecture": "X", "test_accuracy": 0.99, "accuracy_on": "test"},
        "protocols": {
            "samp": {"features_per_step": 10},
            "rise": {"features_per_step": 28},
            "pointing_game": {"tolerance": 1},
            "target": "predicted",
        },
        "environment": {"torch": "t", "captum": "c", "device": "cpu"},
        "total_seconds": 1.0,
    }


def test_table_has_mean_std_bold_best_and_ignores_random_floor():
    table = format_table(_results())
    lines = table.splitlines()
    assert lines[0].startswith("| Method | SAMP Del ↓ | SAMP Ins ↑ | DiffID ↑ |")  # only columns with data
    assert len(lines) == 2 + 3
    samp_row = next(line for line in lines if line.startswith("| SAMP++ "))
    # SAMP++ has the lowest deletion (0.2 vs 0.3) and the highest insertion among non-random methods
    assert "**0.200 ± 0.082**" in samp_row and "**0.800 ± 0.082**" in samp_row
    random_row = next(line for line in lines if line.startswith("| Random "))
    assert "**" not in random_row  # the floor never wins, even with "better" numbers
    assert samp_row.rstrip(" |").endswith("0.500 | 50 | 50")


def test_claims_compare_paired_images():
    claims = {c["claim"]: c for c in check_claims(_results())}
    dele = claims["SAMP paper: SAMP++ beats IG on deletion (SAMP protocol)"]
    assert dele["reproduced"] and dele["images_a_better"] == 2 and dele["images_b_better"] == 1
    ins = claims["SAMP paper: SAMP++ beats IG on insertion (SAMP protocol)"]
    assert ins["reproduced"] and ins["images_a_better"] == 2 and ins["images_b_better"] == 0
    # LPI was not run: its claims are absent rather than guessed
    assert not any(c["a"] == "lpi" for c in claims.values())
    text = format_claims(list(claims.values()))
    assert "**reproduced**" in text and "2/3" in text


def test_claim_not_reproduced_is_reported():
    r = _results()
    r["methods"]["ig"]["per_image"]["samp_deletion"] = [0.0, 0.0, 0.0]
    c = [c for c in check_claims(r) if c["metric"] == "samp_deletion"][0]
    assert not c["reproduced"] and "NOT reproduced" in format_claims([c])


def test_json_round_trips_and_drops_private_tensors(tmp_path):
    r = _results()
    r["_images"] = torch.zeros(1, 1, 4, 4)
    r["claims"] = check_claims(r)
    data = json.loads(to_json(r))
    assert "_images" not in data and data["methods"]["ig"]["params"] == {"n_steps": 50}
    assert data["methods"]["samp++"]["per_image"]["diffid"] == [0.5, 0.5, 0.5]
    assert math.isclose(data["methods"]["ig"]["summary"]["samp_insertion"]["mean"], 0.6)


def test_write_results_writes_markdown_json_and_figures(tmp_path):
    r = _results()
    r["_images"] = torch.rand(2, 1, 8, 8)
    r["_targets"] = torch.tensor([1, 2])
    r["_attributions"] = {n: torch.randn(2, 1, 8, 8) for n in r["methods"]}
    frac = [0.0, 0.5, 1.0]
    r["curves"] = {
        n: {
            k: {"fractions": frac, "mean": [1.0, 0.5, 0.2], "std": [0, 0, 0]}
            for k in ("samp_deletion", "samp_insertion")
        }
        for n in r["methods"]
    }
    paths = write_results(r, str(tmp_path / "out"))
    md = paths["markdown"].read_text()
    assert "| SAMP++ |" in md and "Headline claims" in md
    assert json.loads(paths["json"].read_text())["config"]["n_images"] == 3
    for key in ("attributions", "curves"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
