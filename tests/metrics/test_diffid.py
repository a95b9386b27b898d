"""DiffID: closed forms, LPI's evaluator re-implemented, limits, antisymmetry, errors."""

import numpy as np
import pytest
import torch
from metric_models import LinearClasses, LinearScore

from captum_paths.metrics import DiffIDResult, diffid
from captum_paths.metrics._core.diffid import removed_counts


def _problem(seed=0, n=3, shape=(1, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((1,) + shape, generator=g, dtype=torch.float64)
    x = torch.rand((n,) + shape, generator=g, dtype=torch.float64) + 0.5
    return LinearScore(w), x, x * w


def test_removed_counts_floor_with_float_guard():
    assert removed_counts(torch.tensor([0.1, 0.29, 0.5, 0.99], dtype=torch.float64), 100).tolist() == [10, 29, 50, 99]
    assert removed_counts(torch.tensor([0.1], dtype=torch.float64), 9).tolist() == [0]


def test_linear_closed_form_with_constant_fill():
    model, x, oracle = _problem()
    ratios = (0.25, 0.5, 0.75)
    res = diffid(model, x, oracle, ratios=ratios, fill=0.0, absolute=False)
    contrib = oracle.reshape(3, -1)
    fx = contrib.sum(1)
    ordered = contrib.sort(dim=1, descending=True).values
    for j, r in enumerate(ratios):
        m = int(r * 16)
        ins = ordered[:, : 16 - m].sum(1) / fx  # bottom m removed (set to 0): top kept
        dele = ordered[:, m:].sum(1) / fx
        torch.testing.assert_close(res.insertion[:, j], ins)
        torch.testing.assert_close(res.deletion[:, j], dele)
    torch.testing.assert_close(res.diff, res.insertion - res.deletion)
    xs = torch.tensor(ratios, dtype=torch.float64)
    torch.testing.assert_close(res.area, torch.trapezoid(res.diff, xs, dim=1))
    assert res.insertion_top1 is None  # a single-output model has no classes


def test_zero_at_small_ratios_and_vanishing_towards_one():
    model, x, oracle = _problem(seed=1)
    res = diffid(model, x, oracle, ratios=(0.01, 15 / 16), fill=0.0, absolute=False)
    assert torch.equal(res.diff[:, 0], torch.zeros(3, dtype=x.dtype))  # floor(0.01 * 16) = 0: nothing removed
    contrib = oracle.reshape(3, -1)
    expected = (contrib.max(1).values - contrib.min(1).values) / contrib.sum(1)  # one feature kept
    torch.testing.assert_close(res.diff[:, 1], expected)


def test_negation_antisymmetry_and_absolute_invariance():
    model, x, oracle = _problem(seed=2)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    signed, negated = diffid(model, x, attr, absolute=False), diffid(model, x, -attr, absolute=False)
    torch.testing.assert_close(negated.diff, -signed.diff)
    torch.testing.assert_close(negated.insertion, signed.deletion)
    a, b = diffid(model, x, attr), diffid(model, x, -attr)
    torch.testing.assert_close(a.diff, b.diff)


def _lpi_reference(model, images, saliency, labels, ratios):
    """LPI's Evaluator.DiffID loop (per-element ranking of min-max normalised |saliency|, preserved
    mean fill, logit ratio, top-1 hits), written for single-channel images."""
    s = saliency.abs().sum(1, keepdim=True)
    flat_s = s.reshape(len(s), -1)
    flat_s = flat_s - flat_s.min(1, keepdim=True).values
    flat_s = flat_s / (flat_s.max(1, keepdim=True).values + 1e-10)
    out = model(images).detach()
    n_el = images[0].numel()
    logits = {True: [], False: []}
    hits = {True: [], False: []}
    for r in ratios:
        for is_del in (False, True):
            order = torch.argsort(flat_s, dim=1, descending=is_del)
            keep_idx = order[:, int(n_el * r) :]
            flat = images.reshape(len(images), -1)
            mask = torch.zeros_like(flat)
            means = []
            for b in range(len(images)):
                mask[b][keep_idx[b]] = 1.0
                means.append(flat[b][keep_idx[b]].mean())
            pert = (mask * flat + (1 - mask) * torch.stack(means).unsqueeze(1)).reshape(images.shape)
            o = model(pert).detach()
            logits[is_del].append(o[torch.arange(len(images)), labels] / out[torch.arange(len(images)), labels])
            hits[is_del].append(o.argmax(1) == labels)
    return (
        torch.stack(logits[False], 1),
        torch.stack(logits[True], 1),
        torch.stack(hits[False], 1),
        torch.stack(hits[True], 1),
    )


def test_matches_lpi_evaluator_on_digits(digits, digits_cnn64):
    x, y = digits.x_test[:6].double(), digits.y_test[:6]
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    ratios = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    res = diffid(digits_cnn64, x, attr, target=y, max_examples_per_batch=17)
    assert isinstance(res, DiffIDResult)
    ins, dele, ins_hit, del_hit = _lpi_reference(digits_cnn64, x, attr, y, ratios)
    torch.testing.assert_close(res.insertion, ins, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.deletion, dele, atol=1e-10, rtol=0)
    assert torch.equal(res.insertion_top1, ins_hit) and torch.equal(res.deletion_top1, del_hit)
    torch.testing.assert_close(res.diff_top1, ins_hit.double() - del_hit.double())
    np.testing.assert_allclose(res.ratios.numpy(), ratios)


def test_chunking_and_target_formats():
    model = LinearClasses(16, 5)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    ref = diffid(model, x, attr, target=torch.tensor([0, 1, 2, 3]))
    for t, chunk in (([0, 1, 2, 3], 3), (torch.tensor([0, 1, 2, 3]), 1)):
        got = diffid(model, x, attr, target=t, max_examples_per_batch=chunk)
        torch.testing.assert_close(got.diff, ref.diff)
        assert torch.equal(got.insertion_top1, ref.insertion_top1)
    one = diffid(model, x[2:3], attr[2:3], target=2)
    torch.testing.assert_close(one.diff[0], ref.diff[2])


@pytest.mark.parametrize("ratios", [(0.0, 0.5), (0.5, 1.0), (), (1.2,), (-0.1,)])
def test_ratios_outside_open_unit_interval_raise(ratios):
    model, x, oracle = _problem()
    with pytest.raises(ValueError, match="ratios"):
        diffid(model, x, oracle, ratios=ratios)


def test_other_bad_input():
    model, x, oracle = _problem()
    with pytest.raises(ValueError, match="attributions"):
        diffid(model, x, oracle[..., :2])
    with pytest.raises(ValueError, match="fill"):
        diffid(model, x, oracle, fill="median")


def test_tuple_inputs_fill_each_tensor_with_its_preserved_mean():
    from metric_models import TwoInputLinear

    g = torch.Generator().manual_seed(5)
    u, v = torch.randn(1, 4, generator=g, dtype=torch.float64), torch.randn(1, 2, generator=g, dtype=torch.float64)
    a, b = torch.rand(1, 4, generator=g, dtype=torch.float64) + 1, torch.rand(1, 2, generator=g, dtype=torch.float64)
    attr = (torch.tensor([[6.0, 5.0, 4.0, 1.0]], dtype=a.dtype), torch.tensor([[3.0, 2.0]], dtype=a.dtype))
    model = TwoInputLinear(u, v)
    res = diffid(model, (a, b), attr, ratios=(0.5,), absolute=False)
    fx = model(a, b).item()
    # deletion removes the top 3 of 6 features (a0, a1, a2): a keeps a3, b keeps both -> fills a with a3
    a_del = torch.cat([a[:, 3:].expand(1, 3), a[:, 3:]], 1)
    assert res.deletion.item() == pytest.approx(model(a_del, b).item() / fx, abs=1e-12)
    # insertion removes the bottom 3 (a3, b1, b0): a filled with mean(a0..a2), b has nothing kept -> b's fill is 0
    a_ins = torch.cat([a[:, :3], a[:, :3].mean(1, keepdim=True)], 1)
    assert res.insertion.item() == pytest.approx(model(a_ins, torch.zeros_like(b)).item() / fx, abs=1e-12)
