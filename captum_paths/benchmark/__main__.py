"""``python -m captum_paths.benchmark`` / ``captum-paths-benchmark``: compare every attribution method.

Default: scikit-learn's real handwritten digits at 28x28 with the SAMP paper's CNN (trained on first
use, about a minute, then cached), 100 test images, every method, the SAMP paper's and RISE's
insertion/deletion, DiffID, and the pointing game on a synthetic localisation set. Writes
``results.md``, ``results.json``, ``attributions.png`` and ``curves.png`` into ``--out``.

Other data (nothing is downloaded unless ``--download`` is given):

* ``--dataset mnist --data-root DIR`` / ``--dataset cifar10 --data-root DIR``: torchvision's MNIST or
  CIFAR-10 under DIR (the SAMP paper's CNN is trained on it, once, and cached);
* ``--dataset imagenet --data-root DIR --weights FILE``: an ImageNet-style folder (one sub-folder per
  class) explained with torchvision's ResNet-50 and the user's weights file;
* ``--dataset folder --data-root DIR --model mypkg.models:build``: any ImageFolder-style folder (resized
  to 256, centre-cropped to 224) explained with the model that ``build()`` returns (``--model`` also
  replaces the trained CNN on the built-in data sets).

Scaling out: ``torchrun --nproc_per_node=K -m captum_paths.benchmark ...`` shards the images over K
processes (gloo on CPU; NCCL with ``--device cuda``, one GPU per local rank); rank 0 writes the same
files as a single process. Finished chunks are recorded in ``--out``/progress: re-running the same
command resumes; a folder holding other settings is refused (``--overwrite`` discards it).

Bad arguments print one line and exit with code 2.
"""

import argparse
import sys
from typing import List, Optional

from captum_paths.benchmark.methods import METHOD_NAMES, OPTIONAL_METHOD_NAMES
from captum_paths.benchmark.runner import (
    ALL_METRICS,
    DATASETS,
    METRICS,
    BenchmarkConfig,
    BenchmarkError,
    run_benchmark,
)

__all__ = ["main", "build_parser"]

PROG = "captum-paths-benchmark"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2 (no usage dump)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _methods(text: str) -> List[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def build_parser() -> argparse.ArgumentParser:
    details = "\n\n".join(__doc__.split("\n\n")[1:]).replace("``", "")
    p = _Parser(
        prog=PROG,
        description="Compare every attribution method on real data under the seed papers' protocols.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=details
        + "\n\nMethods: "
        + ", ".join(METHOD_NAMES)
        + "; only when named: "
        + ", ".join(OPTIONAL_METHOD_NAMES)
        + ". Datasets: "
        + ", ".join(DATASETS)
        + ".",
    )
    _what_flags(p)
    _data_flags(p)
    _run_flags(p)
    return p


def _what_flags(p: argparse.ArgumentParser) -> None:
    """What is compared: data set, methods, metrics, how many images, the seed."""
    p.add_argument(
        "--dataset",
        default="digits",
        help="digits (default, ships with scikit-learn), mnist, cifar10, imagenet, folder",
    )
    p.add_argument(
        "--methods",
        type=_methods,
        default=None,
        help="comma-separated methods (default: every available one except those run only when named: "
        f"{', '.join(OPTIONAL_METHOD_NAMES)})",
    )
    p.add_argument("--n-images", type=int, default=None, help="test images evaluated (default 100; 6 with --quick)")
    p.add_argument(
        "--n-localization",
        type=int,
        default=None,
        help="synthetic images for the pointing game (default 50; 6 with --quick; 0 skips it)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the image draw and every random method")
    p.add_argument(
        "--metrics",
        type=_methods,
        default=None,
        help="comma-separated subset of: "
        + ", ".join(ALL_METRICS)
        + " (default: "
        + ", ".join(METRICS)
        + "; mu_fidelity costs more and runs when named)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (CI): 6 images, half the training epochs, reduced LPI/GGIG/EG/AblationPath budgets",
    )


def _data_flags(p: argparse.ArgumentParser) -> None:
    """Where data, model and cache come from."""
    p.add_argument(
        "--data-root", default=None, help="data folder for mnist / cifar10, image folder for imagenet / folder"
    )
    p.add_argument("--weights", default=None, help="ResNet-50 weights file (a state dict) for imagenet / folder")
    p.add_argument(
        "--model",
        default=None,
        help="module:function returning your model (nn.Module in eval mode, images in [0, 1] -> logits)",
    )
    p.add_argument("--download", action="store_true", help="let torchvision download MNIST / CIFAR-10 into --data-root")
    p.add_argument(
        "--cache-dir", default=None, help="trained-model cache (default $CAPTUM_PATHS_CACHE or ~/.cache/captum_paths)"
    )
    p.add_argument("--no-cache", action="store_true", help="train the models afresh and do not store them")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs of both cached models, main and localisation (part of the cache key)",
    )


def _run_flags(p: argparse.ArgumentParser) -> None:
    """How the run goes: device, threads, batches, output folder, resuming, torchrun."""
    p.add_argument(
        "--device", default="cpu", help="torch device, e.g. cpu, cuda:0, or cuda (under torchrun: LOCAL_RANK)"
    )
    p.add_argument("--out", default="benchmark-results", help="output folder (created; progress/ makes it resumable)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared 2-core machine, small batches with 2 threads "
        "ran 10-20x slower from oversubscription; 0 keeps torch's default)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images explained together, the unit of sharding and resuming (default 25; 1 on 224x224 images)",
    )
    p.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="perturbed images per forward pass in the metrics (default 8 x batch size; 16 on 224x224 images)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="discard the progress in --out instead of resuming or refusing it"
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=6 * 3600.0,
        help="seconds a rank waits for the others at the end of a torchrun run (default 21600)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = BenchmarkConfig(
        dataset=args.dataset,
        methods=args.methods,
        n_images=args.n_images,
        n_localization=args.n_localization,
        seed=args.seed,
        device=args.device,
        out=args.out,
        data_root=args.data_root,
        weights=args.weights,
        model=args.model,
        metrics=args.metrics,
        max_rows=args.max_rows,
        overwrite=args.overwrite,
        dist_timeout=args.dist_timeout,
        download=args.download,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        batch_size=args.batch_size,
        epochs=args.epochs,
        threads=args.threads,
        quick=args.quick,
        show_progress=not args.no_progress,
        figures=not args.no_figures,
    )
    from captum_paths.benchmark.report import check_claims, format_claims, format_table, write_results

    try:
        results = run_benchmark(cfg)
    except BenchmarkError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if results is None:  # a rank other than 0 under torchrun: rank 0 writes the files
        return 0
    results["claims"] = check_claims(results)
    paths = write_results(results, cfg.out, figures=cfg.figures)
    print()
    print(format_table(results))
    print()
    print(format_claims(results["claims"]))
    print(
        f"\ntotal {results['total_seconds']:.0f} s wall, {results['total_cpu_seconds']:.0f} s CPU; wrote "
        + ", ".join(str(p) for p in paths.values())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
