"""Time ROAD's noisy linear imputation: our batched CG against the official per-image spsolve.

Masks are the ones ROAD builds on 100 scikit-learn digits (28x28): the map is the image itself (bright
strokes most relevant), every default percentage (0.1 ... 0.9), MoRF and LeRF: 1,400 imputations. One
torch thread; the two imputers alternate over ``--repeats`` rounds and the best round of each is kept.
Both run under the same global torch seed, so the official noise and ours are the same draws (ours
draws ``randn((C, n_removed))`` per image in the official order): the printed max |difference| is the
solver's disagreement plus float32 rounding. Both of our solver precisions are timed: float32 (the default
for float32 images, ``rtol`` 1e-6) and float64 (``rtol`` 1e-9).

The official code is not a dependency: ``--reference-path DIR`` points at a checkout of
``tleemann/road_evaluation`` (the folder holding ``road/``); without it only ours is timed.

    python benchmarks/bench_road.py --reference-path /tmp/road_ref
"""

import argparse
import os
import sys
import time

import torch

from captum_paths.benchmark.data import load_digits_images
from captum_paths.metrics import noisy_linear_impute
from captum_paths.metrics._core.road import DEFAULT_PERCENTAGES, removed_pixel_counts, road_ranks


def road_masks(images: torch.Tensor, seed: int) -> torch.Tensor:
    """(N * P * 2, 1, H, W) bool, True = removed: MoRF then LeRF at every default percentage."""
    n, _, h, w = images.shape
    g = torch.Generator().manual_seed(seed)
    ranks = road_ranks(images, 1e-4 * torch.randn((h, w), generator=g, dtype=torch.float64))
    masks = []
    for i in range(n):
        for k in removed_pixel_counts(DEFAULT_PERCENTAGES, h * w).tolist():
            masks.append(ranks[i] < k)
            masks.append(ranks[i] >= h * w - k)
    return torch.stack(masks).reshape(-1, 1, h, w)


def load_official(path: str):
    sys.path.insert(0, os.path.abspath(path))
    from road.imputations import NoisyLinearImputer  # noqa: E402  (from the user's checkout)

    return NoisyLinearImputer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-path", default=None, help="checkout of tleemann/road_evaluation")
    parser.add_argument("--n-images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    x = load_digits_images(size=28).x_test[: args.n_images]
    masks = road_masks(x, args.seed)
    images = x.repeat_interleave(masks.shape[0] // x.shape[0], 0)
    m = masks.shape[0]
    official = load_official(args.reference_path)(noise=0.01) if args.reference_path else None

    def ours(dtype):
        def run():
            torch.manual_seed(args.seed)
            return noisy_linear_impute(images, masks, dtype=dtype)

        return run

    def theirs():
        torch.manual_seed(args.seed)
        keep = (~masks[:, 0]).to(torch.uint8)
        return torch.stack([official(images[i], keep[i]) for i in range(m)])

    runs = {"ours, float32 solver (default)": ours(None), "ours, float64 solver": ours(torch.float64)}
    if official is not None:
        runs["official"] = theirs
    timings = {name: [] for name in runs}
    results = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            results[name] = fn()
            timings[name].append(time.perf_counter() - start)

    print(f"{args.n_images} digits 28x28, {m} imputations (percentages {DEFAULT_PERCENTAGES}, MoRF + LeRF), "
          f"torch threads {torch.get_num_threads()}, repeats {args.repeats} interleaved, best kept")  # fmt: skip
    for name, times in timings.items():
        line = f"{name:32s}: {min(times) / m * 1e3:.3f} ms / image  (rounds {[round(t, 3) for t in times]} s)"
        if official is not None and name != "official":
            diff = (results[name] - results["official"]).abs().max().item()
            line += f"; speed-up {min(timings['official']) / min(times):.1f}x, max |ours - official| {diff:.2e}"
        print(line)
    print(f"load average (1, 5, 15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
