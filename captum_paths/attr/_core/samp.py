"""SAMP / SAMP++: Salient Manipulation Path attribution (Zhang et al., ICLR 2024)."""

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Literal, Optional, Sequence, Tuple, Union, overload

import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput, PathResult
from captum_paths.attr._utils.captum_compat import TargetType, TensorOrTuple, log_usage
from captum_paths.attr._utils.features import feature_groups, flatten_inputs, group_sum, unflatten_inputs
from captum_paths.attr._utils.validation import (
    check_features_per_step,
    check_positive_int,
    check_probability,
    features_per_step_count,
)
from captum_paths.baselines import BaselinesType, Blur, resolve_baselines

__all__ = [
    "SampAttribution",
    "SampPath",
    "SampOptions",
    "select_salient_groups",
    "default_features_per_step",
    "resolve_features_per_step",
]

_DIRECTIONS = ("deletion", "insertion", "both")
_RULES = ("left", "trapezoid")
FeatureMask = Union[None, Tensor, Tuple[Tensor, ...]]


@dataclass(kw_only=True)
class SampPath(PathResult):
    """What happened along the manipulation paths (returned with ``return_path=True``).

    ``directions`` names the second axis of every tensor (``("deletion",)``, ``("insertion",)`` or
    ``("deletion", "insertion")``). Deletion paths run input -> ``baselines``; insertion paths run
    ``insertion_start`` -> input. ``L`` is the longest path's number of points; shorter paths are
    padded with NaN.

    Attributes:
        directions: names of the paths, in order.
        scores: ``(N, n_dirs, L)`` target score at every point of the path, start and end included.
            The insertion curve from the blurred image to the input is the SAMP paper's Figure 3 curve.
        fractions: ``(N, n_dirs, L)`` share of the L1 distance ``||x_start - x_end||_1`` covered at each
            point (0 at the start, 1 at the end); use it as the curve's x axis.
        lengths: ``(N, n_dirs)`` number of valid points per path (gradient steps + 1).
        snapshot_fractions: ``(S,)`` the fractions at which points were kept.
        snapshots: one tensor per input, ``(N, n_dirs, S, *input.shape[1:])``: the first point of the path
            whose covered fraction reached each snapshot fraction.
        snapshot_attributions: same shapes: the attribution accumulated up to that point (sign as in the
            final result: the deletion path's sum is negated).
    """

    directions: Tuple[str, ...]
    scores: Tensor
    fractions: Tensor
    lengths: Tensor
    snapshot_fractions: Tensor
    snapshots: Tuple[Tensor, ...]
    snapshot_attributions: Tuple[Tensor, ...]


def select_salient_groups(projection: Tensor, unfinished: Tensor, step_size: int, largest: bool) -> Tensor:
    """The greedy choice of one SAMP step: which feature groups move now.

    Args:
        projection: ``(R, G)`` gradient projected on the remaining displacement of each group,
            ``sum_{i in group} g_i * (x_end_i - x_i)``.
        unfinished: ``(R, G)`` bool, groups that have not reached the end point.
        step_size: ``s``, groups chosen per step; fewer are chosen when fewer are unfinished.
        largest: ``True`` picks the ``s`` largest projections (insertion: the score rises fastest),
            ``False`` the ``s`` most negative (deletion: the score falls fastest).

    Returns:
        ``(R, G)`` bool mask of the chosen groups. Finished groups are never chosen.
    """
    signed = projection if largest else -projection
    masked = signed.masked_fill(~unfinished, float("-inf"))
    k = min(step_size, projection.shape[1])
    values, index = masked.topk(k, dim=1)
    chosen = torch.zeros_like(unfinished)
    return chosen.scatter_(1, index, values > float("-inf"))


# the paper's settings: s = 10 pixels at 28x28 (MNIST) and 32x32 (CIFAR-10), 103 steps at 1,024 groups;
# s = 224 * 16 at 224x224 (ImageNet), 14 steps at 50,176 groups
_SMALL_GROUPS, _SMALL_STEP = 1024, 10
_LARGE_GROUPS, _LARGE_STEPS = 224 * 224, 14


def default_features_per_step(n_groups: int) -> int:
    """SAMP's default ``s`` for ``n_groups`` feature groups: the paper's setting at its image sizes.

    * up to 1,024 groups (32x32): ``s = 10``, the paper's MNIST / CIFAR-10 setting (79 steps at 28x28);
    * from 50,176 groups (224x224) on: 14 steps per path, ``s = ceil(G / 14)``, the paper's ImageNet setting
      ``224 * 16 = 3,584`` at 224x224;
    * in between, the number of steps ``K(G)`` falls log-linearly in ``G`` from 103 (``1024 / 10``) to 14,
      ``K(G) = 102.4 (G / 1024)^a`` with ``a = log(14 / 102.4) / log(49)``, and ``s = ceil(G / K(G))``
      (e.g. 64x64: 50 steps, ``s = 82``; 128x128: 24 steps, ``s = 690``).

    A path then costs at most ``ceil(G / s)`` passes (plus ``ceil(1 / eta)`` with the IC): bounded by about
    103 + 10 at any size, where a fixed ``s = 10`` costs ``G / 10`` (5,018 per path at 224x224).
    """
    if n_groups <= _SMALL_GROUPS:
        return _SMALL_STEP
    if n_groups >= _LARGE_GROUPS:
        return math.ceil(n_groups / _LARGE_STEPS)
    exponent = math.log(_LARGE_STEPS / (_SMALL_GROUPS / _SMALL_STEP)) / math.log(_LARGE_GROUPS / _SMALL_GROUPS)
    steps = (_SMALL_GROUPS / _SMALL_STEP) * (n_groups / _SMALL_GROUPS) ** exponent
    return math.ceil(n_groups / steps)


