"""AblationPath: the optimised path's constraints, its result object, Captum conventions, errors."""

import pytest
import torch
import torch.nn as nn

from captum_paths.attr._core.ablation_path import (
    AblationPath,
    AblationPathResult,
    _filter_blocks,
    first_index,
    max_norm_normalise,
    tangent_projection,
)
from captum_paths.attr._utils.monotone import gaussian_filter_2d

FAST = dict(n_steps=4, n_iterations=3)


class RegionModel(nn.Module):
    """Two classes; class 0's logit depends only on the pixels of ``region`` (an (H, W) bool mask)."""

    def __init__(self, region: torch.Tensor, gain: float = 12.0, bias: float = 6.0):
        super().__init__()
        self.register_buffer("region", region.double())
        self.gain, self.bias = gain, bias

    def forward(self, x):
        inside = (x * self.region).flatten(1).sum(1) / self.region.sum()
        logit = self.gain * inside - self.bias
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def check_path_constraints(result: AblationPathResult, tol=1e-6):
    masks = result.masks
    n_points = masks.shape[1]
    times = torch.linspace(0, 1, n_points, dtype=torch.float64)
    assert torch.equal(masks[:, 0], torch.zeros_like(masks[:, 0]))
    assert torch.equal(masks[:, -1], torch.ones_like(masks[:, -1]))
    assert bool((masks.diff(dim=1) >= 0).all()), "not monotone in t"
    assert masks.min() >= 0 and masks.max() <= 1
    means = masks.flatten(2).mean(-1)
    assert (means - times).abs().max() < tol, "not constant speed"


def straight_line_scores(model, x, baseline, target, masks):
    """Softmax target score of x + (baseline - x) * masks at every point: (N, T)."""
    n, t = masks.shape[:2]
    images = x.unsqueeze(1) + (baseline - x).unsqueeze(1) * masks.unsqueeze(2).to(x.dtype)
    with torch.no_grad():
        probs = torch.softmax(model(images.flatten(0, 1)), dim=1).reshape(n, t, -1)
    return probs[torch.arange(n), :, target]


# --- small pure pieces ---------------------------------------------------------------------------


def test_tangent_projection_keeps_weighted_means_and_max_norm():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    w = torch.rand(2, 5, generator=gen, dtype=torch.float64)
    w = w / w.sum(1, keepdim=True)
    p = tangent_projection(g, w.unsqueeze(1))
    assert (p * w.unsqueeze(1)).sum(-1).abs().max() < 1e-14
    uniform = torch.full((2, 1, 5), 0.2, dtype=torch.float64)
    assert torch.allclose(tangent_projection(g, uniform), g - g.mean(-1, keepdim=True), atol=1e-14)
    assert torch.allclose(tangent_projection(g, None), g - g.mean(-1, keepdim=True), atol=1e-15)
    # time-major layout (K, N, G): the (N, G) weights broadcast as they are
    assert torch.allclose(tangent_projection(g.transpose(0, 1), w), p.transpose(0, 1), atol=1e-15)
    n = max_norm_normalise(p)
    assert torch.allclose(n.flatten(1).abs().amax(1), torch.ones(2, dtype=torch.float64))
    assert torch.equal(n, p / p.flatten(1).abs().amax(1).reshape(2, 1, 1))
    # the example dimension may be any dimension
    assert torch.equal(max_norm_normalise(p.transpose(0, 1), dim=1), n.transpose(0, 1))
    assert torch.equal(max_norm_normalise(torch.zeros(2, 3)), torch.zeros(2, 3))
    assert torch.equal(max_norm_normalise(torch.tensor([-2.0, 0.0, 4.0])), torch.tensor([-1.0, 0.0, 1.0]))


