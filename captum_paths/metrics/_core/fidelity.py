"""mu-fidelity / faithfulness correlation (Bhatt, Weller, Moura, "Evaluating and Aggregating Feature-based
Model Explanations", IJCAI 2020, definition 3), with the knobs of its two common implementations: Quantus's
``FaithfulnessCorrelation`` and Xplique's ``MuFidelity``."""

import math
from numbers import Integral, Real
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_paths.attr._utils.features import flatten_inputs
from captum_paths.attr._utils.validation import (
    check_finite_inputs,
    check_generator,
    check_positive_int,
)
from captum_paths.baselines import resolve_baselines
from captum_paths.metrics._core._common import (
    ScoreSpec,
    TensorOrTuple,
    check_target,
    empty_batch,
    group_attributions,
    pearson,
    prepare_inputs_and_attributions,
    score_function,
    spearman,
)
from captum_paths.metrics._core.sensitivity import random_subsets, subset_sums_and_drops

__all__ = ["mu_fidelity", "grid_feature_mask", "subset_count", "empty_batch"]

_CORRELATIONS = {"pearson": pearson, "spearman": spearman}
_SAMPLINGS = ("fixed", "bernoulli")


def grid_feature_mask(height: int, width: int, grid_size: int, device=None) -> Tensor:
    """Xplique's super-pixel grid: a ``grid_size x grid_size`` grid resized to ``height x width`` by
    nearest-neighbour with half-pixel centres (TF2 ``tf.image.resize(method="nearest")``, torch's
    ``"nearest-exact"``): pixel ``(i, j)`` is in cell ``(floor((i + 1/2) g / H), floor((j + 1/2) g / W))``.

    Returns ``(1, 1, H, W)`` long ids, contiguous from 0 (cells that cover no pixel, when ``g`` exceeds
    ``H`` or ``W``, are dropped: they could never change the input).
    """
    g = check_positive_int(grid_size, "grid_size")
    rows = ((torch.arange(height, device=device) + 0.5) * g / height).floor().long().clamp(max=g - 1)
    cols = ((torch.arange(width, device=device) + 0.5) * g / width).floor().long().clamp(max=g - 1)
    cells = rows.reshape(-1, 1) * g + cols.reshape(1, -1)
    return torch.unique(cells, return_inverse=True)[1].reshape(1, 1, height, width)


def subset_count(subset_size: Union[int, float], n_features: int) -> int:
    """Features per subset of ``sampling="fixed"``: an int as it is (``1..G``); a float ``p`` in (0, 1] as
    ``max(1, round(p G))``."""
    if isinstance(subset_size, bool) or not isinstance(subset_size, Real):
        raise TypeError(f"`subset_size` must be an int count or a float fraction, got {type(subset_size).__name__}")
    if isinstance(subset_size, Integral):
        if not 1 <= subset_size <= n_features:
            raise ValueError(f"`subset_size` = {subset_size} must lie in 1..{n_features} (the number of features)")
        return int(subset_size)
    if not (math.isfinite(subset_size) and 0 < subset_size <= 1):
        raise ValueError(f"a float `subset_size` is a fraction of the features in (0, 1], got {subset_size!r}")
    return max(1, int(round(subset_size * n_features)))