def resolve_features_per_step(features_per_step: Union[None, int, float], n_groups: int) -> int:
    """``s`` as a count: ``None`` is :func:`default_features_per_step`, an int is taken as it is, a float in
    ``(0, 1]`` is that fraction of ``n_groups`` (rounded, at least 1)."""
    if features_per_step is None:
        return default_features_per_step(n_groups)
    return features_per_step_count(features_per_step, n_groups)


@dataclass
class SampOptions:
    """SAMP's knobs (validated on construction); see :meth:`SampAttribution.attribute`."""

    feature_mask: FeatureMask = None
    features_per_step: Union[None, int, float] = None
    eta: Optional[float] = 0.1
    momentum: Optional[float] = 0.5
    direction: str = "both"
    insertion_start: Any = "blur"
    max_steps: Optional[int] = None
    snapshot_fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0)
    rule: str = "left"

    def __post_init__(self) -> None:
        check_features_per_step(self.features_per_step)
        if not isinstance(self.rule, str) or self.rule not in _RULES:
            raise ValueError(f"`rule` must be one of {_RULES}, got {self.rule!r}")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"`direction` must be one of {_DIRECTIONS}, got {self.direction!r}")
        if self.eta is not None:
            self.eta = check_probability(self.eta, "eta", low_open=True)
        if self.momentum is not None:
            self.momentum = check_probability(self.momentum, "momentum", high_open=True)
        if self.max_steps is not None:
            self.max_steps = check_positive_int(self.max_steps, "max_steps")
        self.snapshot_fractions = tuple(check_probability(f, "snapshot_fractions") for f in self.snapshot_fractions)

    @property
    def directions(self) -> Tuple[str, ...]:
        return ("deletion", "insertion") if self.direction == "both" else (self.direction,)