def test_filter_blocks_filters_each_image_on_its_own_grid():
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 2, 4 * 5 + 6 * 6, generator=gen, dtype=torch.float64)  # two images' pixels
    blocks = [(0, 4, 5), (20, 6, 6)]
    expected = torch.cat(
        [
            gaussian_filter_2d(masks[..., :20].reshape(3, 2, 4, 5), 1.3).reshape(3, 2, 20),
            gaussian_filter_2d(masks[..., 20:].reshape(3, 2, 6, 6), 1.3).reshape(3, 2, 36),
        ],
        dim=-1,
    )
    assert torch.equal(_filter_blocks(masks, blocks, 1.3, out=torch.empty_like(masks)), expected)
    in_place = masks.clone()
    assert torch.equal(_filter_blocks(in_place, blocks, 1.3, out=in_place), expected)
    single = masks[..., :20].contiguous()
    assert torch.equal(_filter_blocks(single, blocks[:1], 1.3, out=single.clone()), expected[..., :20])


def test_first_index():
    cond = torch.tensor([[False, True, True], [False, False, False], [True, False, True]])
    assert first_index(cond).tolist() == [1, -1, 0]


# --- the method on a model with a known answer ---------------------------------------------------


@pytest.fixture(scope="module")
def region_setup():
    gen = torch.Generator().manual_seed(0)
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:4, 5:7] = True  # four pixels carry the decision
    x = 0.5 + 0.5 * torch.rand(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    return RegionModel(region), x, region


def test_known_region_is_kept_to_the_end(region_setup):
    model, x, region = region_setup
    target = torch.zeros(2, dtype=torch.long)
    attr, result = AblationPath(model).attribute(
        x, baselines=0.0, target=target, n_steps=11, n_iterations=30, filter_sigma=0.0, return_path=True
    )
    check_path_constraints(result)
    flat = attr.reshape(2, -1)
    top = flat.topk(int(region.sum()), dim=1).indices
    for n in range(2):
        assert set(top[n].tolist()) == set(torch.nonzero(region.reshape(-1)).reshape(-1).tolist())
        # the region's pixels are the last ones ablated: kept (mask 0) until the last interior point
        assert torch.equal(result.masks[n, -2][region], torch.zeros(int(region.sum()), dtype=torch.float64))
    straight = result.path_score_history[:, 0]
    assert (result.path_score > straight + 0.2).all()
    # the straight-line score in the history is the straight path's score
    t = torch.linspace(0, 1, 12, dtype=torch.float64)
    straight_masks = t.reshape(1, 12, 1, 1).expand(2, 12, 8, 8)
    s = straight_line_scores(model, x, torch.zeros_like(x), target, straight_masks)
    assert torch.allclose(straight, (s * torch.tensor([0.5] + [1.0] * 10 + [0.5], dtype=torch.float64)).sum(1) / 11)


def test_known_region_with_default_filter_still_ranks_region_first(region_setup):
    model, x, region = region_setup
    attr = AblationPath(model).attribute(x, baselines=0.0, target=0, n_steps=9, n_iterations=30)
    for n in range(2):
        inside = attr[n, 0][region].min()
        assert inside > attr[n, 0][~region].median()


# --- constraints after every iteration and the result fields on the digits CNN -------------------


def test_constraints_hold_after_every_iteration(digits, digits_cnn64):
    x = digits.x_test[:2].double()
    method = AblationPath(digits_cnn64)
    for iterations in range(5):
        _, result = method.attribute(x, target=[0, 1], n_steps=4, n_iterations=iterations, return_path=True)
        check_path_constraints(result)
        assert result.masks.shape == (2, 5, 16, 16)
        assert result.iterations_run.tolist() == [iterations, iterations]


def test_result_fields_agree_with_direct_evaluation(digits, digits_cnn64):
    x = digits.x_test[:3].double()
    with torch.no_grad():
        target = digits_cnn64(x).argmax(1)
    attr, r = AblationPath(digits_cnn64).attribute(x, target=target, n_steps=7, n_iterations=6, return_path=True)
    baseline = __import__("captum_paths").attr.gaussian_blur(x)
    direct = straight_line_scores(digits_cnn64, x, baseline, target, r.masks)
    assert torch.allclose(r.scores, direct, atol=1e-10)
    weights = torch.tensor([0.5] + [1.0] * 6 + [0.5], dtype=torch.float64) / 7
    assert torch.allclose(r.path_score, (r.scores * weights).sum(1), atol=1e-12)
    assert torch.allclose(r.path_score_history[:, -1], r.path_score)
    assert torch.equal(r.times, torch.linspace(0, 1, 8, dtype=torch.float64))
    # saliency = trapezoid integral of 1 - mask, broadcast over channels; mean 1/2
    expected = ((1 - r.masks) * weights.reshape(1, 8, 1, 1)).sum(1)
    assert torch.allclose(attr[:, 0], expected, atol=1e-12)
    assert torch.allclose(attr.flatten(1).mean(1), torch.full((3,), 0.5, dtype=torch.float64), atol=1e-9)
    # threshold: first point where the target is not the top class; drop: score <= 80% of the start
    n_images = x.shape[0] * 8
    images = (x.unsqueeze(1) + (baseline - x).unsqueeze(1) * r.masks.unsqueeze(2)).reshape(n_images, 1, 16, 16)
    with torch.no_grad():
        top = digits_cnn64(images).argmax(1).reshape(3, 8) == target.unsqueeze(1)
    assert torch.equal(r.target_is_top, top)
    for n in range(3):
        lost = torch.nonzero(~top[n]).reshape(-1)
        idx = int(lost[0]) if lost.numel() else -1
        assert int(r.threshold_index[n]) == idx
        if idx >= 0:
            assert float(r.threshold_time[n]) == pytest.approx(idx / 7)
            assert torch.equal(r.threshold_mask[n], r.masks[n, idx])
        else:
            assert torch.isnan(r.threshold_time[n]) and torch.equal(r.threshold_mask[n], r.masks[n, -1])
        dropped = torch.nonzero(r.scores[n] <= 0.8 * r.scores[n, 0]).reshape(-1)
        assert int(r.drop_index[n]) == (int(dropped[0]) if dropped.numel() else -1)
    assert r.score_kind == "softmax" and r.drop_fraction == 0.2
    assert r.group_masks.shape == (3, 8, 256)
    assert torch.allclose(r.saturation, (2 * r.masks[:, 1:-1] - 1).abs().flatten(1).mean(1))


def test_zero_iterations_is_the_straight_line(digits, digits_cnn):
    x = digits.x_test[:2]
    attr, r = AblationPath(digits_cnn).attribute(x, target=0, n_steps=4, n_iterations=0, return_path=True)
    t = torch.linspace(0, 1, 5, dtype=torch.float64).reshape(1, 5, 1, 1)
    assert torch.allclose(r.masks, t.expand_as(r.masks), atol=1e-15)
    assert torch.allclose(attr, torch.full_like(attr, 0.5))
    assert attr.dtype == x.dtype


def test_early_stop_on_saturation_is_per_example(digits, digits_cnn64):
    x = digits.x_test[:2].double()
    method = AblationPath(digits_cnn64)
    _, full = method.attribute(x, target=2, n_steps=4, n_iterations=8, return_path=True)
    level = float(full.saturation.min()) - 1e-9
    _, r = method.attribute(x, target=2, n_steps=4, n_iterations=8, stop_saturation=level, return_path=True)
    assert (r.iterations_run <= 8).all() and (r.iterations_run < 8).any()
    for n in range(2):
        it = int(r.iterations_run[n])
        assert torch.isnan(r.path_score_history[n, it + 1 :]).all()
        if it < 8:
            assert float(r.saturation[n]) >= level
        _, single = method.attribute(
            x[n : n + 1], target=2, n_steps=4, n_iterations=8, stop_saturation=level, return_path=True
        )
        assert int(single.iterations_run[0]) == it
        assert torch.allclose(single.masks[0], r.masks[n], atol=1e-10)


# --- Captum conventions --------------------------------------------------------------------------


def test_logit_score_differs_from_softmax(digits, digits_cnn64):
    x = digits.x_test[:1].double()
    method = AblationPath(digits_cnn64)
    _, r_logit = method.attribute(x, target=0, score="logit", return_path=True, **FAST)
    _, r_soft = method.attribute(x, target=0, return_path=True, **FAST)
    with torch.no_grad():
        assert float(r_logit.scores[0, 0]) == pytest.approx(float(digits_cnn64(x)[0, 0]))
        assert float(r_soft.scores[0, 0]) == pytest.approx(float(torch.softmax(digits_cnn64(x), 1)[0, 0]))
    assert r_logit.score_kind == "logit"


class TwoImageModel(nn.Module):
    """Two image inputs and a per-example scale passed as an additional forward argument."""

    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn

    def forward(self, a, b, scale):
        return self.cnn(a) * scale.reshape(-1, 1) + self.cnn(b.flip(-1))


def test_tuple_inputs_and_additional_forward_args(digits, digits_cnn64):
    model = TwoImageModel(digits_cnn64)
    a, b = digits.x_test[:2].double(), digits.x_test[2:4].double()
    scale = torch.tensor([1.0, 0.5], dtype=torch.float64)
    method = AblationPath(model)
    attr, r = method.attribute((a, b), target=[0, 5], additional_forward_args=(scale,), return_path=True, **FAST)
    assert isinstance(attr, tuple) and attr[0].shape == a.shape and attr[1].shape == b.shape
    assert isinstance(r.masks, tuple) and r.masks[0].shape == (2, 5, 16, 16)
    # the constraint is on both images together: mean over all pixels of the pair equals t
    both = torch.cat([r.masks[0].flatten(2), r.masks[1].flatten(2)], dim=2)
    assert (both.mean(-1) - torch.linspace(0, 1, 5, dtype=torch.float64)).abs().max() < 1e-9
    for n in range(2):
        single, _ = method.attribute(
            (a[n : n + 1], b[n : n + 1]),
            target=[0, 5][n],
            additional_forward_args=(scale[n : n + 1],),
            return_path=True,
            **FAST,
        )
        assert torch.allclose(attr[0][n : n + 1], single[0], atol=1e-10)
        assert torch.allclose(attr[1][n : n + 1], single[1], atol=1e-10)


def test_feature_mask_groups_and_non_image_inputs(digits, digits_cnn64):
    x = digits.x_test[:2].double()
    blocks = (torch.arange(16).reshape(4, 4).repeat_interleave(4, 0).repeat_interleave(4, 1)).reshape(1, 1, 16, 16)
    attr, r = AblationPath(digits_cnn64).attribute(x, target=1, feature_mask=blocks, return_path=True, **FAST)
    assert r.group_masks.shape == (2, 5, 16) and r.masks.shape == (2, 5, 16, 16)
    assert torch.equal(r.masks[:, :, :4, :4], r.masks[:, :, :1, :1].expand(-1, -1, 4, 4))
    check_path_constraints(r)
    with pytest.raises(ValueError, match="filter_sigma"):
        AblationPath(digits_cnn64).attribute(x, target=1, feature_mask=blocks, filter_sigma=1.0)
    # flat inputs: fine with a feature mask and an explicit baseline
    linear = nn.Linear(12, 3).double()
    flat = torch.rand(2, 12, dtype=torch.float64)
    attr, r = AblationPath(linear).attribute(
        flat, baselines=0.0, target=0, feature_mask=torch.arange(12) // 2, return_path=True, **FAST
    )
    assert attr.shape == flat.shape and r.masks.shape == (2, 5, 12)
    with pytest.raises(ValueError, match="feature_mask"):
        AblationPath(linear).attribute(flat, baselines=0.0, target=0)
    with pytest.raises(ValueError, match="baselines"):
        AblationPath(linear).attribute(flat, target=0, feature_mask=torch.arange(12))


def test_internal_batch_size_bounds_model_batches_and_gradient_func_is_used(digits, digits_cnn):
    batches = []

    def recording_model(inp):
        batches.append(inp.shape[0])
        return digits_cnn(inp)

    method = AblationPath(recording_model)
    calls = []
    original = method.gradient_func

    def counting_gradient_func(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    method.gradient_func = counting_gradient_func
    method.attribute(digits.x_test[:3], target=0, n_steps=4, n_iterations=2, internal_batch_size=4)
    assert max(batches) <= 4
    # 3 examples x 3 interior points = 9 rows per iteration -> 3 chunks, 2 iterations
    assert len(calls) == 6
    # model evaluations: 2 * 3 end-point images, 2 * 9 gradient rows, 9 final rows
    assert sum(batches) == 6 + 18 + 9


# --- bad input -----------------------------------------------------------------------------------


class CountingModel(nn.Module):
    def __init__(self, cnn):
        super().__init__()
        self.cnn, self.calls = cnn, 0

    def forward(self, x):
        self.calls += 1
        return self.cnn(x)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_steps=1), ValueError, "n_steps"),
        (dict(n_steps=2.5), ValueError, "n_steps"),
        (dict(n_iterations=-1), ValueError, "n_iterations"),
        (dict(zeta=0), ValueError, "zeta"),
        (dict(zeta=-0.8), ValueError, "zeta"),
        (dict(learning_rate=0), ValueError, "learning_rate"),
        (dict(momentum=1.0), ValueError, "momentum"),
        (dict(filter_sigma=-1.0), ValueError, "filter_sigma"),
        (dict(score="probability"), ValueError, "score"),
        (dict(stop_saturation=0.0), ValueError, "stop_saturation"),
        (dict(drop_fraction=1.0), ValueError, "drop_fraction"),
        (dict(baselines="sharpen"), ValueError, "baselines"),
        (dict(feature_mask=torch.ones(1, 1, 16, 16)), TypeError, "feature_mask"),
    ],
)
def test_bad_arguments_fail_before_any_model_call(digits, digits_cnn, kwargs, error, match):
    model = CountingModel(digits_cnn)
    with pytest.raises(error, match=match):
        AblationPath(model).attribute(digits.x_test[:1], target=0, **kwargs)
    assert model.calls == 0


