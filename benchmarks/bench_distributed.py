"""Images per second of the benchmark with 1 and with K torchrun ranks (gloo, CPU, one thread each).

Runs the same benchmark command under ``torchrun --standalone --nproc_per_node=K`` for K = 1 and the
given K (after one untimed run that trains and caches the models), each into a fresh results folder,
and reports for each:

* images / s over the whole command (process start, imports, data, model load, the work, the merge);
* images / s over the work alone (the slowest rank's compute time, from results.json);
* the CPU seconds of the work (summed over ranks): equal for 1 and K ranks when sharding costs
  nothing, whatever else the machine runs; ``CPU / wall`` per rank says how much of a core each
  rank obtained (below 1 when other jobs compete for the cores);
* the load average (``os.getloadavg()``) before and after, since the machine may be shared.

Runs alternate (1, K, K, 1, 1, K, ...) so that a change of the machine's load hits both; the
speed-up is the median over repeats of the ratio within each adjacent pair.

It also checks that the K-rank run's per-image numbers equal the single-rank run's.

Usage::

    .venv/bin/python benchmarks/bench_distributed.py              # 2 ranks, 40 digits, 4 methods
    .venv/bin/python benchmarks/bench_distributed.py --ranks 2 --n-images 60 --repeats 2
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _command(ranks: int, args, out: Path, cache: Path, n_images: int):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    cmd += ["-m", "captum_paths.benchmark", "--methods", args.methods, "--n-images", str(n_images)]
    cmd += ["--n-localization", "0", "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    cmd += ["--no-figures", "--no-progress", "--cache-dir", str(cache), "--out", str(out)]
    return cmd


def _run(cmd, threads: int):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, load_before, os.getloadavg()


def _per_image(results):
    return {(m, k): v for m, e in results["methods"].items() for k, v in e["per_image"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2, help="K, the ranks compared with 1 (default 2)")
    p.add_argument("--n-images", type=int, default=40, help="digits evaluated (default 40)")
    p.add_argument("--methods", default="samp++,ggig,ablation,ig", help="benchmark methods (default 4 path methods)")
    p.add_argument("--batch-size", type=int, default=2, help="images per chunk (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs of each K, alternating (default 1)")
    args = p.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_distributed-"))
    cache = root / "cache"
    try:
        print(f"cpus {os.cpu_count()}; load average before {os.getloadavg()}; training/caching the model (untimed)")
        _run(_command(1, args, root / "warm", cache, 1), args.threads)
        rows = []
        for rep in range(args.repeats):
            for ranks in (1, args.ranks) if rep % 2 == 0 else (args.ranks, 1):
                out = root / f"k{ranks}-{rep}"
                cmd = _command(ranks, args, out, cache, args.n_images)
                wall, before, after = _run(cmd, args.threads)
                res = json.loads((out / "results.json").read_text())
                compute = max(res["environment"]["compute_seconds_per_rank"])
                cpu = res["environment"]["compute_cpu_seconds_per_rank"]
                rows.append((ranks, wall, compute, before, after, res, " ".join(cmd[1:]), cpu, rep))
        print(f"\ncommand (K = ranks): python {rows[0][6]}")
        print(f"{args.n_images} images, methods {args.methods}, batch {args.batch_size}, {args.threads} thread(s)/rank")
        print(
            "| ranks | wall s | img/s (whole command) | work s (slowest rank) | img/s (work) | work CPU s (all ranks)"
            " | CPU / wall per rank | load before | after |"
        )
        print("|---:|---:|---:|---:|---:|---:|---|---|---|")
        for ranks, wall, compute, before, after, res, _, cpu, _ in rows:
            walls = res["environment"]["compute_seconds_per_rank"]
            share = ", ".join(f"{c / w:.2f}" for c, w in zip(cpu, walls))
            print(
                f"| {ranks} | {wall:.1f} | {args.n_images / wall:.3f} | {compute:.1f} | "
                f"{args.n_images / compute:.3f} | {sum(cpu):.1f} | {share} | {', '.join(f'{v:.2f}' for v in before)} | "
                f"{', '.join(f'{v:.2f}' for v in after)} |"
            )
        pairs = [
            ([r for r in rows if r[8] == rep and r[0] == 1][0], [r for r in rows if r[8] == rep and r[0] != 1][0])
            for rep in range(args.repeats)
        ]
        whole = statistics.median(one[1] / many[1] for one, many in pairs)
        work = statistics.median(one[2] / many[2] for one, many in pairs)
        cpu_ratio = statistics.median(sum(many[7]) / sum(one[7]) for one, many in pairs)
        print(
            f"\nspeed-up with {args.ranks} ranks (median over {args.repeats} adjacent pair(s)): {whole:.2f}x images/s "
            f"over the whole command, {work:.2f}x over the work; CPU seconds of the work with {args.ranks} ranks / "
            f"with 1: {cpu_ratio:.2f}"
        )
        one, many = pairs[0]
        a, b = _per_image(one[5]), _per_image(many[5])
        worst = max(abs(x - y) for key in a for x, y in zip(a[key], b[key]))
        print(f"largest per-image difference between 1 and {args.ranks} ranks: {worst:.3g}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