class SampAttribution(PathAttribution):
    r"""Salient Manipulation Path attribution, SAMP and SAMP++ (Zhang et al., "Path Choice Matters for
    Clear Attribution in Path Methods", ICLR 2024).

    Instead of IG's straight line, SAMP follows a greedy, near-optimal *manipulation path*: at each step
    it moves the ``s`` feature groups (pixels by default: all channels of a pixel move together) whose
    gradient projection on their remaining displacement is the most favourable, all the way to the end
    point. Along a path :math:`x_0 \to x_1 \to \dots \to x_K` the attribution of element :math:`i` is the
    path integral's left Riemann sum

    .. math::
        \phi_i = \sum_{k=0}^{K-1} g_{k,i} \, (x_{k+1,i} - x_{k,i}),

    where :math:`g_k = \nabla_x F_c(x_k)` (plain SAMP) or, with momentum (MS),
    :math:`g_k = \lambda g_{k-1} + (1-\lambda) \nabla_x F_c(x_k)`, :math:`g_0 = \nabla_x F_c(x_0)`, and
    :math:`F_c` is the target's raw output (the logit for a classifier).
    The infinitesimal constraint (IC) bounds each step: if :math:`\|x_{k+1} - x_k\|_1 > \eta`,
    with :math:`\eta = \text{eta} \cdot \|x_{start} - x_{end}\|_1`, the step is scaled down to L1 length
    :math:`\eta`; a group moved only part of the way competes again at the next step with its remaining
    distance. ``return_convergence_delta`` reports the completeness gap
    :math:`\sum_i \phi_i - (F_c(x_{end}) - F_c(x_{start}))`.

    What the IC does and does not give: without momentum the left sum's gap is the Riemann error of the
    path integral. On smooth networks it shrinks with ``eta`` (e.g. a softplus/tanh CNN: below 2% of
    the output difference at ``eta=0.01``). On ReLU / max-pool networks it need not: the gradient is
    piecewise constant and jumps where a max switches, and moving the one pixel that carries a max-pool
    window's gradient switches that max, so even a small step sees a gradient that changes within it. On
    the benchmark's digits CNN (``SampPaperCNN``, LeakyReLU and global max pool, momentum off) the median
    ``|delta| / |output difference|`` is about 0.59 at ``eta=0.1`` and 0.56 at ``eta=0.02`` (both
    directions; ``benchmarks/bench_samp.py --completeness``): a property of the method, which the authors'
    reference code shares, not of this port.

    ``rule="trapezoid"`` (an option; the default ``"left"`` is the authors' rule) integrates each step
    with the trapezoid rule on the raw gradients,

    .. math::
        \phi_i = \sum_{k=0}^{K-1} \tfrac12 \big(\nabla_i F_c(x_k) + \nabla_i F_c(x_{k+1})\big)
        (x_{k+1,i} - x_{k,i}),

    exact for quadratic :math:`F_c` along each segment: the gap shrinks roughly as :math:`\eta^2` on smooth
    networks instead of :math:`\eta`, and on the digits CNN above it falls to a median 0.08 at ``eta=0.1`` and 0.10
    at ``eta=0.02`` (momentum off). :math:`\nabla F_c(x_{k+1})` is the next step's own gradient, so the
    rule costs one extra gradient pass per path (at its last point) and no end-point forward for the delta.
    Under momentum the path is still chosen with the smoothed :math:`g_k`, but the trapezoid integrates
    the raw gradients: MS is the paper's device against greedy local optima (a choice of path), and a
    quadrature of smoothed gradients would keep the bias by which momentum gives up completeness. With
    the left rule, momentum enters the sum as in the paper.

    Two directions, as in the paper's Brownian-motion view:

    * **deletion**: from the input to ``baselines`` (default zeros), choosing the ``s`` groups with the
      most negative projection (the score falls fastest); the sum is negated so that it attributes
      :math:`F_c(x) - F_c(\text{baseline})`;
    * **insertion**: from ``insertion_start`` (default the input blurred with a ``11 x 11``, sigma 5
      kernel as in RISE) to the input, choosing the largest projection (the score rises fastest);
      it attributes :math:`F_c(x) - F_c(\text{blurred})`;
    * **both** (default): the sum of the two, attributing
      :math:`2F_c(x) - F_c(\text{baseline}) - F_c(\text{blurred})`.

    Defaults are **SAMP++** (IC with ``eta=0.1`` i.e. ten fragments, MS with ``momentum=0.5``, both
    directions, ``s`` scaled with the number of feature groups so that it is the paper's ``s = 10`` pixels
    per step at 28x28 and 32x32 and its ``s = 224 * 16`` at 224x224: see :func:`default_features_per_step`).
    Plain **SAMP** is ``eta=None, momentum=None``. The paper's ImageNet blur is ``Blur(31, 5)``; its
    ablations use ``eta=1/50``.

    Where we differ from the authors' reference code (zbr17/ExplainAttr, ``sam.py``):

    * the reference writes momentum as ``m * grad + (1 - m) * g_prev``; we follow the paper's
      ``lam * g_prev + (1 - lam) * grad``. The two agree at the default 0.5; for other values our
      ``momentum`` is the paper's :math:`\lambda`;
    * the reference min-max normalises the final map; we return raw attributions (as every Captum
      method does), leaving normalisation to metrics and plots.

    Cost: one forward+backward pass per step for every path still running (finished paths are not
    forwarded again), plus one forward pass per path end point when ``return_convergence_delta`` or
    ``return_path`` asks for the end scores (left rule); the trapezoid instead adds one forward+backward
    pass per path at its last point, whose score serves as the end score (paths stopped by ``max_steps``
    still take the end-point forward). Bookkeeping per step is ``O(R * (D + G log s))`` for ``R`` running
    paths (a top-``s`` per path, gathers and scatters of the chosen pixels), a few percent of a model pass.
    Per example and direction, at most
    ``min(ceil(G / s) + ceil(1 / eta), max_steps)`` steps for ``G`` feature groups (without the IC, drop the
    ``1 / eta`` term; ``G`` is ``H * W`` for images): about 80-113 with the defaults at any image size. A small
    ``eta`` or ``s`` makes it grow as ``1 / eta`` and ``G / s``: calls estimated above
    :data:`~captum_paths.attr.LARGE_CALL_PASSES` passes warn with their estimate.
    """

    _has_path_result = True

    def __init__(self, forward_func: Callable) -> None:
        r"""
        Args:
            forward_func (Callable): the forward function of the model or any modification of it. Its
                output for the chosen ``target`` must be one score per example.
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
        feature_mask: FeatureMask = None,
        features_per_step: Union[None, int, float] = None,
        eta: Optional[float] = 0.1,
        momentum: Optional[float] = 0.5,
        direction: str = "both",
        insertion_start: Any = "blur",
        max_steps: Optional[int] = None,
        snapshot_fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        rule: str = "left",
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
        feature_mask: FeatureMask = None,
        features_per_step: Union[None, int, float] = None,
        eta: Optional[float] = 0.1,
        momentum: Optional[float] = 0.5,
        direction: str = "both",
        insertion_start: Any = "blur",
        max_steps: Optional[int] = None,
        snapshot_fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        rule: str = "left",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[True],
        return_path: Literal[False] = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Tuple[TensorOrTuple, Tensor]: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        feature_mask: FeatureMask = None,
        features_per_step: Union[None, int, float] = None,
        eta: Optional[float] = 0.1,
        momentum: Optional[float] = 0.5,
        direction: str = "both",
        insertion_start: Any = "blur",
        max_steps: Optional[int] = None,
        snapshot_fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        rule: str = "left",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        return_path: Literal[True],
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Tuple[TensorOrTuple, SampPath]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        feature_mask: FeatureMask = None,
        features_per_step: Union[None, int, float] = None,
        eta: Optional[float] = 0.1,
        momentum: Optional[float] = 0.5,
        direction: str = "both",
        insertion_start: Any = "blur",
        max_steps: Optional[int] = None,
        snapshot_fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        rule: str = "left",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        return_path: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Tensor], Tuple[TensorOrTuple, SampPath]]:
        r"""
        Args:
            inputs (Tensor or tuple[Tensor, ...]): input(s) for which attributions are computed, each of
                shape ``(N, ...)`` with the same ``N``. 4-D tensors are treated as ``(N, C, H, W)`` images.
            baselines (scalar, str, Tensor, Baseline, callable or tuple of these, optional): the end point
                of the deletion path, one per input tensor (see :mod:`captum_paths.baselines`).
                Tensors may have the input's shape, its per-example shape or a broadcastable one.
                Default: zeros.
            target (int, tuple, Tensor or list, optional): output index(es) to explain, in any Captum
                target format. ``None`` only for models returning one score per example.
            additional_forward_args (Any, optional): extra arguments passed to ``forward_func`` after the
                inputs; tensors whose first dimension is ``N`` are expanded with the paths.
            feature_mask (Tensor or tuple[Tensor, ...], optional): Captum-style integer ids, broadcastable
                to each input, contiguous from 0, shared across the tuple; elements with one id move
                together (e.g. superpixels). Default: one group per pixel for 4-D inputs (all channels
                of a pixel), one per element otherwise.
            features_per_step (int, float or None, optional): ``s``, groups moved per step: an int count, a
                float in ``(0, 1]`` as a fraction of the number of groups (rounded, at least 1), or ``None``
                for :func:`default_features_per_step` (10 up to 32x32, 224 * 16 at 224x224). Default: None.
            eta (float or None, optional): the infinitesimal constraint as a fraction of
                ``||x_start - x_end||_1`` per example, in ``(0, 1]``; ``None`` turns the IC off.
                Default: 0.1 (the paper's tables).
            momentum (float or None, optional): :math:`\lambda \in [0, 1)` of the momentum strategy;
                ``None`` turns it off (0 is the same path). Default: 0.5.
            direction (str, optional): ``"deletion"``, ``"insertion"`` or ``"both"`` (summed).
                Default: ``"both"``.
            insertion_start (baseline specification, optional): the start of the insertion path, any
                form ``baselines`` accepts. Default: ``"blur"``, RISE's Gaussian blur with kernel 11 and
                sigma 5 (``Blur(klen, sigma)`` sets them).
            internal_batch_size (int, optional): at most this many paths (example x direction) run and
                are forwarded together; the rest wait for the next chunk. ``None``: automatic, at most 2**22
                input elements per pass (see :func:`~captum_paths.attr.default_internal_batch_size`).
            max_steps (int, optional): stop every path after this many steps even if unfinished (for a
                budget; completeness then no longer holds). Default: run to the end point.
            return_convergence_delta (bool, optional): also return, per example,
                ``sum(attributions) - expected output difference`` (see the class docstring).
            return_path (bool, optional): also return a :class:`SampPath` with the score at every path
                point, the share of distance covered, and snapshots of path points.
            snapshot_fractions (sequence of float, optional): with ``return_path``, the covered fractions
                in ``[0, 1]`` at which path points and partial attributions are kept.
            rule (str, optional): the quadrature of the path integral: ``"left"``, the authors' left
                Riemann sum :math:`g_k \, dx_k`, or ``"trapezoid"``,
                :math:`\tfrac12 (\nabla F_c(x_k) + \nabla F_c(x_{k+1})) \, dx_k` on the raw gradients (one
                extra gradient pass per path; a much smaller delta, see the class docstring).
                Default: ``"left"``.
            generator (torch.Generator or int, optional): randomness for random baseline specifications
                (``"uniform"``, ``"gaussian"``); the path itself is deterministic.
            show_progress (bool or None, optional): a tqdm bar counting model passes (images through the
                model): ``True`` shows it, ``False`` never; ``None`` (default) shows it once the call has run
                for 5 seconds, so that long calls report their progress and short ones stay silent.

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, the inputs' shapes and format; then
            **delta** ``(N,)`` if ``return_convergence_delta``; then a :class:`SampPath` if
            ``return_path``.

        Examples::

            >>> samp = SampAttribution(model)
            >>> attr, delta = samp.attribute(images, target=labels, return_convergence_delta=True)
            >>> plain_samp = samp.attribute(images, target=labels, eta=None, momentum=None)
        """
        options = SampOptions(
            feature_mask,
            features_per_step,
            eta,
            momentum,
            direction,
            insertion_start,
            max_steps,
            snapshot_fractions,
            rule,
        )
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

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def _expected_passes(self, call: PathCall, options: SampOptions) -> int:
        """Without the IC a path takes ``ceil(G / s)`` steps; the IC adds at most ``ceil(1 / eta)`` partial
        steps; ``max_steps`` caps them. One gradient pass per step per path; the trapezoid adds one per path
        (at its last point). Plus, when the delta or the path record is asked for, one end-point forward per
        path under the left rule, and under the trapezoid only for paths stopped by ``max_steps`` (the
        others' end scores come from their last pass). An upper bound."""
        _, n_groups = feature_groups(call.inputs, options.feature_mask)
        steps = math.ceil(n_groups / resolve_features_per_step(options.features_per_step, n_groups))
        if options.eta is not None:
            steps += math.ceil(1 / options.eta)
        if options.max_steps is not None:
            steps = min(steps, options.max_steps)
        paths = call.n_examples * len(options.directions)
        end_forward = call.need_delta or call.need_path
        if options.rule == "trapezoid":
            return paths * (steps + 1 + int(end_forward and options.max_steps is not None))
        return paths * (steps + int(end_forward))

    def _path(self, call: PathCall, options: SampOptions) -> PathOutput:
        inputs, n = call.inputs, call.n_examples
        ids, n_groups = feature_groups(inputs, options.feature_mask)
        directions = options.directions
        x_flat = flatten_inputs(inputs)
        starts, ends = [], []
        if "deletion" in directions:
            starts.append(x_flat)
            ends.append(flatten_inputs(call.baselines))
        if "insertion" in directions:
            begin = resolve_baselines(options.insertion_start, inputs, Blur(11, 5.0), "insertion_start", call.generator)
            starts.append(flatten_inputs(begin))
            ends.append(x_flat)
        n_dirs = len(directions)
        largest = torch.tensor([d == "insertion" for d in directions], device=x_flat.device)
        plan = _PathPlan(
            starts=torch.cat(starts).detach(),
            ends=torch.cat(ends).detach(),
            largest=largest.repeat_interleave(n),
            ids=ids,
            n_groups=n_groups,
            features_per_step=resolve_features_per_step(options.features_per_step, n_groups),
        )
        paths = _PathRun(call, plan, options)
        for chunk in call.row_chunks(plan.starts.shape[0]):
            paths.run(chunk)
        # the deletion path's sum attributes F(baseline) - F(x): negate it to attribute F(x) - F(baseline)
        sign = torch.tensor([-1.0 if d == "deletion" else 1.0 for d in directions], device=x_flat.device)
        per_dir = paths.attributions.reshape(n_dirs, n, -1) * sign.to(x_flat.dtype).reshape(-1, 1, 1)
        attributions = unflatten_inputs(per_dir.sum(0), inputs)
        if not (call.need_delta or call.need_path):
            return PathOutput(attributions)
        end_scores = paths.end_scores()
        gap = (end_scores - paths.start_scores).reshape(n_dirs, n) * sign.reshape(-1, 1)
        record = paths.path_record(directions, n, end_scores, sign, inputs) if call.need_path else None
        return PathOutput(attributions, gap.sum(0), record)


@dataclass
class _PathPlan:
    """The R = N x directions greedy paths: start and end points ``(R, D)``, direction, feature groups.

    ``ids`` is ``(N, D)``, per example (row ``r`` uses ``ids[r % N]``)."""

    starts: Tensor
    ends: Tensor
    largest: Tensor
    ids: Tensor
    n_groups: int
    features_per_step: int


def _zero_mask(values: Tensor) -> Tensor:
    """1.0 where ``values`` is 0, else 0.0, in its dtype (a float mask: torch's CPU kernels writing bools are
    several times slower)."""
    return torch.eq(values, 0, out=torch.empty_like(values))


class _PixelGroups:
    """Groups laid out as ``ids = arange(D) % G`` in every row: pixels of ``(C, H, W)`` images (all channels
    of a pixel), or single elements (``C = 1``). The chosen groups' elements are gathered and scattered
    directly: ``C * s`` elements per row and step instead of dense ``(R, D)`` masks and group sums."""

    def __init__(self, n_channels: int, n_groups: int, device) -> None:
        self.c, self.g = n_channels, n_groups
        self.offsets = None if n_channels == 1 else (torch.arange(n_channels, device=device) * n_groups).view(1, -1, 1)

    def sums(self, values: Tensor, ids: Optional[Tensor]) -> Tensor:
        """``(R, D)`` -> ``(R, G)`` sums over each group's elements (the values themselves when ``C = 1``)."""
        return values if self.c == 1 else values.view(values.shape[0], self.c, self.g).sum(1)

    def spread(self, per_group: Tensor, ids: Optional[Tensor]) -> Tensor:
        """``(R, G)`` -> ``(R, D)``: each group's value on each of its elements."""
        return per_group if self.c == 1 else per_group.repeat(1, self.c)

    def finished_float(self, remaining: Tensor, ids: Optional[Tensor]) -> Tensor:
        """``(R, G)``: 1.0 for the groups with no displacement left (every element exactly 0), else 0.0."""
        return _zero_mask(remaining if self.c == 1 else self.sums(remaining.abs(), ids))

    def select(self, index: Tensor, ids: Optional[Tensor]) -> Tensor:
        """The elements of the chosen groups ``index`` ``(R, s)``: element indices ``(R, C * s)``."""
        return index if self.offsets is None else (index.unsqueeze(1) + self.offsets).reshape(index.shape[0], -1)

    @staticmethod
    def take(t: Tensor, sel: Tensor) -> Tensor:
        return t.gather(1, sel)

    @staticmethod
    def put(t: Tensor, sel: Tensor, values: Tensor) -> Tensor:
        return t.scatter_(1, sel, values)

    @staticmethod
    def add(t: Tensor, sel: Tensor, values: Tensor) -> Tensor:
        return t.scatter_add_(1, sel, values)


class _AnyGroups:
    """Any group ids (feature masks, several inputs): group sums by scatter-add, dense ``(R, D)`` masks."""

    def __init__(self, n_groups: int) -> None:
        self.g = n_groups

    def sums(self, values: Tensor, ids: Tensor) -> Tensor:
        return group_sum(values, ids, self.g)

    def spread(self, per_group: Tensor, ids: Tensor) -> Tensor:
        return per_group.gather(1, ids)

    def finished_float(self, remaining: Tensor, ids: Tensor) -> Tensor:
        return _zero_mask(group_sum(remaining.abs(), ids, self.g))

    def select(self, index: Tensor, ids: Tensor) -> Tensor:
        """The elements of the chosen groups ``index`` ``(R, s)``: a bool mask ``(R, D)``."""
        chosen = torch.zeros(ids.shape[0], self.g, dtype=torch.bool, device=ids.device)
        return chosen.scatter_(1, index, True).gather(1, ids)

    @staticmethod
    def take(t: Tensor, sel: Tensor) -> Tensor:
        return t * sel  # zero outside the selection

    @staticmethod
    def put(t: Tensor, sel: Tensor, values: Tensor) -> Tensor:
        return torch.where(sel, values, t)

    @staticmethod
    def add(t: Tensor, sel: Tensor, values: Tensor) -> Tensor:
        return t.add_(values)  # values come from take: zero outside the selection


def _group_layout(ids: Tensor, n_groups: int) -> Union[_PixelGroups, _AnyGroups]:
    """:class:`_PixelGroups` when every row of ``ids`` is ``arange(D) % G``, else :class:`_AnyGroups`."""
    d = ids.shape[1]
    if n_groups > 0 and d % n_groups == 0:
        pattern = torch.arange(d, device=ids.device) % n_groups
        if torch.equal(ids, pattern.expand_as(ids)):
            return _PixelGroups(d // n_groups, n_groups, ids.device)
    return _AnyGroups(n_groups)


class _Running:
    """The running paths of one chunk, one row each; :meth:`keep` drops the finished ones (every tensor
    field is indexed by row; other fields are shared)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def keep(self, mask: Tensor) -> None:
        kept = mask.nonzero().squeeze(1)  # one nonzero for every field (a bool index would redo it per field)
        for name, value in list(vars(self).items()):
            if isinstance(value, Tensor):
                setattr(self, name, value.index_select(0, kept))


class _PathRun:
    """State of R greedy paths (flat rows), advanced chunk by chunk; running sums only.

    Row ``r`` follows example ``r % N`` (Captum's repeat-whole-batch order over the directions).

    Per running row the state is the point ``x``, the remaining displacement ``remaining`` and the
    accumulated attribution. A group is finished exactly when its remaining displacement is 0: a group
    moved all the way lands exactly on its end point (``dx`` is the remaining displacement itself), one
    the IC moved part of the way keeps a non-zero remainder and competes again. Groups that start within
    ``isclose`` of the end point are finished from the start and never move (their effective end point is
    their start).
    """

    def __init__(self, call: PathCall, plan: _PathPlan, options: SampOptions) -> None:
        self.call, self.plan = call, plan
        starts, largest = plan.starts, plan.largest
        self.like = call.inputs
        self.starts, self.ends = starts, plan.ends
        self.ids, self.n_groups = plan.ids, plan.n_groups
        self.layout = _group_layout(plan.ids, plan.n_groups)
        # None when rows mix directions; else +1 (every row picks the largest projection) or -1
        one = bool(largest[0]) if bool((largest == largest[0]).all()) else None
        self.sign = None if one is None else (1.0 if one else -1.0)
        self.k = min(plan.features_per_step, plan.n_groups)
        self.momentum, self.max_steps = options.momentum, options.max_steps
        self.trapezoid = options.rule == "trapezoid"
        self.rows = starts.shape[0]
        self.total_l1 = (starts - plan.ends).abs().sum(1).clamp_min(torch.finfo(starts.dtype).tiny)
        self.eta_abs = None if options.eta is None else options.eta * self.total_l1
        self.attributions = torch.zeros_like(starts)
        self.start_scores = torch.full((self.rows,), float("nan"), dtype=starts.dtype, device=starts.device)
        # trapezoid: the score of the final pass at each path's end point (NaN: not known, forward it)
        self.end_cache = torch.full_like(self.start_scores, float("nan"))
        self.covered = torch.zeros(self.rows, dtype=starts.dtype, device=starts.device)
        self.record = call.need_path
        if self.record:
            # one entry per step: (rows, score at the step's start point, covered fraction there)
            self.steps: List[Tuple[Tensor, Tensor, Tensor]] = []
            fractions = options.snapshot_fractions
            self.snapshot_fractions = torch.tensor(fractions, dtype=starts.dtype, device=starts.device)
            shape = (self.rows, len(fractions), starts.shape[1])
            self.snap_points = starts.new_full(shape, float("nan"))
            self.snap_attr = starts.new_full(shape, float("nan"))
            self.snap_taken = torch.zeros(shape[:2], dtype=torch.bool, device=starts.device)

    def _start(self, chunk: slice) -> _Running:
        """The state of rows ``chunk`` at their start points."""
        rows = torch.arange(chunk.start, chunk.stop, device=self.starts.device)
        examples = rows % self.call.n_examples
        x = self.starts[chunk].clone()
        ids = None if isinstance(self.layout, _PixelGroups) else self.ids[examples]
        # a group is pending until it is moved all the way; one that starts on its end point never moves
        moves = self.layout.sums((~torch.isclose(x, self.ends[chunk])).to(x.dtype), ids) > 0
        ends = torch.where(self.layout.spread(moves, ids), self.ends[chunk], x)
        largest = self.plan.largest[chunk]
        state = _Running(
            rows=rows, examples=examples, x=x, ends=ends, remaining=ends - x, ids=ids,
            acc=torch.zeros_like(x), eta=None if self.eta_abs is None else self.eta_abs[chunk],
            sign=torch.where(largest, 1.0, -1.0).to(x.dtype).unsqueeze(1) if self.sign is None else self.sign,
            smoothed=None, last_sel=None, last_dx=None,
        )  # fmt: skip
        if self.record:
            state.covered = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            state.inv_total = 1.0 / self.total_l1[chunk]
        return state

    def _gradients(self, examples: Tensor, points: Tensor) -> Tuple[Tensor, Tensor]:
        grads, scores = self.call.gradients(unflatten_inputs(points, self.like), examples)
        return flatten_inputs(grads).to(points.dtype), scores.to(points.dtype)

    def run(self, chunk: slice) -> None:
        """Advance the paths of rows ``chunk`` to their end points (or ``max_steps``).

        The state holds the running paths only: when paths finish, their results are written out and
        the state is compacted, so finished paths cost nothing (no forward pass, no bookkeeping). Which
        paths finished is checked (one host sync) only at steps where one can have: a full step finishes
        at most ``s`` groups, so a row with ``n`` pending groups runs at least ``ceil(n / s)`` more steps.
        """
        s = self._start(chunk)
        step, check_at, final = 0, 0, None
        while True:
            if step >= check_at:
                check_at, final = self._check(s, step)
            truncated = self.max_steps is not None and step >= self.max_steps
            if s.rows.numel() == 0 or (truncated and not self.trapezoid):
                break
            grads, scores = self._gradients(s.examples, s.x)
            if step == 0:
                self.start_scores[s.rows] = scores
            if self.trapezoid and s.last_sel is not None:  # the second half of the last step: g_{k+1} dx_k / 2
                self.layout.add(s.acc, s.last_sel, self.layout.take(grads, s.last_sel).mul_(s.last_dx).mul_(0.5))
            if self.record:
                self._take_snapshots(s.rows, s.x, s.acc, s.covered)
            if truncated or final is not None:  # trapezoid: these rows had their last pass (at the end point)
                leaving = torch.ones_like(scores, dtype=torch.bool) if truncated else final
                if not truncated:
                    self.end_cache[s.rows[leaving]] = scores[leaving]
                self._write_out(s, leaving)
                grads, scores, final = grads[~leaving], scores[~leaving], None
                if s.rows.numel() == 0:
                    break
            if self.record:
                self.steps.append((s.rows, scores, s.covered.clone()))
            self._step(s, self._smooth(s, grads), grads)
            step += 1
        if s.rows.numel():  # left rule stopped by max_steps
            self._write_out(s, torch.ones_like(s.rows, dtype=torch.bool))

    def _check(self, s: _Running, step: int) -> Tuple[int, Optional[Tensor]]:
        """Find the rows with no pending group: the left rule writes them out now; the trapezoid rule returns
        them as ``final`` (they take one more pass, at their end point). Returns the next step at which a
        row can finish, and ``final``."""
        # pending groups per row, counted in floats (torch's CPU kernels writing bools are slow); exact
        pending = self.n_groups - self.layout.finished_float(s.remaining, s.ids).sum(1, dtype=torch.float64)
        fewest = float(pending.min()) if pending.numel() else 0.0  # the one host sync of the common case
        final = None
        if s.rows.numel() and fewest == 0:
            done = pending == 0
            if self.trapezoid:
                final, pending = done, pending.masked_fill(done, pending.max())
            else:
                if self.record:  # their last point had no pass: snapshot it here
                    self._take_snapshots(s.rows[done], s.x[done], s.acc[done], s.covered[done])
                self._write_out(s, done)
                pending = pending[~done]
            fewest = float(pending.min()) if pending.numel() else 0.0
        return step + max(1, math.ceil(fewest / max(self.k, 1))), final

    def _smooth(self, s: _Running, grads: Tensor) -> Tensor:
        """The gradient that chooses the step: MS ``g_k = lam g_{k-1} + (1 - lam) grad_k``, in place."""
        if self.momentum is None:
            return grads
        if s.smoothed is None:
            s.smoothed = grads  # the raw gradient is not needed in place after this step
        else:
            s.smoothed.lerp_(grads, 1.0 - self.momentum)
        return s.smoothed

    def _step(self, s: _Running, chooser: Tensor, grads: Tensor) -> None:
        """One greedy step of the running rows, in place: choose with ``chooser`` (the smoothed gradient
        under momentum), bound by the IC, move, accumulate ``g * dx`` (the left rule: ``g = chooser``;
        the trapezoid: half of the raw ``grads`` now, the other half at the next point)."""
        lay = self.layout
        # insertion rows want the largest projection, deletion rows the most negative (a fresh tensor:
        # the product itself when groups are single elements)
        signed = lay.sums(chooser * s.remaining, s.ids)
        if self.sign != 1.0:
            signed.mul_(s.sign)
        # finished groups rank last (their score is 0: minus the largest float is below every other group)
        signed.add_(lay.finished_float(s.remaining, s.ids), alpha=-torch.finfo(signed.dtype).max)
        index = signed.topk(self.k, dim=1).indices  # finished groups only when fewer than s are left
        sel = lay.select(index, s.ids)
        r_sel = lay.take(s.remaining, sel)  # 0 on finished groups: choosing one moves nothing
        dx, step_l1 = r_sel, None
        if s.eta is not None or self.record:
            step_l1 = r_sel.abs().sum(1)
        if s.eta is not None:
            scale = (s.eta / step_l1).clamp_(max=1.0)  # 1: the whole remainder, dx = r_sel exactly
            dx = r_sel * scale.unsqueeze(1)
            step_l1 = step_l1 * scale
        gain = lay.take(grads if self.trapezoid else chooser, sel).mul_(dx)
        lay.add(s.acc, sel, gain.mul_(0.5) if self.trapezoid else gain)
        new_remaining = r_sel - dx  # exactly 0 where the group moved all the way: it is finished
        s.remaining = lay.put(s.remaining, sel, new_remaining)
        s.x = lay.put(s.x, sel, lay.take(s.ends, sel) - new_remaining)
        if self.trapezoid:
            s.last_sel, s.last_dx = sel, dx
        if self.record:
            s.covered.addcmul_(step_l1, s.inv_total)

    def _write_out(self, s: _Running, leaving: Tensor) -> None:
        """Store the results of rows ``leaving`` (a mask over the running rows) and drop them."""
        rows = s.rows[leaving]
        self.attributions[rows] = s.acc[leaving]
        if self.record:
            self.covered[rows] = s.covered[leaving]
        s.keep(~leaving)

    def _take_snapshots(self, rows: Tensor, points: Tensor, attributions: Tensor, covered: Tensor) -> None:
        reached = covered.unsqueeze(1) >= self.snapshot_fractions - 1e-6
        new = reached & ~self.snap_taken[rows]
        if not bool(new.any()):
            return
        r_idx, s_idx = torch.nonzero(new, as_tuple=True)
        self.snap_points[rows[r_idx], s_idx] = points[r_idx]
        self.snap_attr[rows[r_idx], s_idx] = attributions[r_idx]
        self.snap_taken[rows[r_idx], s_idx] = True

    def end_scores(self) -> Tensor:
        """Scores at every path's end point: the trapezoid's final passes, else one no-grad forward per path
        (every path under the left rule; those stopped by ``max_steps`` under the trapezoid); fills unmoved
        paths' start scores."""
        scores = self.end_cache.clone()
        missing = torch.nonzero(torch.isnan(scores)).reshape(-1)
        if missing.numel():
            examples = missing % self.call.n_examples
            ends = unflatten_inputs(self.ends[missing], self.like)
            scores[missing] = self.call.scores(ends, examples).to(scores.dtype)
        never_moved = torch.isnan(self.start_scores)  # start == end: the path has one point
        self.start_scores[never_moved] = scores[never_moved]
        return scores

    def path_record(self, directions, n: int, end_scores: Tensor, sign: Tensor, inputs) -> SampPath:
        n_dirs = len(directions)
        device, dtype = self.starts.device, self.starts.dtype
        n_points = torch.ones(self.rows, dtype=torch.long, device=device)  # the end point
        for r, _, _ in self.steps:
            n_points[r] += 1
        length = int(n_points.max())
        scores = torch.full((self.rows, length), float("nan"), dtype=dtype, device=device)
        fracs = torch.full_like(scores, float("nan"))
        position = torch.zeros(self.rows, dtype=torch.long, device=device)
        for r, sc, fr in self.steps:
            scores[r, position[r]] = sc
            fracs[r, position[r]] = fr
            position[r] += 1
        all_rows = torch.arange(self.rows, device=device)
        scores[all_rows, position] = end_scores
        fracs[all_rows, position] = self.covered

        def per_example(t: Tensor) -> Tensor:
            return t.reshape(n_dirs, n, *t.shape[1:]).transpose(0, 1)

        snap_attr = self.snap_attr * sign.to(dtype).repeat_interleave(n).reshape(-1, 1, 1)
        return SampPath(
            directions=tuple(directions),
            scores=per_example(scores),
            fractions=per_example(fracs),
            lengths=per_example(n_points),
            snapshot_fractions=self.snapshot_fractions,
            snapshots=_split_snapshots(per_example(self.snap_points), inputs),
            snapshot_attributions=_split_snapshots(per_example(snap_attr), inputs),
        )


def _split_snapshots(flat: Tensor, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """``(N, n_dirs, S, D)`` -> one ``(N, n_dirs, S, *input.shape[1:])`` tensor per input."""
    lead = flat.shape[:3]
    parts = unflatten_inputs(flat.reshape(-1, flat.shape[-1]), inputs)
    return tuple(p.reshape(*lead, *p.shape[1:]) for p in parts)