def _explicit_subsets(subsets: Any, n: int, n_groups: int, device) -> Tensor:
    """User subsets as ``(N, S, G)`` bool: bool masks as they are, integer ``(N, S, k)`` feature indices
    scattered (each subset's indices must be distinct)."""
    if not isinstance(subsets, Tensor) or subsets.dim() != 3:
        raise TypeError(
            "`subsets` must be a 3-d tensor: (N, S, G) bool membership or (N, S, k) integer feature indices, got "
            f"{type(subsets).__name__} of shape {tuple(getattr(subsets, 'shape', ()))}"
        )
    if subsets.shape[0] != n or subsets.shape[1] < 2:
        raise ValueError(f"`subsets` must have shape (N={n}, S >= 2, ...), got {tuple(subsets.shape)}")
    subsets = subsets.to(device)
    if subsets.dtype == torch.bool:
        if subsets.shape[2] != n_groups:
            raise ValueError(
                f"bool `subsets` must have {n_groups} (the number of features) columns, got {subsets.shape[2]}"
            )
        return subsets
    if subsets.dtype.is_floating_point or subsets.dtype.is_complex:
        raise TypeError(f"`subsets` must be bool or integer, got dtype {subsets.dtype}")
    if subsets.numel() and (int(subsets.min()) < 0 or int(subsets.max()) >= n_groups):
        raise ValueError(f"`subsets` indices must lie in 0..{n_groups - 1}")
    members = torch.zeros(subsets.shape[:2] + (n_groups,), dtype=torch.bool, device=device)
    members.scatter_(-1, subsets.long(), True)
    if bool((members.sum(-1) != subsets.shape[2]).any()):
        raise ValueError("`subsets` holds a repeated index within a subset: indices must be distinct")
    return members


def _drawer(sampling: str, subset_size: Any, n_subsets: int, n_groups: int, gen, device) -> Callable:
    """``draw(start, stop) -> (stop - start, S, G)`` bool, example by example from ``gen``."""
    if sampling == "fixed":
        k = subset_count(subset_size, n_groups)
        return lambda start, stop: torch.cat(
            [random_subsets(1, n_subsets, n_groups, k, gen, device) for _ in range(start, stop)]
        )
    if isinstance(subset_size, bool) or not isinstance(subset_size, Real) or isinstance(subset_size, Integral):
        raise TypeError(f"`sampling`='bernoulli' needs a float probability `subset_size`, got {subset_size!r}")
    if not (math.isfinite(subset_size) and 0 < subset_size < 1):
        raise ValueError(
            f"`subset_size` is the removal probability of 'bernoulli' and must lie in (0, 1), got {subset_size!r}"
        )
    gen_device = gen.device if gen is not None else device

    def draw(start: int, stop: int) -> Tensor:
        keys = [torch.rand((1, n_subsets, n_groups), generator=gen, device=gen_device) for _ in range(start, stop)]
        return (torch.cat(keys) < subset_size).to(device)

    return draw


def _check_options(correlation: Any, nan_to: Any, sampling: Any, n_subsets: Any) -> Callable:
    if isinstance(correlation, str):
        if correlation not in _CORRELATIONS:
            raise ValueError(f"`correlation` must be 'pearson', 'spearman' or a callable, got {correlation!r}")
        correlation = _CORRELATIONS[correlation]
    elif not callable(correlation):
        raise TypeError(f"`correlation` must be 'pearson', 'spearman' or a callable, got {type(correlation).__name__}")
    if nan_to is not None and (isinstance(nan_to, bool) or not isinstance(nan_to, Real) or not math.isfinite(nan_to)):
        raise ValueError(f"`nan_to` must be None or a finite number, got {nan_to!r}")
    if sampling not in _SAMPLINGS:
        raise ValueError(f"`sampling` must be one of {_SAMPLINGS}, got {sampling!r}")
    if check_positive_int(n_subsets, "n_subsets") < 2:
        raise ValueError(f"`n_subsets` must be at least 2 for a correlation, got {n_subsets}")
    return correlation


def _grid_mask(grid_size: Optional[int], feature_mask: Any, inputs: TensorOrTuple) -> Any:
    if grid_size is None:
        return feature_mask
    if feature_mask is not None:
        raise ValueError("pass either `grid_size` or `feature_mask`, not both: the grid is a feature mask")
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else "a tuple"
        raise ValueError(f"`grid_size` needs a single (N, C, H, W) image tensor as `inputs`, got {shape}")
    return grid_feature_mask(inputs.shape[2], inputs.shape[3], grid_size, inputs.device)


def _correlate(correlation: Callable, sums: Tensor, drops: Tensor, nan_to: Optional[float]) -> Tensor:
    out = correlation(sums.to(drops.dtype), drops)
    if not isinstance(out, Tensor) or out.shape != sums.shape[:1]:
        raise ValueError(
            f"the `correlation` callable must return a tensor of shape ({sums.shape[0]},), got "
            f"{type(out).__name__} of shape {tuple(getattr(out, 'shape', ()))}"
        )
    return out if nan_to is None else torch.nan_to_num(out, nan=float(nan_to))


