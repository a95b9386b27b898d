"""SIC / AIC (captum_paths.metrics.pic): agreement with PAIR saliency 0.2.1's ``pic.py`` and the pieces' maths."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from captum_paths.metrics import PicResult, aic, pic, sic
from captum_paths.metrics._core.pic import (
    PAIR_THRESHOLDS,
    aggregate_curves,
    grey_entropy,
    interpolate_from_mask,
    linear_quantile,
    normalize_points,
    pic_curves,
    quantize,
    random_seed_masks,
    saliency_map,
    threshold_masks,
    trapezoid,
    webp_size,
)


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pair():
    """PAIR's pic module, patched for numpy 2 (np.trapz removed; np.quantile's `interpolation=` renamed)."""
    pytest.importorskip("saliency", reason="PAIR saliency (pip install saliency==0.2.1) is the test oracle")
    from saliency.metrics import pic as pair_pic

    mp = pytest.MonkeyPatch()
    if not hasattr(np, "trapz"):
        mp.setattr(np, "trapz", np.trapezoid, raising=False)
    quantile = np.quantile

    def quantile_compat(*args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return quantile(*args, **kwargs)

    mp.setattr(np, "quantile", quantile_compat)
    # PAIR bug: on a greyscale image a full mask returns the (H, W, 1) array it expanded, which PIL cannot
    # encode (TypeError); the image itself is what it means to return
    blur = pair_pic.create_blurred_image
    mp.setattr(
        pair_pic, "create_blurred_image", lambda full_img, *a, **k: blur(full_img, *a, **k).reshape(full_img.shape)
    )
    yield pair_pic
    mp.undo()


class Centroids(nn.Module):
    """Nearest-centroid classifier (float64): ``logit_c = s (<x, m_c> - |m_c|^2 / 2)``; confident, untrained."""

    def __init__(self, means: torch.Tensor, scale: float = 2.0):
        super().__init__()
        self.means, self.scale = means.flatten(1), scale

    def forward(self, x, temperature=None):
        flat = x.flatten(1)
        out = self.scale * (flat @ self.means.T - 0.5 * (self.means**2).sum(1))
        return out if temperature is None else out / temperature.reshape(-1, 1)


@pytest.fixture(scope="module")
def digits():
    from captum_paths.benchmark.data import load_digits_images

    split = load_digits_images(size=20)
    means = torch.stack([split.x_train[split.y_train == c].mean(0) for c in range(10)]).double()
    model = Centroids(means)
    x = split.x_test[:8].double()
    x = (x * 255).round() / 255  # already on the 8-bit grid: quantisation is the identity
    x.requires_grad_(True)
    out = model(x)
    cls = out.argmax(1)
    out.gather(1, cls[:, None]).sum().backward()
    attr = (x.grad * x).detach()  # input x gradient: zero on the background, so quantile ties occur
    return model, x.detach(), attr, cls


def _pair_results(pair, model, x, attr, cls, seeds, accuracy, information=None, **kwargs):
    u8 = quantize(x, 0.0, 1.0)[:, 0].numpy()
    sal = saliency_map(attr).numpy()

    def pred_func(c):
        def f(batch):
            with torch.no_grad():
                p = torch.softmax(model(torch.as_tensor(batch)[:, None].double() * 1.0 / 255 + 0.0), 1)
            return ((p.argmax(1) == c).double() if accuracy else p[:, c]).numpy()

        return f

    mp = pytest.MonkeyPatch()
    if information is not None:
        mp.setattr(pair, "estimate_image_entropy", information)
    out = []
    try:
        for i in range(len(x)):
            try:
                out.append(pair.compute_pic_metric(u8[i], sal[i], seeds[i], pred_func(int(cls[i])), **kwargs))
            except pair.ComputePicMetricError:
                out.append(None)
    finally:
        mp.undo()
    return out


def _assert_matches_pair(curve, pair_results, pair_agg_fn, method="median"):
    assert curve.valid.tolist() == [r is not None for r in pair_results]
    kept = [r for r in pair_results if r is not None]
    assert len(kept) >= 3  # a meaningful comparison
    for i, r in enumerate(pair_results):
        if r is None:
            assert torch.isnan(curve.curves[i]).all() and torch.isnan(curve.auc[i])
            continue
        np.testing.assert_allclose(curve.x.numpy(), r.curve_x, rtol=0, atol=0)
        np.testing.assert_allclose(curve.curves[i].numpy(), r.curve_y, rtol=0, atol=1e-9)
        np.testing.assert_allclose(curve.auc[i].item(), r.auc, rtol=0, atol=1e-9)
        np.testing.assert_allclose(curve.scores[i].numpy(), np.asarray(r.predictions, dtype=np.float64), atol=1e-12)
    agg = pair_agg_fn(kept, method=method)
    np.testing.assert_allclose(curve.aggregate_curve.numpy(), agg.curve_y, rtol=0, atol=1e-9)
    np.testing.assert_allclose(curve.aggregate_auc.item(), agg.auc, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------ PAIR agreement
def test_sic_aic_equal_pair(pair, digits):
    model, x, attr, cls = digits
    np.random.seed(0)
    seeds = np.stack([pair.generate_random_mask(20, 20, 0.02) for _ in range(len(x))])
    kwargs = dict(saliency_thresholds=PAIR_THRESHOLDS, min_pred_value=0.5)
    refs = [_pair_results(pair, model, x, attr, cls, seeds, accuracy, **kwargs) for accuracy in (False, True)]
    for aggregate in ("median", "mean"):
        ours = pic(
            model, x, attr, target=cls, seed_masks=torch.as_tensor(seeds), min_pred_value=0.5, aggregate=aggregate
        )
        assert isinstance(ours, PicResult)
        for curve, ref in zip((ours.sic, ours.aic), refs):
            _assert_matches_pair(curve, ref, pair.aggregate_individual_pic_results, aggregate)
    # PAIR's information proxy, image by image
    blurred = interpolate_from_mask(quantize(x, 0.0, 1.0), torch.as_tensor(seeds))
    expected = [pair.estimate_image_entropy(b[0].numpy()) for b in blurred]
    assert webp_size(blurred).tolist() == expected


def test_entropy_proxy_and_options_equal_pair(pair, digits):
    """The grey-entropy proxy plugged into PAIR's pipeline, without the running max, 200 points."""
    model, x, attr, cls = digits

    def entropy_np(image):
        _, counts = np.unique(image.astype(np.float64) / 255.0, return_counts=True)
        p = counts / counts.sum()
        return float(-(p * np.log(p)).sum())

    rng = np.random.default_rng(3)
    seeds = rng.random((len(x), 20, 20)) < 0.02
    x = ((0.8 * x + 0.2 * torch.as_tensor(rng.random(x.shape))) * 255).round() / 255  # more grey levels
    kwargs = dict(saliency_thresholds=(0.02, 0.1, 0.3, 0.6), min_pred_value=0.3, keep_monotonous=False)
    ours = pic(
        model,
        x,
        attr,
        seed_masks=torch.as_tensor(seeds),
        thresholds=(0.02, 0.1, 0.3, 0.6),
        information="entropy",
        min_pred_value=0.3,
        keep_monotonous=False,
        num_data_points=200,
    )
    assert torch.equal(ours.target, cls)  # target=None: the top-1 class on the input
    ref = _pair_results(pair, model, x, attr, cls, seeds, False, entropy_np, num_data_points=200, **kwargs)
    _assert_matches_pair(ours.sic, ref, pair.aggregate_individual_pic_results)


