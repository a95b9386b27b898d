"""IDGI: Important Direction Gradient Integration (Yang, Wang, Bilgic, CVPR 2023) on the straight line."""

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Tuple, Union, overload

import torch
from captum.attr import Attribution, IntegratedGradients
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput
from captum_paths.attr._core.geometrically_guided_ig import point_runs
from captum_paths.attr._utils.captum_compat import TargetType, TensorOrTuple, check_score, log_usage, scored_forward
from captum_paths.attr._utils.idgi import idgi_accumulate_, idgi_direction
from captum_paths.attr._utils.validation import check_positive_int
from captum_paths.baselines import BaselinesType

__all__ = ["IDGI", "IDGIOptions", "idgi_rule", "straight_line_idgi"]

#: Captum's ``method`` names IDGI runs with (see :class:`IDGI`); the others are refused with the reason
METHODS = ("riemann_left", "riemann_right", "riemann_trapezoid")
_REFUSED = {
    "riemann_middle": "its points are the midpoints of the cells, so the cells' end points (whose output change "
    "IDGI distributes) are not among them: each cell would cost an extra forward pass at both ends",
    "gausslegendre": "its nodes exclude the baseline and the input and its weights are replaced by IDGI's output "
    "changes; on those nodes it is the left rule on an uneven grid plus an extra gradient at the baseline",
}


def idgi_rule(method: str, n_steps: int) -> Tuple[Tuple[int, ...], Optional[int], int]:
    """Which points of the line ``k / n_steps`` (``k = 0..n_steps``) a rule differentiates, in processing order.

    Returns ``(gradient_points, score_point, sign)``: the points whose gradient is taken, in the order the
    passes run; the one point that needs only its score (``None`` for the trapezoid rule), run first; and
    ``+1`` (baseline -> input, each gradient point closes the segment that ends at it) or ``-1`` (input ->
    baseline, each gradient point opens the segment that starts at it). Processing in that order, every
    segment's two scores are known when its gradient arrives, so no gradient is ever kept.
    """
    if method == "riemann_left":
        return tuple(range(n_steps - 1, -1, -1)), n_steps, -1
    if method == "riemann_right":
        return tuple(range(1, n_steps + 1)), 0, 1
    return tuple(range(n_steps + 1)), None, 1


def straight_line_idgi(grads: Tensor, scores: Tensor, method: str = "riemann_left") -> Tensor:
    """IDGI of one example from the gradients and scores at all ``n + 1`` points, stored (a reference).

    Args:
        grads: ``(n + 1, ...)`` gradients at the points ``p_0 = x' .. p_n = x`` (rows a rule does not use
            are ignored).
        scores: ``(n + 1,)`` the scores ``y_k = f(p_k)``.
        method: ``"riemann_left"`` (``sum_j d_j u_j``), ``"riemann_right"`` (``sum_j d_j u_{j+1}``) or
            ``"riemann_trapezoid"`` (``sum_j d_j (u_j + u_{j+1}) / 2``), with ``d_j = y_{j+1} - y_j`` and
            ``u_j = g_j^2 / ||g_j||^2``.

    Returns the ``(...)`` attribution. Memory grows with ``n``: :class:`IDGI` streams the same sum instead.
    """
    u = idgi_direction((grads,))[0]
    d = (scores[1:] - scores[:-1]).to(u.dtype).reshape((-1,) + (1,) * (u.dim() - 1))
    weights = {"riemann_left": u[:-1], "riemann_right": u[1:], "riemann_trapezoid": (u[:-1] + u[1:]) / 2}[method]
    return (d * weights).sum(dim=0)


@dataclass
class IDGIOptions:
    """IDGI's knobs (validated on construction); see :meth:`IDGI.attribute`."""

    n_steps: int = 50
    method: str = "riemann_left"
    score: str = "logit"

    def __post_init__(self) -> None:
        self.n_steps = check_positive_int(self.n_steps, "n_steps")
        if self.method in _REFUSED:
            why = _REFUSED[self.method]
            raise ValueError(f"`method` {self.method!r} does not fit IDGI: {why}. Use one of {METHODS}")
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {self.method!r}")
        check_score(self.score)


