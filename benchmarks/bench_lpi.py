"""Benchmark LocalPathIntegration: bank fit time, and attribution wall time against the bare passes it needs.

Usage: python benchmarks/bench_lpi.py [--size 28] [--n-images 64] [--n-samples 20] [--n-alphas 1]
       [--internal-batch-size N] [--repeats 7] [--threads 1]

The cost of LPI is model evaluations: for N images, one forward pass of the N inputs (their logits place
them in a neighbourhood) and N * n_samples * n_alphas forward + backward passes at the interpolated
points. The "bare" figure times exactly those passes with plain torch (same batching, the same
precomputed points, ``torch.autograd.grad`` of the summed target logits), so the ratio is the overhead
of everything else: argument checks, neighbourhood search, drawing, interpolation, accumulation.
Times are medians over ``--repeats`` interleaved runs after one warm-up each.
"""

import argparse
import statistics
import time

import torch

from captum_paths import LocalPathIntegration, ReferenceBank
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SmallDigitsCNN, accuracy, train_classifier


def median_times(fns, repeats):
    """Median wall time of each function, runs interleaved so that load drift hits all alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--n-samples", type=int, default=20)
    p.add_argument("--n-alphas", type=int, default=1)
    p.add_argument("--n-neighborhoods", type=int, default=11)
    p.add_argument("--n-references", type=int, default=20)
    p.add_argument("--internal-batch-size", type=int, default=None)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    data = load_digits_images(size=args.size, seed=0)
    torch.manual_seed(0)
    model = train_classifier(SmallDigitsCNN(), data.x_train, data.y_train, epochs=8, seed=0)
    print(
        f"digits {args.size}x{args.size}: {len(data.x_train)} train, "
        f"test accuracy {accuracy(model, data.x_test, data.y_test):.3f}"
    )

    start = time.perf_counter()
    bank = ReferenceBank(n_neighborhoods=args.n_neighborhoods, n_references=args.n_references, random_state=0)
    bank.fit(model, data.x_train)
    fit_time = time.perf_counter() - start
    print(f"fit: {fit_time:.2f} s ({args.n_neighborhoods} neighbourhoods x {args.n_references} references)")

    x, y = data.x_test[: args.n_images], data.y_test[: args.n_images]
    lpi = LocalPathIntegration(model, bank)
    kw = dict(target=y, n_samples=args.n_samples, n_alphas=args.n_alphas, internal_batch_size=args.internal_batch_size)

    def run_lpi():
        lpi.attribute(x, generator=0, **kw)

    # the same passes, bare: points and targets prepared outside the timed region
    n, draws = len(x), args.n_samples * args.n_alphas
    gen = torch.Generator().manual_seed(0)
    refs = bank.references_[0][torch.randint(int(bank.offsets_[-1]), (draws * n,), generator=gen)]
    alphas = torch.rand(draws * n, 1, 1, 1, generator=gen)
    points = refs + alphas * (x.repeat(draws, 1, 1, 1) - refs)
    targets = y.repeat(draws)
    size = args.internal_batch_size or len(points)
    blocks = [(points[i : i + size], targets[i : i + size]) for i in range(0, len(points), size)]

    def run_bare():
        with torch.no_grad():
            model(x)
        for pts, tgt in blocks:
            pts = pts.detach().requires_grad_()
            out = model(pts).gather(1, tgt.unsqueeze(1)).sum()
            torch.autograd.grad(out, pts)

    t_lpi, t_bare = median_times([run_lpi, run_bare], args.repeats)
    print(
        f"attribute {n} images, n_samples={args.n_samples}, n_alphas={args.n_alphas}, "
        f"internal_batch_size={args.internal_batch_size}: LPI {t_lpi * 1e3:.1f} ms, bare passes "
        f"{t_bare * 1e3:.1f} ms, ratio {t_lpi / t_bare:.3f}"
    )


if __name__ == "__main__":
    main()
