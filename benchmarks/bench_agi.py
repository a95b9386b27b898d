"""AdversarialGradientIntegration cost against the bare model passes it needs.

    python benchmarks/bench_agi.py [--n-images 16] [--repeats 5] [--size 28] [--threads 1]
                                   [--internal-batch-size 64] [--epochs 8]

For each setting (the reference defaults: 9 spaced false classes on 10 digits, 20 steps, softmax, early
stop; the LPI paper's: one random class, 20 steps, logits, no stop) and for ``internal_batch_size`` None
and ``--internal-batch-size``: AGI's time on ``n`` digits with the SAMP paper's CNN divided by the time of
the bare passes it needs (the floor). The floor replays the very model calls of the run (recorded by a
wrapper, so early-stopped chains are accounted for): a no-grad forward for the class-choice pass, and for
every step one forward, the scores (softmax or logits), and two ``torch.autograd.grad`` calls (the attacked
class's and the true class's gradients, the graph retained once), on digits in batches of the same sizes.
Goal: at most 1.15. Wall and process CPU time (one thread: CPU time is far less disturbed by the other
processes of a shared machine), ``--repeats`` interleaved runs alternating which goes first; minima and
medians are printed with the load average.
"""

import argparse
import os
import statistics
import time

import torch

from captum_paths import AdversarialGradientIntegration
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SampPaperCNN, accuracy, train_classifier

SETTINGS = {
    "reference (spaced k=20, softmax, early stop)": dict(),
    "LPI paper (1 random class, logit, no stop)": dict(
        false_classes="random", n_false_classes=1, score="logit", early_stop=False, generator=0
    ),
}


class RecordingModel(torch.nn.Module):
    """Wraps a model and records (batch size, grad enabled) of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.model(x)


def floor_time(model, calls, pool, targets, score):
    """The bare passes of ``calls``: no-grad forwards, and forward + scores + two gradients per step."""
    batches = [(pool[:size].clone(), targets[:size, None], grad) for size, grad in calls]
    started, cpu_started = time.perf_counter(), time.process_time()
    for x, target, grad in batches:
        if not grad:
            with torch.no_grad():
                model(x)
            continue
        x.requires_grad_()
        out = model(x)
        scores = torch.softmax(out, dim=1) if score == "softmax" else out
        torch.autograd.grad(scores.gather(1, target).sum(), x, retain_graph=True)
        torch.autograd.grad(scores.gather(1, (target + 1) % out.shape[1]).sum(), x)
    return time.perf_counter() - started, time.process_time() - cpu_started


def run_setting(name, kwargs, model, x, y, ibs, repeats):
    recorder = RecordingModel(model)
    agi = AdversarialGradientIntegration(recorder)
    agi.attribute(x, target=y, internal_batch_size=ibs, **kwargs)  # warm-up and the call record
    calls = list(recorder.calls)
    n_rows = max(size for size, _ in calls)
    pool, targets = x.repeat((n_rows + len(x) - 1) // len(x), 1, 1, 1)[:n_rows], y.repeat(n_rows)[:n_rows]
    score = kwargs.get("score", "softmax")
    ours_wall, ours_cpu, floor_wall, floor_cpu = [], [], [], []

    def run_ours():
        started, cpu_started = time.perf_counter(), time.process_time()
        agi.attribute(x, target=y, internal_batch_size=ibs, **kwargs)
        ours_wall.append(time.perf_counter() - started)
        ours_cpu.append(time.process_time() - cpu_started)

    def run_floor():
        wall, cpu = floor_time(model, calls, pool, targets, score)
        floor_wall.append(wall)
        floor_cpu.append(cpu)

    for repeat in range(repeats):
        for run in (run_ours, run_floor) if repeat % 2 == 0 else (run_floor, run_ours):
            run()
    steps = sum(size for size, grad in calls if grad)
    print(f"{name}, internal_batch_size={ibs}: {len(calls)} model calls, {steps} chain steps (1 F + 2 B each)")
    for label, ours, floor in (("wall", ours_wall, floor_wall), ("cpu ", ours_cpu, floor_cpu)):
        print(
            f"    {label}: AGI {min(ours):.3f} s (median {statistics.median(ours):.3f}), floor {min(floor):.3f} s "
            f"(median {statistics.median(floor):.3f}); ratio of minima {min(ours) / min(floor):.3f}, of medians "
            f"{statistics.median(ours) / statistics.median(floor):.3f} [goal <= 1.15]; "
            f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--internal-batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_digits_images(size=args.size)
    model = train_classifier(SampPaperCNN(), data.x_train, data.y_train, epochs=args.epochs)
    print(
        f"model: SampPaperCNN on {args.size}x{args.size} digits, test accuracy "
        f"{accuracy(model, data.x_test, data.y_test):.3f}; {args.n_images} images, "
        f"{torch.get_num_threads()} thread(s)"
    )
    x, y = data.x_test[: args.n_images], data.y_test[: args.n_images]
    for name, kwargs in SETTINGS.items():
        for ibs in (None, args.internal_batch_size):
            run_setting(name, kwargs, model, x, y, ibs, args.repeats)


if __name__ == "__main__":
    main()
