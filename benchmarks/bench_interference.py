"""What bookkeeping between model passes costs on this machine: small operations and touched memory.

    python benchmarks/bench_interference.py [--repeats 5] [--threads 1] [--n-images 32]

A path method alternates model passes with its own tensor work. This measures, on ``SmallDigitsCNN`` (random
weights) with ``--n-images`` 28x28 inputs and 200 forward+backward passes per run:

1. **Small operations:** 24 in-place multiplications of one ``(32, 784)`` float64 tensor after each pass, or
   of twelve different ones, or of a ``(32,)`` vector; the extra time per operation against the passes alone.
   In a tight loop such an operation takes 1-10 us; between passes it costs more, because the model's kernels
   and activations have evicted the caches.
2. **Touched memory:** 1, 2 or 4 MB of float64 tensors multiplied in place after each pass: the time of the
   passes plus that work against the sum of the two measured apart. The difference is the interference:
   the work runs slower after a pass, and the pass after it.
3. **Selection kernels after a layer:** the median time of SAMP's ``topk`` (10 of 256 groups, 64 rows) and of
   Guided IG's host sort (784 float32 magnitudes, 32 rows) right after a forward+backward pass, after a
   ``MaxPool2d`` alone (the model's first pooling, ``(2N, 8, 16, 16)``), after a ``ReLU`` on the same tensor,
   and in a tight loop. Branchy kernels like these slow down most, and one layer type accounts for much of it.

Runs are interleaved; the minima over ``--repeats`` are printed with the load average (the machine may be
shared). Nothing here is a test: it explains where the overhead of ``bench_guided_blur_ig.py`` and
``bench_samp.py`` goes on small models.
"""

import argparse
import os
import statistics
import time

import numpy as np
import torch
from captum._utils.gradient import compute_gradients

from captum_paths.benchmark.models import SmallDigitsCNN

PASSES = 200


def run(model, points, target, work=None):
    """Seconds per pass of the passes, each followed by ``work()`` (none: the passes alone)."""

    def forward(x):
        return model(x).gather(1, target[:, None]).sum().reshape(1)

    started = time.perf_counter()
    for p in points:
        if model is not None:
            compute_gradients(forward, (p.detach().requires_grad_(),))
        if work is not None:
            work()
    return (time.perf_counter() - started) / len(points)


def operations(n_ops, tensors):
    def work():
        for i in range(n_ops):
            tensors[i % len(tensors)].mul_(1.0)

    return work


def selection_after(model, x, target, repeats=200):
    """Median microseconds of a selection kernel right after ``before()`` (see the module docstring, 3)."""
    scores = torch.randn(2 * x.shape[0], 256)
    magnitudes = np.abs(np.random.default_rng(0).standard_normal((x.shape[0], 784))).astype(np.float32)
    ranking = np.empty_like(magnitudes)
    pooled = torch.rand(2 * x.shape[0], 8, 16, 16)

    def model_pass():
        compute_gradients(
            lambda p: model(p).gather(1, target[:, None]).sum().reshape(1), (x.detach().requires_grad_(),)
        )

    def host_sort():
        np.copyto(ranking, magnitudes)
        ranking.sort(axis=1)

    kernels = {"topk 10 of 256": lambda: scores.topk(10, dim=1), "numpy sort of 784": host_sort}
    befores = {
        "a forward+backward pass": model_pass,
        "a MaxPool2d": lambda: torch.nn.functional.max_pool2d(pooled, 2),
        "a ReLU": lambda: torch.relu(pooled),
        "nothing (tight loop)": lambda: None,
    }
    for kernel_name, kernel in kernels.items():
        for before_name, before in befores.items():
            times = []
            for _ in range(repeats):
                with torch.no_grad():  # the pass's compute_gradients turns gradients on for itself
                    before()
                started = time.perf_counter()
                kernel()
                times.append(time.perf_counter() - started)
            print(f"  {kernel_name} after {before_name}: {statistics.median(times) * 1e6:.0f} us (median)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-images", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SmallDigitsCNN().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.n_images, 1, 28, 28)
    target = torch.randint(0, 10, (args.n_images,))
    points = [x * (s / PASSES) for s in range(PASSES)]
    rows = [torch.rand(args.n_images, 784, dtype=torch.float64) for _ in range(12)]
    small = [torch.rand(args.n_images, dtype=torch.float64)]
    blocks = {mb: [torch.rand(mb * 2**17 // 12, dtype=torch.float64) for _ in range(12)] for mb in (1, 2, 4)}
    cases = {
        "passes alone": (model, None),
        "24 ops, one (N, 784) tensor": (model, operations(24, rows[:1])),
        "24 ops, twelve (N, 784) tensors": (model, operations(24, rows)),
        "24 ops, one (N,) vector": (model, operations(24, small)),
        **{f"{mb} MB touched": (model, operations(12, blocks[mb])) for mb in blocks},
        **{f"{mb} MB touched, no passes": (None, operations(12, blocks[mb])) for mb in blocks},
    }
    best = {name: float("inf") for name in cases}
    for repeat in range(args.repeats):
        for name in cases if repeat % 2 == 0 else reversed(list(cases)):
            m, work = cases[name]
            best[name] = min(best[name], run(m, points, target, work))
    alone = best["passes alone"]
    print(f"{args.n_images} images, {torch.get_num_threads()} thread(s), load {os.getloadavg()[0]:.2f}")
    print(f"  passes alone: {alone * 1e6:.0f} us per pass")
    for name in ("24 ops, one (N, 784) tensor", "24 ops, twelve (N, 784) tensors", "24 ops, one (N,) vector"):
        print(f"  {name}: {(best[name] - alone) / 24 * 1e6:.1f} us per operation between passes")
    for mb in blocks:
        together, apart = best[f"{mb} MB touched"], alone + best[f"{mb} MB touched, no passes"]
        print(
            f"  {mb} MB touched per pass: {(together - alone) * 1e6:.0f} us added to a pass; alone it takes "
            f"{best[f'{mb} MB touched, no passes'] * 1e6:.0f} us; interference {(together - apart) * 1e6:.0f} us"
        )
    selection_after(model, x, target)


if __name__ == "__main__":
    main()