def mu_fidelity(
    forward_func: Callable,
    inputs: TensorOrTuple,
    attributions: TensorOrTuple,
    baselines: Any = "zeros",
    target: Any = None,
    additional_forward_args: Any = None,
    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
    subset_size: Union[int, float] = 0.2,
    n_subsets: int = 100,
    sampling: str = "fixed",
    grid_size: Optional[int] = None,
    subsets: Optional[Tensor] = None,
    correlation: Union[str, Callable[[Tensor, Tensor], Tensor]] = "pearson",
    nan_to: Optional[float] = None,
    score: ScoreSpec = "logit",
    max_examples_per_batch: Optional[int] = None,
    show_progress: bool = False,
    generator: Union[None, int, torch.Generator] = None,
) -> Tensor:
    r"""mu-fidelity (Bhatt et al. 2020): do sums of attributions predict the output drop of removing them?

    For every example ``x`` draw ``S`` random subsets ``S_s`` of its ``G`` features (pixels, with the
    channels of a pixel together, for 4-D inputs; ``feature_mask`` groups; grid cells with ``grid_size``;
    elements otherwise) and return the correlation over the subsets

    .. math:: \mu(x) = \mathrm{corr}_s\Big(\sum_{i \in S_s} a_i,\; f_t(x) - f_t(x_{[x_{S_s} = b_{S_s}]})\Big)

    with ``b`` the baseline. An additive model ``f(x) = w^T x + c`` explained by ``w (x - b)`` scores 1
    for any subsets. The correlation is ``nan`` when either side is constant over the subsets (e.g. a
    model that ignores the features), unless ``nan_to`` replaces it.

    Implementations and how to reproduce them (both *read, not copied*; both draw their own randomness):

    * **Quantus** ``FaithfulnessCorrelation`` (defaults ``nr_runs=100, subset_size=224,
      perturb_baseline="black", similarity_func=correlation_pearson, abs=False, normalise=True``):
      ``mu_fidelity(model, x, a, baselines=lambda x: x.flatten(1).amin(1).reshape(-1, 1, 1, 1),
      feature_mask=torch.arange(x[0].numel()).reshape(x.shape[1:]), subset_size=224, n_subsets=100)``.
      Quantus draws from the *elements* of ``C H W`` (channels separately), its "black" baseline is each
      example's minimum over all elements, and it divides ``a`` by ``max|a|``, which leaves a correlation
      unchanged (pass ``a.abs()`` for ``abs=True``). Equal to Quantus given the same subsets (``subsets=``).
    * **Xplique** ``MuFidelity`` (defaults ``grid_size=9, subset_percent=0.2, baseline_mode=0.0,
      nb_samples=200``, Spearman, ``nan -> 0``): ``mu_fidelity(model, x, a, baselines=0.0, grid_size=9,
      sampling="bernoulli", subset_size=0.2, n_subsets=200, correlation="spearman", nan_to=0.0)``. Xplique
      shares one set of masks among the examples of a batch; here every example draws its own (so a score
      does not depend on the other examples in the batch), which has the same distribution per example.

    Defaults here: Bhatt et al.'s definition (Pearson, uniformly random subsets of a fixed size) with
    Xplique's 20 % subsets (a fraction, so it suits any resolution, where Quantus's 224 elements suits
    224 x 224 x 3 images only), Quantus's 100 subsets and a zeros baseline.

    Cost: ``N (1 + S)`` model rows, without gradients, in chunks of ``max_examples_per_batch``.

    Args:
        forward_func (Callable): the model or any function of the inputs returning its output.
        inputs (Tensor or tuple of Tensor): ``(N, ...)`` examples, finite.
        attributions (Tensor or tuple of Tensor): exactly the shapes of ``inputs``, finite.
        baselines: the value removed features take: any baseline specification (``"zeros"``, a number, a
            tensor, ``"mean"``, ``"blur"``, a ``Baseline``, a callable of the input). Default: ``"zeros"``.
        target, additional_forward_args: as in Captum. Default: None.
        feature_mask (Tensor or tuple of Tensor, optional): Captum-style feature groups. Default: None.
        subset_size (int or float): ``sampling="fixed"``: features per subset, an int in ``1..G`` or a
            fraction in (0, 1] (``max(1, round(p G))``); ``"bernoulli"``: the probability in (0, 1) that
            each feature is removed. Default: 0.2.
        n_subsets (int): subsets ``S`` per example, at least 2. Default: 100.
        sampling (str): ``"fixed"`` (uniform subsets of one size: Bhatt et al., Quantus) or ``"bernoulli"``
            (every feature removed independently: Xplique). Default: ``"fixed"``.
        grid_size (int, optional): features are the cells of a ``grid_size x grid_size`` grid over a single
            ``(N, C, H, W)`` input (Xplique; see :func:`grid_feature_mask`). Default: None.
        subsets (Tensor, optional): explicit subsets, overriding the draws (and ``subset_size``,
            ``n_subsets``, ``sampling``): ``(N, S, G)`` bool membership, or ``(N, S, k)`` integer feature
            indices (distinct within a subset); features are numbered as the ``feature_mask`` ids (or the
            default groups: pixel ``h W + w`` of a 4-D input). Default: None.
        correlation (str or Callable): ``"pearson"`` (Bhatt et al., Quantus), ``"spearman"`` (Xplique, average
            ranks for ties) or a callable ``(sums (N, S), drops (N, S)) -> (N,)``. Default: ``"pearson"``.
        nan_to (float, optional): the value of an undefined (``nan``) correlation; Xplique uses 0. Default:
            None (keep ``nan``, as Quantus does).
        score: ``"logit"`` (both peers' default), ``"softmax"`` or a callable ``(output, target)``.
        max_examples_per_batch (int, optional): at most this many perturbed inputs per forward pass
            (the peers' batch size is 64). Default: None, ``clamp(2**18 // D, 8, 256)`` rows for ``D``
            input elements per example (see ``default_rows_per_pass`` in ``captum_paths.metrics._core._common``).
        show_progress (bool): tqdm progress over forward batches. Default: False.
        generator (int or torch.Generator, optional): seed of the subsets (and of a random baseline); the
            global RNG is untouched when one is given. Default: None (the global RNG).

    Returns:
        ``(N,)`` correlations on the inputs' device (empty for ``N = 0``).
    """
    corr_fn = _check_options(correlation, nan_to, sampling, n_subsets)
    mask = _grid_mask(grid_size, feature_mask, inputs)
    empty = empty_batch(inputs, attributions)
    if empty is not None:
        return torch.empty(0, dtype=empty.dtype, device=empty.device)
    inputs_t, flat_attr, ids, n_groups = prepare_inputs_and_attributions(
        inputs, attributions, mask, max_examples_per_batch
    )
    check_finite_inputs(inputs_t)
    n = inputs_t[0].shape[0]
    check_target(target, n)
    score_fn = score_function(score)
    gen = check_generator(generator)
    detached = tuple(x.detach() for x in inputs_t)
    device = detached[0].device
    if subsets is not None:
        members = _explicit_subsets(subsets, n, n_groups, device)
        n_subsets = members.shape[1]
        draw = lambda start, stop: members[start:stop]  # noqa: E731
    else:
        draw = _drawer(sampling, subset_size, n_subsets, n_groups, gen, device)
    baseline_flat = flatten_inputs(resolve_baselines(baselines, detached, name="baselines", generator=gen))
    sums, drops = subset_sums_and_drops(
        forward_func,
        detached,
        group_attributions(flat_attr, ids, n_groups),
        ids,
        baseline_flat,
        draw,
        n_subsets,
        target,
        additional_forward_args,
        score_fn,
        max_examples_per_batch,
        show_progress,
        desc="mu-fidelity",
    )
    return _correlate(corr_fn, sums, drops, nan_to)