@pytest.mark.parametrize("channels", [1, 3])
def test_interpolation_equals_pair_create_blurred_image(pair, channels):
    rng = np.random.default_rng(channels)
    for trial in range(12):
        h, w = (int(v) for v in rng.integers(3, 20, 2))
        img = rng.integers(0, 256, (h, w, channels)).astype(np.uint8)
        if trial % 2:  # few distinct values: many exact .5 roundings
            img = (img // 85 * 85).astype(np.uint8)
        mask = rng.random((h, w)) < rng.choice([0.0, 0.05, 0.3, 0.8])
        ref = pair.create_blurred_image(img[:, :, 0] if channels == 1 else img, mask)
        ours = interpolate_from_mask(torch.as_tensor(img).permute(2, 0, 1)[None], torch.as_tensor(mask)[None])[0]
        assert np.array_equal(ours.permute(1, 2, 0).numpy().reshape(ref.shape), ref)


# --------------------------------------------------------------------------------------- pure pieces
def test_interpolation_pair_examples_and_properties():
    img = torch.tensor([[0, 0, 0], [2, 16, 2], [0, 0, 0]], dtype=torch.uint8)[None, None]
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, 1, 0] = True  # with the forced corners: the centre is halfway between 2 and 0
    assert interpolate_from_mask(img, mask)[0, 0].tolist() == [[0, 0, 0], [2, 1, 0], [0, 0, 0]]
    ones_corners = torch.tensor([[1, 9, 1], [9, 9, 9], [1, 9, 1]], dtype=torch.uint8)[None, None]
    assert (interpolate_from_mask(ones_corners, torch.zeros(1, 3, 3, dtype=torch.bool)) == 1).all()
    # full mask: the image; affine images are reproduced exactly; kept pixels never change
    g = torch.Generator().manual_seed(0)
    ii, jj = torch.meshgrid(torch.arange(12), torch.arange(15), indexing="ij")
    ramp = (3 * ii + 7 * jj + 5).to(torch.uint8)[None, None].repeat(4, 2, 1, 1)
    masks = torch.rand(4, 12, 15, generator=g) < torch.tensor([0.0, 0.1, 0.5, 1.0]).reshape(4, 1, 1)
    assert torch.equal(interpolate_from_mask(ramp, masks), ramp)
    noise = torch.randint(0, 256, (4, 2, 12, 15), generator=g, dtype=torch.uint8)
    out = interpolate_from_mask(noise, masks)
    assert torch.equal(out[masks.unsqueeze(1).expand_as(out)], noise[masks.unsqueeze(1).expand_as(out)])
    assert torch.equal(out[3], noise[3])


