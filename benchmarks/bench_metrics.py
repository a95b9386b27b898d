"""Benchmark: insertion + deletion of 100 digits images at step 10 on the digits CNN.

Compares the wall time of ``captum_paths.metrics.insertion`` + ``deletion`` with
  (a) the bare forward passes they need: the same number of images, already built, through the model in
      the same batch sizes (the floor: the goal is at most 1.2x of it);
  (b) a one-image-at-a-time loop in the style of RISE's ``CausalMetric.single_run`` (one forward per
      step and image, perturbing the image in place).
  (c) with ``--explainattr DIR`` (a checkout of the SAMP authors' zbr17/ExplainAttr, MIT, imported from DIR at
      run time, never copied here): their ``Metric`` (SAMP protocol: raw logit, curve / input score, mean of
      the points, deletion to zeros, insertion from ``gaussian_blur(11, 5)``) against ours under the same
      protocol with the default chunking, on the same images, attributions and predicted classes.
Every timing is the best of ``--repeats`` runs. Usage:

    python benchmarks/bench_metrics.py [--n 100] [--size 28] [--step 10] [--batch 1000 4000 0] [--threads 1]
        [--explainattr /path/to/ExplainAttr]
"""

import argparse
import importlib.util
import os
import sys
import time
import types

import torch
from captum.attr import Saliency

from captum_paths.baselines import gaussian_blur
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SmallDigitsCNN, accuracy, train_classifier
from captum_paths.metrics import deletion, insertion

CPU_TIMES = {}


def best_of(fn, repeats, key=None):
    """Best wall time of ``repeats`` runs; the best process CPU time is kept in ``CPU_TIMES[key]`` (less
    sensitive than wall time to other processes on a shared machine)."""
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    if key is not None:
        CPU_TIMES[key] = min(cpu)
    return min(times), out


def loop_one_at_a_time(model, x, attr, target, step):
    """RISE-style: one image at a time, one forward per step, in-place pixel copies."""
    n, c, h, w = x.shape
    hw = h * w
    n_steps = (hw + step - 1) // step
    order = attr.sum(1).reshape(n, hw).argsort(dim=1, descending=True, stable=True)
    blurred = gaussian_blur(x, 11, 5.0)
    aucs = []
    with torch.no_grad():
        for mode in ("del", "ins"):
            for i in range(n):
                start = (x[i : i + 1] if mode == "del" else blurred[i : i + 1]).clone().reshape(1, c, hw)
                finish = (torch.zeros_like(x[i : i + 1]) if mode == "del" else x[i : i + 1]).reshape(1, c, hw)
                scores = torch.empty(n_steps + 1)
                for k in range(n_steps + 1):
                    scores[k] = model(start.reshape(1, c, h, w))[0, target[i]]
                    if k < n_steps:
                        idx = order[i, k * step : (k + 1) * step]
                        start[0, :, idx] = finish[0, :, idx]
                aucs.append((scores.sum() - scores[0] / 2 - scores[-1] / 2) / n_steps)
    return torch.stack(aucs)


def load_explainattr_metric(root):
    """The authors' ``src/benchmark/metric.py`` from a checkout, with its unused imports stubbed (``tbwriter``,
    ``misc``, the ``compress_jpeg`` its constructor builds but deletion/insertion never use)."""
    sys.modules.setdefault("tbwriter", types.ModuleType("tbwriter"))
    for name, sub in (("_explainattr", ""), ("_explainattr.methods", "methods")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(root, "src", "benchmark", sub)]
        sys.modules[name] = pkg
    misc = types.ModuleType("_explainattr.misc")
    misc.recover_data = None
    sys.modules["_explainattr.misc"] = misc
    for name, path in (("_explainattr.methods.utils", "methods/utils.py"), ("_explainattr.metric", "metric.py")):
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "src", "benchmark", path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    module.compress_jpeg = lambda: types.SimpleNamespace(to=lambda device: None)
    return module


