"""Geometrically Guided Integrated Gradients (Rahman, Lewis & Plis, 2022)."""

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, List, Literal, Optional, Tuple, Union, overload

import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput
from captum_paths.attr._utils.captum_compat import TargetType, TensorOrTuple, log_usage
from captum_paths.attr._utils.quadrature import trapezoid_weights as trapezoid_rule
from captum_paths.attr._utils.validation import check_bool, check_positive_float, check_positive_int
from captum_paths.baselines import BaselinesType

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


@dataclass
class GGIGOptions:
    """GGIG's knobs (validated on construction); see :meth:`GeometricallyGuidedIG.attribute`."""

    n_steps: int = 50
    n_iterations: int = 100
    learning_rate: float = 1e-4
    reduction: str = "max"
    tolerance: Optional[float] = None

    def __post_init__(self) -> None:
        self.n_steps = check_positive_int(self.n_steps, "n_steps")
        self.n_iterations = check_positive_int(self.n_iterations, "n_iterations")
        self.learning_rate = check_positive_float(self.learning_rate, "learning_rate")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {self.reduction!r}")
        self.tolerance = _check_tolerance(self.tolerance)


class GeometricallyGuidedIG(PathAttribution):
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
        self._multiply_by_inputs = check_bool(multiply_by_inputs, "multiply_by_inputs")
        super().__init__(forward_func)

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: BaselinesType = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        n_steps: int = 50,
        n_iterations: int = 100,
        learning_rate: float = 1e-4,
        reduction: str = "max",
        tolerance: Optional[float] = None,
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
        n_iterations: int = 100,
        learning_rate: float = 1e-4,
        reduction: str = "max",
        tolerance: Optional[float] = None,
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
        n_iterations: int = 100,
        learning_rate: float = 1e-4,
        reduction: str = "max",
        tolerance: Optional[float] = None,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Tensor]]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input(s) to explain, each of shape ``(N, ...)``
                    with the examples along dimension 0 (aligned across the tuple). Floating point.
            baselines (optional): Start of the straight line, for every input tensor: ``None``
                    (zeros, as the paper), a number, a tensor of the input's shape, of shape
                    ``(1, ...)`` or of the per-example shape, a name (``"zeros"``, ``"mean"``,
                    ``"uniform"``, ``"gaussian"``, ``"blur"``), a
                    :class:`~captum_paths.baselines.Baseline` object or a callable of
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
                    pass; points of different examples share a pass. Memory is proportional to it and
                    independent of ``m``. ``None``: automatic, at most 2**22 input elements per pass (see
                    :func:`~captum_paths.attr.default_internal_batch_size`). Default: None.
            return_convergence_delta (bool, optional): Also return, per example,
                    ``sum(attributions) - (f_t(x) - f_t(x'))``. GGIG does not promise completeness:
                    this is a diagnostic of how far it is from it (with ``m = 1``,
                    ``reduction="trapezoid"``, ``multiply_by_inputs=True`` it is the delta of
                    trapezoid-rule IG). The two
                    scores come from the first pass at the end points, at no extra cost.
                    Default: False.
            show_progress (bool or None, optional): a tqdm bar counting model passes (images through the
                model): ``True`` shows it, ``False`` never; ``None`` (default) shows it once the call has run
                for 5 seconds, so that long calls report their progress and short ones stay silent.
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
        options = GGIGOptions(n_steps, n_iterations, learning_rate, reduction, tolerance)
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

    @property
    def multiplies_by_inputs(self) -> bool:
        return self._multiply_by_inputs

    def _expected_passes(self, call: PathCall, options: GGIGOptions) -> int:
        return call.n_examples * (options.n_steps + 1) * options.n_iterations

    def _path(self, call: PathCall, options: GGIGOptions) -> PathOutput:
        """Run the ascent from every point, chunk by chunk; fold each chunk into the per-example result.

        Row ``r`` of the virtual ``N * (n + 1)`` batch is example ``r % N`` at point ``r // N`` (Captum's
        repeat order). The target scores at the baseline and at the input come from the first pass at the
        end points, at no extra cost.
        """
        inputs, baselines = call.inputs, call.baselines
        n_examples, n_steps = call.n_examples, options.n_steps
        device = inputs[0].device
        if options.reduction == "max":
            result = tuple(torch.full_like(x, -math.inf) for x in inputs)
        else:
            result = tuple(torch.zeros_like(x) for x in inputs)
            weights = trapezoid_weights(n_steps).tolist()  # python floats: no device sync in the loop
        alphas = tuple(interpolation_alphas(n_steps, dtype=x.dtype, device=x.device) for x in inputs)
        start_scores = torch.full((n_examples,), math.nan, dtype=inputs[0].dtype, device=device)
        end_scores = torch.full_like(start_scores, math.nan)
        for rows in call.row_chunks(n_examples * (n_steps + 1)):
            row_index = torch.arange(rows.start, rows.stop, device=device)
            example_index, point_index = row_index % n_examples, row_index // n_examples
            points = tuple(
                torch.lerp(
                    b.index_select(0, example_index),
                    x.index_select(0, example_index),
                    a.index_select(0, point_index).reshape((-1,) + (1,) * (x.dim() - 1)),
                )
                for x, b, a in zip(inputs, baselines, alphas)
            )
            row_max, first_scores = self._ascend_chunk(call, points, example_index, options)
            at_start, at_end = point_index == 0, point_index == n_steps
            start_scores[example_index[at_start]] = first_scores[at_start].to(start_scores.dtype)
            end_scores[example_index[at_end]] = first_scores[at_end].to(end_scores.dtype)
            # fold the chunk in, one run of consecutive rows per point (a contiguous example range)
            for point, chunk_rows, examples in point_runs(rows, n_examples):
                for acc, rmax in zip(result, row_max):
                    view = acc[examples]
                    if options.reduction == "max":
                        torch.maximum(view, rmax[chunk_rows], out=view)
                    else:
                        view.add_(rmax[chunk_rows], alpha=weights[point])
        if self._multiply_by_inputs:
            result = tuple(a * (x - b) for a, x, b in zip(result, inputs, baselines))
        return PathOutput(result, end_scores - start_scores)

    def _ascend_chunk(
        self, call: PathCall, points: Tuple[Tensor, ...], example_index: Tensor, options: GGIGOptions
    ) -> Tuple[Tuple[Tensor, ...], Tensor]:
        """``m`` ascent steps of a chunk of points (updated in place); running max of their gradients.

        Returns the per-row maximum over the iterations (one tensor per input, the points' shapes) and the
        target scores of the first pass, shape ``(rows,)``. Rows whose gradient norm fell to ``tolerance``
        stop climbing: the later passes run on the active rows only.
        """
        n_rows, m = points[0].shape[0], options.n_iterations
        active: Optional[Tensor] = None  # None: every row of the chunk still climbs
        row_max, first_scores = call.gradients(points, example_index)
        for p, g in zip(points, row_max):
            p.add_(g, alpha=options.learning_rate)
        grads = row_max
        for iteration in range(1, m + 1):
            if options.tolerance is not None and iteration < m:
                norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in grads))
                still = norms > options.tolerance
                if not bool(still.all()):
                    call.bar.update(int(still.numel() - still.sum()) * (m - iteration))  # the passes they skip
                    active = (torch.arange(n_rows, device=norms.device) if active is None else active)[still]
            if iteration == m or (active is not None and active.numel() == 0):
                break
            if active is None:
                grads, _ = call.gradients(points, example_index)
                for mx, p, g in zip(row_max, points, grads):
                    torch.maximum(mx, g, out=mx)
                    p.add_(g, alpha=options.learning_rate)
            else:
                current = tuple(p.index_select(0, active) for p in points)
                grads, _ = call.gradients(current, example_index.index_select(0, active))
                for mx, p, c, g in zip(row_max, points, current, grads):
                    mx.index_copy_(0, active, torch.maximum(mx.index_select(0, active), g))
                    p.index_copy_(0, active, c.add_(g, alpha=options.learning_rate))
        return row_max, first_scores


def _check_tolerance(tolerance: Any) -> Optional[float]:
    if tolerance is None:
        return None
    if isinstance(tolerance, bool) or not isinstance(tolerance, Real) or not math.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"`tolerance` must be None or a finite number >= 0, got {tolerance!r}")
    return float(tolerance)
