"""Ablation path saliency (Sagemüller & Verdier, "Ablation Path Saliency", arXiv 2209.12459, 2022)."""

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, List, Literal, Optional, Tuple, Union, overload

import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput, PathResult
from captum_paths.attr._utils.captum_compat import TargetType, TensorOrTuple, check_score, log_usage, scored_forward
from captum_paths.attr._utils.features import feature_groups, flatten_inputs, group_sum, unflatten_inputs
from captum_paths.attr._utils.monotone import (
    gaussian_filter_2d,
    path_saturation_time_major,
    repair_path_time_major_,
    saturate,
)
from captum_paths.attr._utils.progress import chunk_slices
from captum_paths.attr._utils.quadrature import trapezoid_weights
from captum_paths.attr._utils.validation import (
    check_nonnegative_int,
    check_positive_float,
    check_positive_int,
    check_probability,
)
from captum_paths.baselines import BaselinesType, Blur

__all__ = ["AblationPath", "AblationPathResult", "AblationPathOptions"]


@dataclass(kw_only=True)
class AblationPathResult(PathResult):
    """The optimised ablation paths (returned with ``return_path=True``).

    ``N`` examples, ``T`` path points at times ``times[k] = k / (T - 1)``; ``G`` feature groups (one per
    pixel by default). Point ``k`` of the path of example ``n`` is the image
    ``x + (baseline - x) * masks[n, k]``: mask 0 keeps the input, mask 1 shows the baseline.

    Attributes:
        times: ``(T,)`` the path times, 0 to 1.
        masks: the path's masks per input element. For an ``(N, C, H, W)`` input whose feature groups
            do not differ across channels (always so without ``feature_mask``): ``(N, T, H, W)``;
            otherwise ``(N, T, *input.shape[1:])``. A tuple (one per input tensor) for tuple inputs.
            ``masks[:, 0]`` is all zeros, ``masks[:, -1]`` all ones, every element is non-decreasing in
            ``T`` and the mean over the input's elements of ``masks[:, k]`` is ``times[k]``.
        group_masks: ``(N, T, G)`` the same masks, one value per feature group.
        scores: ``(N, T)`` the target score (softmax probability or logit, see ``score_kind``) of the
            image at every path point, end points included. This is the path's score curve.
        path_score: ``(N,)`` the path score ``int_0^1 scores(t) dt`` (trapezoid rule over ``times``):
            the quantity the optimisation maximises.
        path_score_history: ``(N, n_iterations + 1)`` the path score before each iteration (column 0 is
            the straight-line path ``phi(t) = t``) and, in the last filled column, the final path's.
            Columns after an example stopped early (``stop_saturation``) are NaN.
        iterations_run: ``(N,)`` iterations each example ran (fewer than ``n_iterations`` if it stopped
            early on saturation).
        saturation: ``(N,)`` the final path's saturation: the mean of ``|2 phi - 1|`` over the interior
            points and the input's elements (1 = binary masks; the straight line has about 0.5).
        target_is_top: ``(N, T)`` bool, whether the target is the model's top output (ties count as top)
            at each path point.
        threshold_index: ``(N,)`` long, the first path point where the target is no longer the top
            class; -1 if it stays top along the whole path.
        threshold_time: ``(N,)`` ``times[threshold_index]``, NaN where ``threshold_index`` is -1.
        threshold_mask: the mask at ``threshold_index`` (the all-ones mask at ``t = 1`` where it is -1):
            one mask per example, shaped like ``masks`` without the ``T`` axis.
        drop_index: ``(N,)`` long, the first path point whose score is at most
            ``(1 - drop_fraction) * scores[:, 0]`` (the paper's 'score dropped by 20%' point with the
            default ``drop_fraction = 0.2``); -1 if the score never drops that far.
        drop_time: ``(N,)`` ``times[drop_index]``, NaN where ``drop_index`` is -1.
        drop_mask: the mask at ``drop_index`` (all ones where it is -1), shaped like ``threshold_mask``.
        drop_fraction: the fraction used for ``drop_*``.
        score_kind: ``"softmax"`` or ``"logit"``.
    """

    times: Tensor
    masks: Union[Tensor, Tuple[Tensor, ...]]
    group_masks: Tensor
    scores: Tensor
    path_score: Tensor
    path_score_history: Tensor
    iterations_run: Tensor
    saturation: Tensor
    target_is_top: Tensor
    threshold_index: Tensor
    threshold_time: Tensor
    threshold_mask: Union[Tensor, Tuple[Tensor, ...]]
    drop_index: Tensor
    drop_time: Tensor
    drop_mask: Union[Tensor, Tuple[Tensor, ...]]
    drop_fraction: float
    score_kind: str


