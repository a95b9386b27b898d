"""DiffID: closed forms, LPI's evaluator re-implemented, limits, antisymmetry, errors."""

import numpy as np
import pytest
import torch
from metric_models import LinearClasses, LinearScore, small_cnn

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


# ------------------------------------------------------------------------------------ scoring variants
def _cleanig_reference(model, images, saliency, labels, ratios):
    """cleanig's compute_diffid_metrics as its notes describe it: per-element ranking of |a| over C*H*W,
    the kept elements' mean as fill, binary and clamped-softmax scores; returns (ins, del) of each."""
    flat_a = saliency.abs().reshape(len(images), -1)
    flat_x = images.reshape(len(images), -1)
    n_el = flat_x.shape[1]
    rows = torch.arange(len(images))
    clean_p = torch.softmax(model(images), 1)[rows, labels]
    out = {"binary": {"ins": [], "del": []}, "soft": {"ins": [], "del": []}}
    for r in ratios:
        k = int(np.floor(r * n_el))
        for game in ("del", "ins"):
            order = flat_a.argsort(1, descending=(game == "del"))  # the k replaced: highest or lowest
            replaced = torch.zeros_like(flat_x, dtype=torch.bool)
            replaced[rows.unsqueeze(1), order[:, :k]] = True
            fill = (flat_x * ~replaced).sum(1, keepdim=True) / (~replaced).sum(1, keepdim=True)
            pert = torch.where(replaced, fill, flat_x).reshape(images.shape)
            logits = model(pert)
            out["binary"][game].append((logits.argmax(1) == labels).double())
            p = torch.softmax(logits, 1)[rows, labels]
            out["soft"][game].append((p / (clean_p + 1e-8)).clamp(0, 1))
    return {v: {g: torch.stack(c, 1) for g, c in games.items()} for v, games in out.items()}


def test_cleanig_variants_match_its_protocol_on_a_colour_cnn():
    model = small_cnn(seed=2, channels=3)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 3, 8, 8, generator=g, dtype=torch.float64)
    attr = torch.randn(x.shape, generator=g, dtype=x.dtype)
    labels = model(x).argmax(1)
    ratios = (0.1, 0.3, 0.5, 0.7, 0.9)
    per_element = torch.arange(x[0].numel()).reshape(x.shape[1:])
    ref = _cleanig_reference(model, x, attr, labels, ratios)
    for score, variant in (("accuracy", "binary"), ("clamped_softmax", "soft")):
        res = diffid(model, x, attr, target=labels, feature_mask=per_element, ratios=ratios, score=score)
        assert res.score == score
        torch.testing.assert_close(res.insertion, ref[variant]["ins"], atol=1e-12, rtol=0)
        torch.testing.assert_close(res.deletion, ref[variant]["del"], atol=1e-12, rtol=0)
        torch.testing.assert_close(res.diff.mean(1), (ref[variant]["ins"] - ref[variant]["del"]).mean(1))
    soft = diffid(model, x, attr, target=labels, feature_mask=per_element, ratios=ratios, score="clamped_softmax")
    assert bool(((soft.insertion >= 0) & (soft.insertion <= 1)).all())
    assert not torch.equal(soft.insertion, ref["binary"]["ins"])  # the variants differ on this model


def test_accuracy_variant_is_the_top1_difference_and_the_default_is_unchanged():
    model = LinearClasses(16, 5)
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    y = torch.tensor([0, 1, 2, 3])
    default, logit = diffid(model, x, attr, target=y), diffid(model, x, attr, target=y, score="logit_ratio")
    assert default.score == "logit_ratio" and torch.equal(default.diff, logit.diff)
    acc = diffid(model, x, attr, target=y, score="accuracy")
    assert acc.score == "accuracy"
    torch.testing.assert_close(acc.diff, acc.diff_top1)
    torch.testing.assert_close(acc.insertion, acc.insertion_top1.double())
    assert torch.equal(acc.insertion_top1, default.insertion_top1)


def test_variant_errors_come_before_any_model_pass_and_empty_batches():
    def forbidden(t):
        raise AssertionError("no model pass expected")

    model, x, oracle = _problem()
    with pytest.raises(ValueError, match="score"):
        diffid(forbidden, x, oracle, score="prob")
    with pytest.raises(ValueError, match="target"):
        diffid(forbidden, x, oracle, score="accuracy")  # no class per example
    with pytest.raises(ValueError, match="target"):
        diffid(forbidden, x, oracle, target=(0,), score="clamped_softmax")
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="inputs"):
        diffid(forbidden, bad, oracle)
    empty = diffid(forbidden, x[:0], oracle[:0], target=[], score="accuracy", ratios=(0.2, 0.4))
    assert empty.diff.shape == (0, 2) and empty.area.shape == (0,) and empty.insertion_top1.shape == (0, 2)
    assert empty.score == "accuracy" and empty.ratios.tolist() == [0.2, 0.4]
    with pytest.raises(ValueError, match="`score`='accuracy' needs a model output"):
        diffid(lambda t: model(t).unsqueeze(-1), x, oracle, target=0, score="accuracy")  # (N, 1, 1): no classes
