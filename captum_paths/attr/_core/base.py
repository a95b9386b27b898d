"""The one base class of every path attribution in captum_paths: the Captum contract, written once.

A method subclasses :class:`PathAttribution` and implements only its path:

* ``attribute(inputs, baselines=None, target=None, additional_forward_args=None, *, <knobs>, ...)``: a thin
  public method that builds the method's options object (whose ``__post_init__`` validates every knob) and
  returns ``self._attribute(...)``;
* ``_path(call, options) -> PathOutput``: the maths, on formatted, validated, detached tensors, using
  ``call.gradients`` / ``call.scores`` for every model pass;
* ``_expected_passes(call, options) -> int``: the model passes (images through the model) the call will
  cost, for the progress bar and the cost warning.

The base formats and validates inputs, baselines, targets and additional forward arguments, resolves the
baselines, chunks every pass under ``internal_batch_size``, checks each pass for non-finite scores and
gradients, shows progress counted in model passes, seeds, computes the convergence delta and packs the
return value, the same way for every method.
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor

from captum_paths.attr._utils.captum_compat import (
    TensorOrTuple,
    format_additional_forward_args,
    format_inputs,
    format_output,
    gradients_and_scores,
    is_tuple,
    run_forward,
    target_scores,
)
from captum_paths.attr._utils.progress import chunk_slices, progress_bar
from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target
from captum_paths.attr._utils.validation import (
    check_additional_forward_args,
    check_bool,
    check_finite_inputs,
    check_generator,
    check_internal_batch_size,
    check_same_batch,
    check_target,
)
from captum_paths.baselines import BaselineSpec, resolve_baselines

__all__ = [
    "PathAttribution",
    "PathCall",
    "PathOutput",
    "PathResult",
    "LARGE_CALL_PASSES",
    "DEFAULT_PASS_ELEMENTS",
    "default_internal_batch_size",
    "check_finite_pass",
]

#: with ``internal_batch_size=None``, a model pass holds at most this many input elements
DEFAULT_PASS_ELEMENTS = 2**22

#: calls estimated above this many model passes (images through the model) warn once with their estimate
LARGE_CALL_PASSES = 100_000


@dataclass(kw_only=True)
class PathResult:
    """Base of the result objects that ``return_path=True`` returns beside the attributions.

    Attributes:
        convergence_delta: ``(N,)`` the convergence delta when ``return_convergence_delta=True`` was also
            passed (the return value is then still ``(attributions, result)``), else ``None``.
    """

    convergence_delta: Optional[Tensor] = None


@dataclass
class PathOutput:
    """What a method's ``_path`` returns to the base.

    Attributes:
        attributions: one tensor per input, the inputs' shapes.
        expected_total: ``(N,)`` what the attributions of each example should sum to if the method were
            complete (e.g. ``F(x) - F(x')``); ``None`` when the method has no completeness. The convergence
            delta is ``sum(attributions) - expected_total``.
        result: the method's :class:`PathResult` when the call asked for ``return_path``, else ``None``.
    """

    attributions: Tuple[Tensor, ...]
    expected_total: Optional[Tensor] = None
    result: Optional[PathResult] = None


@dataclass
class PathCall:
    """One formatted, validated call: what a method's path receives, and the passes it may run.

    Attributes:
        inputs: the inputs as a tuple of detached tensors, each ``(N, ...)``.
        baselines: the resolved baselines, one detached tensor per input of the input's shape (``None`` for
            a method that resolves its own, see :meth:`PathAttribution._resolve_baselines`).
        target: the validated Captum target (any format) for the ``N`` examples.
        additional_forward_args: the formatted extra arguments (a tuple, or ``None``).
        internal_batch_size: at most this many rows (images) per model pass, never ``None``: the caller's
            ``None`` becomes :func:`default_internal_batch_size` of the inputs.
        generator: the call's random generator (``None``: torch's global one).
        need_delta: whether the caller asked for the convergence delta.
        need_path: whether the caller asked for the result object (``return_path``).
    """

    forward_func: Callable
    gradient_func: Callable
    inputs: Tuple[Tensor, ...]
    baselines: Optional[Tuple[Tensor, ...]]
    target: Any
    additional_forward_args: Optional[Tuple]
    internal_batch_size: Optional[int]
    generator: Optional[torch.Generator]
    need_delta: bool
    need_path: bool
    bar: Any = field(default=None, repr=False)
    #: whether a pass has checked every example's target against the model's output (later passes skip it)
    target_checked: bool = field(default=False, repr=False)
    _rows_cache: Optional[Tuple[Tensor, Tuple[Any, Optional[Tuple]]]] = field(default=None, repr=False)

    @property
    def n_examples(self) -> int:
        return self.inputs[0].shape[0]

    def row_chunks(self, n_rows: int):
        """Slices of at most ``internal_batch_size`` rows covering ``range(n_rows)``."""
        return chunk_slices(n_rows, self.internal_batch_size)

    def rows_of(self, examples: Tensor) -> Tuple[Any, Optional[Tuple]]:
        """The target and additional forward arguments of rows showing ``examples`` (indices into ``N``).

        The last answer is kept for the same ``examples`` tensor (methods pass one index tensor to every
        step's pass; index tensors are never modified in place): one indexing per call, not per pass.
        """
        if self._rows_cache is not None and self._rows_cache[0] is examples:
            return self._rows_cache[1]
        n = self.n_examples
        rows = (
            subset_target(self.target, examples, n),
            subset_additional_forward_args(self.additional_forward_args, examples, n),
        )
        self._rows_cache = (examples, rows)
        return rows

    def gradients(
        self, points: Tuple[Tensor, ...], examples: Tensor, forward: Optional[Callable] = None
    ) -> Tuple[Tuple[Tensor, ...], Tensor]:
        """Gradients of each row's target score w.r.t. its point, and the scores: ``(grads, (R,))``.

        Row ``r`` of ``points`` shows example ``examples[r]`` (its target and arguments). The rows go through
        the model in chunks of at most ``internal_batch_size``; each chunk is checked for non-finite scores
        and gradients. ``forward`` replaces ``forward_func`` (e.g. a softmax of it); the swappable
        ``gradient_func`` of the attribution is used either way.
        """
        forward = self.forward_func if forward is None else forward
        n_rows = examples.shape[0]
        if n_rows <= (self.internal_batch_size or n_rows):
            return self._gradient_pass(points, examples, forward)
        grads = tuple(torch.empty_like(p) for p in points)
        scores = torch.empty(n_rows, dtype=points[0].dtype, device=points[0].device)
        for rows in self.row_chunks(n_rows):
            chunk_grads, scores[rows] = self._gradient_pass(tuple(p[rows] for p in points), examples[rows], forward)
            for g, c in zip(grads, chunk_grads):
                g[rows] = c
        return grads, scores

    def _gradient_pass(self, points, examples, forward) -> Tuple[Tuple[Tensor, ...], Tensor]:
        target, args = self.rows_of(examples)
        with torch.enable_grad():
            leaves = tuple(p.detach().requires_grad_() for p in points)
            grads, scores = gradients_and_scores(
                self.gradient_func, forward, leaves, target, args, self.target_checked, self.target
            )
        self.target_checked = True
        check_finite_pass(scores, grads, examples)
        self.bar.update(int(examples.shape[0]))
        return grads, scores.detach()

    def scores(
        self,
        points: Tuple[Tensor, ...],
        examples: Tensor,
        forward: Optional[Callable] = None,
        top: bool = False,
        on_output: Optional[Callable[[slice, Tensor], None]] = None,
    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """Target scores of rows without gradients, ``(R,)``; with ``top``, also whether the target is the
        row's largest output (ties count as top), ``(R,)`` bool. Chunked like :meth:`gradients`;
        ``on_output(rows, output)`` is handed each chunk's whole model output."""
        forward = self.forward_func if forward is None else forward
        n_rows = examples.shape[0]
        scores = torch.empty(n_rows, dtype=points[0].dtype, device=points[0].device)
        is_top = torch.empty(n_rows, dtype=torch.bool, device=points[0].device)
        with torch.no_grad():
            for rows in self.row_chunks(n_rows):
                target, args = self.rows_of(examples[rows])
                output = run_forward(forward, tuple(p[rows] for p in points), None, args)
                selected = target_scores(output, target, int(examples[rows].shape[0]), self.target_checked, self.target)
                self.target_checked = True
                check_finite_pass(selected, (), examples[rows])
                scores[rows] = selected
                if top:
                    is_top[rows] = selected >= output.reshape(selected.shape[0], -1).max(dim=1).values
                if on_output is not None:
                    on_output(rows, output)
                self.bar.update(int(examples[rows].shape[0]))
        return (scores, is_top) if top else scores


def default_internal_batch_size(inputs: Tuple[Tensor, ...]) -> int:
    """Rows per model pass when the caller passes ``internal_batch_size=None``: as many as fit in
    :data:`DEFAULT_PASS_ELEMENTS` (4,194,304) input elements, at least one.

    That is 5,349 rows of 28x28 digits (no limit in practice for small images, where large passes are the
    fastest), 341 of 3x64x64 and 27 of 3x224x224 (a ResNet-50's forward+backward over 27 such images needs a
    few GB). Chunking never changes a result, only memory and speed.
    """
    elements = sum(math.prod(x.shape[1:]) for x in inputs)
    return max(1, DEFAULT_PASS_ELEMENTS // max(1, elements))


def check_finite_pass(scores: Tensor, grads: Tuple[Tensor, ...], examples: Tensor) -> None:
    """Stop the call when a model pass gives non-finite scores or gradients (one rule for every method).

    The common case costs one sum per tensor and one sync: a nan or inf anywhere makes the total non-finite
    (so does a finite overflow, which the per-row check below then clears).
    """
    total = scores.detach().sum()
    for g in grads:
        total = total + g.sum()
    if math.isfinite(float(total)):
        return
    bad = ~torch.isfinite(scores.detach().reshape(scores.shape[0], -1)).all(dim=1)
    for g in grads:
        bad |= ~torch.isfinite(g.reshape(g.shape[0], -1)).all(dim=1)
    if bool(bad.any()):
        first = sorted(set(examples[bad].tolist()))[:5]
        what = "score or gradient" if grads else "score"
        raise FloatingPointError(
            f"the model's target {what} is not finite (nan or inf) for example(s) {first}: the attribution "
            "would be meaningless. Check the model on these inputs (or lower the method's learning rate if "
            "an ascent diverged)"
        )


class PathAttribution(GradientAttribution):
    """Base class of every path attribution in captum_paths (a :class:`captum.attr.GradientAttribution`).

    Subclasses set ``_default_baselines`` (the specification used when ``baselines`` is ``None``) and
    ``_completeness`` (whether ``return_convergence_delta`` is meaningful), and implement ``_path`` and
    ``_expected_passes``; see the module docstring. ``self.gradient_func`` (Captum's ``compute_gradients``
    by default) may be swapped like any Captum attribution's: every gradient pass goes through it.
    """

    _default_baselines: ClassVar[BaselineSpec] = "zeros"
    _completeness: ClassVar[bool] = True
    _has_path_result: ClassVar[bool] = False
    #: set by a method whose path has no baseline, saying why: ``baselines`` must then be None
    _no_baselines: ClassVar[Optional[str]] = None

    def __init__(self, forward_func: Callable) -> None:
        if not callable(forward_func):
            raise TypeError(f"`forward_func` must be callable (a model or function), got {type(forward_func).__name__}")
        GradientAttribution.__init__(self, forward_func)

    def has_convergence_delta(self) -> bool:
        return self._completeness

    # ------------------------------------------------------------------------------------------ hooks
    def _path(self, call: PathCall, options: Any) -> PathOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def _expected_passes(self, call: PathCall, options: Any) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _resolve_baselines(
        self, baselines: Any, inputs: Tuple[Tensor, ...], generator: Optional[torch.Generator]
    ) -> Optional[Tuple[Tensor, ...]]:
        """Baselines of the inputs' shapes from any specification (override for other kinds of baselines)."""
        if self._no_baselines is not None:
            if baselines is not None:
                raise ValueError(
                    f"{type(self).__name__} takes no `baselines` (it has no baseline: {self._no_baselines}); "
                    "pass baselines=None "
                    f"(got {type(baselines).__name__})"
                )
            return None
        resolved = resolve_baselines(baselines, inputs, self._default_baselines, "baselines", generator)
        return tuple(b.detach() for b in resolved)

    def _empty_output(self, call: PathCall, options: Any) -> PathOutput:
        """The result for an empty batch (``N = 0``): no model pass at all."""
        return PathOutput(tuple(torch.zeros_like(x) for x in call.inputs), call.inputs[0].new_zeros(0))

    # ---------------------------------------------------------------------------------- the contract
    def _attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Any,
        target: Any,
        additional_forward_args: Any,
        options: Any,
        *,
        internal_batch_size: Optional[int],
        return_convergence_delta: bool,
        generator: Union[None, int, torch.Generator],
        show_progress: Optional[bool],
        return_path: bool = False,
    ):
        """Format, validate, run the method's path with progress, then pack the return value."""
        call = self._prepare_call(
            inputs, baselines, target, additional_forward_args, internal_batch_size, generator,
            return_convergence_delta, return_path, show_progress,
        )  # fmt: skip
        if call.n_examples == 0:
            output = self._empty_output(call, options)
        else:
            passes = int(self._expected_passes(call, options))
            self._warn_if_large(passes)
            name = type(self).__name__
            with progress_bar(show_progress, total=passes, desc=name, unit="pass") as call.bar:
                output = self._path(call, options)
        return self._pack(is_tuple(inputs), call, output)

    def _prepare_call(
        self, inputs, baselines, target, additional_forward_args, internal_batch_size, generator,
        return_convergence_delta, return_path, show_progress,
    ) -> PathCall:  # fmt: skip
        """Every check of the contract, before any model pass; returns the formatted call."""
        need_delta = check_bool(return_convergence_delta, "return_convergence_delta")
        need_path = check_bool(return_path, "return_path")
        if show_progress is not None:
            check_bool(show_progress, "show_progress")
        if need_delta and not self._completeness:
            raise ValueError(
                f"{type(self).__name__} has no completeness property: `return_convergence_delta` must be False"
            )
        if need_path and not self._has_path_result:
            raise ValueError(f"{type(self).__name__} has no path result: `return_path` must be False")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__}.attribute takes gradients and cannot run under torch.inference_mode(); "
                "call it outside that context (torch.no_grad() is fine: gradients are enabled inside)"
            )
        formatted = format_inputs(inputs, "inputs")
        n = check_same_batch(formatted, "inputs")
        check_finite_inputs(formatted, "inputs")
        check_target(target, n)
        args = format_additional_forward_args(additional_forward_args)
        check_additional_forward_args(args, n)
        ibs = check_internal_batch_size(internal_batch_size)
        ibs = default_internal_batch_size(formatted) if ibs is None else ibs
        gen = check_generator(generator)
        detached = tuple(x.detach() for x in formatted)
        resolved = self._resolve_baselines(baselines, detached, gen)
        return PathCall(
            self.forward_func, self.gradient_func, detached, resolved, target, args, ibs, gen, need_delta, need_path
        )

    @staticmethod
    def _warn_if_large(passes: int) -> None:
        if passes > LARGE_CALL_PASSES:
            warnings.warn(
                f"this call is estimated at {passes:,} model passes; pass show_progress=True to follow it, "
                "or see the method's docstring for cheaper settings",
                RuntimeWarning,
                stacklevel=4,
            )

    def _pack(self, inputs_were_tuple: bool, call: PathCall, output: PathOutput):
        """attributions; (attributions, delta); (attributions, result) with the delta on the result."""
        attributions = tuple(a.to(x.dtype) for a, x in zip(output.attributions, call.inputs))
        formatted = format_output(inputs_were_tuple, attributions)
        delta = None
        if call.need_delta:
            n = call.n_examples
            total = sum(a.reshape(n, -1).sum(dim=1) for a in attributions)
            delta = total - output.expected_total.to(device=total.device, dtype=total.dtype)
        if call.need_path:
            result = output.result
            if result is not None:
                result.convergence_delta = delta
            return formatted, result
        return (formatted, delta) if call.need_delta else formatted
