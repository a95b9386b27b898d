"""SampAttribution: cost against its floor, batched against one image at a time, and completeness per rule.

    python benchmarks/bench_samp.py [--model small|samp-paper] [--size 16] [--n-images 64] [--repeats 7]
                                    [--threads 1] [--rule left|trapezoid] [--loop]
    python benchmarks/bench_samp.py --completeness [--size 28] [--n-images 64] [--threads 1]

1. Overhead (default): SAMP++ wall time for a batch of ``n`` digits divided by the time of the bare model
   passes it needs (the floor): the same sequence of forward+backward passes with the same batch sizes
   (recorded from the run itself, inputs made before the clock starts), plus its forward-only passes.
   SAMP and the floor alternate ``--repeats`` times; the ratio of the minima and the median of the
   per-repeat ratios are printed with the load average. Goal: at most 1.10.
2. Throughput (``--loop``): the same ``n`` images attributed in one call against a loop of one image per
   call. Goal: at least 8x.
3. Completeness (``--completeness``): the median over the images of ``|delta| / |expected output
   difference|`` (``expected = 2 F(x) - F(0) - F(blur)``, both directions) for the left and trapezoid rules
   at ``eta`` 0.1 and 0.02, with momentum off and at the default 0.5, on the SAMP paper's digits CNN.

The machine may be shared: every figure is printed with the 1-minute load average beside it.
"""

import argparse
import os
import statistics
import time

import torch

from captum_paths import SampAttribution
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SampPaperCNN, SmallDigitsCNN, accuracy, train_classifier


def load_average() -> str:
    return "load %.2f" % os.getloadavg()[0]


class RecordingModel(torch.nn.Module):
    """Wraps a model and records (batch size, grad enabled) of every call."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.model(x)


def floor_time(model, calls, shape, targets_pool):
    """Bare passes: forward (+ backward of the selected target when the call had grad on), on inputs and
    targets made before the clock starts."""
    inputs = [(torch.rand((batch,) + shape), targets_pool[:batch], with_grad) for batch, with_grad in calls]
    started = time.perf_counter()
    for x, target, with_grad in inputs:
        if with_grad:
            x.requires_grad_()
            out = model(x).gather(1, target[:, None]).sum()
            torch.autograd.grad(out, x)
        else:
            with torch.no_grad():
                model(x)
    return time.perf_counter() - started


def trained_model(name, size, seed=0):
    torch.manual_seed(seed)
    data = load_digits_images(size)
    model = SmallDigitsCNN() if name == "small" else SampPaperCNN()
    model = train_classifier(model, data.x_train, data.y_train, epochs=8).eval()
    print(
        f"model: {type(model).__name__} on {size}x{size} digits, "
        f"test accuracy {accuracy(model, data.x_test, data.y_test):.3f}"
    )
    return model, data


def overhead(args):
    model, data = trained_model(args.model, args.size)
    x, y = data.x_test[: args.n_images], data.y_test[: args.n_images]
    recorder = RecordingModel(model)
    samp = SampAttribution(recorder)
    kwargs = dict(target=y, return_convergence_delta=True, rule=args.rule)
    samp.attribute(x, **kwargs)  # warm-up
    samp_times, floor_times = [], []
    for _ in range(args.repeats):
        recorder.calls.clear()
        started = time.perf_counter()
        samp.attribute(x, **kwargs)
        samp_times.append(time.perf_counter() - started)
        calls = list(recorder.calls)
        floor_times.append(floor_time(model, calls, tuple(x.shape[1:]), y.repeat(2)))
    grad_calls = sum(1 for _, g in calls if g)
    rows = sum(b for b, g in calls if g)
    print(
        f"SAMP++ (defaults, rule={args.rule}, both directions) on {len(x)} images, {torch.get_num_threads()} "
        f"torch thread(s): {grad_calls} forward+backward calls, {rows} rows ({rows / len(x):.1f} per image), "
        f"{len(calls) - grad_calls} forward-only call(s)"
    )
    t_samp, t_floor = min(samp_times), min(floor_times)
    ratios = [s / f for s, f in zip(samp_times, floor_times)]
    print(f"SAMP++ wall time (min of {args.repeats}) : {t_samp:.4f} s")
    print(f"bare passes (floor, min)      : {t_floor:.4f} s")
    print(
        f"overhead ratio                : {t_samp / t_floor:.3f} (min/min), median of paired ratios "
        f"{statistics.median(ratios):.3f}  (goal <= 1.10)  [{load_average()}]"
    )
    if args.loop:
        started = time.perf_counter()
        for i in range(len(x)):
            samp.attribute(x[i : i + 1], target=y[i : i + 1], return_convergence_delta=True, rule=args.rule)
        t_loop = time.perf_counter() - started
        print(f"one-at-a-time loop : {t_loop:.3f} s, batched speed-up {t_loop / t_samp:.1f}x  [{load_average()}]")


def completeness(args):
    model, data = trained_model("samp-paper", args.size)
    x, y = data.x_test[: args.n_images], data.y_test[: args.n_images]
    samp = SampAttribution(model)
    print(f"median |delta| / |2F(x) - F(0) - F(blur)| over {len(x)} test digits, both directions, default s")
    for momentum in (None, 0.5):
        for eta in (0.1, 0.02):
            row = []
            for rule in ("left", "trapezoid"):
                started = time.perf_counter()
                attr, delta = samp.attribute(
                    x, target=y, eta=eta, momentum=momentum, rule=rule, return_convergence_delta=True
                )
                expected = attr.flatten(1).sum(1) - delta
                relative = (delta.abs() / expected.abs()).median()
                row.append(f"{rule} {float(relative):.4f} ({time.perf_counter() - started:.1f} s)")
            print(f"momentum={momentum}, eta={eta}: " + ", ".join(row) + f"  [{load_average()}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=None, help="image side (default 16; 28 with --completeness)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rule", choices=("left", "trapezoid"), default="left")
    parser.add_argument("--loop", action="store_true", help="also time one image per call")
    parser.add_argument("--completeness", action="store_true", help="relative deltas of both rules instead")
    parser.add_argument(
        "--model",
        choices=("small", "samp-paper"),
        default="small",
        help="SmallDigitsCNN (8/16 channels) or the SAMP paper's MNIST CNN (benchmark default widths)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.size is None:
        args.size = 28 if args.completeness else 16
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} cores  [{load_average()}]")
    completeness(args) if args.completeness else overhead(args)


if __name__ == "__main__":
    main()
