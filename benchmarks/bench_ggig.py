"""GeometricallyGuidedIG cost against its floor, and peak memory against the number of ascent iterations m.

    python benchmarks/bench_ggig.py [--n-images 16] [--n-steps 50] [--n-iterations 100]
                                    [--internal-batch-size 256] [--repeats 3] [--size 28] [--threads 1]
                                    [--memory-iterations 1 10 50 100] [--skip-time] [--skip-memory]

1. Overhead: GGIG wall time for ``n`` digits (the paper's n = 50 steps, m = 100 iterations by default)
   divided by the time of the bare passes it needs (the floor): ``m`` times, for every chunk of at most
   ``internal_batch_size`` path points, one forward of the model, selection of the target logits and one
   ``torch.autograd.grad`` w.r.t. the points, on the same starting points in batches of exactly the
   same sizes (no ascent updates). Goal: at most 1.10.
   Measured unchunked (``internal_batch_size=None``) and chunked, in wall time and in process CPU
   time (with one thread, CPU time is far less disturbed by other processes on a shared machine).
   ``--repeats`` interleaved runs, alternating which goes first; minima and medians are printed.
2. Memory: peak resident memory of one ``attribute`` call, in a fresh subprocess per ``m``, as the
   rise of the kernel's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` right before
   the call) above the resident size just before it, with glibc's mmap threshold fixed at 64 KiB so
   that freed tensor buffers leave the resident set (otherwise fragmentation adds tens of MiB of noise).
   GGIG keeps a running maximum, so this must be flat
   in ``m``. For contrast the same is measured for a naive implementation that stores every gradient
   and takes the maximum at the end (what the authors' code does), which grows linearly in ``m``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from captum_paths import GeometricallyGuidedIG
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SmallDigitsCNN, accuracy, train_classifier


def path_points(x, n_steps):
    """The straight-line points from the zero baseline, in GGIG's row order (row r: example r % N)."""
    alphas = torch.linspace(0, 1, n_steps + 1).reshape(-1, 1, 1, 1, 1)
    return (alphas * x.unsqueeze(0)).reshape((-1,) + tuple(x.shape[1:])).contiguous()


def floor_time(model, chunk_sizes, points, n_iterations, targets):
    """The bare forward+backward passes GGIG needs: ``m`` passes per chunk, same batch sizes.

    The passes run on GGIG's own starting points (a CNN's pass time depends on the data: random
    images are about 8% slower than digits here), without the ascent updates.
    """
    starts = [sum(chunk_sizes[:i]) for i in range(len(chunk_sizes))]
    batches = [(points[s : s + size].clone(), targets[s : s + size, None]) for s, size in zip(starts, chunk_sizes)]
    started, cpu_started = time.perf_counter(), time.process_time()
    for x, target in batches:
        for _ in range(n_iterations):
            x.requires_grad_()
            score = model(x).gather(1, target).sum()
            torch.autograd.grad(score, x)
    return time.perf_counter() - started, time.process_time() - cpu_started


def chunk_sizes_of(n_rows, internal_batch_size):
    size = n_rows if internal_batch_size is None else min(internal_batch_size, n_rows)
    return [min(size, n_rows - start) for start in range(0, n_rows, size)]


def timing(args, model, x, y):
    ggig = GeometricallyGuidedIG(model)
    n_rows = len(x) * (args.n_steps + 1)
    targets = y.repeat(args.n_steps + 1)
    points = path_points(x, args.n_steps)
    print(
        f"timing: {len(x)} images {tuple(x.shape[1:])}, n_steps={args.n_steps} ({args.n_steps + 1} points), "
        f"n_iterations={args.n_iterations}: {n_rows * args.n_iterations} point gradients, "
        f"{torch.get_num_threads()} thread(s)"
    )
    for ibs in (None, args.internal_batch_size):
        sizes = chunk_sizes_of(n_rows, ibs)
        ggig_wall, ggig_cpu, floor_wall, floor_cpu = [], [], [], []

        def run_ggig():
            started, cpu_started = time.perf_counter(), time.process_time()
            ggig.attribute(
                x,
                target=y,
                n_steps=args.n_steps,
                n_iterations=args.n_iterations,
                learning_rate=args.learning_rate,
                internal_batch_size=ibs,
            )
            ggig_wall.append(time.perf_counter() - started)
            ggig_cpu.append(time.process_time() - cpu_started)

        def run_floor():
            wall, cpu = floor_time(model, sizes, points, args.n_iterations, targets)
            floor_wall.append(wall)
            floor_cpu.append(cpu)

        for repeat in range(args.repeats):  # interleaved, alternating which goes first
            for run in (run_ggig, run_floor) if repeat % 2 == 0 else (run_floor, run_ggig):
                run()
        print(f"  internal_batch_size={ibs}: {len(sizes)} chunk(s) x {args.n_iterations} passes")
        for label, ours, floor in (("wall", ggig_wall, floor_wall), ("cpu ", ggig_cpu, floor_cpu)):
            print(
                f"    {label} time: GGIG {min(ours):.3f} s (median {statistics.median(ours):.3f}), "
                f"floor {min(floor):.3f} s (median {statistics.median(floor):.3f}); "
                f"ratio of minima {min(ours) / min(floor):.3f}, of medians "
                f"{statistics.median(ours) / statistics.median(floor):.3f} [goal <= 1.10]"
            )


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak():
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def naive_ggig(model, x, y, n_steps, n_iterations, lr):
    """Store-everything GGIG (as the authors' code): every gradient kept, maximum at the end."""
    alphas = torch.linspace(0, 1, n_steps + 1).reshape(-1, 1, 1, 1, 1)
    points = (alphas * x.unsqueeze(0)).reshape((-1,) + tuple(x.shape[1:]))
    targets = y.repeat(n_steps + 1)[:, None]
    seen = []
    for _ in range(n_iterations):
        points.requires_grad_()
        grad = torch.autograd.grad(model(points).gather(1, targets).sum(), points)[0]
        points = (points + lr * grad).detach()
        seen.append(grad)
    return torch.stack(seen).amax(0).reshape((n_steps + 1,) + tuple(x.shape)).amax(0)


