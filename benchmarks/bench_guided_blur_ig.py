"""GuidedIG and BlurIG against PAIR saliency (one image per call) and against their floor of bare passes.

    python benchmarks/bench_guided_blur_ig.py [--n-images 32] [--pair-images 4] [--equal-images 2]
                                              [--repeats 3] [--threads 1] [--epochs 3]
                                              [--methods guided blur] [--blur-internal-batch-size 128]
                                              [--model samp-paper|small]

On scikit-learn's digits at 28x28 and the SAMP paper's CNN (``SampPaperCNN``, the benchmark's digits model;
``--model small``: ``SmallDigitsCNN``, the tests' 8/16-channel CNN), trained ``--epochs`` epochs (0 keeps
random weights), target = the label, PAIR's default settings for both methods (Guided IG: 200
steps, fraction 0.25, max_dist 0.02, zero baseline; Blur IG: max_sigma 50, 100 steps, grad_step 0.01):

1. **Ours vs the floor.** Wall and process-CPU time of one ``attribute`` call on ``--n-images`` images
   (one batch), against the bare passes it needs: Captum's ``compute_gradients`` (the gradient function
   ours calls) of the summed target logit on batches of exactly the same sizes and similar points
   (Guided IG: ``n_steps`` passes of ``N`` straight-line points; Blur IG: the ``N * n_steps`` blurred points
   in chunks of ``--blur-internal-batch-size``). Goal: at most 1.15.
2. **Ours vs PAIR.** PAIR saliency 0.2.1's ``GetMask`` on ``--pair-images`` of the images, one call each
   (Blur IG with its default ``batch_size=1`` and with ``batch_size=n_steps``, its fastest), with a
   ``call_model_function`` that runs the same float32 model; seconds per image against ours per image.
   Goal: ours at least 5x faster. The **bound** line gives the same bare passes one image at a time
   against batched: the most any batched code can gain over one-image-per-call code on this model and
   thread count, whatever its overhead. PAIR's Guided IG needs ``np.quantile(interpolation=)`` mapped to
   ``method=`` on NumPy 2 (done here, for the call only).
3. **Equal output.** On ``--equal-images`` images, float64 copies of the model: the largest difference of
   ours from PAIR relative to PAIR's largest attribution (float64: same selections, same sums).

Timed runs are interleaved (the order alternates between repeats); minima and medians are printed with
``os.getloadavg()`` beside each figure (the machine may be shared).
"""

import argparse
import copy
import os
import statistics
import time

import numpy as np
import torch
from captum._utils.gradient import compute_gradients

from captum_paths.attr import BlurIG, GuidedIG
from captum_paths.attr._core.blur_ig import blur_sigmas, gaussian_blurs
from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.methods import pair_call_model as shared_pair_call_model
from captum_paths.benchmark.models import SampPaperCNN, SmallDigitsCNN, accuracy, train_classifier

GUIDED = dict(n_steps=200, fraction=0.25, max_dist=0.02)
BLUR = dict(max_sigma=50.0, n_steps=100, grad_step=0.01)


def load(fmt: str) -> str:
    return f"load {' '.join(f'{v:.2f}' for v in os.getloadavg())}{fmt}"


def timed(fn):
    started, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - cpu


def summed_logit(model, target):
    def forward(x):
        return model(x).gather(1, target[:, None]).sum().reshape(1)

    return forward


def floor_passes(model, batches):
    """The bare forward+backward passes: ``compute_gradients`` of the summed target logit, per batch."""
    for points, target in batches:
        compute_gradients(summed_logit(model, target), (points.detach().requires_grad_(),))


# ------------------------------------------------------------------------------------------------ PAIR


def pair_call_model(model, target):
    """PAIR's call_model_function for our torch model (the benchmark's), in the model's own dtype."""
    return shared_pair_call_model(model, target, next(model.parameters()).dtype)


def pair_guided_ig(model, image, target):
    from saliency.core.guided_ig import GuidedIG as PairGuidedIG

    quantile = np.quantile

    def numpy2_quantile(a, q, interpolation=None, **kwargs):
        return quantile(a, q, method=interpolation or "linear", **kwargs)

    np.quantile = numpy2_quantile  # PAIR 0.2.1 passes interpolation=, which NumPy 2 removed
    try:
        mask = PairGuidedIG().GetMask(
            image.permute(1, 2, 0).double().numpy(), pair_call_model(model, target), x_steps=GUIDED["n_steps"],
            fraction=GUIDED["fraction"], max_dist=GUIDED["max_dist"],
        )  # fmt: skip
    finally:
        np.quantile = quantile
    return torch.from_numpy(mask).permute(2, 0, 1)


def pair_blur_ig(model, image, target, batch_size=1):
    from saliency.core.blur_ig import BlurIG as PairBlurIG

    mask = PairBlurIG().GetMask(
        image.permute(1, 2, 0).numpy(), pair_call_model(model, target), max_sigma=BLUR["max_sigma"],
        steps=BLUR["n_steps"], grad_step=BLUR["grad_step"], batch_size=batch_size,
    )  # fmt: skip
    return torch.from_numpy(np.asarray(mask)).permute(2, 0, 1)


# ------------------------------------------------------------------------------------------------ runs


def single_image_batches(method, x, y, k):
    """The floor's passes of the first ``k`` images, one image per pass (PAIR's batch of one)."""
    return [batch for i in range(k) for batch in floor_batches(method, x[i : i + 1], y[i : i + 1], 1)]