def first_index(condition: Tensor) -> Tensor:
    """Index of the first True along the last dim of ``(N, T)`` bools; -1 where there is none."""
    n_points = condition.shape[-1]
    positions = torch.arange(n_points, device=condition.device).expand_as(condition)
    first = torch.where(condition, positions, torch.full_like(positions, n_points)).min(dim=-1).values
    return torch.where(first == n_points, torch.full_like(first, -1), first)


def tangent_projection(gradient: Tensor, weights: Optional[Tensor]) -> Tensor:
    """Remove from ``gradient`` (``(..., G)``) its component along ``weights`` (broadcastable to it).

    A step along the result keeps every weighted mean ``sum_g w_g phi_g`` (the fraction of the input
    ablated at each path point) unchanged. ``weights=None`` stands for equal weights: the spatial mean
    is subtracted.
    """
    if weights is None:
        return gradient - gradient.mean(dim=-1, keepdim=True)
    coeff = (gradient * weights).sum(-1, keepdim=True) / (weights * weights).sum(-1, keepdim=True)
    return gradient - coeff * weights


def max_norm_normalise(update: Tensor, dim: int = 0, inplace: bool = False) -> Tensor:
    """Divide each example's ``update`` by its largest absolute entry (zeros stay zero); ``dim`` is the
    example dimension, the maximum is over all the others. ``inplace=True`` overwrites ``update``."""
    dim = dim % update.dim()
    others = tuple(d for d in range(update.dim()) if d != dim)
    if others:
        scale = torch.maximum(update.amax(dim=others), update.amin(dim=others).neg_())
    else:
        scale = update.abs()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    shape = [1] * update.dim()
    shape[dim] = -1
    return update.div_(scale.reshape(shape)) if inplace else update / scale.reshape(shape)


@dataclass
class AblationPathOptions:
    """AblationPath's knobs (validated on construction); see :meth:`AblationPath.attribute`."""

    feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None
    n_steps: int = 15
    n_iterations: int = 30
    learning_rate: float = 0.1
    momentum: float = 0.5
    zeta: float = 0.8
    filter_sigma: Optional[float] = None
    score: str = "softmax"
    stop_saturation: Optional[float] = None
    drop_fraction: float = 0.2

    def __post_init__(self) -> None:
        self.n_steps = check_positive_int(self.n_steps, "n_steps")
        if self.n_steps < 2:
            raise ValueError(f"`n_steps` must be at least 2 (two fixed end points and a free one), got {self.n_steps}")
        self.n_iterations = check_nonnegative_int(self.n_iterations, "n_iterations")
        self.learning_rate = check_positive_float(self.learning_rate, "learning_rate")
        self.momentum = check_probability(self.momentum, "momentum", high_open=True)
        self.zeta = check_positive_float(self.zeta, "zeta")
        check_score(self.score)
        if self.stop_saturation is not None:
            self.stop_saturation = check_probability(self.stop_saturation, "stop_saturation", low_open=True)
        self.drop_fraction = check_probability(self.drop_fraction, "drop_fraction", low_open=True, high_open=True)
        self.filter_sigma = _check_filter_sigma(self.filter_sigma, self.feature_mask)

    @property
    def n_points(self) -> int:
        return self.n_steps + 1


def _check_filter_sigma(filter_sigma: Any, feature_mask: Any) -> float:
    if filter_sigma is None:
        return 1.0 if feature_mask is None else 0.0
    if (
        isinstance(filter_sigma, bool)
        or not isinstance(filter_sigma, Real)
        or not (math.isfinite(filter_sigma) and filter_sigma >= 0)
    ):
        raise ValueError(f"`filter_sigma` must be a non-negative finite number, got {filter_sigma!r}")
    if filter_sigma > 0 and feature_mask is not None:
        raise ValueError(
            "`filter_sigma` must be 0 (or None) with a `feature_mask`: feature groups have no spatial grid to filter on"
        )
    return float(filter_sigma)