def compare_with_authors(model, x, attr, step, repeats, root):
    """SAMP protocol: the authors' ``Metric`` against ours (default chunks), CPU and wall time, same AUCs."""
    authors = load_explainattr_metric(root).Metric(step_per=step)
    pred = model(x).argmax(1).detach()

    def theirs():
        out = authors(
            model, x.clone(), pred.numpy(), None, lambda m, img, layer_name: {"cam": attr.sum(1), "pred": pred}
        )
        return torch.as_tensor(out["deletion"]["auc"]), torch.as_tensor(out["insertion"]["auc"])

    def ours():
        kw = dict(target=pred, features_per_step=step, score="logit", auc="mean", normalize=True)
        return deletion(model, x, attr, substrate="zeros", **kw), insertion(model, x, attr, substrate="blur", **kw)

    t_theirs, t_ours, c_theirs, c_ours = (float("inf"),) * 4
    for _ in range(repeats):  # interleaved, so that drifting load hits both alike
        t, (d_a, i_a) = best_of(theirs, 1, "authors")
        t_theirs, c_theirs = min(t_theirs, t), min(c_theirs, CPU_TIMES["authors"])
        t, (d_o, i_o) = best_of(ours, 1, "ours")
        t_ours, c_ours = min(t_ours, t), min(c_ours, CPU_TIMES["ours"])
    diff = max((d_a - d_o).abs().max().item(), (i_a - i_o).abs().max().item())
    print(
        f"SAMP protocol, step {step}: authors' Metric {t_theirs:.3f} s wall / {c_theirs:.3f} s CPU; ours (default "
        f"chunks) {t_ours:.3f} s / {c_ours:.3f} s: ours/theirs {t_ours / t_theirs:.2f}x wall, {c_ours / c_theirs:.2f}x "
        f"CPU; max |AUC difference| {diff:.2e}; load average {os.getloadavg()[0]:.2f}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 256, 1000, 0], help="0 = all rows at once")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--explainattr", default=None, help="checkout of zbr17/ExplainAttr: compare with its Metric")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_digits_images(size=args.size, seed=0)
    torch.manual_seed(0)
    model = train_classifier(SmallDigitsCNN(), data.x_train, data.y_train, epochs=5, seed=0)
    x, y = data.x_test[: args.n], data.y_test[: args.n]
    print(
        f"digits {args.size}x{args.size}, test accuracy {accuracy(model, data.x_test, data.y_test):.3f}, "
        f"{args.n} images, step {args.step}, torch threads {torch.get_num_threads()}"
    )
    attr = Saliency(model).attribute(x, target=y, abs=False).detach()
    n_features = args.size * args.size
    points = (n_features + args.step - 1) // args.step + 1
    rows = 2 * args.n * points
    print(f"{points} points per curve -> {rows} model evaluations for insertion + deletion")

    if args.explainattr:
        compare_with_authors(model, x, attr, args.step, args.repeats, args.explainattr)

    time_chunk_sizes(model, x, attr, y, args, points, rows)
    if not args.skip_loop:
        time_against_a_loop(model, x, attr, y, args)


def time_chunk_sizes(model, x, attr, y, args, points, rows):
    """Insertion + deletion at each chunk size against the bare forwards of as many rows, interleaved."""
    for batch in args.batch:
        chunk = 10**9 if batch == 0 else batch
        label = "all" if batch == 0 else str(chunk)

        def metrics():
            d = deletion(
                model, x, attr, target=y, features_per_step=args.step, score="logit", max_examples_per_batch=chunk
            )
            i = insertion(
                model, x, attr, target=y, features_per_step=args.step, score="logit", max_examples_per_batch=chunk
            )
            return d, i

        # the floor: the same number of images, pre-built, through the model in the same batch sizes
        per_batch = min(rows // 2, chunk)
        prebuilt = x.repeat_interleave(points, dim=0)  # one metric's rows (deletion or insertion)

        def bare():
            with torch.no_grad():
                for _ in range(2):
                    for s in range(0, prebuilt.shape[0], per_batch):
                        model(prebuilt[s : s + per_batch])

        # interleaved (metric, bare, metric, bare, ...) so that drifting load hits both alike
        t_metric, t_bare = float("inf"), float("inf")
        cpu_metric, cpu_bare = float("inf"), float("inf")
        for _ in range(args.repeats):
            t, _ = best_of(metrics, 1, "metric")
            t_metric, cpu_metric = min(t_metric, t), min(cpu_metric, CPU_TIMES["metric"])
            t, _ = best_of(bare, 1, "bare")
            t_bare, cpu_bare = min(t_bare, t), min(cpu_bare, CPU_TIMES["bare"])
        CPU_TIMES["metric"], CPU_TIMES["bare"] = cpu_metric, cpu_bare
        print(
            f"max_examples_per_batch={label:>5}: insertion+deletion {t_metric:.3f} s, bare forwards "
            f"{t_bare:.3f} s, ratio {t_metric / t_bare:.2f}x (wall); CPU {CPU_TIMES['metric']:.3f} s vs "
            f"{CPU_TIMES['bare']:.3f} s, ratio {CPU_TIMES['metric'] / CPU_TIMES['bare']:.2f}x"
        )


def time_against_a_loop(model, x, attr, y, args):
    """The batched metrics against a loop over images, one at a time."""

    def batched():
        return (
            deletion(model, x, attr, target=y, features_per_step=args.step, score="logit"),
            insertion(model, x, attr, target=y, features_per_step=args.step, score="logit"),
        )

    # batched timed before and after the loop: the machine's load may change in between
    t_before, (d, i) = best_of(batched, args.repeats, "before")
    t_loop, loop_aucs = best_of(lambda: loop_one_at_a_time(model, x, attr, y, args.step), 1, "loop")
    t_after, _ = best_of(batched, args.repeats, "after")
    same = torch.allclose(loop_aucs, torch.cat([d, i]), atol=1e-4)
    t_metric = min(t_before, t_after)
    print(
        f"one-image-at-a-time loop: {t_loop:.3f} s; batched (all rows) {t_before:.3f} s before, "
        f"{t_after:.3f} s after the loop: {t_loop / t_metric:.1f}x faster (wall); CPU: loop "
        f"{CPU_TIMES['loop']:.3f} s, batched {min(CPU_TIMES['before'], CPU_TIMES['after']):.3f} s: "
        f"{CPU_TIMES['loop'] / min(CPU_TIMES['before'], CPU_TIMES['after']):.1f}x; same AUCs: {same}"
    )
    print(f"mean deletion AUC {d.mean():.4f}, mean insertion AUC {i.mean():.4f} (Saliency, logit, trapezoid)")


if __name__ == "__main__":
    main()
