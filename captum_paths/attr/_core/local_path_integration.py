"""Local Path Integration (Yang, Akhtar, Wen, Mian: "Local Path Integration for Attribution", AAAI 2023)."""

from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, List, Literal, Optional, Tuple, Union, overload

import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput, check_finite_pass
from captum_paths.attr._core.reference_bank import ReferenceBank
from captum_paths.attr._utils.captum_compat import TensorOrTuple, log_usage, run_forward, target_scores
from captum_paths.attr._utils.validation import check_positive_int

__all__ = ["LocalPathIntegration"]


# ---------------------------------------------------------------------------------------- pure maths
def draw_references_and_alphas(
    neighborhoods: Tensor,
    probabilities: Tensor,
    reference_rows: Tensor,
    n_samples: int,
    n_alphas: int,
    alpha_range: Tuple[float, float],
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """Monte Carlo draws of LPI for each example (on the generator's device; returned on the CPU).

    Args:
        neighborhoods: ``(N,)`` long, each example's neighbourhood.
        probabilities: ``(G, M)`` float64, densities of each neighbourhood's references (0 = padding).
        reference_rows: ``(G, M)`` long, the global reference ids of those densities.
        n_samples: references drawn per example, independently with replacement by density.
        n_alphas: alphas drawn per reference, uniformly in ``alpha_range``.

    Returns ``(reference_ids, alphas)``, both ``(N, n_samples * n_alphas)``: draw ``d`` of example ``i``
    interpolates from reference ``reference_ids[i, d]`` with coefficient ``alphas[i, d]`` (float64);
    the ``n_alphas`` draws of one reference are adjacent. The generator is consumed example by
    example (references, then alphas), so explaining examples one at a time with one generator gives
    the same draws as explaining them as a batch.
    """
    lo, hi = alpha_range
    n = neighborhoods.shape[0]
    # draw where the generator lives (a CUDA generator draws on its GPU), return on the CPU
    device = generator.device if generator is not None else torch.device("cpu")
    probabilities, reference_rows = probabilities.to(device), reference_rows.to(device)
    ids = torch.empty(n, n_samples, dtype=torch.long, device=device)
    alphas = torch.empty(n, n_samples * n_alphas, dtype=torch.float64, device=device)
    for i, g in enumerate(neighborhoods.tolist()):
        local = torch.multinomial(probabilities[g], n_samples, replacement=True, generator=generator)
        ids[i] = reference_rows[g, local]
        alphas[i] = torch.rand(n_samples * n_alphas, dtype=torch.float64, device=device, generator=generator)
    alphas = lo + (hi - lo) * alphas
    return ids.repeat_interleave(n_alphas, dim=1).cpu(), alphas.cpu()


def interpolate(starts: Tensor, inputs: Tensor, alphas: Tensor) -> Tuple[Tensor, Tensor]:
    """Points ``x' + alpha (x - x')`` on the straight paths, and the spans ``x - x'``.

    ``starts`` ``(S, C, ...)`` are references, ``inputs`` ``(C, ...)`` broadcast along the first
    dimension (never repeated), ``alphas`` ``(S, C)``. Returns ``points`` ``(S * C, ...)`` (row
    ``j * C + i`` is draw ``j`` of example ``i``: Captum's repeat-whole-batch order) and ``spans``
    ``(S, C, ...)``.
    """
    spans = inputs.unsqueeze(0) - starts
    a = alphas.to(device=spans.device, dtype=spans.dtype).reshape(tuple(alphas.shape) + (1,) * (spans.dim() - 2))
    points = torch.addcmul(starts, a, spans).reshape((-1,) + tuple(spans.shape[2:]))
    return points, spans


@dataclass
class LPIOptions:
    """LPI's knobs (validated on construction); see :meth:`LocalPathIntegration.attribute`."""

    n_samples: int = 20
    n_alphas: int = 1
    alpha_range: Tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        self.n_samples = check_positive_int(self.n_samples, "n_samples")
        self.n_alphas = check_positive_int(self.n_alphas, "n_alphas")
        self.alpha_range = _check_alpha_range(self.alpha_range)


@dataclass
class _Draws:
    """The Monte Carlo draws of one call: ``(N, S * A)`` reference ids and alphas, and the references."""

    references: Tuple[Tensor, ...]
    ref_ids: Tensor
    alphas: Tensor
    input_scores: Optional[Tensor]


class LocalPathIntegration(PathAttribution):
    r"""Local Path Integration (LPI): expected gradients over references from the input's neighbourhood.

    Yang, Akhtar, Wen, Mian, "Local Path Integration for Attribution", AAAI 2023. A fitted
    :class:`ReferenceBank` summarises the distribution the model learned: neighbourhoods (K-means
    centres ``c_g`` of training logits) and, in each, references ``r_{g,m}`` with densities
    ``p_{g,m}``. For an input ``x`` with logits ``f(x)``, the neighbourhood is
    ``g(x) = argmin_g ||f(x) - c_g||`` and the attribution of feature ``i`` is

    .. math::
        \phi_i(x) = \mathbb{E}_{x' \sim p_{g(x)},\ \alpha \sim U(a, b)}
            \left[(x_i - x'_i)\ \frac{\partial f_t}{\partial x_i}(x' + \alpha (x - x'))\right],

    estimated by Monte Carlo: ``n_samples`` references drawn by density (with replacement) and
    ``n_alphas`` alphas per reference, i.e. ``n_samples * n_alphas`` gradient evaluations per input.
    With the paper's ``(a, b) = (0, 1)``, completeness holds in expectation:
    ``E[sum_i phi_i(x)] = f_t(x) - E_{x'}[f_t(x')]``; the convergence delta is measured against the
    output difference averaged over the references actually drawn.

    Paper knobs and defaults: ``n_samples=20`` references per input and ``n_alphas=1`` alpha per
    reference (the paper's 20 back-propagations per input); the authors' README runs 5 alphas per
    reference. ``alpha_range=(0, 1)`` as in the paper; the authors' code draws alphas from
    ``U(0.01, 0.99)``: pass ``alpha_range=(0.01, 0.99)`` to match it (completeness in expectation then
    no longer holds exactly).

    Deviations from the authors' code: it integrates over *every* reference of the neighbourhood,
    weights each by its density and then averages over references, which scales the attribution by
    ``1 / n_references``; we draw references by density (the paper's expectation, and the issue's
    Monte Carlo estimate), which is unbiased and keeps completeness in expectation. The gradient is that
    of the target output of ``forward_func`` (Captum convention); the authors differentiate
    ``-nll_loss`` of the raw model output, i.e. the target logit, which is what a ``forward_func``
    returning logits gives.

    Args:
        forward_func (callable): the model, or any function returning its outputs ``(N, ...)``. Its
            outputs also place each input in a neighbourhood, so they must be the logits the bank was
            fitted on (same number of values per example).
        reference_bank (ReferenceBank): a fitted (or loaded) bank for this model and input shapes.
    """

    def __init__(self, forward_func: Callable, reference_bank: Optional[ReferenceBank] = None) -> None:
        if reference_bank is not None and not isinstance(reference_bank, ReferenceBank):
            raise TypeError(
                f"`reference_bank` must be a captum_paths.ReferenceBank or None, got {type(reference_bank).__name__}"
            )
        super().__init__(forward_func)
        self.reference_bank = reference_bank

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        target: Any = None,
        additional_forward_args: Any = None,
        *,
        n_samples: int = 20,
        n_alphas: int = 1,
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[False] = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: bool = False,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        target: Any = None,
        additional_forward_args: Any = None,
        *,
        n_samples: int = 20,
        n_alphas: int = 1,
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[True],
        generator: Union[None, int, torch.Generator] = None,
        show_progress: bool = False,
    ) -> Tuple[TensorOrTuple, Tensor]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        target: Any = None,
        additional_forward_args: Any = None,
        *,
        n_samples: int = 20,
        n_alphas: int = 1,
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: bool = False,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Tensor]]:
        r"""Monte Carlo LPI attributions, in the shape of ``inputs``.

        Args:
            inputs (Tensor or tuple of Tensor): ``(N, ...)`` inputs to explain; a tuple when the model
                (and the bank) take several inputs. Per-example shapes must equal the bank's.
            baselines (Tensor or tuple of Tensor, optional): ``None`` (default): references drawn from the
                ``reference_bank`` in the input's neighbourhood (LPI). A tensor ``(R, ...)`` (or a tuple, one
                per input; a single per-example-shaped tensor is one reference): ``R`` references shared by
                every example, drawn uniformly instead of from the bank (expected gradients over them, as
                Captum's ``GradientShap`` treats its baselines).
            target (int, tuple, Tensor or list, optional): the output to explain, any Captum format
                (``None`` for models with one output per example; an int; a tuple index; a tensor or
                list with one entry per example).
            additional_forward_args (Any, optional): extra arguments of ``forward_func`` after the
                inputs; tensors are repeated along the batch for every draw.
            n_samples (int): references drawn per input, by density. Default 20 (paper).
            n_alphas (int): alphas drawn per reference. Default 1 (paper; authors' README 5).
            alpha_range (tuple of two floats): ``(a, b)``, ``0 <= a <= b <= 1``: alphas are uniform in it.
                Default ``(0.0, 1.0)`` (paper); ``(0.01, 0.99)`` in the authors' code.
            internal_batch_size (int, optional): at most this many interpolated points per forward and
                backward pass (bounds memory). Default None: all ``N * n_samples * n_alphas`` at once.
            return_convergence_delta (bool): also return ``delta`` ``(N,)``: the attributions' sum minus
                ``f_t(x) - mean_j f_t(x'_j)`` over the references drawn (``N * n_samples`` extra
                forward passes without gradients). Zero in expectation when ``alpha_range=(0, 1)``.
            generator (torch.Generator or int, optional): source of every random draw (a CPU or CUDA
                generator; an int seeds a fresh CPU one). Default None: torch's global CPU generator.
            show_progress (bool): show a progress bar over the gradient passes.

        Returns:
            attributions (Tensor or tuple of Tensor) in the shape of ``inputs``, and ``delta`` ``(N,)`` if
            ``return_convergence_delta``.
        """
        options = LPIOptions(n_samples, n_alphas, alpha_range)
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
        return True

    # ------------------------------------------------------------------------------ the path
    def _resolve_baselines(self, baselines, inputs, generator) -> Optional[Tuple[Tensor, ...]]:
        """``None``: the bank (checked here, before any pass); else ``(R, ...)`` references per input."""
        if baselines is None:
            if self.reference_bank is None:
                raise ValueError(
                    "`baselines` is None and this LocalPathIntegration has no `reference_bank`: pass a fitted "
                    "ReferenceBank to the constructor, or reference tensors as `baselines`"
                )
            self.reference_bank.check_fitted()
            _check_shapes(inputs, self.reference_bank.input_shapes_, "the reference bank was fitted on")
            return None
        refs = baselines if isinstance(baselines, tuple) else (baselines,)
        if len(refs) != len(inputs) or not all(isinstance(r, Tensor) for r in refs):
            raise TypeError(
                f"`baselines` must be None, a tensor or a tuple of {len(inputs)} tensor(s) (references), "
                f"got {type(baselines).__name__}"
            )
        refs = tuple(r.unsqueeze(0) if r.dim() == x.dim() - 1 else r for r, x in zip(refs, inputs))
        _check_shapes(inputs, [tuple(r.shape[1:]) for r in refs], "`baselines` (references) have")
        if len({r.shape[0] for r in refs}) != 1 or refs[0].shape[0] == 0:
            raise ValueError(f"`baselines` must hold the same number (>= 1) of references per input, got {refs}")
        if not all(bool(torch.isfinite(r).all()) for r in refs):
            raise ValueError("`baselines` contains non-finite values")
        return tuple(r.detach().to(device=x.device, dtype=x.dtype) for r, x in zip(refs, inputs))

    def _expected_passes(self, call: PathCall, options: LPIOptions) -> int:
        draws = call.n_examples * options.n_samples * options.n_alphas
        bank_forward = call.n_examples if call.baselines is None else 0  # places the inputs in neighbourhoods
        return draws + bank_forward + call.n_examples * options.n_samples * int(call.need_delta)

    def _path(self, call: PathCall, options: LPIOptions) -> PathOutput:
        draws = self._draw(call, options)
        totals = self._integrate(call, draws)
        n_draws = options.n_samples * options.n_alphas
        attributions = tuple(t / n_draws for t in totals)
        if not call.need_delta:
            return PathOutput(attributions)
        drawn = draws.ref_ids[:, :: options.n_alphas]  # (N, n_samples): one entry per reference drawn
        reference_scores = self._reference_scores(call, draws.references, drawn)
        input_scores = draws.input_scores
        if input_scores is None:
            input_scores = call.scores(call.inputs, torch.arange(call.n_examples, device=call.inputs[0].device))
        return PathOutput(attributions, input_scores.to(torch.float64) - reference_scores.mean(1))

    def _draw(self, call: PathCall, options: LPIOptions) -> _Draws:
        """References and alphas per example: from the bank's neighbourhood of the input's logits, or uniformly
        from the given references."""
        inputs, input_scores = call.inputs, None
        if call.baselines is None:
            bank = self.reference_bank
            with torch.no_grad():
                # the input's own forward pass: places it in a neighbourhood and validates `target`
                output = run_forward(call.forward_func, inputs, None, call.additional_forward_args)
                input_scores = target_scores(output, call.target, call.n_examples)
                all_examples = torch.arange(call.n_examples, device=inputs[0].device)
                check_finite_pass(input_scores, (), all_examples)
                neighborhoods = bank.neighborhoods(output.detach()).cpu()
            call.bar.update(call.n_examples)
            probabilities, reference_rows = bank.reference_probabilities()
            references = tuple(r.to(device=x.device, dtype=x.dtype) for r, x in zip(bank.references_, inputs))
        else:
            references = call.baselines
            n_refs = references[0].shape[0]
            neighborhoods = torch.zeros(call.n_examples, dtype=torch.long)
            probabilities = torch.full((1, n_refs), 1.0 / n_refs, dtype=torch.float64)
            reference_rows = torch.arange(n_refs).reshape(1, n_refs)
        ref_ids, alphas = draw_references_and_alphas(
            neighborhoods,
            probabilities,
            reference_rows,
            options.n_samples,
            options.n_alphas,
            options.alpha_range,
            call.generator,
        )
        return _Draws(references, ref_ids, alphas, input_scores)

    @staticmethod
    def _chunks(n: int, draws: int, internal_batch_size: Optional[int]) -> List[Tuple[slice, slice]]:
        """(examples, draws) blocks of at most ``internal_batch_size`` rows, whole examples first."""
        if internal_batch_size is None:
            return [(slice(0, n), slice(0, draws))]
        per_chunk = min(n, internal_batch_size)
        steps = max(1, internal_batch_size // per_chunk)
        return [
            (slice(e, min(e + per_chunk, n)), slice(d, min(d + steps, draws)))
            for e in range(0, n, per_chunk)
            for d in range(0, draws, steps)
        ]

    def _integrate(self, call: PathCall, draws: _Draws) -> Tuple[Tensor, ...]:
        """Running sums over draws of ``(x - x') * grad f_t(x' + alpha (x - x'))``, per input tensor."""
        inputs, references = call.inputs, draws.references
        n, n_draws = draws.ref_ids.shape
        totals = tuple(torch.zeros_like(x) for x in inputs)
        device = inputs[0].device
        for examples, block in self._chunks(n, n_draws, call.internal_batch_size):
            count, steps = examples.stop - examples.start, block.stop - block.start
            # rows in repeat-whole-batch order: row j * count + i is draw j of example i
            ids = draws.ref_ids[examples, block].t().reshape(-1).to(device)
            a = draws.alphas[examples, block].t()
            starts = tuple(r[ids].reshape((steps, count) + tuple(x.shape[1:])) for r, x in zip(references, inputs))
            paths = [interpolate(s, x[examples], a) for s, x in zip(starts, inputs)]
            row_examples = torch.arange(examples.start, examples.stop, device=device).repeat(steps)
            grads, _ = call.gradients(tuple(p for p, _ in paths), row_examples)
            for total, g, (_, d) in zip(totals, grads, paths):
                total[examples] += d.mul_(g.reshape(d.shape)).sum(0)  # spans are not needed again
        return totals

    def _reference_scores(self, call: PathCall, references: Tuple[Tensor, ...], drawn: Tensor) -> Tensor:
        """Target scores of the drawn references, with each example's target and arguments: ``(N, S)``."""
        n, s = drawn.shape
        device = call.inputs[0].device
        scores = torch.empty(n, s, dtype=torch.float64, device=device)
        for examples, block in self._chunks(n, s, call.internal_batch_size):
            count, steps = examples.stop - examples.start, block.stop - block.start
            ids = drawn[examples, block].t().reshape(-1).to(device)
            row_examples = torch.arange(examples.start, examples.stop, device=device).repeat(steps)
            out = call.scores(tuple(r[ids] for r in references), row_examples)
            scores[examples, block] = out.reshape(steps, count).t().to(torch.float64)
        return scores


def _check_shapes(inputs: Tuple[Tensor, ...], shapes, what: str) -> None:
    if len(inputs) != len(shapes):
        raise ValueError(f"`inputs` has {len(inputs)} tensor(s) but {what} {len(shapes)} input(s) per reference")
    for i, (x, shape) in enumerate(zip(inputs, shapes)):
        if tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(
                f"`inputs`[{i}] has per-example shape {tuple(x.shape[1:])} but {what} inputs of shape {tuple(shape)}"
            )


def _check_alpha_range(alpha_range: Any) -> Tuple[float, float]:
    if (
        not isinstance(alpha_range, (tuple, list))
        or len(alpha_range) != 2
        or not all(isinstance(a, Real) and not isinstance(a, bool) for a in alpha_range)
        or not 0.0 <= alpha_range[0] <= alpha_range[1] <= 1.0
    ):
        raise ValueError(f"`alpha_range` must be a pair (a, b) with 0 <= a <= b <= 1, got {alpha_range!r}")
    return float(alpha_range[0]), float(alpha_range[1])
