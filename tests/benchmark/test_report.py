"""The table, the claims check and the JSON / markdown / figure writers."""

import json
import math

import torch

from captum_paths.benchmark.engine import protocols_for
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
    claims = {c["claim"]: c for c in check_claims(_results(), min_images=3, alpha=1.0)}
    dele = claims["SAMP paper (Table 1): SAMP++ beats IG on deletion (SAMP protocol)"]
    assert dele["reproduced"] and dele["images_a_better"] == 2 and dele["images_b_better"] == 1
    ins = claims["SAMP paper (Table 1): SAMP++ beats IG on insertion (SAMP protocol)"]
    assert ins["reproduced"] and ins["images_a_better"] == 2 and ins["images_b_better"] == 0
    # LPI was not run: its claims say so rather than guess
    lpi = [c for c in claims.values() if c["a"] == "lpi"]
    assert lpi and all(not c["measured"] and "lpi" in c["verdict"] and "not run" in c["verdict"] for c in lpi)
    text = format_claims(list(claims.values()))
    assert "**reproduced**" in text and "2/3" in text


def test_claim_not_reproduced_is_reported():
    r = _results()
    r["methods"]["ig"]["per_image"]["samp_deletion"] = [0.0, 0.0, 0.0]
    c = [c for c in check_claims(r, min_images=3) if c["metric"] == "samp_deletion"][0]
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
    assert "| SAMP++ |" in md and "Claims of the seed papers" in md
    assert json.loads(paths["json"].read_text())["config"]["n_images"] == 3
    for key in ("attributions", "curves"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------ the claims' rules


def _paired_results(n, better, noise=0.01, seed=0):
    """Every method every claim needs, ``n`` images; each claim's first method is better by ``better``
    (negative: worse) on every claimed metric, plus noise."""
    from captum_paths.benchmark.report import CLAIMS

    gen = torch.Generator().manual_seed(seed)
    methods = {}
    for _, a, b, key, direction in CLAIMS:
        for name, shift in ((a, better), (b, 0.0)):
            values = (0.5 + noise * torch.randn(n, generator=gen, dtype=torch.float64)).tolist()
            sign = 1.0 if direction == "higher" else -1.0
            m = methods.setdefault(name, _method(name.upper(), {}))
            m["per_image"][key] = [v + sign * shift for v in values]
    for m in methods.values():
        m["summary"] = {k: {"mean": sum(v) / n, "std": 0.0, "n": n} for k, v in m["per_image"].items()}
    r = _results()
    r["methods"] = methods
    r["config"]["n_images"] = n
    return r


def test_every_claim_reproduced_when_clearly_better_on_enough_images():
    from captum_paths.benchmark.report import CLAIMS

    claims = check_claims(_paired_results(40, better=0.1))
    assert len(claims) == len(CLAIMS)
    assert all(c["measured"] and c["decided"] and c["reproduced"] for c in claims), [
        c["claim"] for c in claims if not c["reproduced"]
    ]
    texts = " ".join(c["claim"] for c in claims)
    for phrase in ("Blur IG", "Guided IG", "AGI", "SIC", "AIC", "Spearman", "weighted Jaccard", "SSIM", "reverse MSE"):
        assert phrase in texts, phrase
    assert "pointing game above IG" in texts and "pointing game above Random" in texts
    # GGIG is judged on its own paper's metrics only
    assert not any(c["a"] == "ggig" and c["metric"] in ("samp_deletion", "samp_insertion", "diffid") for c in claims)


def test_direction_a_worse_is_the_opposite_and_lower_is_better_respected():
    claims = check_claims(_paired_results(40, better=-0.1))
    assert all(c["decided"] and not c["reproduced"] for c in claims)
    assert all(c["verdict"] == "NOT reproduced: the opposite holds" for c in claims)
    dele = next(c for c in claims if c["metric"] == "samp_deletion" and c["b"] == "ig")
    assert dele["better"] == "lower" and dele["mean_a"] > dele["mean_b"]  # worse = higher deletion


def test_too_few_images_never_reproduced_however_clear():
    claims = check_claims(_paired_results(6, better=0.5))
    assert all(not c["reproduced"] and not c["decided"] for c in claims)
    assert "not enough images to decide (n = 6" in format_claims(claims)
    # exactly the threshold decides
    assert all(c["reproduced"] for c in check_claims(_paired_results(30, better=0.5)))
    assert not any(c["reproduced"] for c in check_claims(_paired_results(29, better=0.5)))


def test_no_significant_difference_is_not_reproduced():
    # a tiny mean advantage drowned in noise: better on the mean for some claims, never significant
    claims = check_claims(_paired_results(40, better=0.0001, noise=0.2))
    undecided = [c for c in claims if c["wilcoxon_p"] >= 0.05]
    assert undecided and all(not c["reproduced"] and "no significant difference" in c["verdict"] for c in undecided)


def test_quick_style_p_006_on_6_images_is_not_reproduced():
    r = _paired_results(6, better=0.0)
    # SAMP++ better on 5 of 6 images: Wilcoxon p = 0.06 on 6 images; never "reproduced"
    r["methods"]["samp++"]["per_image"]["samp_insertion"] = [0.9, 0.8, 0.85, 0.7, 0.95, 0.1]
    r["methods"]["ig"]["per_image"]["samp_insertion"] = [0.5, 0.5, 0.5, 0.5, 0.5, 0.2]
    c = next(c for c in check_claims(r) if c["metric"] == "samp_insertion" and c["b"] == "ig")
    assert c["a_better_on_mean"] and not c["reproduced"] and c["verdict"].startswith("not enough images")


def test_images_without_a_value_are_left_out_of_the_pairs():
    r = _paired_results(40, better=0.1)
    r["methods"]["ggig"]["per_image"]["sic"][:15] = [float("nan")] * 15  # PAIR's rules skipped these
    c = next(c for c in check_claims(r) if c["metric"] == "sic")
    assert c["n"] == 25 and not c["decided"] and "n = 25" in c["verdict"]


def test_claim_of_an_uncomputed_metric_names_the_metrics_flag():
    r = _paired_results(40, better=0.1)
    for m in r["methods"].values():
        m["per_image"].pop("sic", None)
        m["per_image"].pop("aic", None)
    c = next(c for c in check_claims(r) if c["metric"] == "aic")
    assert not c["measured"] and "`sic_aic`" in c["verdict"] and "metrics=" in c["verdict"]
    assert "`sic_aic`" in format_claims([c])


def test_markdown_second_table_and_timing_conditions(tmp_path):
    r = _results()
    for m in r["methods"].values():
        m["per_image"].update(sic=[0.3, float("nan"), 0.5], ggig_ssim=[0.1, 0.2, 0.3])
        m["summary"]["sic"] = {"mean": 0.4, "std": 0.1, "n": 2, "n_without_value": 1}
        m["summary"]["ggig_ssim"] = {"mean": 0.2, "std": 0.08, "n": 3}
        m["load_average_1min"] = {"min": 1.5, "mean": 1.75, "max": 2.0}
        m["threads"] = [2]
    r["environment"].update(threads=2, cpu_count=2, load_average=[1.0, 2.0, 3.0])
    r["protocols"].update(protocols_for(28, 784))
    r["protocols"]["samp"]["features_per_step"] = 10
    md = write_results(r, str(tmp_path), figures=False)["markdown"].read_text()
    assert "## Further metrics" in md and "| Method | SIC ↑ | SSIM ↑ |" in md
    assert "0.400 ± 0.100" in md
    assert "2 torch thread(s) on 2 cores, 1-minute load average 1.50-2.00" in md
    assert "load average at the end 1.00 / 2.00 / 3.00" in md
    assert "Costly, computed only when selected by name (`metrics=`): `mu_fidelity`" in md
