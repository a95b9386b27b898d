"""The ablation-path building blocks: monotone projection, constant speed, saturation, mask filter."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from captum_paths.attr._utils.monotone import (
    constant_speed,
    constant_speed_time_major,
    gaussian_filter_2d,
    monotone_projection,
    path_saturation,
    path_saturation_time_major,
    project_columns_,
    repair_path,
    repair_path_time_major_,
    saturate,
    weighted_mean,
)
from captum_paths.attr._utils.quadrature import trapezoid_weights


def optimal_linf_error(y: torch.Tensor) -> torch.Tensor:
    """max_{i <= j} (y_i - y_j) / 2: no non-decreasing sequence is closer to y (last dim)."""
    prefix_max = torch.cummax(y, dim=-1).values
    suffix_min = torch.flip(torch.cummin(torch.flip(y, [-1]), dim=-1).values, [-1])
    return ((prefix_max - suffix_min) / 2).amax(dim=-1)


def clip_and_rescale(y: torch.Tensor) -> torch.Tensor:
    """The naive repair: drop negative increments, then rescale the rise to the original end points."""
    increments = (y[..., 1:] - y[..., :-1]).clamp(min=0)
    rise = torch.cumsum(increments, dim=-1)
    total = rise[..., -1:]
    span = (y[..., -1:] - y[..., :1]).clamp(min=0)
    scale = torch.where(total > 0, span / torch.where(total > 0, total, torch.ones_like(total)), 0.0)
    return torch.cat([y[..., :1], y[..., :1] + rise * scale], dim=-1)


def is_nondecreasing(z: torch.Tensor, dim: int = -1) -> bool:
    return bool((z.diff(dim=dim) >= 0).all())


# --- monotone projection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, expected",
    [
        ([0.0, 1.0, 2.0], [0.0, 1.0, 2.0]),  # already monotone: unchanged
        ([1.0, 0.0], [0.5, 0.5]),  # one descent: both take the midpoint
        # run 3,1 -> level 2; its right neighbour 2 is no violation and stays
        ([0.0, 3.0, 1.0, 2.0, 4.0], [0.0, 2.0, 2.0, 2.0, 4.0]),
        ([2.5, 3.0, 1.0], [2.0, 2.0, 2.0]),  # the left neighbour 2.5 > level 2 joins the run (growth)
        ([5.0, 0.0, 4.0, 3.9], [2.5, 2.5, 3.95, 3.95]),  # two runs, levels in order: no merge
        ([0.0, 4.0, 1.0, 3.0, 0.5, 5.0], [0.0, 2.25, 2.25, 2.25, 2.25, 5.0]),  # runs 4,1 and 3,0.5 merge
        ([3.0, 2.0, 1.0, 0.0], [1.5, 1.5, 1.5, 1.5]),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]),
    ],
)
def test_monotone_projection_hand_worked(values, expected):
    out = monotone_projection(torch.tensor(values, dtype=torch.float64))
    assert out.tolist() == pytest.approx(expected, abs=1e-12)


def test_monotone_projection_along_a_middle_dim_and_shapes():
    torch.manual_seed(0)
    y = torch.randn(3, 7, 5, dtype=torch.float64)
    out = monotone_projection(y, dim=1)
    assert out.shape == y.shape and is_nondecreasing(out, dim=1)
    expected = monotone_projection(y.transpose(1, 2), dim=-1).transpose(1, 2)
    assert torch.equal(out, expected)
    assert torch.equal(monotone_projection(y[:, :1], dim=1), y[:, :1])  # length 1: nothing to do


def test_monotone_projection_rejects_non_float():
    with pytest.raises(TypeError, match="floating-point"):
        monotone_projection(torch.tensor([1, 0]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-10, max_value=10, allow_nan=False, allow_infinity=False), min_size=1, max_size=14))
def test_monotone_projection_properties(values):
    y = torch.tensor(values, dtype=torch.float64)
    z = monotone_projection(y)
    assert is_nondecreasing(z)
    assert torch.equal(monotone_projection(z), z)  # idempotent
    distance = (z - y).abs().max()
    # L-infinity optimal, hence no farther than the naive clip-and-rescale repair
    assert float(distance) == pytest.approx(float(optimal_linf_error(y)), abs=1e-12)
    assert float(distance) <= float((clip_and_rescale(y) - y).abs().max()) + 1e-12
    # values that take part in no violation are untouched
    prefix_max = torch.cummax(y, 0).values
    suffix_min = torch.flip(torch.cummin(torch.flip(y, [0]), 0).values, [0])
    untouched = (prefix_max == y) & (suffix_min == y)
    assert torch.equal(z[untouched], y[untouched])


def test_monotone_projection_batched_random():
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(500, 16, dtype=torch.float64, generator=gen).cumsum(1)
    z = monotone_projection(y)
    assert is_nondecreasing(z)
    assert torch.allclose((z - y).abs().amax(1), optimal_linf_error(y), atol=1e-12)
    for i in (0, 17, 499):  # batched == one sequence at a time
        assert torch.equal(z[i], monotone_projection(y[i]))


# --- constant speed re-parametrisation -----------------------------------------------------------


def random_monotone_path(n, t, g, gen, dtype=torch.float64):
    steps = torch.rand(n, t - 1, g, generator=gen, dtype=dtype) ** 3  # uneven speeds
    path = torch.cat([torch.zeros(n, 1, g, dtype=dtype), steps.cumsum(1)], dim=1)
    return path / path[:, -1:]


def test_constant_speed_gives_mean_t_and_keeps_monotone():
    gen = torch.Generator().manual_seed(0)
    path = random_monotone_path(4, 9, 50, gen)
    out = constant_speed(path)
    times = torch.linspace(0, 1, 9, dtype=torch.float64)
    assert (out.mean(-1) - times).abs().max() < 1e-12
    assert is_nondecreasing(out, dim=1)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    assert torch.equal(out[:, -1], torch.ones_like(out[:, -1]))


def test_constant_speed_is_identity_on_a_constant_speed_path_and_reorders_nothing():
    times = torch.linspace(0, 1, 6, dtype=torch.float64)
    straight = times.reshape(1, 6, 1).expand(2, 6, 5).clone()
    assert torch.allclose(constant_speed(straight), straight, atol=1e-15)
    # one feature ablated at t=0.2 and held: re-parametrising keeps every point on the old curve
    gen = torch.Generator().manual_seed(3)
    path = random_monotone_path(1, 7, 4, gen)
    out = constant_speed(path)
    # each new point is a convex combination of two consecutive old points
    for k in range(7):
        m = out[0, k]
        between = [(path[0, j] <= m + 1e-12).all() and (m <= path[0, j + 1] + 1e-12).all() for j in range(6)]
        assert any(between)


def test_constant_speed_weighted_groups():
    gen = torch.Generator().manual_seed(2)
    path = random_monotone_path(3, 8, 6, gen)
    weights = torch.tensor([1.0, 2.0, 3.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    weights = weights / weights.sum()
    out = constant_speed(path, weights)
    assert ((out * weights).sum(-1) - torch.linspace(0, 1, 8, dtype=torch.float64)).abs().max() < 1e-12


def test_constant_speed_skips_flat_stretches():
    # the mean does not move between the first two points: those must not stall the new path
    path = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=torch.float64)
    out = constant_speed(path)
    assert out.mean(-1)[0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1], abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 12), st.integers(1, 20), st.integers(0, 2**31 - 1))
def test_repair_path_constraints_property(n_points, n_groups, seed):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(2, n_points, n_groups, generator=gen, dtype=torch.float64) * 0.7 + 0.5
    out = repair_path(raw)
    times = torch.linspace(0, 1, n_points, dtype=torch.float64)
    assert is_nondecreasing(out, dim=1)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out[:, 0], torch.zeros_like(out[:, 0]))
    assert torch.equal(out[:, -1], torch.ones_like(out[:, -1]))
    assert (out.mean(-1) - times).abs().max() < 1e-9
    assert torch.allclose(repair_path(out), out, atol=1e-12)  # a valid path is a fixed point


# --- saturation map ------------------------------------------------------------------------------


def test_saturate_fixed_points_and_direction():
    phi = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    out = saturate(phi, 0.8)
    assert out[[0, 3, 6]].tolist() == pytest.approx([0.0, 0.5, 1.0], abs=1e-15)
    assert (out[1:3] < phi[1:3]).all() and (out[4:6] > phi[4:6]).all()  # away from 1/2
    assert is_nondecreasing(out)  # order preserving: keeps a path monotone
    expected = (math.tanh((2 * 0.3 - 1) * 0.8) / math.tanh(0.8) + 1) / 2
    assert float(out[2]) == pytest.approx(expected, abs=1e-15)
    # larger zeta saturates harder; small zeta is nearly the identity
    assert float(saturate(phi, 3.0)[1]) < float(out[1])
    assert torch.allclose(saturate(phi, 1e-4), phi, atol=1e-7)
    assert torch.equal(phi, torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("zeta", [0, -1.0, math.inf, True])
def test_saturate_rejects_bad_zeta(zeta):
    with pytest.raises(ValueError, match="zeta"):
        saturate(torch.zeros(3), zeta)


# --- Gaussian filter of a mask -------------------------------------------------------------------


@pytest.mark.parametrize("sigma, shape", [(1.0, (3, 7, 9)), (2.5, (2, 5, 6)), (0.6, (1, 16, 16))])
def test_gaussian_filter_matches_scipy_nearest(sigma, shape):
    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(shape, generator=gen, dtype=torch.float64)
    ours = gaussian_filter_2d(masks, sigma)
    ref = gaussian_filter(masks.numpy(), (0, sigma, sigma), mode="nearest")
    assert np.abs(ours.numpy() - ref).max() < 1e-12


def test_gaussian_filter_keeps_constants_range_and_zero_sigma():
    masks = torch.full((2, 4, 5), 0.3, dtype=torch.float64)
    assert torch.allclose(gaussian_filter_2d(masks, 1.5), masks, atol=1e-15)
    binary = (torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    out = gaussian_filter_2d(binary, 1.0)
    assert out.min() >= 0 and out.max() <= 1 + 1e-12
    assert torch.equal(gaussian_filter_2d(binary, 0), binary)
    # into a given tensor, which may be the input itself
    expected = gaussian_filter_2d(binary, 1.0)
    target = torch.empty_like(binary)
    assert gaussian_filter_2d(binary, 1.0, out=target) is target and torch.equal(target, expected)
    same = binary.clone()
    gaussian_filter_2d(same, 1.0, out=same)
    assert torch.equal(same, expected)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_filter_2d(binary, -1.0)


# --- small helpers -------------------------------------------------------------------------------


def test_trapezoid_weights_and_saturation_measure():
    w = trapezoid_weights(5)
    assert w.tolist() == pytest.approx([0.125, 0.25, 0.25, 0.25, 0.125])
    times = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert float((w.sum())) == pytest.approx(1.0)
    straight = times.reshape(1, 101, 1).expand(1, 101, 3)
    assert float(path_saturation(straight)) == pytest.approx(0.5, abs=0.01)
    binary = torch.zeros(1, 5, 4, dtype=torch.float64)
    for k in range(5):
        binary[0, k, :k] = 1
    assert float(path_saturation(binary)) == 1.0


# --- the time-major forms the optimiser uses -----------------------------------------------------


def test_time_major_forms_equal_the_public_functions():
    gen = torch.Generator().manual_seed(4)
    raw = torch.randn(3, 9, 11, generator=gen, dtype=torch.float64) * 0.6 + 0.5  # (N, T, G)
    weights = torch.rand(3, 11, generator=gen, dtype=torch.float64)
    weights = weights / weights.sum(-1, keepdim=True)
    time_major = raw.transpose(0, 1).contiguous()  # (T, N, G)

    columns = time_major.clone()
    assert project_columns_(columns.view(9, -1)) is not None
    assert torch.equal(columns, monotone_projection(raw, dim=1).transpose(0, 1))

    for w in (None, weights):
        repaired = repair_path(raw, w)
        overwritten = time_major.clone()
        assert torch.equal(repair_path_time_major_(overwritten, w).transpose(0, 1), repaired)
        assert not torch.equal(overwritten, time_major)  # the argument was used as scratch space
        monotone = monotone_projection(raw, dim=1).clamp(0, 1)
        monotone[:, 0], monotone[:, -1] = 0, 1
        assert torch.equal(
            constant_speed_time_major(monotone.transpose(0, 1).contiguous(), w).transpose(0, 1),
            constant_speed(monotone, w),
        )
        assert torch.allclose(
            path_saturation_time_major(repaired.transpose(0, 1), w), path_saturation(repaired, w), atol=1e-15
        )
    # one weight vector for every path
    shared = weights[0]
    assert torch.allclose(
        constant_speed(repair_path(raw, shared), shared),
        constant_speed(repair_path(raw, shared), shared.expand(3, 11)),
        atol=1e-15,
    )


def test_monotone_projection_leaves_its_input_alone_and_keeps_layout():
    y = torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 0.5]], dtype=torch.float64)
    before = y.clone()
    out = monotone_projection(y, dim=1)
    assert torch.equal(y, before)
    assert out.tolist() == [[2.0, 2.0, 2.0], [0.0, 0.75, 0.75]]
    assert out.shape == y.shape and out.dtype == y.dtype


def test_weighted_mean_forms():
    gen = torch.Generator().manual_seed(5)
    masks = torch.rand(4, 2, 6, generator=gen, dtype=torch.float64)
    assert torch.allclose(weighted_mean(masks, None), masks.mean(-1))
    uniform = torch.full((6,), 1 / 6, dtype=torch.float64)
    assert torch.allclose(weighted_mean(masks, uniform), masks.mean(-1), atol=1e-15)
    per_path = torch.rand(2, 6, generator=gen, dtype=torch.float64)
    assert torch.allclose(weighted_mean(masks, per_path), torch.einsum("tmg,mg->tm", masks, per_path), atol=1e-15)


def test_saturate_in_place():
    phi = torch.linspace(0, 1, 11, dtype=torch.float64)
    expected = saturate(phi, 0.8)
    out = saturate(phi, 0.8, inplace=True)
    assert out is phi and torch.equal(phi, expected)