def test_bad_inputs(digits, digits_cnn):
    model = CountingModel(digits_cnn)
    method = AblationPath(model)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        method.attribute(digits.x_test[:1, 0], target=0)  # (N, H, W): not an image batch
    with pytest.raises(TypeError, match="inputs"):
        method.attribute([digits.x_test[:1]], target=0)
    with pytest.raises(TypeError, match="floating-point"):
        method.attribute(digits.x_test[:1].long(), target=0)
    bad = digits.x_test[:1].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        method.attribute(bad, target=0)
    with pytest.raises(ValueError, match="batch size"):
        method.attribute((digits.x_test[:1], digits.x_test[:2]), target=0)
    assert model.calls == 0
    with pytest.raises(ValueError, match="softmax"):
        AblationPath(lambda x: digits_cnn(x)[:, 0]).attribute(digits.x_test[:1], **FAST)


def test_optimisation_state_is_bounded_by_internal_batch_size(digits, digits_cnn64, monkeypatch):
    """Examples are optimised in groups of internal_batch_size // (T - 2): the state never holds more."""
    from captum_paths.attr._core import ablation_path as module

    sizes = []
    original = module._Optimiser.__init__

    def recording(self, call, options, geometry, examples):
        sizes.append(examples.stop - examples.start)
        original(self, call, options, geometry, examples)

    monkeypatch.setattr(module._Optimiser, "__init__", recording)
    x = digits.x_test[:5].double()
    grouped = AblationPath(digits_cnn64).attribute(x, target=1, n_steps=4, n_iterations=2, internal_batch_size=6)
    assert sizes == [2, 2, 1]  # 6 // (5 - 2) = 2 examples at a time
    sizes.clear()
    together = AblationPath(digits_cnn64).attribute(x, target=1, n_steps=4, n_iterations=2, internal_batch_size=100)
    assert sizes == [5]
    torch.testing.assert_close(grouped, together, rtol=0, atol=1e-10)