def test_linear_quantile_equals_numpy():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        values = torch.randn(6, 97, generator=g).to(dtype)
        values[3] = (values[3] * 2).round()  # ties
        values[4] = 0.0
        for q in (0.0, 0.005, 1 - 0.005, 1 - 0.13, 0.5, 0.25, 1 - 0.75, 0.999, 1.0):
            ours = linear_quantile(values, q)
            ref = np.quantile(values.numpy(), q, axis=1)
            assert ours.dtype == dtype and np.array_equal(ours.numpy(), ref.astype(ours.numpy().dtype)), (dtype, q)


def test_threshold_masks_pair_and_rank():
    g = torch.Generator().manual_seed(2)
    s = torch.rand(3, 10, 10, generator=g)
    seeds = torch.zeros(3, 10, 10, dtype=torch.bool)
    taus = (0.01, 0.1, 0.5, 0.75, 1.0)
    pair_masks = threshold_masks(s, taus, seeds, "pair")
    for k, tau in enumerate(taus):
        ref = s.numpy() >= np.quantile(s.reshape(3, -1).numpy(), 1 - tau, axis=1)[:, None, None]
        assert np.array_equal(pair_masks[:, k].numpy(), ref)
    assert torch.equal(threshold_masks(s, taus, seeds, "rank"), pair_masks)  # no ties: the same pixels
    # half the map tied at zero: PAIR reveals everything at tau = 0.5, the rank rule exactly 50 pixels
    tied = s.clone()
    tied.reshape(3, -1)[:, :60] = 0
    assert threshold_masks(tied, (0.5,), seeds, "pair").all()
    assert threshold_masks(tied, (0.5,), seeds, "rank").reshape(3, -1).sum(1).tolist() == [50, 50, 50]
    seeds[:, 0, 0] = True
    assert threshold_masks(s, (0.01,), seeds)[:, 0, 0, 0].all()  # the seeds are always revealed


def test_random_seed_masks_count_and_generator():
    state = torch.get_rng_state()
    a = random_seed_masks(4, 100, 100, 0.2, torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)
    assert a.reshape(4, -1).sum(1).tolist() == [2000] * 4  # PAIR's test: exactly int(h w fraction)
    assert torch.equal(a, random_seed_masks(4, 100, 100, 0.2, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, random_seed_masks(4, 100, 100, 0.2, torch.Generator().manual_seed(6)))
    assert random_seed_masks(2, 28, 28, 0.01).reshape(2, -1).sum(1).tolist() == [7, 7]


def test_information_proxies():
    g = torch.Generator().manual_seed(3)
    flat = torch.full((1, 1, 8, 8), 7, dtype=torch.uint8)
    halves = flat.clone()
    halves[..., :4] = 200
    assert grey_entropy(torch.cat([flat, halves])).tolist() == pytest.approx([0.0, np.log(2)], abs=1e-15)
    rgb = torch.randint(0, 4, (3, 3, 9, 9), generator=g, dtype=torch.uint8) * 60
    for img, h in zip(rgb, grey_entropy(rgb)):
        rgb01 = img.double().div(255).permute(1, 2, 0).numpy()
        # skimage's rgb2gray coefficients term by term: a BLAS matmul (``@``) may round equal pixels apart
        # (seen with numpy 2.4's), which would split one grey value in two
        grey = rgb01[..., 0] * 0.2125 + rgb01[..., 1] * 0.7154 + rgb01[..., 2] * 0.0721
        _, counts = np.unique(grey, return_counts=True)
        p = counts / counts.sum()
        assert h.item() == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)
    noisy = torch.randint(0, 256, (1, 1, 16, 16), generator=g, dtype=torch.uint8)
    sizes = webp_size(torch.cat([flat.expand(1, 1, 8, 8).repeat(1, 1, 2, 2), noisy]))
    assert sizes.dtype == torch.float64 and sizes[0] < sizes[1]  # noise does not compress


