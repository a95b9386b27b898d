"""IDGI cost against the bare model passes it needs, and against Captum's IntegratedGradients at the same n_steps.

    python benchmarks/bench_idgi.py [--n-images 32] [--n-steps 50] [--internal-batch-size 256]
                                    [--methods riemann_left riemann_trapezoid] [--repeats 5] [--threads 1]

Model: the SAMP paper's digits CNN (``SampPaperCNN``, default widths, seeded weights, eval mode; a pass's
cost does not depend on training) on scikit-learn's real digits at 28x28, zero baseline, the true labels.

1. Overhead: ``IDGI.attribute`` wall time divided by the floor, the bare passes IDGI needs run on IDGI's own
   points in batches of exactly the same sizes: for every chunk of at most ``internal_batch_size`` gradient
   rows (point-major, ``N`` rows per point), one forward, selection of the target logits and one
   ``torch.autograd.grad`` w.r.t. the points; plus the forward-only pass at the rule's score point (the
   input for the left rule, none for the trapezoid). Goal: at most 1.15.
2. Against Captum: ``IntegratedGradients(model).attribute`` with the same ``n_steps`` and
   ``internal_batch_size`` (``method="riemann_left"``, the same gradient points as IDGI's left rule, and
   Captum's default ``"gausslegendre"``).

Measured unchunked and chunked, wall and process CPU time, ``--repeats`` interleaved rounds with the order
rotated each round; minima and medians printed with the load average (the machine may be shared).
"""

import argparse
import json
import os
import statistics
import time

import torch
from captum.attr import IntegratedGradients

from captum_paths import IDGI
from captum_paths.attr._core.idgi import idgi_rule
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SampPaperCNN


def floor_batches(x, y, n_steps, method, internal_batch_size):
    """IDGI's passes as plain batches: gradient chunks (point-major rows) and the forward-only rows."""
    order, score_point, _ = idgi_rule(method, n_steps)
    alphas = torch.linspace(0, 1, n_steps + 1, dtype=torch.float64)[list(order)].to(x.dtype)
    points = (alphas.reshape(-1, 1, 1, 1, 1) * x.unsqueeze(0)).reshape((-1,) + tuple(x.shape[1:]))
    targets = y.repeat(len(order))
    size = points.shape[0] if internal_batch_size is None else internal_batch_size
    grads = [(points[s : s + size].clone(), targets[s : s + size, None]) for s in range(0, points.shape[0], size)]
    plain = []
    if score_point is not None:
        scored = x * (score_point / n_steps)
        plain = [(scored[s : s + size].clone(), y[s : s + size, None]) for s in range(0, x.shape[0], size)]
    return grads, plain


def run_floor(model, batches):
    grads, plain = batches
    with torch.no_grad():
        for x, target in plain:
            model(x).gather(1, target)
    for x, target in grads:
        x.requires_grad_()
        torch.autograd.grad(model(x).gather(1, target).sum(), x)


def timed(fn):
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


def measure(args, model, x, y, method, ibs):
    batches = floor_batches(x, y, args.n_steps, method, ibs)
    idgi, ig = IDGI(model), IntegratedGradients(model)
    runs = {
        "floor": lambda: run_floor(model, batches),
        "IDGI": lambda: idgi.attribute(x, target=y, n_steps=args.n_steps, method=method, internal_batch_size=ibs),
        "IG riemann_left": lambda: ig.attribute(
            x, target=y, n_steps=args.n_steps, method="riemann_left", internal_batch_size=ibs
        ),
        "IG gausslegendre": lambda: ig.attribute(x, target=y, n_steps=args.n_steps, internal_batch_size=ibs),
    }
    names = list(runs)
    runs["IDGI"]()  # warm-up (allocator, lazy imports)
    wall = {k: [] for k in names}
    cpu = {k: [] for k in names}
    loads = []
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            w, c = timed(runs[name])
            wall[name].append(w)
            cpu[name].append(c)
        loads.append(os.getloadavg()[0])
    return wall, cpu, loads


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--internal-batch-size", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=["riemann_left", "riemann_trapezoid"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_digits_images(size=28)
    x, y = data.x_test[: args.n_images], data.y_test[: args.n_images]
    model = SampPaperCNN().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    print(
        f"IDGI on SampPaperCNN, {len(x)} digits 28x28, n_steps={args.n_steps}, {torch.get_num_threads()} thread(s), "
        f"{args.repeats} interleaved repeats; load average at start {os.getloadavg()}"
    )
    report = []
    for method in args.methods:
        for ibs in (None, args.internal_batch_size):
            wall, cpu, loads = measure(args, model, x, y, method, ibs)
            floor_w, floor_c = min(wall["floor"]), min(cpu["floor"])
            print(f"\n{method}, internal_batch_size={ibs}, load avg (1 min) {min(loads):.2f}..{max(loads):.2f}")
            for name in wall:
                line = {
                    "method": method,
                    "internal_batch_size": ibs,
                    "run": name,
                    "wall_min_s": min(wall[name]),
                    "wall_median_s": statistics.median(wall[name]),
                    "cpu_min_s": min(cpu[name]),
                    "wall_ratio_to_floor": min(wall[name]) / floor_w,
                    "cpu_ratio_to_floor": min(cpu[name]) / floor_c,
                    "load": [min(loads), max(loads)],
                }
                report.append(line)
                print(
                    f"  {name:17s} wall min {line['wall_min_s']:.3f} s (median {line['wall_median_s']:.3f})  "
                    f"cpu min {line['cpu_min_s']:.3f} s   x floor: wall {line['wall_ratio_to_floor']:.3f}, "
                    f"cpu {line['cpu_ratio_to_floor']:.3f}"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
