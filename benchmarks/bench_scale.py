"""Cost at real sizes: every method and the metrics on torchvision's resnet18 (random weights) at 3x224x224 and
3x64x64: model passes per image, seconds per image and peak resident memory, with the defaults and with each
paper's settings.

Run:  .venv/bin/python benchmarks/bench_scale.py [--sizes 224 64] [--batch 2] [--only samp,lpi,...]
                                                 [--settings default,paper] [--max-passes 2000]

Each measurement runs in a fresh subprocess (one torch thread), so the peak RSS is that measurement's own
(the process's high-water mark, model and inputs included; the bare model's is printed first as the floor).
Passes are counted by a forward hook on the model (rows = images through it, gradient and score passes alike).
A setting whose estimated passes per image exceed ``--max-passes`` is run with fewer iterations and its
seconds per image extrapolated from the measured seconds per pass; the table marks it "extrapolated".
Weights are random (nothing downloads here): the cost of a method does not depend on them, except where a
method stops early (AGI's early stop, SAMP's finished paths).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

# name -> {setting -> (kwargs, per-image passes formula used to decide on extrapolation, reduced kwargs)}
SETTINGS = {
    "samp": {"default": {}, "paper": {"features_per_step": 224 * 16, "blur": (31, 5.0)}},
    "lpi": {"default": {}, "paper": {"n_samples": 20, "n_alphas": 1}},
    "ggig": {"default": {}, "paper": {"n_steps": 50, "n_iterations": 100, "learning_rate": 1e-4}},
    "ablation_path": {"default": {}, "paper": {"n_iterations": 30}},
    "guided_ig": {"default": {}, "paper": {"n_steps": 25, "fraction": 0.5, "max_dist": 1.0}},
    "blur_ig": {"default": {}, "paper": {"n_steps": 100, "max_sigma": 50.0}},
    "idgi": {"default": {}, "paper": {"n_steps": 50}},
    "agi": {"default": {}, "paper": {"n_iterations": 20, "n_false_classes": 1, "false_classes": "random"}},
    "insertion_deletion": {"default": {}, "paper": {"features_per_step": 224, "score": "softmax", "auc": "trapezoid"}},
    "diffid": {"default": {}},
    "road": {"default": {}},
    "mu_fidelity": {"default": {}},
}
REDUCIBLE = {"ggig": "n_iterations", "ablation_path": "n_iterations", "agi": "n_iterations"}


def build_model():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(weights=None).eval()


def inputs_for(size: int, batch: int):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, size, size, generator=gen)


def run_method(name, kwargs, model, x, target):
    import captum_paths as cp

    if name == "samp":
        blur = kwargs.pop("blur", None)
        if blur is not None:
            kwargs["insertion_start"] = cp.Blur(*blur)
        return cp.SampAttribution(model).attribute(x, target=target, **kwargs)
    if name == "lpi":
        refs = torch.rand(8, *x.shape[1:], generator=torch.Generator().manual_seed(2))
        return cp.LocalPathIntegration(model).attribute(x, refs, target, generator=0, **kwargs)
    if name == "ggig":
        return cp.GeometricallyGuidedIG(model).attribute(x, target=target, **kwargs)
    if name == "ablation_path":
        return cp.AblationPath(model).attribute(x, target=target, **kwargs)
    classes = {"guided_ig": "GuidedIG", "blur_ig": "BlurIG", "idgi": "IDGI", "agi": "AdversarialGradientIntegration"}
    return getattr(cp, classes[name])(model).attribute(x, target=target, **kwargs)


def run_metric(name, kwargs, model, x, target):
    from captum_paths import metrics

    attributions = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    if name == "insertion_deletion":
        metrics.insertion(model, x, attributions, target=target, **kwargs)
        return metrics.deletion(model, x, attributions, target=target, **kwargs)
    if name == "diffid":
        return metrics.diffid(model, x, attributions, target=target, **kwargs)
    if name == "road":
        return metrics.road(model, x, attributions, target=target, generator=0, **kwargs)
    return metrics.mu_fidelity(model, x, attributions, target=target, generator=0, **kwargs)


def measure(args) -> dict:
    """One measurement in this process: passes, seconds and peak RSS (MiB)."""
    torch.set_num_threads(1)
    model = build_model()
    x = inputs_for(args.size, args.batch)
    with torch.no_grad():
        target = model(x).argmax(1)
    rows = []
    model.register_forward_hook(lambda m, a, out: rows.append(out.shape[0]))
    kwargs = json.loads(args.kwargs)
    started = time.perf_counter()
    if args.name != "bare":
        runner = run_metric if args.name in ("insertion_deletion", "diffid", "road", "mu_fidelity") else run_method
        runner(args.name, kwargs, model, x, target)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"passes": sum(rows), "seconds": seconds, "peak_mib": peak}


def subprocess_measure(name, size, batch, kwargs) -> dict:
    command = [sys.executable, __file__, "--one", name, "--size", str(size), "--batch", str(batch)]
    command += ["--kwargs", json.dumps(kwargs)]
    out = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_row(name, setting, kwargs, size, batch, max_passes) -> dict:
    """Measure, first with the setting as is; with fewer iterations (extrapolated) if it is too long."""
    probe = dict(kwargs)
    reduced = None
    if name in REDUCIBLE:
        key = REDUCIBLE[name]
        full = kwargs.get(key, {"ggig": 100, "ablation_path": 30, "agi": 20}[name])
        estimate = {"ggig": 51 * full, "ablation_path": 14 * full + 16, "agi": 20 * full}[name]
        if estimate > max_passes:
            reduced = (key, full, 2)
            probe[key] = 2
    result = subprocess_measure(name, size, batch, probe)
    if "error" in result:
        return {"method": name, "setting": setting, "size": size, **result}
    per_image = result["passes"] / batch
    seconds = result["seconds"] / batch
    note = ""
    if reduced is not None:
        key, full, small = reduced
        scale = full / small
        per_image, seconds = per_image * scale, seconds * scale
        note = f"extrapolated from {key}={small}"
    return dict(
        method=name, setting=setting, size=size, passes=per_image, seconds=seconds, peak=result["peak_mib"], note=note
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated names (default: all)")
    parser.add_argument("--settings", default="default,paper")
    parser.add_argument("--max-passes", type=int, default=2000)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--kwargs", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.name = args.one
        print(json.dumps(measure(args)))
        return
    names = [n for n in SETTINGS if not args.only or n in args.only.split(",")]
    wanted = args.settings.split(",")
    print(f"torch {torch.__version__}, 1 thread per measurement, load average {os.getloadavg()}")
    print("| method | setting | size | passes / image | s / image | peak RSS (MiB) | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    for size in args.sizes:
        bare = subprocess_measure("bare", size, args.batch, {})
        print(f"| (model alone) | - | {size} | 0 | - | {bare.get('peak_mib', float('nan')):.0f} | floor |")
        for name in names:
            for setting, kwargs in SETTINGS[name].items():
                if setting not in wanted:
                    continue
                row = one_row(name, setting, kwargs, size, args.batch, args.max_passes)
                if "error" in row:
                    print(f"| {name} | {setting} | {size} | - | - | - | error: {row['error'][:80]} |")
                    continue
                print(
                    f"| {name} | {setting} | {size} | {row['passes']:.0f} | {row['seconds']:.2f} | "
                    f"{row['peak']:.0f} | {row['note']} |",
                    flush=True,
                )
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