class IDGI(PathAttribution):
    r"""
    IDGI, Important Direction Gradient Integration (Yang, Wang, Bilgic, "IDGI: A Framework to Eliminate
    Explanation Noise from Integrated Gradients", CVPR 2023; official code ``yangruo1226/IDGI``, MIT), on
    integrated gradients' straight line from the baseline ``x'`` to the input ``x``.

    Integrated gradients sums, over the segments of a Riemann sum, the gradient times the step in input
    space, ``g_j * (p_{j+1} - p_j)``. Only the part of the step along the gradient changes the output; IDGI
    keeps that part and spreads each segment's *measured* output change along the gradient's direction:

    .. math::

        p_k = x' + \tfrac{k}{n} (x - x'),\quad y_k = f_t(p_k),\quad g_k = \nabla f_t(p_k),\quad
        u_k = \frac{g_k \odot g_k}{\lVert g_k \rVert^2},\qquad
        A = \sum_{j=0}^{n-1} (y_{j+1} - y_j)\, u_j \quad (\text{method="riemann\_left", the paper's}).

    Each ``u_k`` sums to one over the example's features (across an input tuple), so every segment's
    attributions sum to its output change and ``sum(A) = f_t(x) - f_t(x')`` *exactly*, by telescoping, for
    any ``n``: ``return_convergence_delta`` reports rounding only. **Zero-gradient guard:** a point whose
    ``||g_k||^2`` is not above the dtype's smallest normal number has no direction; its term is skipped (as
    the TMLR reproduction does; the official function divides by zero and returns NaN). Completeness then
    misses that segment's output change, and the delta shows exactly that amount.

    ``method`` takes Captum's names, applied to the segments of the same ``n + 1`` evenly spaced points
    (only which gradient each segment uses changes; IDGI replaces the quadrature weights by the output
    changes, so only a rule's points matter):

    - ``"riemann_left"`` (default; the official code and the paper): each segment uses the gradient at its
      start. Gradients at ``p_0 .. p_{n-1}`` and one forward pass at ``x`` (the gradient at the input is not
      needed): ``n`` forward+backward and 1 forward pass per example.
    - ``"riemann_right"``: each segment uses the gradient at its end, ``sum_j d_j u_{j+1}``; gradients at
      ``p_1 .. p_n``, one forward pass at ``x'``. Same cost.
    - ``"riemann_trapezoid"``: the mean of the two, ``sum_j d_j (u_j + u_{j+1}) / 2``; ``n + 1``
      forward+backward passes. (Captum's IG with this name takes ``n_steps`` points, i.e. ``n_steps - 1``
      intervals; here, as everywhere in this package, ``n_steps`` counts intervals.)
    - ``"riemann_middle"`` and ``"gausslegendre"`` (Captum IG's default) are refused: IDGI needs the scores
      at the ordered points ``x' -> x`` that bound each segment, and those rules' points are interior
      (midpoints, Gauss nodes) whose cells' end points would each cost an extra forward pass; on their
      nodes alone IDGI is the left rule on an uneven grid, not the rule they name.

    ``f_t`` is the raw output selected by ``target`` (``score="logit"``, as Captum's IG attributes); with
    ``score="softmax"`` the target's softmax probability over dim 1 (what the TMLR reproduction uses; the
    official code leaves it open). Gradients and scores are always of the same function.

    **Captum's IntegratedGradients:** ``IDGI(ig)`` or ``IDGI.from_integrated_gradients(ig)`` builds IDGI on
    the same line from a ``captum.attr.IntegratedGradients`` instance, using its ``forward_func`` and its
    (possibly swapped) ``gradient_func``; ``attribute`` then takes IG's arguments (``baselines``,
    ``target``, ``additional_forward_args``, ``n_steps``, ``method`` from the list above,
    ``internal_batch_size``, ``return_convergence_delta``). IDGI's attribution is global by construction (it
    sums to the output difference and holds no ``x - x'`` factor to leave out), so an IG built with
    ``multiply_by_inputs=False`` is refused rather than silently changed.

    **Where IDGI does not apply:** SAMP (:class:`~captum_paths.attr.SampAttribution`): its path is chosen
    from the gradients themselves (each step moves the features with the largest ``g * dx``) and its
    attribution already is the per-step ``g * dx`` on the features that moved, so reweighting by ``g^2``
    would replace the path's defining choice; AblationPath: its path is a family of masks optimised for the
    path score, and its saliency is read off the masks, not a path integral of gradients: there is no sum of
    ``g * dx`` to reweight; GGIG: a feature-wise maximum over gradient ascents from the line's points, not an
    integral along a path, so there are no segments whose output change could be distributed.

    Cost per example: left and right rules, ``n`` forward+backward passes (Captum IG's for the same
    ``n_steps``, no extra gradient) and one forward pass; trapezoid rule, ``n + 1`` forward+backward passes.
    On the digits CNN (``benchmarks/bench_idgi.py``) the call costs 1.00-1.07x its bare passes in CPU time.
    Rows ``N * (points)`` are ordered point-major (every example advances one point per pass) and
    chunked into at most ``internal_batch_size`` rows per pass; a running sum keeps memory at the
    attributions' size plus one chunk (plus one direction per example for the trapezoid rule), independent
    of ``n``.

    Deviations from the official function, on purpose: the zero-gradient guard above; the accumulation is
    in the inputs' dtype (the official one takes the first gradient's); batched over examples, tuple inputs
    (one norm over the whole tuple), every Captum target format and ``additional_forward_args``.
    """

    _completeness = True

    def __init__(self, forward_func: Union[Callable[..., Tensor], IntegratedGradients]) -> None:
        r"""
        Args:

            forward_func (Callable or captum.attr.IntegratedGradients): The model or any function returning
                    scores; or a Captum ``IntegratedGradients`` whose ``forward_func`` and ``gradient_func``
                    are taken (see the class docstring).
        """
        ig = forward_func if isinstance(forward_func, IntegratedGradients) else None
        if ig is not None:
            if not ig.multiplies_by_inputs:
                raise ValueError(
                    "IDGI has no local (multiply_by_inputs=False) form: its attribution sums to the output "
                    "difference and holds no `inputs - baselines` factor to leave out. Build the "
                    "IntegratedGradients with multiply_by_inputs=True (its default)"
                )
            forward_func = ig.forward_func
        elif isinstance(forward_func, Attribution):
            raise TypeError(
                "IDGI wraps a captum IntegratedGradients or takes a forward function, got a "
                f"{type(forward_func).__name__}"
            )
        super().__init__(forward_func)
        if ig is not None:
            self.gradient_func = ig.gradient_func

    @classmethod
    def from_integrated_gradients(cls, integrated_gradients: IntegratedGradients) -> "IDGI":
        """IDGI on the straight line of a ``captum.attr.IntegratedGradients`` (its forward and gradient
        functions); the same as ``IDGI(integrated_gradients)``."""
        if not isinstance(integrated_gradients, IntegratedGradients):
            raise TypeError(
                "`integrated_gradients` must be a captum.attr.IntegratedGradients, got "
                f"{type(integrated_gradients).__name__}"
            )
        return cls(integrated_gradients)

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        n_steps: int = 50,
        method: str = "riemann_left",
        score: str = "logit",
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
        n_steps: int = 50,
        method: str = "riemann_left",
        score: str = "logit",
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
        n_steps: int = 50,
        method: str = "riemann_left",
        score: str = "logit",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Tensor]]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input(s) to explain, each ``(N, ...)``, examples along
                    dimension 0 (aligned across the tuple). Floating point.
            baselines (optional): Start of the line, for every input tensor: ``None`` (zeros, as IG), a
                    number, a tensor of the input's shape, of shape ``(1, ...)`` or of the per-example shape,
                    a name (``"zeros"``, ``"mean"``, ``"uniform"``, ``"gaussian"``, ``"blur"``), a
                    :class:`~captum_paths.baselines.Baseline` or a callable of the input tensor; for tuple
                    inputs one such specification or a tuple of them.
            target (int, tuple, Tensor or list, optional): Output index whose score is explained, in any
                    Captum format (``None`` for one output per example; an int or tuple for all; a tensor or
                    list of ``N``). Default: None.
            additional_forward_args (Any, optional): Extra arguments of ``forward_func`` after the inputs;
                    tensors need ``N`` rows (gathered for every path point), others are passed unchanged.
            n_steps (int, optional): ``n``, the intervals of the line (``n + 1`` points, baseline and input
                    included). IG's and the paper's default: 50.
            method (str, optional): ``"riemann_left"`` (default; official), ``"riemann_right"`` or
                    ``"riemann_trapezoid"``: which gradient each segment uses (class docstring).
                    ``"riemann_middle"`` and ``"gausslegendre"`` raise ``ValueError`` (and why).
            score (str, optional): ``"logit"`` (default): the forward function's raw target output;
                    ``"softmax"``: its softmax probability over dim 1 (needs ``(N, n_classes)`` outputs).
            internal_batch_size (int, optional): At most this many rows (path points of any examples) per
                    model pass. ``None``: automatic, at most 2**22 input elements per pass (see
                    :func:`~captum_paths.attr.default_internal_batch_size`). Default: None.
            return_convergence_delta (bool, optional): Also return ``sum(attributions) - (y(x) - y(x'))``
                    per example, ``(N,)``: rounding only, unless a segment was skipped by the zero-gradient
                    guard. The two scores come from the passes already run. Default: False.
            generator (None, int or torch.Generator, optional): For random baselines only; IDGI itself is
                    deterministic.
            show_progress (bool or None, optional): a tqdm bar counting model passes (images through the
                model): ``True`` shows it, ``False`` never; ``None`` (default) shows it once the call has run
                for 5 seconds, so that long calls report their progress and short ones stay silent.

        Returns:
            **attributions** or (**attributions**, **delta**): one tensor per input, the input's shape (a
            tensor for a tensor input); **delta** ``(N,)`` if ``return_convergence_delta``.

        Examples::

            >>> idgi = IDGI(model)                                   # or IDGI(IntegratedGradients(model))
            >>> attr, delta = idgi.attribute(images, target=labels, n_steps=50, return_convergence_delta=True)
        """
        options = IDGIOptions(n_steps, method, score)
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

    def _expected_passes(self, call: PathCall, options: IDGIOptions) -> int:
        return call.n_examples * (options.n_steps + 1)

    def _path(self, call: PathCall, options: IDGIOptions) -> PathOutput:
        """Stream the points in the rule's order, point-major, folding each run of rows into the running sum.

        ``last`` holds each example's score at the previously processed point, so the segment a gradient
        belongs to is complete when the gradient arrives; the trapezoid rule also keeps the previous
        point's direction (``pending``).
        """
        inputs, n = call.inputs, call.n_examples
        forward = scored_forward(self.forward_func, options.score)
        order, score_point, sign = idgi_rule(options.method, options.n_steps)
        alphas = torch.linspace(0.0, 1.0, options.n_steps + 1, dtype=torch.float64)
        ends = torch.empty(2, n, dtype=inputs[0].dtype, device=inputs[0].device)  # y(x'), y(x)
        totals = tuple(torch.zeros_like(x) for x in inputs)
        pending = tuple(torch.zeros_like(x) for x in inputs) if score_point is None else None
        examples = torch.arange(n, device=inputs[0].device)
        last = torch.empty_like(ends[0])  # each example's score at the previously processed point
        if score_point is not None:
            last = call.scores(self._points(call, examples, alphas[score_point].expand(n)), examples, forward)
            ends[score_point // options.n_steps] = last
        order_alphas = alphas[list(order)]
        for rows in call.row_chunks(n * len(order)):
            row_index = torch.arange(rows.start, rows.stop)
            row_examples = (row_index % n).to(examples.device)
            points = self._points(call, row_examples, order_alphas[row_index // n])
            grads, scores = call.gradients(points, row_examples, forward)
            for position, chunk_rows, run in point_runs(rows, n):
                point, run_scores = order[position], scores[chunk_rows]
                run_grads = tuple(g[chunk_rows] for g in grads)
                if point in (0, options.n_steps):
                    ends[point // options.n_steps, run] = run_scores.to(ends.dtype)
                first = score_point is None and position == 0
                change = None if first else sign * (run_scores - last[run].to(run_scores.dtype))
                _fold_run(totals, pending, run, run_grads, change)
                last[run] = run_scores.to(last.dtype)
        return PathOutput(totals, ends[1] - ends[0])

    @staticmethod
    def _points(call: PathCall, row_examples: Tensor, row_alphas: Tensor) -> Tuple[Tensor, ...]:
        """The line's points ``x' + alpha (x - x')`` of rows (example, alpha), one tensor per input."""
        return tuple(
            torch.lerp(
                b.index_select(0, row_examples),
                x.index_select(0, row_examples),
                row_alphas.to(device=x.device, dtype=x.dtype).reshape((-1,) + (1,) * (x.dim() - 1)),
            )
            for x, b in zip(call.inputs, call.baselines)
        )


def _fold_run(
    totals: Tuple[Tensor, ...],
    pending: Optional[Tuple[Tensor, ...]],
    run: slice,
    grads: Tuple[Tensor, ...],
    change: Optional[Tensor],
) -> None:
    """Add one run's segments (``change``: their output changes, ``None`` for the trapezoid's first point).

    Without ``pending`` each gradient carries its own segment (left / right rule); with it, the segment is
    shared half and half with the previous point's direction, which ``pending`` then replaces.
    """
    if pending is None:
        idgi_accumulate_(tuple(t[run] for t in totals), grads, change)
        return
    direction = idgi_direction(grads)
    if change is not None:
        half = 0.5 * change
        for total, previous, current in zip(totals, pending, direction):
            weight = half.to(current.dtype).reshape((-1,) + (1,) * (current.dim() - 1))
            total[run].add_(((previous[run] + current) * weight).to(total.dtype))
    for previous, current in zip(pending, direction):
        previous[run] = current
