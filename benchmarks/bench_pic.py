"""Benchmark: SIC + AIC per image, ``captum_paths.metrics.pic`` vs PAIR saliency 0.2.1's ``compute_pic_metric``.

scikit-learn digits at ``--size`` (default 28), the small digits CNN (trained here in a few seconds), saliency
= |channel sum of gradient x input|, PAIR's 13 thresholds, lossless WebP proxy, min_pred_value 0.5 (PAIR's
notebook). PAIR computes SIC and AIC with two ``compute_pic_metric`` calls per image (its notebook's way);
``pic`` computes both from one set of images and passes. Both get the same seed masks. One torch thread;
PAIR and ours are timed in alternation (``--repeats`` rounds) and the best round of each is reported, with
the load average beside it. Also reports the largest difference of the per-image curves and aggregate AUCs.

    python benchmarks/bench_pic.py [--n 30] [--size 28] [--repeats 3] [--threads 1]
"""

import argparse
import os
import time

import numpy as np
import torch

from captum_paths.benchmark.data import load_digits_images
from captum_paths.benchmark.models import SmallDigitsCNN, train_classifier
from captum_paths.metrics import pic
from captum_paths.metrics._core.pic import PAIR_THRESHOLDS, quantize, saliency_map


def pair_module():
    """PAIR's pic, made to run on numpy 2 and on greyscale images whose mask is full (see the tests)."""
    from saliency.metrics import pic as pair

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    blur = pair.create_blurred_image
    pair.create_blurred_image = lambda full_img, *a, **k: blur(full_img, *a, **k).reshape(full_img.shape)
    return pair


def run_pair(pair, model, u8, sal, seeds, cls):
    results = {False: [], True: []}
    for accuracy in (False, True):
        for i in range(len(u8)):
            c = int(cls[i])

            def pred(batch, c=c, accuracy=accuracy):
                with torch.no_grad():
                    p = torch.softmax(model(torch.as_tensor(batch)[:, None].float() * 1.0 / 255 + 0.0), 1)
                return ((p.argmax(1) == c).float() if accuracy else p[:, c]).numpy()

            try:
                results[accuracy].append(
                    pair.compute_pic_metric(u8[i], sal[i], seeds[i], pred, PAIR_THRESHOLDS, min_pred_value=0.5)
                )
            except pair.ComputePicMetricError:
                results[accuracy].append(None)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pair = pair_module()
    data = load_digits_images(size=args.size)
    model = train_classifier(SmallDigitsCNN(), data.x_train, data.y_train, epochs=5)
    x = data.x_test[: args.n].clone().requires_grad_(True)
    out = model(x)
    cls = out.argmax(1)
    out.gather(1, cls[:, None]).sum().backward()
    attr, x = (x.grad * x).detach(), x.detach()
    u8, sal = quantize(x, 0.0, 1.0)[:, 0].numpy(), saliency_map(attr).numpy()
    np.random.seed(0)
    seeds = np.stack([pair.generate_random_mask(args.size, args.size, 0.01) for _ in range(args.n)])
    seeds_t = torch.as_tensor(seeds)

    times = {"pair": [], "ours": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        ref = run_pair(pair, model, u8, sal, seeds, cls)
        times["pair"].append((time.perf_counter() - t, os.getloadavg()[0]))
        t = time.perf_counter()
        ours = pic(model, x, attr, target=cls, seed_masks=seeds_t, min_pred_value=0.5)
        times["ours"].append((time.perf_counter() - t, os.getloadavg()[0]))

    diff_curve, diff_auc = 0.0, 0.0
    for curve, accuracy in ((ours.sic, False), (ours.aic, True)):
        assert curve.valid.tolist() == [r is not None for r in ref[accuracy]]
        kept = [r for r in ref[accuracy] if r is not None]
        for i, r in enumerate(ref[accuracy]):
            if r is not None:
                diff_curve = max(diff_curve, float(np.abs(curve.curves[i].numpy() - r.curve_y).max()))
        agg = pair.aggregate_individual_pic_results(kept)
        diff_auc = max(diff_auc, abs(curve.aggregate_auc.item() - agg.auc))
    best = {k: min(v) for k, v in times.items()}
    print(f"{args.n} digits {args.size}x{args.size}, {len(PAIR_THRESHOLDS)} thresholds, torch threads {args.threads}")
    for k in ("pair", "ours"):
        sec, load = best[k]
        print(f"  {k:5s} SIC+AIC: {sec / args.n * 1000:8.2f} ms / image   (load average {load:.2f})")
    print(f"  ratio PAIR / ours: {best['pair'][0] / best['ours'][0]:.1f}x")
    print(f"  kept SIC {int(ours.sic.valid.sum())}, AIC {int(ours.aic.valid.sum())} of {args.n}")
    print(f"  max |curve difference| {diff_curve:.2e}, max |aggregate AUC difference| {diff_auc:.2e}")
    print(f"  SIC AUC {ours.sic.aggregate_auc.item():.4f}, AIC AUC {ours.aic.aggregate_auc.item():.4f}")
    print(f"  load average now {os.getloadavg()}")


if __name__ == "__main__":
    main()