def test_normalize_points_and_curves_equal_pair_interpolation():
    from scipy.interpolate import interp1d

    v = torch.tensor([[0.2, 0.5, 0.4, 1.2], [-1.0, 0.0, 3.0, 2.0]])
    out = normalize_points(v, torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0]), running_max=True)
    assert out.flatten().tolist() == pytest.approx([0.2, 0.5, 0.5, 1.0, 0.0, 0.0, 1.0, 1.0])
    g = torch.Generator().manual_seed(4)
    e = torch.rand(50, 6, generator=g, dtype=torch.float64)
    e[e < 0.2], e[e > 0.85] = 0.0, 1.0  # duplicated x: clipped to 0 or 1, as PAIR's are
    e[:5, 1] = e[:5, 3]
    p = torch.rand(50, 6, generator=g, dtype=torch.float64).cummax(1).values
    x, y = pic_curves(e, p, 100)
    for i in range(50):
        f = interp1d(list(e[i].tolist()) + [0.0, 1.0], list(p[i].tolist()) + [0.0, 1.0])
        ref = np.append([f(t) for t in np.linspace(0, 1, 100, endpoint=False)], 1.0)
        assert np.array_equal(y[i].numpy(), ref), i
    assert np.array_equal(x.numpy(), np.append(np.linspace(0, 1, 100, endpoint=False), 1.0))
    assert trapezoid(y, x).numpy() == pytest.approx(np.trapezoid(y.numpy(), x.numpy(), axis=1), abs=1e-15)


def test_aggregate_curves():
    c = torch.tensor(
        [[0.0, 0.1, 0.2, 0.3, 1.0], [0.0, 0.3, 0.4, 0.5, 1.0], [0.0, 0.9, 0.9, 0.9, 1.0]], dtype=torch.float64
    )
    x = torch.linspace(0, 1, 5, dtype=torch.float64)
    mean = aggregate_curves(c, torch.tensor([True, True, False]), "mean")
    assert mean.tolist() == pytest.approx([0.0, 0.2, 0.3, 0.4, 1.0])
    assert trapezoid(mean, x).item() == pytest.approx(0.25 * (0.1 + 0.25 + 0.35 + 0.7), abs=1e-15)
    all_rows = torch.ones(3, dtype=torch.bool)
    assert np.array_equal(aggregate_curves(c, all_rows).numpy(), np.median(c.numpy(), axis=0))
    assert np.array_equal(aggregate_curves(c[:2], all_rows[:2]).numpy(), np.median(c[:2].numpy(), axis=0))
    assert torch.isnan(aggregate_curves(c, torch.zeros(3, dtype=torch.bool))).all()


# ------------------------------------------------------------------------------------------ pipeline
def test_batched_equals_one_at_a_time_and_forward_args(digits):
    model, x, attr, _ = digits
    seeds = random_seed_masks(len(x), 20, 20, 0.02, torch.Generator().manual_seed(0))
    kw = dict(seed_masks=seeds, min_pred_value=0.5, thresholds=(0.05, 0.2, 0.5))
    temps = torch.linspace(0.5, 2.0, len(x), dtype=torch.float64)
    full = pic(model, x, attr, additional_forward_args=(temps,), max_examples_per_batch=1000, **kw)
    small = pic(model, x, attr, additional_forward_args=(temps,), max_examples_per_batch=3, **kw)
    for a, b in ((full.sic, small.sic), (full.aic, small.aic)):
        assert torch.equal(a.valid, b.valid) and torch.allclose(a.curves, b.curves, equal_nan=True, atol=1e-12)
    for i in range(len(x)):
        one = pic(
            model,
            x[i : i + 1],
            attr[i : i + 1],
            additional_forward_args=(temps[i : i + 1],),
            **dict(kw, seed_masks=seeds[i : i + 1]),
        )
        assert torch.allclose(one.sic.curves[0], full.sic.curves[i], equal_nan=True, atol=1e-12)
        assert torch.equal(one.information[0], full.information[i])
    no_temp = pic(model, x, attr, **kw)  # the per-image temperatures change the softmax scores
    assert not torch.allclose(no_temp.sic.scores, full.sic.scores, equal_nan=True)


