"""SAMP / SAMP++: Salient Manipulation Path attribution (Zhang et al., ICLR 2024)."""

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, List, Literal, Optional, Sequence, Tuple, Union, overload

import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput, PathResult
from captum_paths.attr._utils.captum_compat import TensorOrTuple, log_usage
from captum_paths.attr._utils.features import feature_groups, flatten_inputs, group_sum, unflatten_inputs
from captum_paths.attr._utils.validation import check_positive_int, check_probability
from captum_paths.baselines import Blur, resolve_baselines

__all__ = [
    "SampAttribution",
    "SampPath",
    "SampOptions",
    "select_salient_groups",
    "default_features_per_step",
    "resolve_features_per_step",
]

_DIRECTIONS = ("deletion", "insertion", "both")
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
    if isinstance(features_per_step, Integral):
        return check_positive_int(features_per_step, "features_per_step")
    return max(1, int(round(features_per_step * n_groups)))


def _check_features_per_step(s: Any) -> None:
    if s is None:
        return
    if isinstance(s, bool) or not isinstance(s, (Integral, Real)):
        raise ValueError(f"`features_per_step` must be None, a positive int or a float in (0, 1], got {s!r}")
    if isinstance(s, Integral):
        check_positive_int(s, "features_per_step")
    elif not 0 < s <= 1:
        raise ValueError(f"`features_per_step` as a fraction must lie in (0, 1], got {s!r}")


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

    def __post_init__(self) -> None:
        _check_features_per_step(self.features_per_step)
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
    distance. Without momentum the attributions sum to :math:`F_c(x_{end}) - F_c(x_{start})` up to the
    Riemann error, which the IC shrinks (completeness); ``return_convergence_delta`` reports the gap.

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
    ``return_path`` asks for the end scores. Per example and direction, at most
    ``min(ceil(G / s) + ceil(1 / eta), max_steps)`` steps for ``G`` feature groups (without the IC, drop the
    ``1 / eta`` term; ``G`` is ``H * W`` for images): about 80-113 with the defaults at any image size. A small
    ``eta`` or ``s`` makes it grow as ``1 / eta`` and ``G / s``: calls estimated above
    :data:`~captum_paths.attr._core.base.LARGE_CALL_PASSES` passes warn with their estimate.
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
        baselines: Any = None,
        target: Any = None,
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
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[False] = False,
        return_path: Literal[False] = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: bool = False,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
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
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[True],
        return_path: Literal[False] = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: bool = False,
    ) -> Tuple[TensorOrTuple, Tensor]: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
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
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        return_path: Literal[True],
        generator: Union[None, int, torch.Generator] = None,
        show_progress: bool = False,
    ) -> Tuple[TensorOrTuple, SampPath]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
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
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        return_path: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: bool = False,
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
                are forwarded together; the rest wait for the next chunk. Default: all at once.
            max_steps (int, optional): stop every path after this many steps even if unfinished (for a
                budget; completeness then no longer holds). Default: run to the end point.
            return_convergence_delta (bool, optional): also return, per example,
                ``sum(attributions) - expected output difference`` (see the class docstring).
            return_path (bool, optional): also return a :class:`SampPath` with the score at every path
                point, the share of distance covered, and snapshots of path points.
            snapshot_fractions (sequence of float, optional): with ``return_path``, the covered fractions
                in ``[0, 1]`` at which path points and partial attributions are kept.
            generator (torch.Generator or int, optional): randomness for random baseline specifications
                (``"uniform"``, ``"gaussian"``); the path itself is deterministic.
            show_progress (bool, optional): show a progress bar over steps.

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
            feature_mask, features_per_step, eta, momentum, direction, insertion_start, max_steps, snapshot_fractions
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
        steps; ``max_steps`` caps them. One pass per step per path, plus one end-point forward per path
        when the delta or the path record is asked for."""
        _, n_groups = feature_groups(call.inputs, options.feature_mask)
        steps = math.ceil(n_groups / resolve_features_per_step(options.features_per_step, n_groups))
        if options.eta is not None:
            steps += math.ceil(1 / options.eta)
        if options.max_steps is not None:
            steps = min(steps, options.max_steps)
        paths = call.n_examples * len(options.directions)
        return paths * (steps + int(call.need_delta or call.need_path))

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
            ids=ids.repeat(n_dirs, 1),
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
    """The R = N x directions greedy paths: start and end points ``(R, D)``, direction, feature groups."""

    starts: Tensor
    ends: Tensor
    largest: Tensor
    ids: Tensor
    n_groups: int
    features_per_step: int


class _PathRun:
    """State of R greedy paths (flat rows), advanced chunk by chunk; running sums only.

    Row ``r`` follows example ``r % N`` (Captum's repeat-whole-batch order over the directions).
    """

    def __init__(self, call: PathCall, plan: _PathPlan, options: SampOptions) -> None:
        self.call, self.plan = call, plan
        starts, ends, largest = plan.starts, plan.ends, plan.largest
        self.like = call.inputs
        self.starts, self.ends = starts, ends
        self.largest, self.ids, self.n_groups = largest, plan.ids, plan.n_groups
        # None when rows mix directions; else whether every row picks the largest projection
        self.one_direction = bool(largest[0]) if bool((largest == largest[0]).all()) else None
        self.step_size, self.momentum, self.max_steps = plan.features_per_step, options.momentum, options.max_steps
        self.rows = starts.shape[0]
        self.total_l1 = (starts - ends).abs().sum(1).clamp_min(torch.finfo(starts.dtype).tiny)
        self.eta_abs = None if options.eta is None else options.eta * self.total_l1
        self.attributions = torch.zeros_like(starts)
        self.start_scores = torch.full((self.rows,), float("nan"), dtype=starts.dtype, device=starts.device)
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

    def _gradients(self, index: Tensor, points: Tensor) -> Tuple[Tensor, Tensor]:
        examples = index % self.call.n_examples
        grads, scores = self.call.gradients(unflatten_inputs(points, self.like), examples)
        return flatten_inputs(grads).to(points.dtype), scores.to(points.dtype)

    def run(self, chunk: slice) -> None:
        """Advance the paths of rows ``chunk`` to their end points (or ``max_steps``).

        The state holds the running paths only: when paths finish, their results are written out and
        the state is compacted, so finished paths cost nothing (no forward pass, no bookkeeping).
        """
        rows = torch.arange(chunk.start, chunk.stop, device=self.starts.device)
        x = self.starts[chunk].clone()
        ends, ids, largest = self.ends[chunk], self.ids[chunk], self.largest[chunk]
        total_l1 = self.total_l1[chunk]
        eta = None if self.eta_abs is None else self.eta_abs[chunk]
        # a group is pending until it is moved all the way (then it sits exactly on the end point)
        pending = group_sum((~torch.isclose(x, ends)).to(x.dtype), ids, self.n_groups) > 0
        accumulated = torch.zeros_like(x)
        covered = torch.zeros_like(total_l1)
        smoothed: Optional[Tensor] = None
        if self.record:
            self._take_snapshots(rows, x, accumulated, covered)
        state = [x, ends, ids, largest, total_l1, eta, pending, accumulated, covered]
        alive = pending.any(1)
        step = 0
        while True:
            if not bool(alive.all()):
                self._write_out(rows[~alive], accumulated[~alive], covered[~alive])
                rows, smoothed = rows[alive], None if smoothed is None else smoothed[alive]
                state = [None if t is None else t[alive] for t in state]
                x, ends, ids, largest, total_l1, eta, pending, accumulated, covered = state
            if rows.numel() == 0 or (self.max_steps is not None and step >= self.max_steps):
                break
            grads, scores = self._gradients(rows, x)
            if step == 0:
                self.start_scores[rows] = scores
            if self.momentum is not None:
                if smoothed is not None:
                    grads = self.momentum * smoothed + (1.0 - self.momentum) * grads
                smoothed = grads
            x, step_l1, full, chosen = self._step(x, ends, ids, largest, eta, pending, grads, accumulated)
            if self.record:
                self.steps.append((rows, scores, covered.clone()))
            covered += step_l1 / total_l1
            if self.record:
                self._take_snapshots(rows, x, accumulated, covered)
            pending &= ~(chosen & full.unsqueeze(1))
            alive = pending.any(1)
            state[0] = x
            step += 1
        if rows.numel():  # stopped by max_steps
            self._write_out(rows, accumulated, covered)

    def _step(self, x, ends, ids, largest, eta, pending, grads, accumulated):
        """One greedy step of the running rows: choose, bound by the IC, move, accumulate ``g * dx``."""
        remaining = ends - x
        projection = group_sum(grads * remaining, ids, self.n_groups)
        chosen = self._choose(projection, pending, largest)
        moving = chosen.gather(1, ids)
        dx = remaining * moving
        step_l1 = dx.abs().sum(1)
        if eta is None:
            full = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        else:
            full = step_l1 <= eta
            scale = torch.where(full, torch.ones_like(eta), eta / step_l1)
            dx = dx * scale.unsqueeze(1)
            step_l1 = step_l1 * scale
        accumulated += grads * dx
        # a group moved all the way lands exactly on the end point (no round-off left to chase)
        x = torch.where(moving & full.unsqueeze(1), ends, x + dx)
        return x, step_l1, full, chosen

    def _write_out(self, rows: Tensor, accumulated: Tensor, covered: Tensor) -> None:
        self.attributions[rows] = accumulated
        self.covered[rows] = covered

    def _choose(self, projection: Tensor, pending: Tensor, largest: Tensor) -> Tensor:
        if self.one_direction is not None:
            return select_salient_groups(projection, pending, self.step_size, self.one_direction)
        # insertion rows want the largest projection, deletion rows the most negative: flip the latter
        signed = torch.where(largest.unsqueeze(1), projection, -projection)
        return select_salient_groups(signed, pending, self.step_size, True)

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
        """Scores at every path's end point (one no-grad forward per path); fills unmoved paths' starts."""
        examples = torch.arange(self.rows, device=self.starts.device) % self.call.n_examples
        scores = self.call.scores(unflatten_inputs(self.ends, self.like), examples).to(self.start_scores.dtype)
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