class AblationPath(PathAttribution):
    r"""Ablation path saliency: an optimised monotone path of masks from the input to a baseline.

    An ablation path is a family of masks :math:`\phi(t)`, :math:`t \in [0, 1]`, one value in [0, 1]
    per feature (pixel), with :math:`\phi(0) = 0`, :math:`\phi(1) = 1`, each feature non-decreasing in
    :math:`t` and constant speed :math:`\operatorname{mean} \phi(t) = t`. It joins the input
    :math:`x` to the baseline :math:`x'` (by default the blurred input) through

    .. math::
        \gamma(t) = x + (x' - x) \odot \phi(t)

    and its score is :math:`P(\phi) = \int_0^1 F(\gamma(t))\,dt` with :math:`F` the target's softmax
    probability (paper) or logit. The optimal path keeps the class as long as possible while an
    ever larger part of the image is ablated; its masks show which features carry the decision, in
    which order. The method optimises :math:`P` over the paths with ``T`` points
    :math:`t_k = k / (T - 1)`, from the straight line :math:`\phi(t) = t`; every iteration

    1. computes :math:`\partial P / \partial \phi(t_k) = w_k \sum_c \partial_c F(\gamma(t_k))
       (x'_c - x_c)` (channels summed per feature group; trapezoid weights :math:`w_k`) at the
       interior points (the end points are fixed), all examples and points batched together;
    2. removes the component that would change :math:`\operatorname{mean} \phi(t_k)` (the spatial
       mean, for pixels) and divides by the largest absolute entry (max-norm normalised update);
    3. takes the heavy-ball step :math:`v \leftarrow \mu v + g`, :math:`\phi \leftarrow \phi + \eta v`;
    4. applies the saturation map :math:`\phi \leftarrow (\tanh((2\phi - 1)\zeta)/\tanh\zeta + 1)/2`,
       whose attracting fixed points 0 and 1 push the masks towards binary ones;
    5. filters every mask with a spatial Gaussian of width ``filter_sigma`` (pixel masks only);
    6. repairs the constraints exactly: per-feature L-infinity-optimal monotone projection over
       :math:`t` (paper, appendix B), clamping to [0, 1], end points, constant-speed
       re-parametrisation (appendix A).

    After every iteration the constraints hold exactly (the mean to rounding, far below 1e-6).

    The saliency map returned is :math:`\int_0^1 (1 - \phi(t))\,dt` per feature (trapezoid rule),
    broadcast to the input's shape: features that are ablated last score highest (1 for a feature
    kept until the end, 0 for one ablated at once). Its mean over the features is 1/2. With
    ``return_path=True`` the whole path comes back as an :class:`AblationPathResult`: masks, score
    curve, path score, the threshold point where the target stops being the top class and the point
    where the score dropped by 20%.

    Choices where the paper leaves room (documented so that results can be compared):

    * The defaults of ``n_steps``, ``learning_rate``, ``momentum`` and ``filter_sigma`` are ours, picked on
      the digits CNN: the paper's values for them were not available to us (it gives 20-40 iterations
      and zeta = 0.8, which are our defaults). With them the path score on 28x28 digits levels off
      between 20 and 30 iterations, in line with the paper's 20-40; ``learning_rate=0.2, momentum=0.9``
      gets there in about 10 and about 1% higher. ``filter_sigma`` is in pixels, so large images may
      want a larger value; 0 (no filter) scores higher still but lets the masks follow single pixels,
      which the filter is there to prevent.
    * The max-norm normalisation divides each example's update by its largest entry over all path
      points and features, so ``learning_rate`` is the largest change of any mask value per step (before
      momentum).
    * ``saturation`` (and ``stop_saturation``) is our measure of how binary the masks are, the mean of
      :math:`|2\phi - 1|`; the paper's own stopping rule was not available to us.
    * :math:`P` uses the trapezoid rule; its gradient skips the two fixed end points, so one iteration
      costs ``T - 2`` forward+backward passes per example.
    * With a ``feature_mask`` the masks live on the groups, the constant-speed constraint weights each
      group by its share of the input's elements, and there is no spatial filter (groups have no grid).
    * Early stopping on saturation (``stop_saturation``) is per example (so batched runs equal one at a
      time); it is off by default.

    Cost: ``n_iterations * (T - 2)`` forward+backward passes per example, plus ``T`` forward passes (the
    end points and the final path's score curve). Besides the model, each iteration does a fixed
    amount of mask arithmetic, about 30 elementwise passes over the ``N * T * G`` mask values (the
    monotone projection is half of it): roughly 15 ms for 32 examples, 16 points and 28x28 masks on
    one CPU core. That is 5% of the model time on the benchmark's digits CNN, 12-27% on an 8-channel
    toy CNN whose pass costs 0.2 ms per image.

    The method has no completeness property: there is no convergence delta.
    """

    _default_baselines = Blur(11, 5.0)
    _completeness = False
    _has_path_result = True

    def __init__(self, forward_func: Callable) -> None:
        r"""
        Args:
            forward_func (Callable): the model, or any function returning scores of shape
                ``(N, n_classes)`` (or ``(N,)`` / ``(N, 1)`` with ``score="logit"``).
        """
        super().__init__(forward_func)

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        n_steps: int = 15,
        n_iterations: int = 30,
        learning_rate: float = 0.1,
        momentum: float = 0.5,
        zeta: float = 0.8,
        filter_sigma: Optional[float] = None,
        score: str = "softmax",
        stop_saturation: Optional[float] = None,
        drop_fraction: float = 0.2,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[False] = False,
        return_path: Literal[False] = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        n_steps: int = 15,
        n_iterations: int = 30,
        learning_rate: float = 0.1,
        momentum: float = 0.5,
        zeta: float = 0.8,
        filter_sigma: Optional[float] = None,
        score: str = "softmax",
        stop_saturation: Optional[float] = None,
        drop_fraction: float = 0.2,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[False] = False,
        return_path: Literal[True],
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Tuple[TensorOrTuple, AblationPathResult]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        n_steps: int = 15,
        n_iterations: int = 30,
        learning_rate: float = 0.1,
        momentum: float = 0.5,
        zeta: float = 0.8,
        filter_sigma: Optional[float] = None,
        score: str = "softmax",
        stop_saturation: Optional[float] = None,
        drop_fraction: float = 0.2,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        return_path: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, AblationPathResult]]:
        r"""
        Args:
            inputs (Tensor or tuple[Tensor, ...]): ``(N, C, H, W)`` images (or a tuple of them). Other
                shapes need a ``feature_mask`` saying which elements form one feature.
            baselines: the path's end point. ``None`` (default): the input blurred with RISE's kernel
                (klen 11, sigma 5), as in the paper. Any specification of
                :func:`captum_paths.baselines.resolve_baselines`: a number, a tensor
                broadcastable to the input, ``"zeros"``, ``"blur"``, a Baseline object, a callable.
            target (int, tuple, Tensor or list): Captum's target formats; ``None`` for a model with one
                output per example.
            additional_forward_args (Any): extra arguments of ``forward_func`` after the inputs;
                tensors with first dimension ``N`` are per example.
            feature_mask (Tensor or tuple[Tensor, ...]): Captum-style integer ids (broadcastable to each
                input, contiguous from 0): elements with one id share one mask value. Default: one
                feature per pixel (channels together).
            n_steps (int): ``T - 1 >= 2``, intervals of the path: ``T = n_steps + 1`` points, both ends
                included. Default 15 (16 points).
            n_iterations (int): optimisation steps, ``>= 0`` (0 returns the straight-line path
                :math:`\phi(t) = t`). Default 30 (paper: 20-40 suffice).
            learning_rate (float): :math:`\eta > 0`, the largest change of any mask value by one
                normalised step (before momentum). Default 0.1.
            momentum (float): :math:`\mu \in [0, 1)`, heavy-ball momentum. Default 0.5.
            zeta (float): :math:`\zeta > 0` of the saturation map. Default 0.8 (paper).
            filter_sigma (float): standard deviation in pixels of the spatial Gaussian filter applied to
                the masks every iteration; 0 turns it off. Default ``None``: 1.0 for pixel masks, 0 with
                a ``feature_mask`` (a positive value with a ``feature_mask`` is an error).
            score (str): ``"softmax"`` (paper): the target's softmax probability over dim 1 of the
                output; ``"logit"``: the raw output.
            stop_saturation (float): stop an example's optimisation once its path saturation
                (:attr:`AblationPathResult.saturation`) reaches this value in (0, 1]. Default ``None``:
                always run ``n_iterations``.
            drop_fraction (float): in (0, 1); the ``drop_*`` fields of the result mark where the score
                fell to ``(1 - drop_fraction)`` times its value at the input. Default 0.2 (paper).
            internal_batch_size (int): most path images per forward+backward pass, and the bound of the
                optimisation state: examples are optimised in groups of ``max(1, internal_batch_size //
                (T - 2))`` (examples are independent, so the result is the same). ``None``: automatic, at
                most 2**22 input elements per pass (see
                :func:`~captum_paths.attr.default_internal_batch_size`).
            return_convergence_delta (bool): must be False: ablation paths have no completeness property.
            return_path (bool): also return the :class:`AblationPathResult`.
            show_progress (bool or None, optional): a tqdm bar counting model passes (images through the
                model): ``True`` shows it, ``False`` never; ``None`` (default) shows it once the call has run
                for 5 seconds, so that long calls report their progress and short ones stay silent.
            generator (None, int or torch.Generator): for random baselines (``"uniform"``,
                ``"gaussian"``); the optimisation itself is deterministic.

        Returns:
            attributions: the saliency :math:`\int_0^1 (1 - \phi(t))\,dt` of every feature, broadcast
            to each input's shape and dtype (a tuple for tuple inputs);
            ``(attributions, AblationPathResult)`` with ``return_path=True``.
        """
        options = AblationPathOptions(
            feature_mask, n_steps, n_iterations, learning_rate, momentum, zeta, filter_sigma, score, stop_saturation,
            drop_fraction,
        )  # fmt: skip
        return self._attribute(
            inputs,
            baselines,
            target,
            additional_forward_args,
            options,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=return_convergence_delta,
            return_path=return_path,
            generator=generator,
            show_progress=show_progress,
        )

    def _resolve_baselines(self, baselines, inputs, generator):
        if any(x.dim() != 4 for x in inputs) and not isinstance(baselines, Tensor):
            # the checks that need the inputs' shapes, before any model pass
            if baselines is None:
                raise ValueError(
                    "the default baseline of AblationPath (the blurred input) needs (N, C, H, W) images, got "
                    f"input shape(s) {[tuple(x.shape) for x in inputs]}: pass `baselines`"
                )
        return super()._resolve_baselines(baselines, inputs, generator)

    def _expected_passes(self, call: PathCall, options: AblationPathOptions) -> int:
        return call.n_examples * ((options.n_points - 2) * options.n_iterations + options.n_points)

    def _path(self, call: PathCall, options: AblationPathOptions) -> PathOutput:
        inputs = call.inputs
        if options.feature_mask is None and any(x.dim() != 4 for x in inputs):
            raise ValueError(
                "AblationPath works on (N, C, H, W) images; got input shape(s) "
                f"{[tuple(x.shape) for x in inputs]}. Pass a `feature_mask` to define the features of other inputs"
            )
        group_ids, n_groups = feature_groups(inputs, options.feature_mask)
        geometry = _PathGeometry(inputs, call.baselines, group_ids, n_groups, pixels=options.feature_mask is None)
        per_chunk = call.n_examples
        if call.internal_batch_size is not None:
            per_chunk = max(1, call.internal_batch_size // (options.n_points - 2))
        device = inputs[0].device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # the masks' dtype
        flat = torch.empty(group_ids.shape, dtype=dtype, device=device)
        results = []
        for chunk in chunk_slices(call.n_examples, per_chunk):
            result = _Optimiser(call, options, geometry, chunk).run()
            # the saliency of the group, then its masks are dropped unless the path is asked for
            flat[chunk] = torch.gather(_saliency(result.group_masks, options.n_points), 1, group_ids[chunk])
            if call.need_path:
                results.append(result)
        attributions = unflatten_inputs(flat, inputs)
        if not call.need_path:
            return PathOutput(attributions)
        result = results[0] if len(results) == 1 else _concatenate(results)
        result.masks, result.threshold_mask, result.drop_mask = (
            _element_masks(result.group_masks, group_ids, inputs),
            None,
            None,
        )
        result.threshold_mask = _masks_at(result.masks, result.threshold_index)
        result.drop_mask = _masks_at(result.masks, result.drop_index)
        if len(inputs) == 1:
            result.masks, result.threshold_mask, result.drop_mask = (
                result.masks[0],
                result.threshold_mask[0],
                result.drop_mask[0],
            )
        return PathOutput(attributions, None, result)


def _saliency(group_masks: Tensor, n_points: int) -> Tensor:
    """``int_0^1 (1 - phi(t)) dt`` per group by the trapezoid rule: ``(n, T, G)`` masks to ``(n, G)``."""
    quadrature = trapezoid_weights(n_points, group_masks.dtype, group_masks.device)
    return torch.einsum("t,ntg->ng", quadrature, 1 - group_masks)


def _concatenate(results: List[AblationPathResult]) -> AblationPathResult:
    """One result from the results of consecutive groups of examples (per-example fields joined on dim 0)."""
    first = results[0]
    joined = {}
    for name in ("group_masks", "scores", "path_score", "path_score_history", "iterations_run", "saturation"):
        joined[name] = torch.cat([getattr(r, name) for r in results])
    for name in ("target_is_top", "threshold_index", "threshold_time", "drop_index", "drop_time"):
        joined[name] = torch.cat([getattr(r, name) for r in results])
    return AblationPathResult(
        times=first.times, masks=(), threshold_mask=(), drop_mask=(), drop_fraction=first.drop_fraction,
        score_kind=first.score_kind, **joined,
    )  # fmt: skip


class _Optimiser:
    """The optimisation of the ablation paths of a group of examples (rows ``examples`` of the call).

    The path lives time-major, ``(T, n, G)``: ``path[k]`` holds every example's mask at ``times[k]``, so the
    interior points are the model's rows (point-major: row ``k * n + j`` shows example ``j`` at interior point
    ``k + 1``). It is float64 (float32 on MPS) so that the constraints hold far below 1e-6 whatever the model.
    """

    def __init__(self, call: PathCall, options: AblationPathOptions, geometry: "_PathGeometry", examples: slice):
        self.call, self.options, self.geometry = call, options, geometry
        device = call.inputs[0].device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.examples = torch.arange(examples.start, examples.stop, device=device)
        n, t, g = self.examples.numel(), options.n_points, geometry.n_groups
        group_ids = geometry.group_ids_of(self.examples)
        # share of the input's elements in each group: the constant-speed constraint's weights
        ones = torch.ones(group_ids.shape, dtype=self.dtype, device=device)
        weights = group_sum(ones, group_ids, g) / group_ids.shape[1]
        # equal weights (one group per pixel, or groups of one size): plain means, no weights needed
        self.weights = None if bool((weights == weights[:, :1]).all()) else weights
        self.times = torch.linspace(0, 1, t, dtype=self.dtype, device=device)
        self.quadrature = trapezoid_weights(t, self.dtype, device)
        self.path = self.times.reshape(t, 1, 1).expand(t, n, g).clone()
        self.velocity = torch.zeros(t - 2, n, g, dtype=self.dtype, device=device)
        self.forward = scored_forward(call.forward_func, options.score)
        self.blocks = (
            _spatial_blocks(call.inputs) if options.feature_mask is None and options.filter_sigma > 0 else None
        )
        self.history = torch.full((n, options.n_iterations + 1), math.nan, dtype=self.dtype, device=device)
        self.iterations_run = torch.zeros(n, dtype=torch.long, device=device)

    def run(self) -> AblationPathResult:
        n = self.examples.numel()
        ends = torch.cat([self.path[0], self.path[-1]])
        end_scores, end_top = self._scores(self.examples.repeat(2), ends)
        end_scores, end_top = end_scores.reshape(2, n).to(self.dtype), end_top.reshape(2, n)
        self.end_contribution = self.quadrature[0] * end_scores[0] + self.quadrature[-1] * end_scores[1]
        active = torch.arange(n, device=self.examples.device)
        for iteration in range(self.options.n_iterations):
            if active.numel() == 0:
                break
            active = self._iterate(iteration, active)
        mid_scores, mid_top = self._scores(
            self.examples.repeat(self.options.n_points - 2), self.path[1:-1].reshape(-1, self.path.shape[-1])
        )
        return self._result(end_scores, end_top, mid_scores, mid_top)

    def _scores(self, row_examples: Tensor, row_masks: Tensor) -> Tuple[Tensor, Tensor]:
        """Scores and 'target is the top output' of path images, without gradients: ``(R,)`` each."""
        images = self.geometry.images(row_examples, row_masks)
        return self.call.scores(images, row_examples, forward=self.forward, top=True)

    def _iterate(self, iteration: int, active: Tensor) -> Tensor:
        """One optimisation step of the ``active`` examples (local indices); returns those still active."""
        opts, n_interior = self.options, self.options.n_points - 2
        n_active, n_groups = active.numel(), self.path.shape[-1]
        every = n_active == self.examples.numel()  # the whole state in place instead of index copies
        current = self.path if every else self.path[:, active]
        row_examples = self.examples[active].repeat(n_interior)
        images = self.geometry.images(row_examples, current[1:-1].reshape(-1, n_groups))
        grads, row_scores = self.call.gradients(images, row_examples, forward=self.forward)
        gradient = self.geometry.mask_gradient(row_examples, grads).to(self.dtype).view(n_interior, n_active, n_groups)
        interior_scores = row_scores.to(self.dtype).view(n_interior, n_active)
        self.history[active, iteration] = self.end_contribution[active] + self.quadrature[1:-1] @ interior_scores
        w = self.weights if self.weights is None or every else self.weights[active]
        step = max_norm_normalise(tangent_projection(gradient, w), dim=1, inplace=True)
        moved = self.velocity if every else self.velocity[:, active]
        moved.mul_(opts.momentum).add_(step)
        if not every:
            self.velocity[:, active] = moved
        interior = saturate(current[1:-1].add_(moved, alpha=opts.learning_rate), opts.zeta, inplace=True)
        if self.blocks is not None:
            _filter_blocks(interior, self.blocks, opts.filter_sigma, out=current[1:-1])
        current = repair_path_time_major_(current, w)
        if every:
            self.path = current
        else:
            self.path[:, active] = current
        self.iterations_run[active] += 1
        if opts.stop_saturation is None:
            return active
        return active[path_saturation_time_major(current, w) < opts.stop_saturation]

    def _result(self, end_scores, end_top, mid_scores, mid_top) -> AblationPathResult:
        n, n_interior = self.examples.numel(), self.options.n_points - 2
        mid_scores = mid_scores.reshape(n_interior, n).transpose(0, 1).to(self.dtype)
        mid_top = mid_top.reshape(n_interior, n).transpose(0, 1)
        scores = torch.cat([end_scores[0].unsqueeze(1), mid_scores, end_scores[1].unsqueeze(1)], dim=1)
        is_top = torch.cat([end_top[0].unsqueeze(1), mid_top, end_top[1].unsqueeze(1)], dim=1)
        path_score = (scores * self.quadrature).sum(dim=1)
        self.history[torch.arange(n, device=scores.device), self.iterations_run] = path_score
        threshold_index = first_index(~is_top)
        drop_index = first_index(scores <= (1 - self.options.drop_fraction) * scores[:, :1])
        return AblationPathResult(
            times=self.times,
            masks=(),
            group_masks=self.path.transpose(0, 1).contiguous(),  # (n, T, G)
            scores=scores,
            path_score=path_score,
            path_score_history=self.history,
            iterations_run=self.iterations_run,
            saturation=path_saturation_time_major(self.path, self.weights),
            target_is_top=is_top,
            threshold_index=threshold_index,
            threshold_time=_index_times(self.times, threshold_index),
            threshold_mask=(),
            drop_index=drop_index,
            drop_time=_index_times(self.times, drop_index),
            drop_mask=(),
            drop_fraction=self.options.drop_fraction,
            score_kind=self.options.score,
        )


class _PathGeometry:
    """Turns masks into path images ``x + (x' - x) * phi`` and image gradients into mask gradients.

    Masks are ``(R, G)`` rows, one per path image; ``examples`` (``(R,)``) says which example each
    row shows. A single ``(N, C, H, W)`` input with one group per pixel (the default) takes a fast
    path: broadcasting over the channels instead of gathering / scattering group ids.
    """

    def __init__(self, inputs, baselines, group_ids: Tensor, n_groups: int, pixels: bool):
        self.like = inputs
        self.n_groups = n_groups
        self.pixel_image = pixels and len(inputs) == 1 and inputs[0].dim() == 4
        if self.pixel_image:
            self.x = inputs[0].detach()
            self.delta = (baselines[0] - inputs[0]).detach()
        else:
            self.x = flatten_inputs(inputs).detach()
            self.delta = (flatten_inputs(baselines) - self.x).detach()
            self.group_ids = group_ids.contiguous()

    def group_ids_of(self, examples: Tensor) -> Tensor:
        """``(n, D)`` group ids of ``examples`` (the per-pixel ids for the pixel-image fast path)."""
        if self.pixel_image:
            height, width = self.x.shape[2:]
            return torch.arange(height * width, device=self.x.device).expand(examples.numel(), -1)
        return self.group_ids[examples]

    def images(self, examples: Tensor, row_masks: Tensor) -> Tuple[Tensor, ...]:
        """Path images ``x + (x' - x) * phi`` of rows showing ``examples`` (tuple like the inputs)."""
        if self.pixel_image:
            n_rows, (_, height, width) = examples.numel(), self.x.shape[1:]
            mask = row_masks.to(self.x.dtype).reshape(n_rows, 1, height, width)
            return (torch.addcmul(self.x[examples], self.delta[examples], mask),)
        element_masks = torch.gather(row_masks, 1, self.group_ids[examples]).to(self.x.dtype)
        flat = torch.addcmul(self.x[examples], self.delta[examples], element_masks)
        return unflatten_inputs(flat, self.like)

    def mask_gradient(self, examples: Tensor, grads: Tuple[Tensor, ...]) -> Tensor:
        """Chain rule through ``x + delta * phi``: per group, the sum of ``grad * delta``: ``(R, G)``."""
        if self.pixel_image:
            return (grads[0] * self.delta[examples]).sum(dim=1).reshape(examples.numel(), -1)
        chain = flatten_inputs(grads) * self.delta[examples]
        return group_sum(chain, self.group_ids[examples], self.n_groups)


def _spatial_blocks(inputs: Tuple[Tensor, ...]) -> List[Tuple[int, int, int]]:
    """Where each input's pixels sit among the default per-pixel groups: (offset, H, W) per input."""
    blocks, offset = [], 0
    for x in inputs:
        height, width = x.shape[-2:]
        blocks.append((offset, height, width))
        offset += height * width
    return blocks


def _filter_blocks(masks: Tensor, blocks: List[Tuple[int, int, int]], sigma: float, out: Tensor) -> Tensor:
    """Gaussian-filter the per-pixel masks ``(..., G)`` of every input image on its own grid into
    ``out`` (contiguous, ``masks``' shape; it may be ``masks`` itself)."""
    for offset, height, width in blocks:
        grid = masks[..., offset : offset + height * width].reshape(masks.shape[:-1] + (height, width))
        target = out[..., offset : offset + height * width]
        if target.is_contiguous():  # one image spans the whole last dim: filter straight into `out`
            gaussian_filter_2d(grid, sigma, out=target.view(grid.shape))
        else:
            target.copy_(gaussian_filter_2d(grid, sigma).reshape(target.shape))
    return out


def _element_masks(masks: Tensor, group_ids: Tensor, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Per-element masks of each input: ``(N, T, H, W)`` for channel-shared image groups, else
    ``(N, T, *input.shape[1:])``."""
    n_examples, n_points = masks.shape[:2]
    out, start = [], 0
    for x in inputs:
        size = x[0].numel()
        ids = group_ids[:, start : start + size]
        start += size
        grid_ids = ids.reshape(x.shape)
        if x.dim() == 4 and bool((grid_ids == grid_ids[:, :1]).all()):
            pixel_ids = grid_ids[:, 0].reshape(n_examples, 1, -1).expand(-1, n_points, -1)
            out.append(torch.gather(masks, 2, pixel_ids).reshape((n_examples, n_points) + tuple(x.shape[2:])))
        else:
            element_ids = ids.reshape(n_examples, 1, -1).expand(-1, n_points, -1)
            out.append(torch.gather(masks, 2, element_ids).reshape((n_examples, n_points) + tuple(x.shape[1:])))
    return tuple(out)


def _index_times(times: Tensor, index: Tensor) -> Tensor:
    return torch.where(index >= 0, times[index.clamp(min=0)], torch.full_like(times[index.clamp(min=0)], math.nan))


def _masks_at(element_masks: Tuple[Tensor, ...], index: Tensor) -> Tuple[Tensor, ...]:
    """Each example's mask at ``index`` (the last, all-ones mask where ``index`` is -1)."""
    picked = []
    for m in element_masks:
        idx = torch.where(index >= 0, index, torch.full_like(index, m.shape[1] - 1))
        picked.append(m[torch.arange(m.shape[0], device=m.device), idx])
    return tuple(picked)
