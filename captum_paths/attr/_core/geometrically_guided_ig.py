"""Geometrically Guided Integrated Gradients (Rahman, Lewis & Plis, 2022)."""

import math
import warnings
from numbers import Real
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor

from captum_paths.attr._utils.baselines import resolve_baselines
from captum_paths.attr._utils.captum_compat import (
    format_additional_forward_args,
    format_inputs,
    format_output,
    gradients_and_scores,
    is_tuple,
    log_usage,
)
from captum_paths.attr._utils.progress import chunk_slices, progress_bar
from captum_paths.attr._utils.quadrature import trapezoid_weights as trapezoid_rule
from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target
from captum_paths.attr._utils.validation import (
    check_finite_inputs,
    check_generator,
    check_internal_batch_size,
    check_positive_float,
    check_positive_int,
    check_same_batch,
)

__all__ = [
    "GeometricallyGuidedIG",
    "interpolation_alphas",
    "trapezoid_weights",
    "point_runs",
]

REDUCTIONS = ("max", "trapezoid")


def interpolation_alphas(n_steps: int, dtype=torch.float64, device=None) -> Tensor:
    """The ``n_steps + 1`` interpolation coefficients ``k / n_steps``, ``k = 0..n_steps``: shape ``(n_steps + 1,)``.

    Both end points are included: ``0`` is the baseline and ``1`` the input (``torch.linspace(0, 1, n + 1)``
    as in the authors' code).
    """
    return torch.linspace(0.0, 1.0, n_steps + 1, dtype=dtype, device=device)


def trapezoid_weights(n_steps: int, dtype=torch.float64, device=None) -> Tensor:
    """Trapezoid-rule weights of the ``n_steps + 1`` points on ``[0, 1]``: shape ``(n_steps + 1,)``.

    ``1 / n`` for the interior points and ``1 / (2 n)`` for the two end points; they sum to one. This is
    the authors' ``mean((g[:-1] + g[1:]) / 2)`` over the point axis written as a weighted sum.
    """
    return trapezoid_rule(n_steps + 1, dtype=dtype, device=device)


def point_runs(rows: slice, n_examples: int) -> List[Tuple[int, slice, slice]]:
    """Split a chunk of rows of the repeat-ordered ``N * (n + 1)`` batch into runs of one point each.

    Row ``r`` is example ``r % N`` at point ``r // N``; a chunk ``rows`` (a slice with step 1) therefore
    holds, for each point it touches, a contiguous range of examples. Returns
    ``(point, rows within the chunk, examples)`` triples, in order.
    """
    runs, r = [], rows.start
    while r < rows.stop:
        point = r // n_examples
        stop = min(rows.stop, (point + 1) * n_examples)
        runs.append((point, slice(r - rows.start, stop - rows.start), slice(r % n_examples, r % n_examples + stop - r)))
        r = stop
    return runs