def floor_batches(method, x, y, blur_ibs):
    """The batches of points the method's passes see (their construction is not timed)."""
    if method == "guided":
        n = GUIDED["n_steps"]
        return [(x * (step / n), y) for step in range(n)]
    n_steps = BLUR["n_steps"]
    sigmas = blur_sigmas(BLUR["max_sigma"], n_steps)
    points = torch.cat([gaussian_blurs(x.double(), [sigmas[i]])[0].float() for i in reversed(range(n_steps))])
    targets = y.repeat(n_steps)
    size = blur_ibs or points.shape[0]
    return [(points[s : s + size], targets[s : s + size]) for s in range(0, points.shape[0], size)]


def ours(method, model, x, y, blur_ibs):
    if method == "guided":
        return GuidedIG(model).attribute(x, target=y, **GUIDED)
    return BlurIG(model).attribute(x, target=y, internal_batch_size=blur_ibs, **BLUR)


def pair_runs(method):
    if method == "guided":
        return {"PAIR GuidedIG": pair_guided_ig}
    return {
        "PAIR BlurIG batch_size=1": pair_blur_ig,
        f"PAIR BlurIG batch_size={BLUR['n_steps']}": lambda m, i, t: pair_blur_ig(m, i, t, BLUR["n_steps"]),
    }


def benchmark(method, model, x, y, args):
    n, k = x.shape[0], args.pair_images
    batches = floor_batches(method, x, y, args.blur_internal_batch_size)
    singles = single_image_batches(method, x, y, k)
    times = {"ours": [], "floor": [], "floor, one image per pass": [], **{name: [] for name in pair_runs(method)}}
    runs = {
        "ours": lambda: ours(method, model, x, y, args.blur_internal_batch_size),
        "floor": lambda: floor_passes(model, batches),
        "floor, one image per pass": lambda: floor_passes(model, singles),
        **{
            name: (lambda fn=fn: [fn(model, x[i], int(y[i])) for i in range(k)])
            for name, fn in pair_runs(method).items()
        },
    }
    for repeat in range(args.repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in order:
            times[name].append(timed(runs[name]))
    per_image = {name: [w / (n if name in ("ours", "floor") else k) for w, _ in t] for name, t in times.items()}
    print(f"\n{method}: {n} images in one call (ours), PAIR on {k} images one per call, {args.repeats} repeats")
    for name, values in per_image.items():
        cpu = [c / (n if name in ("ours", "floor") else k) for _, c in times[name]]
        print(
            f"  {name:28s} {min(values) * 1e3:9.2f} ms/img (median {statistics.median(values) * 1e3:9.2f}; "
            f"cpu min {min(cpu) * 1e3:9.2f}) " + load("")
        )
    ours_min, ours_med = min(per_image["ours"]), statistics.median(per_image["ours"])
    cpu_ours = min(c for _, c in times["ours"])
    cpu_floor = min(c for _, c in times["floor"])
    print(
        f"  ours / floor: wall minima {ours_min / min(per_image['floor']):.3f}, medians "
        f"{ours_med / statistics.median(per_image['floor']):.3f}, cpu minima {cpu_ours / cpu_floor:.3f} [goal <= 1.15]"
    )
    single = per_image["floor, one image per pass"]
    print(
        f"  bound: floor one image per pass / floor batched: minima {min(single) / min(per_image['floor']):.1f}x, "
        f"medians {statistics.median(single) / statistics.median(per_image['floor']):.1f}x (the most batching can gain)"
    )
    for name in pair_runs(method):
        print(
            f"  {name} / ours: minima {min(per_image[name]) / ours_min:.1f}x, medians "
            f"{statistics.median(per_image[name]) / ours_med:.1f}x [goal >= 5]"
        )


def equality(method, model, x, y):
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    ours64 = ours(method, model64, x64, y, None)
    for name, fn in pair_runs(method).items():
        worst = 0.0
        for i in range(x.shape[0]):
            ref = fn(model64, x64[i], int(y[i]))
            worst = max(worst, float((ours64[i] - ref).abs().max() / ref.abs().max()))
        print(f"  equal output ({x.shape[0]} images, float64): ours vs {name}: max |diff| / max |PAIR| = {worst:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--pair-images", type=int, default=4)
    parser.add_argument("--equal-images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--blur-internal-batch-size", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=["guided", "blur"], choices=["guided", "blur"])
    parser.add_argument("--model", choices=("samp-paper", "small"), default="samp-paper")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_digits_images(28)
    model = (SampPaperCNN() if args.model == "samp-paper" else SmallDigitsCNN()).eval()
    if args.epochs > 0:
        model = train_classifier(model, data.x_train, data.y_train, epochs=args.epochs)
    for p in model.parameters():
        p.requires_grad_(False)
    print(
        f"{type(model).__name__}, {args.epochs} epoch(s), "
        f"test accuracy {accuracy(model, data.x_test, data.y_test):.3f}; "
        f"{torch.get_num_threads()} thread(s); " + load("")
    )
    x, y = data.x_test[: args.n_images], data.y_test[: args.n_images]
    for method in args.methods:
        benchmark(method, model, x, y, args)
        equality(method, model, x[: args.equal_images], y[: args.equal_images])


if __name__ == "__main__":
    main()