def memory_child(args):
    """Run in a subprocess: peak memory rise of one call, printed as JSON."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_digits_images(args.size)
    model = SmallDigitsCNN().eval()  # memory does not depend on the weights: no training here
    x, y = data.x_test[: args.n_images], data.y_test[: args.n_images]
    ggig = GeometricallyGuidedIG(model)

    def run(m):
        if args.memory_child_mode == "naive":
            return naive_ggig(model, x, y, args.n_steps, m, args.learning_rate)
        return ggig.attribute(
            x,
            target=y,
            n_steps=args.n_steps,
            n_iterations=m,
            learning_rate=args.learning_rate,
            internal_batch_size=args.memory_internal_batch_size,
        )

    run(1)  # warm-up: allocator pools, kernels, lazy imports
    exact = _reset_peak()
    before = _status_kib("VmRSS")
    run(args.memory_child)
    peak = _status_kib("VmHWM")
    if not exact:  # fall back to the process-wide high-water mark
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"m": args.memory_child, "rise_kib": peak - before, "rss_kib": before, "exact": exact}))


def memory(args):
    rows = args.n_images * (args.n_steps + 1)
    print(
        f"memory: {args.n_images} images {args.size}x{args.size}, n_steps={args.n_steps} ({rows} points), "
        f"internal_batch_size={args.memory_internal_batch_size}; one subprocess per m"
    )
    grad_mib = rows * args.size * args.size * 4 / 2**20
    print(f"  (one set of point gradients: {grad_mib:.1f} MiB)")
    for mode in ("ggig", "naive"):
        for m in args.memory_iterations:
            if mode == "naive" and m > max(args.memory_iterations[:3]):
                continue  # the naive version's growth is clear by then; spare the shared machine
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--memory-child",
                str(m),
                "--memory-child-mode",
                mode,
                "--n-images",
                str(args.n_images),
                "--n-steps",
                str(args.n_steps),
                "--size",
                str(args.size),
                "--threads",
                str(args.threads),
                "--learning-rate",
                str(args.learning_rate),
            ]
            if args.memory_internal_batch_size is not None:
                cmd += ["--memory-internal-batch-size", str(args.memory_internal_batch_size)]
            # glibc serves large blocks from its heap once its dynamic mmap threshold has grown, and
            # keeps freed heap memory: the resident size then depends on fragmentation, not on what is
            # alive. A fixed, small threshold maps every tensor buffer and unmaps it on free, so the
            # high-water mark measures the live memory.
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            result = json.loads(out.strip().splitlines()[-1])
            label = "GGIG (running max)" if mode == "ggig" else "naive (store all)"
            print(
                f"  {label:19s} m={m:4d}: peak rise {result['rise_kib'] / 1024:8.1f} MiB "
                f"(resident before {result['rss_kib'] / 1024:.0f} MiB{'' if result['exact'] else ', ru_maxrss'})"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--n-iterations", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--internal-batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-iterations", type=int, nargs="+", default=[1, 10, 50, 100])
    parser.add_argument("--memory-internal-batch-size", type=int, default=None)
    parser.add_argument("--skip-time", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child-mode", default="ggig", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_child is not None:
        memory_child(args)
        return
    torch.set_num_threads(args.threads)
    if not args.skip_time:
        torch.manual_seed(0)
        data = load_digits_images(args.size)
        model = train_classifier(SmallDigitsCNN(), data.x_train, data.y_train, epochs=8)
        print(
            f"model: SmallDigitsCNN on {args.size}x{args.size} digits, "
            f"test accuracy {accuracy(model, data.x_test, data.y_test):.3f}"
        )
        timing(args, model, data.x_test[: args.n_images], data.y_test[: args.n_images])
    if not args.skip_memory:
        memory(args)


if __name__ == "__main__":
    main()
