"""SAMP / SAMP++: Salient Manipulation Path attribution (Zhang et al., ICLR 2024)."""

from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor

from captum_paths.attr._utils.captum_compat import (
    TensorOrTuple,
    expand_additional_forward_args,
    expand_target,
    format_additional_forward_args,
    format_inputs,
    format_output,
    forward_scores,
    gradients_and_scores,
    is_tuple,
    log_usage,
)
from captum_paths.attr._utils.features import feature_groups, flatten_inputs, group_sum, unflatten_inputs
from captum_paths.attr._utils.progress import chunk_slices, progress_bar
from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target
from captum_paths.attr._utils.validation import (
    check_finite_inputs,
    check_generator,
    check_internal_batch_size,
    check_positive_int,
    check_probability,
    check_same_batch,
)
from captum_paths.baselines import Blur, resolve_baselines

__all__ = ["SampAttribution", "SampPath", "select_salient_groups"]

_DIRECTIONS = ("deletion", "insertion", "both")


@dataclass
class SampPath:
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


class SampAttribution(GradientAttribution):
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
    directions, ``s=10`` pixels per step as in the paper's MNIST/CIFAR-10 runs). Plain **SAMP** is
    ``eta=None, momentum=None``. The paper's ImageNet setting is ``step_size=224 * 16`` with blur
    ``Blur(31, 5)``; its ablations use ``eta=1/50``.

    Where we differ from the authors' reference code (zbr17/ExplainAttr, ``sam.py``):

    * the reference writes momentum as ``m * grad + (1 - m) * g_prev``; we follow the paper's
      ``lam * g_prev + (1 - lam) * grad``. The two agree at the default 0.5; for other values our
      ``momentum`` is the paper's :math:`\lambda`;
    * the reference min-max normalises the final map; we return raw attributions (as every Captum
      method does), leaving normalisation to metrics and plots.

    Cost: one forward+backward pass per step for every path still running (finished paths are not
    forwarded again), plus one forward pass per path end point when ``return_convergence_delta`` or
    ``return_path`` asks for the end scores.
    """

    def __init__(self, forward_func: Callable) -> None:
        r"""
        Args:
            forward_func (Callable): the forward function of the model or any modification of it. Its
                output for the chosen ``target`` must be one score per example.
        """
        super().__init__(forward_func)

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        step_size: Union[int, float] = 10,
        eta: Optional[float] = 0.1,
        momentum: Optional[float] = 0.5,
        direction: str = "both",
        insertion_start: Any = "blur",
        internal_batch_size: Optional[int] = None,
        max_steps: Optional[int] = None,
        return_convergence_delta: bool = False,
        return_path: bool = False,
        snapshot_fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
        generator: Union[None, int, torch.Generator] = None,
        show_progress: bool = False,
    ):
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
            step_size (int or float, optional): ``s``, groups moved per step: an int count, or a float in
                ``(0, 1]`` as a fraction of the number of groups (rounded, at least 1). Default: 10.
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
        is_inputs_tuple = is_tuple(inputs)
        inputs = format_inputs(inputs)
        n = check_same_batch(inputs)
        check_finite_inputs(inputs)
        if direction not in _DIRECTIONS:
            raise ValueError(f"`direction` must be one of {_DIRECTIONS}, got {direction!r}")
        if eta is not None:
            eta = check_probability(eta, "eta", low_open=True)
        if momentum is not None:
            momentum = check_probability(momentum, "momentum", high_open=True)
        internal_batch_size = check_internal_batch_size(internal_batch_size)
        if max_steps is not None:
            max_steps = check_positive_int(max_steps, "max_steps")
        fractions = tuple(check_probability(f, "snapshot_fractions") for f in snapshot_fractions)
        generator = check_generator(generator)
        ids, n_groups = feature_groups(inputs, feature_mask)
        s = _resolve_step_size(step_size, n_groups)
        additional_forward_args = format_additional_forward_args(additional_forward_args)

        directions = ("deletion", "insertion") if direction == "both" else (direction,)
        x_flat = flatten_inputs(inputs).detach()
        starts, ends = [], []
        if "deletion" in directions:
            deletion_end = resolve_baselines(baselines, inputs, "zeros", "baselines", generator)
            starts.append(x_flat)
            ends.append(flatten_inputs(deletion_end))
        if "insertion" in directions:
            insertion_begin = resolve_baselines(insertion_start, inputs, Blur(11, 5.0), "insertion_start", generator)
            starts.append(flatten_inputs(insertion_begin))
            ends.append(x_flat)
        n_dirs = len(directions)
        rows = n * n_dirs
        largest = torch.tensor([d == "insertion" for d in directions], device=x_flat.device)
        paths = _PathRun(
            self,
            like=inputs,
            starts=torch.cat(starts).detach(),
            ends=torch.cat(ends).detach(),
            largest=largest.repeat_interleave(n),
            ids=ids.repeat(n_dirs, 1),
            n_groups=n_groups,
            target=expand_target(target, n_dirs) if n_dirs > 1 else target,
            additional_forward_args=expand_additional_forward_args(additional_forward_args, n_dirs)
            if n_dirs > 1
            else additional_forward_args,
            step_size=s,
            eta=eta,
            momentum=momentum,
            max_steps=max_steps,
            record=return_path,
            snapshot_fractions=fractions,
        )
        with progress_bar(show_progress, desc="SAMP steps", unit="step") as bar:
            for chunk in chunk_slices(rows, internal_batch_size):
                paths.run(chunk, bar)

        # the deletion path's sum attributes F(baseline) - F(x): negate it to attribute F(x) - F(baseline)
        sign = torch.tensor([-1.0 if d == "deletion" else 1.0 for d in directions], device=x_flat.device)
        per_dir = paths.attributions.reshape(n_dirs, n, -1) * sign.to(x_flat.dtype).reshape(-1, 1, 1)
        attributions = unflatten_inputs(per_dir.sum(0), inputs)
        outputs: List[Any] = [format_output(is_inputs_tuple, attributions)]
        if return_convergence_delta or return_path:
            end_scores = paths.end_scores(internal_batch_size)
        if return_convergence_delta:
            gap = (end_scores - paths.start_scores).reshape(n_dirs, n) * sign.reshape(-1, 1)
            total = per_dir.sum(dim=(0, 2))
            outputs.append(total - gap.sum(0).to(total.dtype))
        if return_path:
            outputs.append(paths.path_record(directions, n, end_scores, sign, inputs))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True


def _resolve_step_size(step_size: Any, n_groups: int) -> int:
    if isinstance(step_size, bool) or not isinstance(step_size, (Integral, Real)):
        raise ValueError(f"`step_size` must be a positive int or a float in (0, 1], got {step_size!r}")
    if isinstance(step_size, Integral):
        return check_positive_int(step_size, "step_size")
    if not (0 < step_size <= 1):
        raise ValueError(f"`step_size` as a fraction must lie in (0, 1], got {step_size!r}")
    return max(1, int(round(step_size * n_groups)))


class _PathRun:
    """State of R greedy paths (flat rows), advanced chunk by chunk; running sums only."""

    def __init__(
        self,
        attribution: SampAttribution,
        like: Tuple[Tensor, ...],
        starts: Tensor,
        ends: Tensor,
        largest: Tensor,
        ids: Tensor,
        n_groups: int,
        target: Any,
        additional_forward_args: Any,
        step_size: int,
        eta: Optional[float],
        momentum: Optional[float],
        max_steps: Optional[int],
        record: bool,
        snapshot_fractions: Tuple[float, ...],
    ) -> None:
        self.attribution = attribution
        self.like = like
        self.starts, self.ends = starts, ends
        self.largest, self.ids, self.n_groups = largest, ids, n_groups
        # None when rows mix directions; else whether every row picks the largest projection
        self.one_direction = bool(largest[0]) if bool((largest == largest[0]).all()) else None
        self.target, self.afa = target, additional_forward_args
        self.step_size, self.momentum, self.max_steps = step_size, momentum, max_steps
        self.rows = starts.shape[0]
        self.total_l1 = (starts - ends).abs().sum(1).clamp_min(torch.finfo(starts.dtype).tiny)
        self.eta_abs = None if eta is None else eta * self.total_l1
        self.attributions = torch.zeros_like(starts)
        self.start_scores = torch.full((self.rows,), float("nan"), dtype=starts.dtype, device=starts.device)
        self.covered = torch.zeros(self.rows, dtype=starts.dtype, device=starts.device)
        self.record = record
        if record:
            # one entry per step: (rows, score at the step's start point, covered fraction there)
            self.steps: List[Tuple[Tensor, Tensor, Tensor]] = []
            self.snapshot_fractions = torch.tensor(snapshot_fractions, dtype=starts.dtype, device=starts.device)
            shape = (self.rows, len(snapshot_fractions), starts.shape[1])
            self.snap_points = starts.new_full(shape, float("nan"))
            self.snap_attr = starts.new_full(shape, float("nan"))
            self.snap_taken = torch.zeros(shape[:2], dtype=torch.bool, device=starts.device)

    def _gradients(self, index: Tensor, points: Tensor) -> Tuple[Tensor, Tensor]:
        target = subset_target(self.target, index, self.rows)
        afa = subset_additional_forward_args(self.afa, index, self.rows)
        leaves = tuple(t.detach().requires_grad_() for t in unflatten_inputs(points, self.like))
        grads, scores = gradients_and_scores(
            self.attribution.gradient_func, self.attribution.forward_func, leaves, target, afa
        )
        return flatten_inputs(grads).to(points.dtype), scores.to(points.dtype)

    def run(self, chunk: slice, bar) -> None:
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
            remaining = ends - x
            projection = group_sum(grads * remaining, ids, self.n_groups)
            chosen = self._choose(projection, pending, largest)
            moving = chosen.gather(1, ids)
            dx = remaining * moving
            step_l1 = dx.abs().sum(1)
            if eta is None:
                full = torch.ones(rows.numel(), dtype=torch.bool, device=x.device)
            else:
                full = step_l1 <= eta
                scale = torch.where(full, torch.ones_like(eta), eta / step_l1)
                dx = dx * scale.unsqueeze(1)
                step_l1 = step_l1 * scale
            accumulated += grads * dx
            # a group moved all the way lands exactly on the end point (no round-off left to chase)
            x = torch.where(moving & full.unsqueeze(1), ends, x + dx)
            if self.record:
                self.steps.append((rows, scores, covered.clone()))
            covered += step_l1 / total_l1
            if self.record:
                self._take_snapshots(rows, x, accumulated, covered)
            pending &= ~(chosen & full.unsqueeze(1))
            alive = pending.any(1)
            state[0] = x
            step += 1
            bar.update(1)
        if rows.numel():  # stopped by max_steps
            self._write_out(rows, accumulated, covered)

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

    def end_scores(self, chunk_size: Optional[int]) -> Tensor:
        """Scores at every path's end point (one no-grad forward per path); fills unmoved paths' starts."""
        scores = torch.empty_like(self.start_scores)
        for chunk in chunk_slices(self.rows, chunk_size):
            index = torch.arange(chunk.start, chunk.stop, device=self.starts.device)
            target = subset_target(self.target, index, self.rows)
            afa = subset_additional_forward_args(self.afa, index, self.rows)
            points = unflatten_inputs(self.ends[chunk], self.like)
            scores[chunk] = forward_scores(self.attribution.forward_func, points, target, afa).to(scores.dtype)
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
