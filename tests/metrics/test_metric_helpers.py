"""The small pure helpers of the metrics: ranking, AUC rules, correlations, row selection."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr, rankdata, spearmanr

from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target
from captum_paths.metrics._core._common import (
    auc_mean,
    auc_trapezoid,
    average_ranks,
    check_target,
    group_ranks,
    pearson,
    spearman,
)


def test_group_ranks_is_the_inverse_of_a_stable_descending_sort():
    values = torch.tensor([[0.5, 2.0, 0.5, -1.0], [3.0, 3.0, 3.0, 3.0]])
    ranks = group_ranks(values)
    assert ranks.tolist() == [[1, 0, 2, 3], [0, 1, 2, 3]]  # ties: lower index first


def test_auc_rules():
    curves = torch.tensor([[1.0, 0.5, 0.25, 0.0]])
    assert auc_trapezoid(curves).item() == pytest.approx((0.5 + 0.5 + 0.25 + 0.0) / 3)
    assert auc_mean(curves).item() == pytest.approx(0.4375)
    with pytest.raises(ValueError):
        auc_trapezoid(torch.ones(2, 1))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=3, max_size=12), st.integers(0, 10_000))
def test_average_ranks_and_spearman_match_scipy(values, seed):
    a = torch.tensor(values, dtype=torch.float64)
    np.testing.assert_allclose(average_ranks(a.unsqueeze(0))[0].numpy(), rankdata(values) - 1)
    b = torch.randn(len(values), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = spearman(a.unsqueeze(0), b.unsqueeze(0)).item()
    if len(set(values)) == 1:
        assert np.isnan(got)
    else:
        assert got == pytest.approx(spearmanr(values, b.numpy()).statistic, abs=1e-12)
        assert pearson(a, b).item() == pytest.approx(pearsonr(values, b.numpy()).statistic, abs=1e-12)


def test_rows_target_and_forward_args_follow_each_rows_example():
    rows = torch.tensor([2, 0, 0, 1])
    assert subset_target(None, rows, 3) is None
    assert subset_target(4, rows, 3) == 4
    assert subset_target((1, 2), rows, 3) == (1, 2)
    assert subset_target(torch.tensor([5, 6, 7]), rows, 3).tolist() == [7, 5, 5, 6]
    assert subset_target([5, 6, 7], rows, 3) == [7, 5, 5, 6]
    extra = (torch.tensor([10.0, 20.0, 30.0]), "mode", torch.tensor(1.0), torch.ones(2))
    out = subset_additional_forward_args(extra, rows, 3)
    assert out[0].tolist() == [30.0, 10.0, 10.0, 20.0] and out[1] == "mode"
    assert out[2] is extra[2] and out[3] is extra[3]


def test_check_target_errors():
    with pytest.raises(ValueError, match="target"):
        check_target([1, 2], 3)
    with pytest.raises(ValueError, match="target"):
        check_target(torch.tensor([1, 2]), 3)
    with pytest.raises(TypeError, match="target"):
        check_target(torch.tensor([1.0, 2.0, 0.0]), 3)
    with pytest.raises(TypeError, match="target"):
        check_target("cat", 3)


def test_empty_batch_and_check_finite_helpers():
    from captum_paths.metrics._core import fidelity
    from captum_paths.metrics._core._common import check_finite, empty_batch

    assert fidelity.empty_batch is empty_batch  # one helper, shared by every metric
    x = torch.zeros(0, 3, 4, 4)
    assert empty_batch(x, x.clone()) is not None and empty_batch(torch.zeros(1, 2), torch.zeros(1, 2)) is None
    with pytest.raises(ValueError, match="`attributions`.*shapes"):
        empty_batch(x, torch.zeros(0, 3, 4, 5))
    check_finite((torch.zeros(2), torch.ones(3)), "inputs")
    with pytest.raises(ValueError, match=r"`baselines`\[1\] must be finite, got 2 NaN or infinite value\(s\)"):
        check_finite((torch.zeros(2), torch.tensor([0.0, float("nan"), float("-inf")])), "baselines")
