"""Insertion / deletion: closed forms, RISE and SAMP protocols re-implemented independently, Captum
conventions."""

import copy

import numpy as np
import pytest
import torch
from metric_models import LinearClasses, LinearScore, TwoInputLinear, small_cnn
from scipy.ndimage import gaussian_filter

from captum_paths.attr import Blur
from captum_paths.metrics import deletion, insertion
from captum_paths.metrics._core.causal import curve_features_per_step


def _linear_problem(seed=0, n=3, shape=(2, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((1,) + shape, generator=g, dtype=torch.float64)
    x = torch.rand((n,) + shape, generator=g, dtype=torch.float64)
    return LinearScore(w), x, x * w


# ------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize("step", [1, 3])
def test_deletion_curve_of_linear_model_is_the_sorted_contribution_sum(step):
    model, x, oracle = _linear_problem()
    auc, curves, fractions = deletion(model, x, oracle, features_per_step=step, score="logit", return_curves=True)
    pixel = oracle.sum(1).reshape(len(x), -1).numpy()  # contribution of each pixel
    for i in range(len(x)):
        order = np.argsort(-pixel[i], kind="stable")
        g = pixel.shape[1]
        expected = [pixel[i].sum() - pixel[i][order[: min(k * step, g)]].sum() for k in range(-(-g // step) + 1)]
        np.testing.assert_allclose(curves[i].numpy(), expected, atol=1e-12)
        k = len(expected) - 1
        assert auc[i].item() == pytest.approx((sum(expected) - expected[0] / 2 - expected[-1] / 2) / k, abs=1e-12)
    assert fractions[0] == 0 and fractions[-1] == 1
    assert curves[:, -1].abs().max() < 1e-12  # everything deleted: f(0) = 0


def test_insertion_curve_of_linear_model_closed_form():
    model, x, oracle = _linear_problem(seed=1)
    _, curves, _ = insertion(
        model, x, oracle, substrate="zeros", features_per_step=2, score="logit", return_curves=True
    )
    pixel = oracle.sum(1).reshape(len(x), -1)
    ordered = pixel.sort(dim=1, descending=True, stable=True).values
    cums = torch.cat([torch.zeros(len(x), 1, dtype=x.dtype), ordered.cumsum(1)], 1)[:, ::2]
    torch.testing.assert_close(curves, cums, atol=1e-12, rtol=0)


def test_oracle_beats_random_beats_reversed():
    model, x, oracle = _linear_problem(seed=2, n=4)
    random = torch.randn(oracle.shape, generator=torch.Generator().manual_seed(5), dtype=oracle.dtype)
    d = {
        k: deletion(model, x, a, score="logit")
        for k, a in [("oracle", oracle), ("random", random), ("reversed", -oracle)]
    }
    i = {
        k: insertion(model, x, a, substrate="zeros", score="logit")
        for k, a in [("oracle", oracle), ("random", random), ("reversed", -oracle)]
    }
    assert bool((d["oracle"] < d["random"]).all() and (d["random"] < d["reversed"]).all())
    assert bool((i["oracle"] > i["random"]).all() and (i["random"] > i["reversed"]).all())


# --------------------------------------------------------------------------------- RISE, independently
def _rise_reference(model, img, explanation, mode, step, klen=11, nsig=5):
    """RISE's CausalMetric.single_run (softmax model, trapezoid auc), written from the paper's code
    description for one (1, C, H, W) image and an (H, W) explanation; numpy copies as RISE does."""
    c_count, h, w = img.shape[1:]
    hw = h * w
    n_steps = (hw + step - 1) // step
    with torch.no_grad():
        probs = lambda t: torch.softmax(model(t), 1)  # noqa: E731
        c = int(probs(img).argmax(1))
        if mode == "del":
            start, finish = img.clone(), torch.zeros_like(img)
        else:
            inp = np.zeros((klen, klen))
            inp[klen // 2, klen // 2] = 1
            k = gaussian_filter(inp, nsig)
            kern = np.zeros((c_count, c_count, klen, klen))
            for ch in range(c_count):
                kern[ch, ch] = k
            kern = torch.from_numpy(kern).to(img.dtype)
            start, finish = torch.nn.functional.conv2d(img, kern, padding=klen // 2), img.clone()
        scores = np.empty(n_steps + 1)
        salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
        start_np = start.numpy().copy()
        finish_np = finish.numpy().reshape(1, c_count, hw)
        for i in range(n_steps + 1):
            scores[i] = probs(torch.from_numpy(start_np))[0, c].item()
            if i < n_steps:
                coords = salient_order[:, step * i : step * (i + 1)]
                start_np.reshape(1, c_count, hw)[0, :, coords] = finish_np[0, :, coords]
    auc = (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (len(scores) - 1)
    return scores, auc


@pytest.mark.parametrize("mode", ["del", "ins"])
def test_matches_rise_causal_metric(mode):
    model = small_cnn(seed=3)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    maps = torch.rand(3, 16, 16, generator=g, dtype=torch.float64)
    attributions = torch.zeros_like(x)
    attributions[:, 0] = maps  # channel sum == the map exactly
    target = model(x).argmax(1)
    fn = deletion if mode == "del" else insertion
    substrate = "zeros" if mode == "del" else "blur"
    auc, curves, _ = fn(
        model,
        x,
        attributions,
        target=target,
        features_per_step=10,
        substrate=substrate,
        score="softmax",
        auc="trapezoid",
        normalize=False,
        return_curves=True,
    )
    for i in range(3):
        ref_scores, ref_auc = _rise_reference(model, x[i : i + 1], maps[i].numpy(), mode, step=10)
        np.testing.assert_allclose(curves[i].numpy(), ref_scores, atol=1e-6, rtol=0)
        assert abs(auc[i].item() - ref_auc) < 1e-6


def test_samp_protocol_normalised_mean():
    model = small_cnn(seed=4)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = [1, 4]
    for fn, peak in ((deletion, 0), (insertion, -1)):
        auc, curves, _ = fn(
            model,
            x,
            attr,
            target=target,
            features_per_step=10,
            score="logit",
            auc="mean",
            normalize=True,
            return_curves=True,
        )
        _, raw, _ = fn(model, x, attr, target=target, features_per_step=10, score="logit", return_curves=True)
        torch.testing.assert_close(curves, raw / raw[:, peak : peak + 1 if peak == 0 else None])
        torch.testing.assert_close(auc, (raw / raw[:, [peak]]).mean(1))
        assert torch.allclose(curves[:, peak], torch.ones(2, dtype=x.dtype))
        logits = model(x).detach()[torch.arange(2), torch.tensor(target)]
        torch.testing.assert_close(raw[:, peak], logits)


# ----------------------------------------------------------------------------------- Captum conventions
def test_batched_equals_one_at_a_time_and_chunking_is_invisible(digits, digits_cnn64):
    x = digits.x_test[:5].double()
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    y = digits.y_test[:5]
    full = deletion(digits_cnn64, x, attr, target=y, features_per_step=16, score="softmax", return_curves=True)[1]
    for chunk in (1, 7):
        chunked = deletion(
            digits_cnn64,
            x,
            attr,
            target=y,
            features_per_step=16,
            score="softmax",
            return_curves=True,
            max_examples_per_batch=chunk,
        )[1]
        torch.testing.assert_close(chunked, full, atol=1e-12, rtol=0)
    both = insertion(digits_cnn64, x, attr, target=y, features_per_step=16, return_curves=True)[1]
    for i in range(5):
        single = insertion(
            digits_cnn64, x[i : i + 1], attr[i : i + 1], target=int(y[i]), features_per_step=16, return_curves=True
        )[1]
        torch.testing.assert_close(single[0], both[i], atol=1e-12, rtol=0)


def test_target_formats_agree():
    model = LinearClasses(2 * 9, 4)
    x = torch.rand(3, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    ref = deletion(model, x, attr, target=torch.tensor([2, 2, 2]))
    for t in (2, torch.tensor(2), [2, 2, 2], (2,), [(2,), (2,), (2,)]):
        torch.testing.assert_close(deletion(model, x, attr, target=t), ref)
    per_example = deletion(model, x, attr, target=[0, 1, 3], return_curves=True)[1]
    for i, t in enumerate([0, 1, 3]):
        torch.testing.assert_close(
            per_example[i], deletion(model, x[i : i + 1], attr[i : i + 1], target=t, return_curves=True)[1][0]
        )


def test_tuple_inputs_rank_features_jointly():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(1, 5, generator=g, dtype=torch.float64), torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    a, b = torch.rand(2, 5, generator=g, dtype=torch.float64), torch.rand(2, 2, 3, generator=g, dtype=torch.float64)
    model = TwoInputLinear(u, v)
    attr = (a * u, b * v)
    _, curves, fractions = deletion(model, (a, b), attr, score="logit", return_curves=True)
    contributions = torch.cat([(a * u), (b * v).reshape(2, -1)], 1)
    ordered = contributions.sort(1, descending=True).values
    expected = contributions.sum(1, keepdim=True) - torch.cat([torch.zeros(2, 1, dtype=a.dtype), ordered.cumsum(1)], 1)
    torch.testing.assert_close(curves, expected, atol=1e-12, rtol=0)
    assert len(fractions) == 12


def test_additional_forward_args_are_per_example():
    model, x, oracle = _linear_problem(seed=3)
    scale = torch.tensor([1.0, 2.0, -3.0], dtype=x.dtype)
    _, scaled, _ = deletion(
        model, x, oracle, additional_forward_args=scale, score="logit", return_curves=True, max_examples_per_batch=5
    )
    _, plain, _ = deletion(model, x, oracle, score="logit", return_curves=True)
    torch.testing.assert_close(scaled, plain * scale.unsqueeze(1))


def test_feature_mask_groups_and_float_step():
    model, x, oracle = _linear_problem(seed=4, shape=(1, 4, 4))
    mask = torch.arange(16).reshape(1, 4, 4) // 4  # 4 groups of a row each
    _, curves, fractions = deletion(
        model, x, oracle, feature_mask=mask, features_per_step=0.25, score="logit", return_curves=True
    )
    rows = oracle.reshape(3, 4, 4).sum(2)
    ordered = rows.sort(1, descending=True).values
    expected = rows.sum(1, keepdim=True) - torch.cat([torch.zeros(3, 1, dtype=x.dtype), ordered.cumsum(1)], 1)
    torch.testing.assert_close(curves, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(fractions, torch.tensor([0, 0.25, 0.5, 0.75, 1.0], dtype=x.dtype))
    assert curve_features_per_step(0.1, 256) == 26 and curve_features_per_step(1e-9, 10) == 1


def test_show_progress_and_generator_for_random_substrates(capsys):
    model, x, oracle = _linear_problem(seed=6)
    quiet = deletion(model, x, oracle, substrate="uniform", generator=3, max_examples_per_batch=10, score="logit")
    shown = deletion(
        model, x, oracle, substrate="uniform", generator=3, max_examples_per_batch=10, show_progress=True, score="logit"
    )
    assert torch.equal(quiet, shown)
    assert "deletion" in capsys.readouterr().err
    assert not torch.equal(quiet, deletion(model, x, oracle, substrate="uniform", generator=4, score="logit"))


def test_callable_score_and_custom_substrates():
    model, x, oracle = _linear_problem(seed=5)
    doubled = deletion(model, x, oracle, score=lambda out, t: 2 * out[:, 0])
    torch.testing.assert_close(doubled, 2 * deletion(model, x, oracle, score="logit"))
    # a constant substrate of 1: the curve ends at f(1)
    _, curves, _ = deletion(model, x, oracle, substrate=1.0, score="logit", return_curves=True)
    torch.testing.assert_close(curves[:, -1], model(torch.ones_like(x)).detach()[:, 0].expand(3))
    _, curves_t, _ = deletion(
        model, x, oracle, substrate=torch.ones(x.shape[1:], dtype=x.dtype), score="logit", return_curves=True
    )
    torch.testing.assert_close(curves_t, curves)
    blur = insertion(model, x, oracle, substrate=Blur(5, 1.0), score="logit", return_curves=True)[1]
    assert blur.shape == (3, 17)


def test_inputs_model_and_mode_untouched(digits_cnn):
    model = copy.deepcopy(digits_cnn).train()
    x = torch.rand(2, 1, 16, 16)
    x_before, attr = x.clone(), torch.randn(2, 1, 16, 16)
    state = copy.deepcopy(model.state_dict())
    deletion(model, x, attr, target=0, features_per_step=32)
    insertion(model, x, attr, target=1, features_per_step=32)
    assert torch.equal(x, x_before) and model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(features_per_step=0), ValueError, "features_per_step"),
        (dict(features_per_step=-2), ValueError, "features_per_step"),
        (dict(features_per_step=1.5), ValueError, "features_per_step"),
        (dict(features_per_step=True), ValueError, "features_per_step"),
        (dict(auc="simpson"), ValueError, "auc"),
        (dict(score="prob"), ValueError, "score"),
        (dict(target=[0, 1]), ValueError, "target"),
        (dict(substrate="nope"), ValueError, "substrate"),
        (dict(max_examples_per_batch=0), ValueError, "max_examples_per_batch"),
        (dict(target=7), ValueError, "target"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    model, x, oracle = _linear_problem()
    with pytest.raises(error, match=match):
        deletion(model, x, oracle, **{"score": "logit", **kwargs})


def test_attribution_shape_mismatch():
    model, x, oracle = _linear_problem()
    with pytest.raises(ValueError, match="attributions"):
        deletion(model, x, oracle[:, :1])
    with pytest.raises(ValueError, match="attributions"):
        insertion(model, x, (oracle, oracle), substrate="zeros")
    with pytest.raises(TypeError, match="attributions"):
        deletion(model, x, oracle.numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_everything_stays_on_the_gpu():
    from captum_paths.metrics import diffid, sensitivity_n

    model = small_cnn(seed=0).cuda()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, device="cuda")
    attr = torch.randn_like(x)
    auc, curves, fractions = deletion(model, x, attr, target=1, features_per_step=32, return_curves=True)
    assert auc.is_cuda and curves.is_cuda and fractions.is_cuda
    assert insertion(model, x, attr, target=1, features_per_step=32).is_cuda
    assert diffid(model, x, attr, target=1).diff.is_cuda
    assert sensitivity_n(model, x, attr, n=4, target=1, n_subsets=5, generator=0).is_cuda


# ------------------------------------------------------------------------- defaults at real sizes
class _CountingModel(torch.nn.Module):
    """Wraps a model; records the rows of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x, *args):
        self.rows.append(x.shape[0])
        return self.model(x, *args)


@pytest.mark.parametrize("n_features, expected", [(16, 1), (224, 1), (225, 2), (784, 4), (1024, 5), (4096, 19)])
def test_default_step_is_rises_resolution(n_features, expected):
    assert curve_features_per_step(None, n_features) == expected
    assert curve_features_per_step(None, 224 * 224) == 224  # RISE: 224 pixels per step at 224x224


def test_defaults_are_rises_protocol_and_chunks_are_bounded():
    model = small_cnn(seed=3, channels=1)
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    counted = _CountingModel(model)
    auc, curves, fractions = deletion(counted, x, attr, target=2, return_curves=True)
    assert curves.shape == (3, 197) and max(counted.rows) <= 256 and sum(counted.rows) == 3 * 197
    rise = deletion(model, x, attr, target=2, features_per_step=4, substrate="zeros", score="softmax", auc="trapezoid")
    torch.testing.assert_close(auc, rise, rtol=0, atol=0)
    probs = torch.softmax(model(x).detach(), 1)[:, 2]
    torch.testing.assert_close(curves[:, 0], probs)  # softmax of the target on the untouched input
    # RISE's trapezoid AUC of the returned curve, points evenly spaced
    torch.testing.assert_close(auc, (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / 196)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_the_model_never_sees_more_rows_than_the_bound_and_results_equal_unchunked(chunk):
    model = small_cnn(seed=5)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for fn in (deletion, insertion):
        counted = _CountingModel(model)
        chunked = fn(
            counted, x, attr, target=[0, 1, 2, 3], features_per_step=3, return_curves=True, max_examples_per_batch=chunk
        )
        assert max(counted.rows) <= chunk and sum(counted.rows) == 4 * 23
        whole = fn(
            model, x, attr, target=[0, 1, 2, 3], features_per_step=3, return_curves=True, max_examples_per_batch=10**6
        )
        for a, b in zip(chunked, whole):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_default_rows_per_pass_rule():
    from captum_paths.metrics._core._common import default_rows_per_pass

    shapes = {(1, 28, 28): 256, (3, 32, 32): 85, (3, 64, 64): 21, (3, 224, 224): 8, (5,): 256}
    for shape, rows in shapes.items():
        assert default_rows_per_pass((torch.zeros((2,) + shape),)) == rows
    counted = _CountingModel(small_cnn(seed=1))
    x = torch.rand(3, 3, 64, 64)
    deletion(counted, x.double(), torch.randn(x.shape, dtype=torch.float64), target=0, features_per_step=512)
    assert max(counted.rows) == 21 and sum(counted.rows) == 3 * 9  # 4096 pixels / 512 -> 9 points


# ------------------------------------------------------------------------------------ bad input (issue 12)
@pytest.mark.parametrize("fn", [deletion, insertion])
@pytest.mark.parametrize("bad", ["inputs", "attributions"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_inputs_or_attributions_raise_before_any_model_pass(fn, bad, value):
    counted = _CountingModel(small_cnn(seed=0))
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    attr = torch.randn(x.shape, dtype=torch.float64)
    (x if bad == "inputs" else attr)[1, 0, 2, 3] = value
    with pytest.raises(ValueError, match=rf"`{bad}`\[0\] must be finite, got 1 NaN or infinite value\(s\)"):
        fn(counted, x, attr, target=0)
    assert counted.rows == []


@pytest.mark.parametrize("fn", [deletion, insertion])
def test_empty_batch_gives_empty_results_without_a_model_pass(fn):
    counted = _CountingModel(small_cnn(seed=0))
    x = torch.rand(0, 3, 8, 8, dtype=torch.float64)
    auc, curves, fractions = fn(counted, x, x.clone(), target=0, features_per_step=10, return_curves=True)
    assert auc.shape == (0,) and curves.shape == (0, 8) and fractions.shape == (8,) and counted.rows == []


def test_blur_default_on_non_image_inputs_names_the_argument_and_the_fix():
    counted = _CountingModel(LinearClasses(5, 3))
    x = torch.rand(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="`substrate`.*images.*'zeros'"):
        insertion(counted, x, x.clone(), target=0)
    assert counted.rows == []
    assert insertion(counted, x, x.clone(), target=0, substrate="zeros").shape == (2,)


def test_softmax_of_a_single_output_is_refused():
    model, x, oracle = _linear_problem()
    with pytest.raises(ValueError, match="score.*single output.*'logit'"):
        deletion(model, x, oracle)
