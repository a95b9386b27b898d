"""SampAttribution cost against its floor, and batched against one-image-at-a-time.

    python benchmarks/bench_samp.py [--model small|samp-paper] [--n-images 64] [--repeats 3] [--size 28]

1. Overhead: SAMP++ wall time for a batch of ``n`` digits divided by the time of the bare model passes
   it needs (the floor): the same sequence of forward+backward passes with the same batch sizes (recorded
   from the run itself), plus its forward-only passes. Goal: at most 1.15.
2. Throughput: the same ``n`` images attributed in one call against a loop of one image per call.
   Goal: at least 8x.
Each timing is the minimum over ``--repeats`` interleaved runs (the machine is shared).
"""

import argparse
import time

import torch

from captum_paths import SampAttribution
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SampPaperCNN, SmallDigitsCNN, accuracy, train_classifier


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
    """Bare passes: forward (+ backward of the selected target when the call had grad on)."""
    started = time.perf_counter()
    for batch, with_grad in calls:
        x = torch.rand((batch,) + shape)
        target = targets_pool[:batch]
        if with_grad:
            x.requires_grad_()
            out = model(x).gather(1, target[:, None]).sum()
            torch.autograd.grad(out, x)
        else:
            with torch.no_grad():
                model(x)
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument(
        "--model",
        choices=("small", "samp-paper"),
        default="small",
        help="SmallDigitsCNN (8/16 channels) or the SAMP paper's MNIST CNN (benchmark default widths)",
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_digits_images(args.size)
    model = SmallDigitsCNN() if args.model == "small" else SampPaperCNN()
    model = train_classifier(model, data.x_train, data.y_train, epochs=8)
    print(
        f"model: {type(model).__name__} on {args.size}x{args.size} digits, "
        f"test accuracy {accuracy(model, data.x_test, data.y_test):.3f}"
    )
    x, y = data.x_test[: args.n_images], data.y_test[: args.n_images]
    recorder = RecordingModel(model)
    samp = SampAttribution(recorder)

    samp_times, floor_times, loop_times = [], [], []
    for _ in range(args.repeats):
        recorder.calls.clear()
        started = time.perf_counter()
        samp.attribute(x, target=y, return_convergence_delta=True)
        samp_times.append(time.perf_counter() - started)
        calls = list(recorder.calls)
        floor_times.append(floor_time(model, calls, tuple(x.shape[1:]), y.repeat(2)))
        started = time.perf_counter()
        for i in range(len(x)):
            samp.attribute(x[i : i + 1], target=y[i : i + 1], return_convergence_delta=True)
        loop_times.append(time.perf_counter() - started)

    grad_calls = sum(1 for _, g in calls if g)
    rows = sum(b for b, g in calls if g)
    print(
        f"SAMP++ (defaults, both directions) on {len(x)} images: {grad_calls} forward+backward calls, "
        f"{rows} rows in all ({rows / len(x):.1f} per image), {len(calls) - grad_calls} forward-only call(s)"
    )
    t_samp, t_floor, t_loop = min(samp_times), min(floor_times), min(loop_times)
    print(f"SAMP++ wall time       : {t_samp:.3f} s")
    print(f"bare passes (floor)    : {t_floor:.3f} s")
    print(f"overhead ratio         : {t_samp / t_floor:.3f}  (goal <= 1.15)")
    print(f"one-at-a-time loop     : {t_loop:.3f} s")
    print(f"batched speed-up       : {t_loop / t_samp:.1f}x  (goal >= 8x)")


if __name__ == "__main__":
    main()
