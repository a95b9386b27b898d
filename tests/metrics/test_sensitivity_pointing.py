"""Sensitivity-n and the pointing game."""

import pytest
import torch
from metric_models import LinearClasses, LinearScore, TwoInputLinear

from captum_paths.metrics import pointing_game, sensitivity_n
from captum_paths.metrics._core.sensitivity import random_subsets


def _additive(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64)
    x = torch.rand(n, 2, 3, 3, generator=g, dtype=torch.float64)
    return LinearScore(w), x, w


# ------------------------------------------------------------------------------------------ Sensitivity-n
def test_exact_shapley_values_of_an_additive_model_have_sensitivity_one():
    model, x, w = _additive()
    for baseline in (None, 0.5):
        b = 0.0 if baseline is None else baseline
        shapley = w * (x - b)  # exact Shapley values of a linear model w.r.t. the baseline
        s = sensitivity_n(model, x, shapley, n=[1, 3, 8], baselines=baseline, generator=0)
        assert s.shape == (3, 3)
        torch.testing.assert_close(s, torch.ones_like(s), atol=1e-10, rtol=0)


def test_random_attributions_are_not_sensitive_and_seed_reproduces():
    model, x, w = _additive(seed=1)
    attr = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    a = sensitivity_n(model, x, attr, n=4, generator=7, n_subsets=50)
    b = sensitivity_n(
        model, x, attr, n=4, generator=torch.Generator().manual_seed(7), n_subsets=50, max_examples_per_batch=13
    )
    assert a.shape == (3,) and torch.equal(a, b)
    first = sensitivity_n(model, x[:1], attr[:1], n=4, generator=7, n_subsets=50)  # draws go example by example
    torch.testing.assert_close(first[0], a[0], atol=1e-12, rtol=0)
    assert bool((a < 0.9).all())


def test_correlation_follows_its_definition_on_a_nonlinear_model():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 6, generator=g, dtype=torch.float64)
    attr = torch.randn(2, 6, generator=g, dtype=torch.float64)
    model = lambda t: (t**2).sum(1, keepdim=True) + t[:, :1] * t[:, 1:2]  # noqa: E731
    got = sensitivity_n(model, x, attr, n=2, n_subsets=20, generator=5)
    gen = torch.Generator().manual_seed(5)  # drawn example by example, as sensitivity_n does
    members = torch.cat([random_subsets(1, 20, 6, 2, gen, x.device) for _ in range(2)])
    for i in range(2):
        perturbed = torch.where(members[i], torch.zeros(1, dtype=x.dtype), x[i])
        drops = model(x[i : i + 1]) - model(perturbed)
        sums = (attr[i] * members[i]).sum(1)
        ref = torch.corrcoef(torch.stack([sums, drops[:, 0]]))[0, 1]
        assert got[i].item() == pytest.approx(ref.item(), abs=1e-12)


def test_subsets_are_uniform_of_the_right_size():
    members = random_subsets(2, 400, 5, 2, torch.Generator().manual_seed(0), "cpu")
    assert bool((members.sum(-1) == 2).all())
    freq = members.double().mean((0, 1))
    torch.testing.assert_close(freq, torch.full((5,), 0.4, dtype=torch.float64), atol=0.05, rtol=0)


def test_tuple_inputs_feature_mask_and_targets():
    g = torch.Generator().manual_seed(4)
    u, v = torch.randn(1, 4, generator=g, dtype=torch.float64), torch.randn(1, 3, generator=g, dtype=torch.float64)
    a, b = torch.rand(2, 4, generator=g, dtype=torch.float64), torch.rand(2, 3, generator=g, dtype=torch.float64)
    s = sensitivity_n(TwoInputLinear(u, v), (a, b), (a * u, b * v), n=[2, 5], generator=0)
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-10, rtol=0)
    model = LinearClasses(4, 3)
    x = torch.rand(2, 4, generator=g, dtype=torch.float64)
    exact = model.weight.detach()[[0, 2]] * x  # target 0 for example 0, class 2 for example 1
    mask = torch.tensor([0, 0, 1, 1])
    s = sensitivity_n(model, x, exact, n=1, target=[0, 2], feature_mask=mask, n_subsets=10, generator=1)
    torch.testing.assert_close(s, torch.ones_like(s), atol=1e-10, rtol=0)


def test_sensitivity_bad_input():
    model, x, w = _additive()
    with pytest.raises(ValueError, match="number of features"):
        sensitivity_n(model, x, x * w, n=19)
    with pytest.raises(ValueError, match="`n`"):
        sensitivity_n(model, x, x * w, n=0)
    with pytest.raises(ValueError, match="n_subsets"):
        sensitivity_n(model, x, x * w, n=2, n_subsets=1)
    with pytest.raises(ValueError, match="attributions"):
        sensitivity_n(model, x, (x * w)[:2], n=2)


# ------------------------------------------------------------------------------------------ pointing game
def _peak_maps(points, h=20, w=30):
    maps = torch.zeros(len(points), 1, h, w)
    for i, (r, c) in enumerate(points):
        maps[i, 0, r, c] = 1.0
    return maps


