"""Guided Integrated Gradients (Kapishnikov, Venugopalan, Avci, Wedin, Terry & Bolukbasi, CVPR 2021)."""

import functools
import math
import sys
from dataclasses import dataclass
from typing import Any, Literal, Optional, Tuple, Union, overload

import numpy as np
import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput
from captum_paths.attr._utils.captum_compat import TargetType, TensorOrTuple, log_usage
from captum_paths.attr._utils.features import flatten_inputs, unflatten_inputs
from captum_paths.attr._utils.idgi import idgi_accumulate_
from captum_paths.attr._utils.validation import check_bool, check_positive_int, check_probability
from captum_paths.baselines import BaselinesType

__all__ = ["GuidedIG", "guided_step_bounds", "sorted_rows", "lower_quantile", "l1_isclose", "guided_step_"]

#: math.isclose tolerances (relative and absolute) of the reference's "L1 target reached" test
L1_TOLERANCE = 1e-9
#: the magnitude of a feature out of the step (the largest float64), and the largest threshold that leaves it out
_RANKS_LAST = sys.float_info.max
_BELOW_LAST = math.nextafter(_RANKS_LAST, 0.0)


@dataclass(frozen=True)
class GuidedStepBounds:
    """One step's band and L1 target, as python floats (see :func:`guided_step_bounds`)."""

    alpha_lo: float
    alpha_hi: float
    remaining: float


def guided_step_bounds(step: int, n_steps: int, max_dist: float) -> GuidedStepBounds:
    """Band ``[alpha_lo, alpha_hi]`` and remaining L1 fraction after step ``step`` (0-based) of ``n_steps``.

    ``alpha = (step + 1) / n_steps``; ``alpha_lo = max(alpha - max_dist, 0)``, ``alpha_hi = min(alpha +
    max_dist, 1)``; ``remaining = 1 - (step + 1) / n_steps`` (the step ends at L1 distance ``remaining * L``
    from the input). Python floats computed in the reference's order, so the band is bit-identical to it.
    """
    alpha = (step + 1.0) / n_steps
    return GuidedStepBounds(max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0), 1 - (step + 1) / n_steps)


def sorted_rows(values: Tensor, out: np.ndarray) -> np.ndarray:
    """Each row of a ``(R, n)`` tensor sorted ascending, on the host in ``out`` (a float64 or float32 numpy array).

    numpy's sort is over 10x faster than torch's CPU sort at these sizes, and in float32 over 2x faster than in
    float64 (its SIMD sort): a float32 ``out`` serves whenever every value is a float32 number or above the
    float32 range (those become ``+inf``, which keeps their order among the rest). From another device the rows
    come over once per step, which is small next to a model pass.
    """
    with np.errstate(over="ignore"):  # the features out of the step rank last as +inf in float32
        np.copyto(out, values.detach().cpu().numpy(), casting="same_kind")
    out.sort(axis=1)
    return out


def lower_quantile(ranked: np.ndarray, removed: np.ndarray, fraction: float) -> np.ndarray:
    """Row-wise ``numpy.quantile(v, fraction, method="lower")`` of rows ``v`` whose ``removed`` smallest values
    count as ``+inf``, from the sorted rows ``ranked`` (``(R, n)``) and the counts ``removed`` (``(R,)``
    integers): ``(R,)``.

    That quantile is the sorted value at index ``floor((n - 1) * fraction)`` of ``v``, i.e. ``ranked[removed +
    index]``; past the end of the row it is ``+inf`` (returned as the row's largest value, which selects the
    same features by ``<=``). The thresholds come back in float64 whatever ``ranked``'s dtype.
    """
    n = ranked.shape[1]
    position = np.minimum(removed + math.floor((n - 1) * fraction), n - 1)
    return ranked[np.arange(ranked.shape[0]), position].astype(np.float64)