class GeometricallyGuidedIG(GradientAttribution):
    r"""
    Geometrically Guided Integrated Gradients (GGIG) of Rahman, Lewis and Plis,
    "Geometrically Guided Integrated Gradients" (2022; first as "Geometrically Guided Saliency Maps",
    ICLR 2022 PAIR^2Struct workshop, https://openreview.net/forum?id=rtIeCBr8W-5).

    Integrated gradients averages the gradient over the straight line from a baseline ``x'`` to the
    input ``x``. GGIG starts from the same ``n + 1`` points of that line and, from each, climbs the
    target score by plain gradient ascent *in input space* (the model is never changed):

    .. math::

        p_k^{(0)} = x' + \tfrac{k}{n} (x - x'), \qquad
        g_{k,j} = \nabla_x f_t\big(p_k^{(j)}\big), \qquad
        p_k^{(j+1)} = p_k^{(j)} + \eta\, g_{k,j},

    for ``k = 0..n`` and ``j = 0..m-1`` (``m`` gradients per point, the gradient taken before each
    update). The attribution of feature ``i`` is the signed maximum of every gradient seen:

    .. math::

        A_i = \max_{k, j}\; g_{k,j,i} \qquad (\text{reduction="max"}, \text{ the paper's}).

    The authors' code also reports an "IG-like" variant of the same gradients, the trapezoid rule over
    the points of the per-point maxima ``M_k = \max_j g_{k,j}``:

    .. math::

        A = \frac{1}{n} \sum_{k=0}^{n-1} \frac{M_k + M_{k+1}}{2} \qquad (\text{reduction="trapezoid"}).

    With ``m = 1``, ``reduction="trapezoid"`` and ``multiply_by_inputs=True`` this is integrated
    gradients by the trapezoid rule on the ``n + 1`` points. (Captum's ``IntegratedGradients`` with
    ``method="riemann_trapezoid"``, ``n_steps=n + 1`` gives the same up to the constant factor
    ``n / (n + 1)``: its trapezoid weights sum to that, not to one.)
    As in the paper, the result is *not* multiplied by ``x - x'`` by default
    (``multiplies_by_inputs`` is False): pass ``multiply_by_inputs=True`` for ``A * (x - x')``
    (the authors' ``scaling`` option multiplies by ``x``, the same thing for their zero baseline).

    ``f_t`` is the raw model output selected by ``target`` (a logit for classifiers, as in the paper).

    Cost: ``(n + 1) * m`` forward+backward passes per example (fewer with ``tolerance``). The points of
    all examples are batched together, ``internal_batch_size`` rows per pass; a running maximum keeps
    memory independent of ``m``.

    Paper defaults (ImageNet, ResNet): ``n = 50`` (51 points), ``m = 100`` ascent iterations, learning
    rate ``1e-4``, zero baseline. These are this class's defaults. The learning rate is in input units
    per unit of gradient: for models with much larger or smaller gradients than an ImageNet ResNet
    (e.g. small CNNs on ``[0, 1]`` images) it should be re-tuned; too large a rate makes the ascent
    diverge and the maximum meaningless.

    Deviations from the authors' code, each on purpose:

    - the authors run one example at a time; here examples are batched (identical results);
    - ``tolerance`` (off by default) is our addition: a point whose gradient norm falls to the
      tolerance stops climbing. With ``tolerance=0`` this stops only points whose gradient is exactly
      zero, whose later gradients would all be identical: the result is unchanged;
    - tuple inputs, every Captum target format and ``additional_forward_args`` are supported.

    ``self.gradient_func`` (swappable, Captum's ``compute_gradients`` by default) is called once per
    pass with a forward function that returns the *sum* of the rows' target scores, shape ``(1,)``, and
    ``target=None``: the same gradients as Captum's per-row
    unbind, without its per-row cost.
    """

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = False) -> None:
        r"""
        Args:

            forward_func (Callable): The forward function of the model or any modification of it.
            multiply_by_inputs (bool, optional): Whether to multiply the final attribution by
                    ``inputs - baselines`` (a "global" attribution). The paper does not (default False).
        """
        if not isinstance(multiply_by_inputs, bool):
            raise TypeError(f"`multiply_by_inputs` must be a bool, got {type(multiply_by_inputs).__name__}")
        GradientAttribution.__init__(self, forward_func)
        self._multiply_by_inputs = multiply_by_inputs

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        n_iterations: int = 100,
        learning_rate: float = 1e-4,
        reduction: str = "max",
        tolerance: Optional[float] = None,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        show_progress: bool = False,
        generator: Union[None, int, torch.Generator] = None,
    ) -> Union[Tensor, Tuple[Tensor, ...], Tuple[Union[Tensor, Tuple[Tensor, ...]], Tensor]]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input(s) to explain, each of shape ``(N, ...)``
                    with the examples along dimension 0 (aligned across the tuple). Floating point.
            baselines (optional): Start of the straight line, for every input tensor: ``None``
                    (zeros, as the paper), a number, a tensor of the input's shape, of shape
                    ``(1, ...)`` or of the per-example shape, a name (``"zeros"``, ``"mean"``,
                    ``"uniform"``, ``"gaussian"``, ``"blur"``), a
                    :class:`~captum_paths.attr._utils.baselines.Baseline` object or a callable of
                    the input tensor; for tuple inputs, one such specification or a tuple of them.
            target (int, tuple, Tensor or list, optional): Output index whose score is climbed and
                    differentiated, in any Captum format: ``None`` for a model with one output per
                    example, an int or tuple for every example, a tensor or list of ``N`` entries
                    (one per example). Default: None.
            additional_forward_args (Any, optional): Extra arguments of ``forward_func`` after the
                    inputs. Tensors must have ``N`` rows (one per example); they are gathered for
                    every interpolation point. Other objects are passed unchanged. Default: None.
            n_steps (int, optional): ``n``: the line is cut into ``n`` intervals, i.e. ``n + 1``
                    points, baseline and input included. Paper: 50. Default: 50.
            n_iterations (int, optional): ``m``: gradient-ascent iterations (gradients) per point.
                    ``m = 1`` is the feature-wise maximum of the plain path gradients. Paper: 100.
                    Default: 100.
            learning_rate (float, optional): ``eta``, the ascent step ``p <- p + eta * grad``.
                    Positive and finite. Paper: 1e-4. Default: 1e-4.
            reduction (str, optional): ``"max"`` (the paper): signed feature-wise maximum over all
                    points and iterations; ``"trapezoid"`` (the authors' IG-like variant): trapezoid
                    rule over the points of each point's maximum over its iterations. Default "max".
            tolerance (float, optional): Early stop per point: once the L2 norm of a point's gradient
                    (over all its features, across the tuple) is at most ``tolerance``, that point stops
                    climbing (that gradient is still counted). ``None`` (default): every point runs all
                    ``m`` iterations, as the paper. Must be a finite number ``>= 0``.
            internal_batch_size (int, optional): At most this many points (rows) per forward+backward
                    pass; points of different examples share a pass. ``None``: all ``N * (n + 1)`` at
                    once. Memory is proportional to it and independent of ``m``. Default: None.
            return_convergence_delta (bool, optional): Also return, per example,
                    ``sum(attributions) - (f_t(x) - f_t(x'))``. GGIG does not promise completeness:
                    this is a diagnostic of how far it is from it (with ``m = 1``,
                    ``reduction="trapezoid"``, ``multiply_by_inputs=True`` it is the delta of
                    trapezoid-rule IG). The two
                    scores come from the first pass at the end points, at no extra cost.
                    Default: False.
            show_progress (bool, optional): Show a tqdm bar counting point gradients. Default False.
            generator (None, int or torch.Generator, optional): Source of randomness for random
                    baselines (``"uniform"``, ``"gaussian"``, ...). GGIG itself is deterministic.

        Returns:
            **attributions** or (**attributions**, **delta**):
            - **attributions** (Tensor or tuple[Tensor, ...]): One tensor per input, of the input's
              shape (a tensor if ``inputs`` was a tensor, a tuple if it was a tuple).
            - **delta** (Tensor, returned if ``return_convergence_delta``): shape ``(N,)``.

        Raises:
            ValueError / TypeError before any model evaluation for: non-floating or non-finite inputs,
            mismatched batch sizes, ``n_steps < 1``, ``n_iterations < 1``, a non-positive or
            non-finite ``learning_rate``, an unknown ``reduction``, a negative ``tolerance``, a bad
            ``internal_batch_size``, baselines that do not match the inputs, a target list or tensor
            of the wrong length, tensor ``additional_forward_args`` without ``N`` rows. A target
            outside the model output raises ``ValueError`` at the first forward pass, before any
            backward pass.

        Examples::

            >>> ggig = GeometricallyGuidedIG(model)
            >>> attr = ggig.attribute(images, target=labels, n_steps=50, n_iterations=100,
            ...                       learning_rate=1e-4, internal_batch_size=512)
        """
        is_inputs_tuple = is_tuple(inputs)
        inputs_tuple = format_inputs(inputs, "inputs")
        check_finite_inputs(inputs_tuple, "inputs")
        n_examples = check_same_batch(inputs_tuple, "inputs")
        n_steps = check_positive_int(n_steps, "n_steps")
        n_iterations = check_positive_int(n_iterations, "n_iterations")
        learning_rate = check_positive_float(learning_rate, "learning_rate")
        if reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
        tolerance = _check_tolerance(tolerance)
        internal_batch_size = check_internal_batch_size(internal_batch_size)
        if not isinstance(return_convergence_delta, bool):
            raise TypeError(f"`return_convergence_delta` must be a bool, got {return_convergence_delta!r}")
        generator = check_generator(generator)
        _check_target(target, n_examples)
        additional_forward_args = format_additional_forward_args(additional_forward_args)
        _check_additional_args(additional_forward_args, n_examples)
        baselines_tuple = resolve_baselines(baselines, inputs_tuple, default="zeros", generator=generator)

        with torch.no_grad():  # the inputs and baselines are data: never part of a user's graph
            inputs_tuple = tuple(x.detach() for x in inputs_tuple)
            baselines_tuple = tuple(b.detach() for b in baselines_tuple)

        attributions, start_scores, end_scores = self._path_ascent(
            inputs_tuple,
            baselines_tuple,
            target,
            additional_forward_args,
            n_steps,
            n_iterations,
            learning_rate,
            reduction,
            tolerance,
            internal_batch_size,
            show_progress,
        )
        if not all(bool(torch.isfinite(a).all()) for a in attributions):
            warnings.warn(
                "GeometricallyGuidedIG: some attributions are not finite: the gradient ascent diverged "
                f"(learning_rate={learning_rate:g} is too large for this model) or the model's gradient is "
                "not finite",
                RuntimeWarning,
                stacklevel=2,
            )
        if self._multiply_by_inputs:
            attributions = tuple(a * (x - b) for a, x, b in zip(attributions, inputs_tuple, baselines_tuple))
        output = format_output(is_inputs_tuple, attributions)
        if not return_convergence_delta:
            return output
        total = sum(a.reshape(n_examples, -1).sum(dim=1) for a in attributions)
        delta = total - (end_scores.to(total.dtype) - start_scores.to(total.dtype))
        return output, delta

    def _path_ascent(
        self,
        inputs: Tuple[Tensor, ...],
        baselines: Tuple[Tensor, ...],
        target: Any,
        additional_forward_args: Optional[Tuple],
        n_steps: int,
        n_iterations: int,
        learning_rate: float,
        reduction: str,
        tolerance: Optional[float],
        internal_batch_size: Optional[int],
        show_progress: bool,
    ) -> Tuple[Tuple[Tensor, ...], Tensor, Tensor]:
        """Run the ascent from every point, chunk by chunk; fold each chunk into the per-example result.

        Row ``r`` of the virtual ``N * (n + 1)`` batch is example ``r % N`` at point ``r // N``
        (Captum's repeat order). Returns the attributions (before any multiplication by the inputs)
        and the target scores at the baseline and at the input, shape ``(N,)`` each.
        """
        n_examples = inputs[0].shape[0]
        device = inputs[0].device
        n_rows = n_examples * (n_steps + 1)
        if reduction == "max":
            result = tuple(torch.full_like(x, -math.inf) for x in inputs)
        else:
            result = tuple(torch.zeros_like(x) for x in inputs)
            weights = trapezoid_weights(n_steps).tolist()  # python floats: no device sync in the loop
        alphas = tuple(interpolation_alphas(n_steps, dtype=x.dtype, device=x.device) for x in inputs)
        start_scores = torch.full((n_examples,), math.nan, dtype=inputs[0].dtype, device=device)
        end_scores = torch.full((n_examples,), math.nan, dtype=inputs[0].dtype, device=device)

        with progress_bar(show_progress, total=n_rows * n_iterations, desc="GGIG", unit="grad") as bar:
            for rows in chunk_slices(n_rows, internal_batch_size):
                row_index = torch.arange(rows.start, rows.stop, device=device)
                example_index = row_index % n_examples
                point_index = row_index // n_examples
                points = tuple(
                    torch.lerp(
                        b.index_select(0, example_index),
                        x.index_select(0, example_index),
                        a.index_select(0, point_index).reshape((-1,) + (1,) * (x.dim() - 1)),
                    )
                    for x, b, a in zip(inputs, baselines, alphas)
                )
                row_max, first_scores = self._ascend_chunk(
                    points,
                    example_index,
                    target,
                    additional_forward_args,
                    n_examples,
                    n_iterations,
                    learning_rate,
                    tolerance,
                    bar,
                )
                at_start, at_end = point_index == 0, point_index == n_steps
                start_scores[example_index[at_start]] = first_scores[at_start].to(start_scores.dtype)
                end_scores[example_index[at_end]] = first_scores[at_end].to(end_scores.dtype)
                # fold the chunk in, one run of consecutive rows per point (a contiguous example range)
                for point, chunk_rows, examples in point_runs(rows, n_examples):
                    for acc, rmax in zip(result, row_max):
                        view = acc[examples]
                        if reduction == "max":
                            torch.maximum(view, rmax[chunk_rows], out=view)
                        else:
                            view.add_(rmax[chunk_rows], alpha=weights[point])
        return result, start_scores, end_scores

    def _ascend_chunk(
        self,
        points: Tuple[Tensor, ...],
        example_index: Tensor,
        target: Any,
        additional_forward_args: Optional[Tuple],
        n_examples: int,
        n_iterations: int,
        learning_rate: float,
        tolerance: Optional[float],
        bar: Any,
    ) -> Tuple[Tuple[Tensor, ...], Tensor]:
        """``m`` ascent steps of a chunk of points (updated in place); running max of their gradients.

        Returns the per-row maximum over the iterations (one tensor per input, the points' shapes) and
        the target scores of the first pass, shape ``(rows,)``.
        """
        n_rows = points[0].shape[0]
        chunk_target = subset_target(target, example_index, n_examples)
        chunk_args = subset_additional_forward_args(additional_forward_args, example_index, n_examples)
        active: Optional[Tensor] = None  # None: every row of the chunk still climbs
        row_max: Tuple[Tensor, ...] = ()
        first_scores = None
        for iteration in range(n_iterations):
            if active is None:
                current = tuple(p.requires_grad_() for p in points)
                grads, scores = gradients_and_scores(
                    self.gradient_func, self.forward_func, current, chunk_target, chunk_args
                )
                with torch.no_grad():
                    if iteration == 0:
                        row_max, first_scores = grads, scores
                    else:
                        for m, g in zip(row_max, grads):
                            torch.maximum(m, g, out=m)
                    for p, g in zip(points, grads):
                        p.add_(g, alpha=learning_rate)
                bar.update(n_rows)
            else:
                active_examples = example_index.index_select(0, active)
                with torch.no_grad():
                    current = tuple(p.index_select(0, active) for p in points)
                current = tuple(c.requires_grad_() for c in current)
                grads, _ = gradients_and_scores(
                    self.gradient_func,
                    self.forward_func,
                    current,
                    subset_target(target, active_examples, n_examples),
                    subset_additional_forward_args(additional_forward_args, active_examples, n_examples),
                )
                with torch.no_grad():
                    for m, g in zip(row_max, grads):
                        m.index_copy_(0, active, torch.maximum(m.index_select(0, active), g))
                    for p, c, g in zip(points, current, grads):
                        p.index_copy_(0, active, c.detach() + learning_rate * g)
                bar.update(int(active.numel()))
            if tolerance is None or iteration == n_iterations - 1:
                continue
            with torch.no_grad():
                norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads))
                still = norms > tolerance
                n_stopped = int(still.numel() - still.sum())
                if n_stopped == 0:
                    continue
                bar.update(n_stopped * (n_iterations - iteration - 1))  # the gradients they skip
                active = (torch.arange(n_rows, device=norms.device) if active is None else active)[still]
                if active.numel() == 0:
                    break
        for p in points:
            p.requires_grad_(False)
        return row_max, first_scores

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs


def _check_tolerance(tolerance: Any) -> Optional[float]:
    if tolerance is None:
        return None
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"`tolerance` must be None or a finite number >= 0, got {tolerance!r}")
    return float(tolerance)


def _check_target(target: Any, n_examples: int) -> None:
    """Per-example targets must have one entry per example (shared targets are checked at the forward)."""
    if isinstance(target, list) and len(target) != n_examples:
        raise ValueError(f"`target` is a list of {len(target)} entries but there are {n_examples} examples")
    if isinstance(target, Tensor):
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise TypeError(f"`target` tensor must hold integer indices, got dtype {target.dtype}")
        if target.numel() > 1 and (target.dim() != 1 or target.numel() != n_examples):
            raise ValueError(
                f"`target` tensor must have one element or shape ({n_examples},) (one per example), "
                f"got shape {tuple(target.shape)}"
            )


def _check_additional_args(additional_forward_args: Optional[Tuple], n_examples: int) -> None:
    if additional_forward_args is None:
        return
    for i, a in enumerate(additional_forward_args):
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] != n_examples:
            raise ValueError(
                f"`additional_forward_args`[{i}] is a tensor with {a.shape[0]} rows but there are "
                f"{n_examples} examples: tensor arguments need one row per example"
            )