def test_hit_when_the_maximum_is_inside_or_within_tolerance():
    maps = _peak_maps([(5, 5), (5, 12), (5, 13), (15, 25)])
    region = torch.zeros(4, 20, 30, dtype=torch.bool)
    region[:, 2:8, 2:8] = True  # columns 2..7
    hits = pointing_game(maps, region, tolerance=5)
    assert hits.tolist() == [True, True, False, False]  # distance 5 is a hit, 6 is not
    assert pointing_game(maps, region, tolerance=0).tolist() == [True, False, False, False]
    assert pointing_game(maps[:, 0], region.unsqueeze(1), tolerance=15).tolist() == [True, True, True, False]


def test_boxes_match_masks_and_lists_allow_many_or_no_boxes():
    maps = _peak_maps([(5, 5), (10, 20), (0, 0)])
    boxes = torch.tensor([[2.0, 2.0, 7.0, 7.0], [19.0, 9.0, 21.0, 11.0], [10.0, 10.0, 12.0, 12.0]])
    region = torch.zeros(3, 20, 30, dtype=torch.bool)
    region[0, 2:8, 2:8] = True
    region[1, 9:12, 19:22] = True
    region[2, 10:13, 10:13] = True
    assert torch.equal(pointing_game(maps, boxes, tolerance=3), pointing_game(maps, region, tolerance=3))
    as_lists = [[[2, 2, 7, 7]], [[0, 0, 1, 1], [19, 9, 21, 11]], []]
    assert pointing_game(maps, as_lists, tolerance=0).tolist() == [True, True, False]
    assert pointing_game(maps, boxes.unsqueeze(1), tolerance=0).tolist() == [True, True, False]


def test_channels_are_summed_and_absolute_option():
    maps = torch.zeros(1, 2, 10, 10)
    maps[0, 0, 1, 1], maps[0, 1, 1, 1] = 0.6, 0.6  # sum 1.2 beats the single 1.0 elsewhere
    maps[0, 0, 8, 8] = 1.0
    maps[0, 0, 4, 4] = -5.0
    region = torch.zeros(1, 10, 10, dtype=torch.bool)
    region[0, 1, 1] = True
    assert pointing_game(maps, region, tolerance=0).tolist() == [True]
    assert pointing_game(maps, region, tolerance=0, absolute=True).tolist() == [False]


def test_pointing_bad_input():
    maps = _peak_maps([(1, 1), (2, 2)])
    with pytest.raises(ValueError, match="regions"):
        pointing_game(maps, torch.zeros(2, 19, 30, dtype=torch.bool))
    with pytest.raises(ValueError, match="regions"):
        pointing_game(maps, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="regions"):
        pointing_game(maps, [[[0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(maps, torch.zeros(2, 4), tolerance=-1)
    with pytest.raises(ValueError, match="attributions"):
        pointing_game(torch.zeros(2, 5), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="regions"):
        pointing_game(maps, "box")


# ------------------------------------------------------------------------------------ bad input (issue 12)
def test_pointing_game_tie_rule_constant_maps_and_non_finite_maps():
    from captum_paths.metrics import pointing_game

    region = torch.zeros(4, 8, 8, dtype=torch.bool)
    region[:, :3, :3] = True
    maps = torch.zeros(4, 8, 8)
    maps[1] = 5.0  # constant: points nowhere
    maps[2, 1, 1] = maps[2, 6, 6] = 1.0  # tied peaks, one far from the region: a miss
    maps[3, 1, 1] = maps[3, 2, 2] = 1.0  # tied peaks, both in the region: a hit
    assert pointing_game(maps, region, tolerance=0).tolist() == [False, False, False, True]
    assert pointing_game(maps, region, tolerance=100).tolist() == [False, False, True, True]
    for bad in (float("nan"), float("inf")):
        broken = maps.clone()
        broken[0, 4, 4] = bad
        with pytest.raises(ValueError, match=r"`attributions` must be finite, got 1 NaN or infinite"):
            pointing_game(broken, region)
    assert pointing_game(torch.zeros(0, 3, 8, 8), torch.zeros(0, 8, 8, dtype=torch.bool)).shape == (0,)


def test_sensitivity_n_bad_input_before_any_model_pass_and_empty_batch():
    from captum_paths.metrics import sensitivity_n

    calls = []
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).double()
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    for bad_name in ("inputs", "attributions"):
        xi, ai = x.clone(), x.clone()
        (xi if bad_name == "inputs" else ai)[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match=rf"`{bad_name}`\[0\] must be finite"):
            sensitivity_n(model, xi, ai, n=2, target=0)
    with pytest.raises(ValueError, match="`baselines`.*images"):
        sensitivity_n(model, x.reshape(2, 12), x.reshape(2, 12), n=2, target=0, baselines="blur")
    assert calls == []
    empty = torch.rand(0, 3, 2, 2, dtype=torch.float64)
    assert sensitivity_n(model, empty, empty, n=2, target=0).shape == (0,)
    assert sensitivity_n(model, empty, empty, n=[1, 2], target=0).shape == (0, 2)
    assert calls == []
