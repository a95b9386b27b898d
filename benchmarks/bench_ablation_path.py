"""AblationPath on the digits CNN: saturation per iteration, path score against the straight line, and
wall time against the bare forward+backward passes the optimisation needs.

Run:  .venv/bin/python benchmarks/bench_ablation_path.py [--model small|samp-paper] [--channels 8] [--size 28] [--n 32]
                                                          [--n-iterations 30] [--internal-batch-size B]

* "Iterations to saturation": the first iteration after which an example's path saturation (mean of
  |2 phi - 1| over the interior masks; 1 = binary masks, ~0.5 = straight line) reaches each level.
* Path score: the trapezoid integral over t of the target's softmax probability, for the straight
  line phi(t) = t (iteration 0) and for the optimised path.
* Overhead: AblationPath wall time divided by the wall time of the same model evaluations done bare
  (the same numbers of path images through ``captum._utils.gradient.compute_gradients`` in the same
  batch sizes, plus the no-grad forwards of the end points and the final path). Timings alternate
  between the two and report the median of ``--repeats`` runs, so machine load affects both alike.
"""

import argparse
import os
import statistics
import time

import torch
from captum._utils.gradient import compute_gradients

from captum_paths.attr._core.ablation_path import AblationPath
from captum_paths.attr._utils.progress import chunk_slices
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SampPaperCNN, SmallDigitsCNN, accuracy, train_classifier


def bare_passes(model, x, target, n_points, iterations, internal_batch_size):
    """The model evaluations AblationPath performs, without any of its own work."""
    n = x.shape[0]
    interior = n_points - 2
    rows = n * interior
    images = x.repeat(interior, 1, 1, 1)
    targets = target.repeat(interior)

    def softmax_forward(inp):
        return torch.softmax(model(inp), dim=1)

    with torch.no_grad():
        both_ends = x.repeat(2, 1, 1, 1)
        for sl in chunk_slices(2 * n, internal_batch_size):
            softmax_forward(both_ends[sl])
    for _ in range(iterations):
        for sl in chunk_slices(rows, internal_batch_size):
            compute_gradients(softmax_forward, (images[sl].clone().requires_grad_(),), targets[sl])
    with torch.no_grad():
        for sl in chunk_slices(rows, internal_batch_size):
            softmax_forward(images[sl])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=28, help="digit image side (default 28)")
    parser.add_argument("--n", type=int, default=32, help="test examples explained (default 32)")
    parser.add_argument("--n-steps", type=int, default=15)
    parser.add_argument("--n-iterations", type=int, default=30)
    parser.add_argument("--internal-batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--model",
        choices=("small", "samp-paper"),
        default="small",
        help="SmallDigitsCNN (the tests' digits CNN) or the SAMP paper's MNIST CNN (the benchmark's)",
    )
    parser.add_argument("--channels", type=int, default=8, help="SmallDigitsCNN width (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_digits_images(size=args.size, seed=0)
    torch.manual_seed(0)
    architecture = SmallDigitsCNN(channels=args.channels) if args.model == "small" else SampPaperCNN()
    model = train_classifier(architecture, data.x_train, data.y_train, epochs=8, seed=0)
    test_accuracy = accuracy(model, data.x_test, data.y_test)
    name = f"SmallDigitsCNN(channels={args.channels})" if args.model == "small" else "SampPaperCNN()"
    print(f"digits {args.size}x{args.size}, {name} test accuracy {test_accuracy:.3f}")
    x = data.x_test[: args.n]
    with torch.no_grad():
        target = model(x).argmax(1)
    method = AblationPath(model)
    kwargs = dict(n_steps=args.n_steps, n_iterations=args.n_iterations, internal_batch_size=args.internal_batch_size)

    report_quality(method, x, target, args, kwargs)
    report_speed(method, model, x, target, args, kwargs)


def report_quality(method, x, target, args, kwargs):
    """Saturation per iteration and the path score against the straight line."""
    _, result = method.attribute(x, target=target, return_path=True, **kwargs)
    straight = result.path_score_history[:, 0]
    print(
        f"\npath score (mean over {args.n} examples): straight line {straight.mean():.4f}, "
        f"optimised {result.path_score.mean():.4f}; optimised > straight for "
        f"{int((result.path_score > straight).sum())}/{args.n} examples"
    )
    print(
        f"threshold time (target stops being top class), mean over examples where it is lost: "
        f"{result.threshold_time.nanmean():.3f} ({int((result.threshold_index >= 0).sum())}/{args.n} lose it)"
    )
    print(f"score-dropped-by-20% time, mean: {result.drop_time.nanmean():.3f}")
    print(f"final saturation: mean {result.saturation.mean():.3f}, min {result.saturation.min():.3f}")
    for level in (0.6, 0.7, 0.8, 0.9):
        _, stopped = method.attribute(x, target=target, return_path=True, stop_saturation=level, **kwargs)
        reached = stopped.saturation >= level
        its = stopped.iterations_run[reached].double()
        summary = f"median {its.median():.0f}, max {its.max():.0f}" if reached.any() else "-"
        print(
            f"iterations to reach saturation {level}: {int(reached.sum())}/{args.n} reach it within "
            f"{args.n_iterations}; {summary}; path score at stop {stopped.path_score.mean():.4f}"
        )


def report_speed(method, model, x, target, args, kwargs):
    """AblationPath against the bare model evaluations it needs, alternating."""
    ours, bare = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        method.attribute(x, target=target, **kwargs)
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare_passes(model, x, target, (args.n_steps + 1), args.n_iterations, args.internal_batch_size)
        bare.append(time.perf_counter() - start)
    t_ours, t_bare = statistics.median(ours), statistics.median(bare)
    n_passes = args.n * ((args.n_steps + 1) - 2) * args.n_iterations
    print(
        f"\nwall time: AblationPath {t_ours:.3f} s, bare passes {t_bare:.3f} s "
        f"({n_passes} image forward+backward passes + {args.n * (args.n_steps + 1)} forwards), "
        f"ratio {t_ours / t_bare:.3f} (median of {args.repeats}, {args.threads} thread(s), "
        f"load average {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    main()