def l1_isclose(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``math.isclose(current, target, rel_tol=1e-9, abs_tol=1e-9)`` element-wise (bool, same shape)."""
    scale = np.maximum(np.maximum(np.abs(current), np.abs(target)) * L1_TOLERANCE, L1_TOLERANCE)
    return np.abs(current - target) <= scale


@dataclass
class GuidedPath:
    """``R`` examples' paths, flat ``(R, n)`` float64, in progress coordinates.

    ``progress`` is each feature's ``alpha`` (the point is ``z = x' + alpha (x - x')``); features with
    ``x = x'`` sit at ``alpha = 1`` for good (saturated from the start, as in the reference). ``weight`` is
    ``|x - x'|``, so a feature's L1 distance to the input is ``weight (1 - alpha)``; ``l1_total`` (a float64
    numpy array: the per-row decisions of a step run on the host) is its row sum; ``fixed`` is the largest
    float where ``x = x'`` and 0 elsewhere (those features never move). ``work`` holds the step's
    ``(R, n)`` working tensors, allocated once: a step then allocates nothing of that size, which matters
    on the CPU, where fresh large buffers after a model pass cost system calls and page faults. ``ranking``
    is the host buffer of the step's sorted magnitudes (float32 when the gradients are at most 32-bit floats).
    """

    progress: Tensor
    x: Tensor
    baseline: Tensor
    diff: Tensor
    weight: Tensor
    l1_total: np.ndarray
    fixed: Tensor
    work: Tuple[Tensor, ...]
    ranking: np.ndarray

    @classmethod
    def start(cls, x: Tensor, baseline: Tensor, point_dtype: torch.dtype = torch.float64) -> "GuidedPath":
        """The paths' start: every feature at the baseline (``alpha = 0``; ``1`` where ``x = x'``).

        :meth:`point` gives the points in ``point_dtype`` (the model's input dtype).
        """
        diff = x - baseline
        weight = diff.abs()
        progress = (weight == 0).to(x.dtype)
        fixed = progress * _RANKS_LAST  # the magnitude of the features with x = x' in every step
        # one dtype for every (R, n) operand of a step: torch copies mixed-dtype operands on every call
        work = (*x.new_empty((4,) + tuple(x.shape)).unbind(0), x.new_empty(x.shape, dtype=point_dtype))
        # gradients come in the points' dtype: up to 32 bits their magnitudes rank exactly (and faster) in float32
        ranking = np.empty(tuple(x.shape), dtype=np.float32 if point_dtype.itemsize <= 4 else np.float64)
        return cls(progress, x, baseline, diff, weight, weight.sum(dim=1).cpu().numpy(), fixed, work, ranking)

    def point(self) -> Tensor:
        """The current points ``z = x' + alpha (x - x')`` (the reference's formula, rounded to the dtype)."""
        return torch.addcmul(self.baseline, self.diff, self.progress, out=self.work[4])


def guided_step_(
    path: GuidedPath,
    grads: Tensor,
    bounds: GuidedStepBounds,
    fraction: float,
    attributions: Optional[Tensor] = None,
) -> int:
    r"""One step of Guided IG for every row at once; moves ``path.progress`` in place. Returns the sub-iterations.

    With ``G = grads`` (``(R, n)``, fixed for the step), ``alpha`` each feature's progress, the band
    ``[alpha_lo, alpha_hi]`` and the target ``L_t = remaining * ||D||_1``, each row first pulls its features
    lagging the band up to ``alpha_lo``, then repeats, until it stops:

    1. if ``||z - x||_1 = sum |D| (1 - alpha)`` is within ``1e-9`` (``math.isclose``) of ``L_t`` the row stops;
    2. features at ``alpha_hi`` are out for the rest of the step; of the others, the selection ``S`` is every
       feature with ``|G| <=`` the lower ``fraction``-quantile of ``|G|`` over all ``n`` features (those out
       counted as larger than any gradient; ties at the threshold all join);
    3. ``gamma = (||z - x||_1 - L_t) / sum_S |D| (alpha_hi - alpha)``: if ``gamma > 1`` the selection moves all
       the way to ``alpha_hi`` and the row goes on, else it moves by the fraction ``gamma`` of its gap and the
       row stops.

    ``attributions`` (``(R, n)`` float64, optional) gets ``(alpha_end - alpha_start) * G``: times ``D`` (once,
    after the last step) that is the reference's left Riemann sum of the step's moves ``(z_new - z_old) * G``
    (the gradient is fixed for the step, so the moves' sums add up).

    The reference works on the points ``z`` themselves; here the state is ``alpha`` (the band is then two
    scalars and every pass over the features is a plain float operation), which changes results only by
    rounding: ``z = x' + alpha D`` is the reference's own formula for the band's edges, and a partial move
    ``alpha + gamma (alpha_hi - alpha)`` is its ``z + gamma (z_hi - z)`` divided by ``D``. Lagging features are
    only found before the first sub-iteration: later ones move features toward ``alpha_hi`` only. Two guards
    where the reference would fail: a row whose selection is empty stops (the reference loops forever), and
    ``gamma <= 0`` (the target overshot by rounding; the reference asserts) moves nothing.
    """
    progress, n = path.progress, path.progress.shape[1]
    selected, gaps, magnitude, gradient = path.work[:4]
    if grads.dtype.itemsize > path.ranking.itemsize:  # wider than the points (a custom gradient_func): rank exactly
        path.ranking = np.empty(path.ranking.shape, dtype=np.float64)
    grads = gradient.copy_(grads)  # in float64, like every operand below
    if attributions is not None:  # the step adds (alpha_end - alpha_start) * G: no copy of alpha_start kept
        attributions.addcmul_(progress, grads, value=-1.0)
    progress.clamp_(min=bounds.alpha_lo)  # the snap is a move of the step too
    # masks are 1.0 / 0.0 floats (torch's CPU kernels writing bools are several times slower); a feature out
    # of the step (at alpha_hi) gets the largest float as its magnitude, above every gradient. Below 1, the
    # band's top is new each step (above every earlier move), so only the features with x = x' are there.
    torch.abs(grads, out=magnitude)
    if bounds.alpha_hi < 1.0 and bounds.alpha_lo < bounds.alpha_hi:
        torch.maximum(magnitude, path.fixed, out=magnitude)
    else:
        torch.maximum(magnitude, torch.ge(progress, bounds.alpha_hi, out=selected).mul_(_RANKS_LAST), out=magnitude)
    alpha_hi = torch.full((), bounds.alpha_hi, dtype=progress.dtype, device=progress.device)
    # a feature's L1 way to alpha_hi: fixed for the step (a feature that moves fully leaves the step)
    torch.sub(alpha_hi, progress, out=gaps).mul_(path.weight)
    # A sub-iteration selects every feature with |G| at most the lower quantile of those still in the step.
    # With the magnitudes sorted once, that is the sorted value at ``removed + index`` (``removed``: the
    # features at or below the last threshold). Features moved fully sit at alpha_hi, where moving them again
    # changes nothing: a selection may keep them, and its own L1 is the growth of the selected sum. The
    # ranking and the per-row decisions (R numbers each) run in numpy on the host.
    ranked = sorted_rows(magnitude, out=path.ranking)
    removed = np.zeros(progress.shape[0], dtype=np.int64)
    l1_start = path.l1_total - torch.linalg.vecdot(path.weight, progress).cpu().numpy()
    l1_target = path.l1_total * bounds.remaining
    moved = np.zeros_like(l1_start)  # the L1 moved so far in the step
    active = np.ones(l1_start.shape, dtype=bool)
    iteration = 0
    while True:
        iteration += 1
        if iteration > n + 2:  # pragma: no cover - each continuing sub-iteration saturates >= 1 feature per row
            raise RuntimeError("Guided IG step did not converge: please report this input")
        l1 = l1_start - moved
        searching = active & ~l1_isclose(l1, l1_target)
        if not searching.any():  # every row reached its target
            break
        threshold = np.minimum(lower_quantile(ranked, removed, fraction), _BELOW_LAST)
        torch.le(magnitude, torch.from_numpy(threshold).to(magnitude.device)[:, None], out=selected)
        l1_selected = torch.linalg.vecdot(gaps, selected).cpu().numpy() - moved
        with np.errstate(divide="ignore", invalid="ignore"):
            gamma = np.where(l1_selected > 0, (l1 - l1_target) / l1_selected, np.inf)
        gamma[~searching] = 0.0  # rows that stop searching: their selection does not move
        share = torch.from_numpy(np.clip(gamma, 0.0, 1.0)).to(selected.device)
        progress.lerp_(alpha_hi, selected.mul_(share[:, None]))  # weight 1 lands on alpha_hi exactly
        active = searching & (gamma > 1) & (l1_selected > 0)
        if not active.any():
            break
        moved = moved + l1_selected
        removed = (ranked <= threshold[:, None]).sum(axis=1)
    if attributions is not None:
        attributions.addcmul_(progress, grads)
    return iteration


@dataclass
class GuidedIGOptions:
    """Guided IG's knobs (validated on construction); see :meth:`GuidedIG.attribute`."""

    n_steps: int = 200
    fraction: float = 0.25
    max_dist: float = 0.02
    idgi: bool = False

    def __post_init__(self) -> None:
        self.n_steps = check_positive_int(self.n_steps, "n_steps")
        self.fraction = check_probability(self.fraction, "fraction")
        self.max_dist = check_probability(self.max_dist, "max_dist")
        self.idgi = check_bool(self.idgi, "idgi")


class GuidedIG(PathAttribution):
    r"""
    Guided Integrated Gradients (Guided IG) of Kapishnikov, Venugopalan, Avci, Wedin, Terry and Bolukbasi,
    "Guided Integrated Gradients: an Adaptive Path Method for Removing Noise", CVPR 2021
    (https://arxiv.org/abs/2106.09788); reference implementation PAIR-code/saliency ``core/guided_ig.py``.

    Integrated gradients integrates along the straight line from a baseline ``x'`` to the input ``x``.
    Guided IG chooses its path as it goes: at every step it moves the features whose gradient is *smallest*
    in magnitude, those least relevant at the current point, toward the input first, so that the path
    avoids the noisy high-gradient directions until it has to take them. With ``D = x - x'`` and
    ``L = ||D||_1``, step ``t = 1..T``:

    * one gradient ``G_t = grad f(z)`` at the current point (``z = x'`` at the start);
    * the step must bring ``||z - x||_1`` down to ``L (1 - t / T)``: each step covers ``1 / T`` of the L1
      distance, moving a ``fraction`` of the features with the smallest ``|G_t|`` (repeatedly, while the
      selection saturates, see :func:`guided_step_`);
    * every feature stays within ``max_dist`` (in units of the line's progress ``alpha``) of the straight
      line: features lagging ``alpha - max_dist`` are pulled up, none goes past ``alpha + max_dist``;
    * the attribution accumulates every move times the step's gradient (a left Riemann sum):

    .. math::

        A = \sum_t \sum_{\text{moves in step } t} \Delta z \odot G_t, \qquad
        \textstyle\sum_i A_i \approx f(x) - f(x').

    The path ends at ``x`` (the last band is ``[1 - max_dist, 1]`` and its L1 target 0).
    ``max_dist = 0`` is integrated gradients with the left Riemann rule; ``fraction = 1`` moves every feature
    by a common fraction of its gap, also the straight line; ``max_dist = 1`` is unbounded Guided IG.

    With ``idgi=True`` the attribution is instead IDGI's reweighting (Yang, Wang and Bilgic, CVPR 2023) of the
    same path: with ``z_0 = x', z_1, .., z_{T-1}`` the points at the start of each step (where the gradients
    are taken) and ``z_T = x``,
    ``I = sum_t (f(z_{t+1}) - f(z_t)) G_t^2 / ||G_t||^2``, which sums to ``f(x) - f(x')`` exactly. The scores
    at ``z_t`` come with the gradients; ``f(x)`` costs one extra forward pass. (The TMLR reproduction omits
    the last segment to ``x``; we keep it, so completeness holds.)

    Defaults are PAIR's ``GetMask`` defaults (``n_steps=200``, ``fraction=0.25``, ``max_dist=0.02``, zero
    baseline). The SAMP authors' comparison setting (also PAIR's PIC notebook) is ``n_steps=25,
    fraction=0.5, max_dist=1.0`` on the softmax probability of the predicted class: pass a softmax-wrapped
    model for that. Features are every element of every input (across a tuple), not pixels, as the reference.

    Equal to the reference (same model, float64) up to rounding, with two guards where the reference fails
    (a step whose selection is empty ends instead of looping forever; a rounding overshoot of the step's L1
    target moves nothing instead of failing an assertion), and one on purpose: an example equal to its
    baseline gets zeros without any model pass, as the reference, but also in a batch. The path is kept in
    float64 whatever the input dtype (a float32 path can round past a step's target); the model sees each
    point in the input's dtype.

    Cost: ``T`` forward+backward passes per example, strictly sequential (each point depends on the last
    gradient), every example advancing one step per pass (``internal_batch_size`` bounds the rows of a pass);
    one more forward pass per example at ``x`` when ``idgi`` or ``return_convergence_delta`` asks for ``f(x)``.
    Besides the passes, each step sorts the gradient magnitudes once (on the host, in numpy) and runs a few
    (usually two) vectorised sub-iterations of O(n) work. Memory: thirteen ``(N, n)`` float64 arrays (the
    path, the attributions, the step's working tensors, allocated once, and the sorted magnitudes),
    independent of ``T``.
    """

    _default_baselines = "zeros"

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        idgi: bool = False,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[False] = False,
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
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        idgi: bool = False,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[True],
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Tuple[TensorOrTuple, Tensor]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        n_steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        idgi: bool = False,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Tensor]]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input(s) to explain, each ``(N, ...)`` with the examples
                    along dimension 0 (aligned across the tuple). Floating point.
            baselines (optional): Start of the path ``x'``, for every input tensor: ``None`` (zeros, as the
                    reference), a number, a tensor of the input's shape, of shape ``(1, ...)`` or of the
                    per-example shape, a name (``"zeros"``, ``"mean"``, ``"uniform"``, ``"gaussian"``,
                    ``"blur"``), a :class:`~captum_paths.baselines.Baseline` or a callable of the input; for
                    tuple inputs one such specification or a tuple of them.
            target (int, tuple, Tensor or list, optional): Output index whose score is differentiated, in any
                    Captum format (``None`` for one output per example). Default: None.
            additional_forward_args (Any, optional): Extra arguments of ``forward_func`` after the inputs;
                    tensors must have ``N`` rows. Default: None.
            n_steps (int, optional): ``T``, the steps (gradients) of the path; each covers ``1 / T`` of the
                    L1 distance. Reference default 200; SAMP comparison setting 25. Default: 200.
            fraction (float, optional): ``q`` in ``[0, 1]``: the lower ``q``-quantile of ``|G|`` is the
                    selection threshold of a sub-iteration (ties all join). Reference default 0.25; SAMP
                    setting 0.5. ``1`` gives the straight line. Default: 0.25.
            max_dist (float, optional): ``delta`` in ``[0, 1]``: how far (in units of the straight line's
                    ``alpha``) a feature may lead or lag the line. ``0``: integrated gradients (left Riemann
                    rule); ``1``: unbounded. Reference default 0.02; SAMP setting 1.0. Default: 0.02.
            idgi (bool, optional): Attribute with IDGI's reweighting of the same path (see the class
                    docstring); one extra forward pass per example. Default: False.
            internal_batch_size (int, optional): At most this many examples per forward+backward pass (the
                    ``N`` examples' current points are one batch per step). ``None``: automatic, at most 2**22
                    input elements per pass (see
                    :func:`~captum_paths.attr.default_internal_batch_size`).
                    Default: None.
            return_convergence_delta (bool, optional): Also return, per example,
                    ``sum(attributions) - (f(x) - f(x'))`` (the Riemann error of Guided IG's path integral;
                    zero up to rounding with ``idgi``). ``f(x)`` costs one forward pass per example (shared
                    with ``idgi``). Default: False.
            generator (None, int or torch.Generator, optional): Randomness of random baselines only; Guided IG
                    is deterministic. Default: None.
            show_progress (bool or None, optional): a tqdm bar counting model passes (images through the
                model): ``True`` shows it, ``False`` never; ``None`` (default) shows it once the call has run
                for 5 seconds, so that long calls report their progress and short ones stay silent.

        Returns:
            **attributions** or (**attributions**, **delta**): one tensor per input of the input's shape (a
            tensor if ``inputs`` was one), and with ``return_convergence_delta`` the ``(N,)`` delta.

        Raises:
            ValueError / TypeError before any model pass for: non-floating or non-finite inputs, mismatched
            batch sizes, ``n_steps < 1``, ``fraction`` or ``max_dist`` outside ``[0, 1]``, a non-bool
            ``idgi``, bad baselines, targets, arguments or ``internal_batch_size``.

        Examples::

            >>> gig = GuidedIG(model)
            >>> attr = gig.attribute(images, target=labels)  # PAIR's defaults
            >>> attr = gig.attribute(images, target=labels, n_steps=25, fraction=0.5, max_dist=1.0)  # SAMP's
        """
        options = GuidedIGOptions(n_steps, fraction, max_dist, idgi)
        return self._attribute(
            inputs,
            baselines,
            target,
            additional_forward_args,
            options,
            internal_batch_size=internal_batch_size,
            return_convergence_delta=return_convergence_delta,
            generator=generator,
            show_progress=show_progress,
        )

    def _expected_passes(self, call: PathCall, options: GuidedIGOptions) -> int:
        return call.n_examples * (options.n_steps + int(options.idgi or call.need_delta))

    def _path(self, call: PathCall, options: GuidedIGOptions) -> PathOutput:
        """Every example advances one step per gradient pass; examples equal to their baseline are skipped."""
        x_all = flatten_inputs(call.inputs).to(torch.float64)
        b_all = flatten_inputs(call.baselines).to(torch.float64)
        l1_all = (x_all - b_all).abs().sum(dim=1)
        examples = torch.nonzero(l1_all > 0).flatten()
        n_skipped = call.n_examples - int(examples.numel())
        call.bar.update(n_skipped * (options.n_steps + int(options.idgi or call.need_delta)))  # passes not needed
        attributions = torch.zeros_like(x_all)
        expected = x_all.new_zeros(call.n_examples)
        if examples.numel() > 0:
            point_dtype = functools.reduce(torch.promote_types, [x.dtype for x in call.inputs])
            path = GuidedPath.start(x_all[examples], b_all[examples], point_dtype)
            attr, expected[examples] = self._run_path(call, options, path, examples)
            attributions[examples] = attr
        return PathOutput(unflatten_inputs(attributions, call.inputs), expected)

    def _run_path(
        self, call: PathCall, options: GuidedIGOptions, path: GuidedPath, examples: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """The path of the examples with ``x != x'``: ``(attributions (R, n) float64, f(x) - f(x') (R,))``."""
        attributions = torch.zeros_like(path.x)
        previous_grads: Optional[Tensor] = None  # IDGI: the last step's gradients and scores
        previous_scores: Optional[Tensor] = None
        # the points live in one buffer: its model-shaped views are made once
        point_views = unflatten_inputs(path.point(), call.inputs)
        for step in range(options.n_steps):
            path.point()
            grads, scores = call.gradients(self._in_input_dtypes(point_views, call.inputs), examples)
            grads = flatten_inputs(grads)  # in the model's dtype: the step copies them to float64
            if step == 0:
                start_scores = scores.to(torch.float64)
            if options.idgi:
                scores = scores.to(torch.float64)
            if options.idgi and previous_grads is not None:
                idgi_accumulate_((attributions,), (previous_grads.to(torch.float64),), scores - previous_scores)
            bounds = guided_step_bounds(step, options.n_steps, options.max_dist)
            guided_step_(path, grads, bounds, options.fraction, None if options.idgi else attributions)
            previous_grads, previous_scores = (grads, scores) if options.idgi else (None, None)
        if not options.idgi:
            attributions.mul_(path.diff)  # the steps summed alpha moves times G: z moves are D times those
        if not (options.idgi or call.need_delta):
            return attributions, torch.full_like(start_scores, math.nan)
        end_scores = call.scores(self._model_points(path.x, call.inputs), examples).to(torch.float64)
        if options.idgi:
            idgi_accumulate_((attributions,), (previous_grads.to(torch.float64),), end_scores - previous_scores)
        return attributions, end_scores - start_scores

    @classmethod
    def _model_points(cls, flat: Tensor, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """Flat float64 points as the model's tuple of tensors, each in its input's dtype."""
        return tuple(p.contiguous() for p in cls._in_input_dtypes(unflatten_inputs(flat, inputs), inputs))

    @staticmethod
    def _in_input_dtypes(points: Tuple[Tensor, ...], inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
        """Each point tensor in its input's dtype (the tensor itself when it already is)."""
        return tuple(p if p.dtype == x.dtype else p.to(x.dtype) for p, x in zip(points, inputs))