def test_reproducible_under_generator(digits):
    model, x, attr, _ = digits
    state = torch.get_rng_state()
    a = sic(model, x, attr, generator=3, min_pred_value=0.5, thresholds=(0.1, 0.5))
    b = sic(model, x, attr, generator=torch.Generator().manual_seed(3), min_pred_value=0.5, thresholds=(0.1, 0.5))
    c = sic(model, x, attr, generator=4, min_pred_value=0.5, thresholds=(0.1, 0.5))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.curves.nan_to_num(-1), b.curves.nan_to_num(-1))
    assert not torch.equal(a.scores.nan_to_num(-1), c.scores.nan_to_num(-1))


def test_skips_ties_rank_and_empty(digits):
    model, x, attr, cls = digits
    seeds = random_seed_masks(len(x), 20, 20, 0.02, torch.Generator().manual_seed(0))
    strict = aic(model, x, attr, seed_masks=seeds, min_pred_value=1.5)
    assert not strict.valid.any() and (strict.skip_reason == 1).all() and torch.isnan(strict.aggregate_auc)
    pair_rule = pic(model, x, attr, seed_masks=seeds, min_pred_value=0.5)
    rank_rule = pic(model, x, attr, seed_masks=seeds, min_pred_value=0.5, ties="rank")
    # the background ties at zero saliency: PAIR's rule reveals it all at once, the rank rule does not
    assert not torch.equal(pair_rule.information, rank_rule.information)
    assert 0 < pair_rule.sic.aggregate_auc < 1 and 0 < rank_rule.sic.aggregate_auc < 1
    empty = pic(model, x[:0], attr[:0])
    assert empty.sic.curves.shape == (0, 1001) and empty.aic.auc.shape == (0,)
    assert torch.isnan(empty.sic.aggregate_auc)


def _no_model(*args, **kwargs):
    raise AssertionError("the model must not run before the arguments are checked")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(inputs=torch.zeros(2, 1, 28)), ValueError, "`inputs`"),
        (dict(inputs=torch.zeros(2, 1, 28, 28, dtype=torch.long)), TypeError, "`inputs`"),
        (dict(attributions=torch.zeros(2, 2, 28, 28)), ValueError, "`attributions`"),
        (dict(thresholds=(0.5, 0.1)), ValueError, "`thresholds`"),
        (dict(thresholds=()), ValueError, "`thresholds`"),
        (dict(information="jpeg2000"), ValueError, "`information`"),
        (dict(target=1.5), TypeError, "`target`"),
        (dict(target=torch.zeros(3, dtype=torch.long)), ValueError, "`target`"),
        (dict(seed_masks=torch.zeros(2, 28, 27, dtype=torch.bool)), ValueError, "`seed_masks`"),
        (dict(pixel_range=(1.0, 0.0)), ValueError, "`pixel_range`"),
        (dict(pixel_range=0.0), TypeError, "`pixel_range`"),
        (dict(max_examples_per_batch=0), ValueError, "`max_examples_per_batch`"),
        (dict(aggregate="max"), ValueError, "`aggregate`"),
        (dict(ties="random"), ValueError, "`ties`"),
        (dict(seed_fraction=1.5), ValueError, "`seed_fraction`"),
        (dict(keep_monotonous=1), TypeError, "`keep_monotonous`"),
        (dict(generator="seed"), TypeError, "`generator`"),
        (dict(saliency_reduction="max"), ValueError, "`saliency_reduction`"),
    ],
)
def test_errors_before_any_model_pass(kwargs, error, words):
    args = dict(inputs=torch.zeros(2, 1, 28, 28), attributions=torch.zeros(2, 1, 28, 28))
    args.update(kwargs)
    with pytest.raises(error, match=words):
        pic(_no_model, **args)


def test_webp_needs_1_3_or_4_channels():
    with pytest.raises(ValueError, match="`information`='webp'"):
        pic(_no_model, torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8))
