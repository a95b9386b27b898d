"""Local Path Integration (Yang, Akhtar, Wen, Mian: "Local Path Integration for Attribution", AAAI 2023)."""

from numbers import Real
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum.attr import GradientAttribution
from torch import Tensor

from captum_paths.attr._core.reference_bank import ReferenceBank
from captum_paths.attr._utils.captum_compat import (
    expand_additional_forward_args,
    expand_target,
    format_additional_forward_args,
    format_inputs,
    format_output,
    forward_scores,
    gradients_and_scores,
    is_tuple,
    log_usage,
    run_forward,
    target_scores,
)
from captum_paths.attr._utils.progress import progress_bar
from captum_paths.attr._utils.rows import subset_additional_forward_args, subset_target
from captum_paths.attr._utils.validation import (
    check_finite_inputs,
    check_generator,
    check_internal_batch_size,
    check_positive_int,
    check_same_batch,
)

__all__ = ["LocalPathIntegration"]

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


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


class LocalPathIntegration(GradientAttribution):
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

    def __init__(self, forward_func: Callable, reference_bank: ReferenceBank) -> None:
        if not isinstance(reference_bank, ReferenceBank):
            raise TypeError(
                f"`reference_bank` must be a captum_paths.ReferenceBank, got {type(reference_bank).__name__}"
            )
        GradientAttribution.__init__(self, forward_func)
        self.reference_bank = reference_bank

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: Any = None,
        additional_forward_args: Any = None,
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
        is_inputs_tuple = is_tuple(inputs)
        inputs_tpl = format_inputs(inputs, "inputs")
        check_finite_inputs(inputs_tpl, "inputs")
        n = check_same_batch(inputs_tpl, "inputs")
        bank = self.reference_bank
        bank.check_fitted()
        self._check_shapes(inputs_tpl, bank)
        n_samples = check_positive_int(n_samples, "n_samples")
        n_alphas = check_positive_int(n_alphas, "n_alphas")
        alpha_range = self._check_alpha_range(alpha_range)
        internal_batch_size = check_internal_batch_size(internal_batch_size)
        generator = check_generator(generator)
        if not isinstance(return_convergence_delta, bool):
            raise TypeError(f"`return_convergence_delta` must be a bool, got {type(return_convergence_delta).__name__}")
        afa = format_additional_forward_args(additional_forward_args)

        with torch.no_grad():
            # the input's own forward pass: places it in a neighbourhood and validates `target`
            output = run_forward(self.forward_func, inputs_tpl, None, afa)
            input_scores = target_scores(output, target, n)
            neighborhoods = bank.neighborhoods(output.detach()).cpu()

        probabilities, reference_rows = bank.reference_probabilities()
        ref_ids, alphas = draw_references_and_alphas(
            neighborhoods, probabilities, reference_rows, n_samples, n_alphas, alpha_range, generator
        )
        references = tuple(r.to(device=x.device, dtype=x.dtype) for r, x in zip(bank.references_, inputs_tpl))
        totals = self._integrate(
            inputs_tpl, references, ref_ids, alphas, target, afa, internal_batch_size, show_progress
        )
        n_draws = n_samples * n_alphas
        attributions = tuple(t / n_draws for t in totals)
        result = format_output(is_inputs_tuple, attributions)
        if not return_convergence_delta:
            return result
        drawn = ref_ids[:, ::n_alphas]  # (N, n_samples): one entry per reference drawn
        reference_scores = self._reference_scores(inputs_tpl, references, drawn, target, afa, internal_batch_size)
        attribution_sums = sum(a.reshape(n, -1).sum(1) for a in attributions)
        delta = attribution_sums - (input_scores - reference_scores.mean(1)).to(attribution_sums.dtype)
        return result, delta

    # ------------------------------------------------------------------------------ internals
    @staticmethod
    def _check_shapes(inputs: Tuple[Tensor, ...], bank: ReferenceBank) -> None:
        if len(inputs) != len(bank.input_shapes_):
            raise ValueError(
                f"`inputs` has {len(inputs)} tensor(s) but the reference bank holds {len(bank.input_shapes_)} "
                "input(s) per reference"
            )
        for i, (x, shape) in enumerate(zip(inputs, bank.input_shapes_)):
            if tuple(x.shape[1:]) != tuple(shape):
                raise ValueError(
                    f"`inputs`[{i}] has per-example shape {tuple(x.shape[1:])} but the reference bank was "
                    f"fitted on inputs of shape {tuple(shape)}"
                )

    @staticmethod
    def _check_alpha_range(alpha_range: Any) -> Tuple[float, float]:
        if (
            not isinstance(alpha_range, (tuple, list))
            or len(alpha_range) != 2
            or not all(isinstance(a, Real) and not isinstance(a, bool) for a in alpha_range)
            or not 0.0 <= alpha_range[0] <= alpha_range[1] <= 1.0
        ):
            raise ValueError(f"`alpha_range` must be a pair (a, b) with 0 <= a <= b <= 1, got {alpha_range!r}")
        return float(alpha_range[0]), float(alpha_range[1])

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

    def _integrate(
        self,
        inputs: Tuple[Tensor, ...],
        references: Tuple[Tensor, ...],
        ref_ids: Tensor,
        alphas: Tensor,
        target: Any,
        afa: Any,
        internal_batch_size: Optional[int],
        show_progress: bool,
    ) -> Tuple[Tensor, ...]:
        """Running sums over draws of ``(x - x') * grad f_t(x' + alpha (x - x'))``, per input tensor."""
        n, draws = ref_ids.shape
        totals = tuple(torch.zeros_like(x) for x in inputs)
        chunks = self._chunks(n, draws, internal_batch_size)
        device = inputs[0].device
        with progress_bar(show_progress, total=len(chunks), desc="LocalPathIntegration", unit="pass") as bar:
            for examples, block in chunks:
                count = examples.stop - examples.start
                steps = block.stop - block.start
                # rows in repeat-whole-batch order: row j * count + i is draw j of example i
                ids = ref_ids[examples, block].t().reshape(-1).to(device)
                a = alphas[examples, block].t()
                with torch.no_grad():
                    starts = tuple(
                        r[ids].reshape((steps, count) + tuple(x.shape[1:])) for r, x in zip(references, inputs)
                    )
                    paths = [interpolate(s, x[examples], a) for s, x in zip(starts, inputs)]
                    points = tuple(p.requires_grad_() for p, _ in paths)
                    spans = tuple(d for _, d in paths)
                grads, _ = gradients_and_scores(
                    self.gradient_func,
                    self.forward_func,
                    points,
                    expand_target(subset_target(target, examples, n), steps),
                    expand_additional_forward_args(subset_additional_forward_args(afa, examples, n), steps),
                )
                with torch.no_grad():
                    for total, g, d in zip(totals, grads, spans):
                        total[examples] += d.mul_(g.reshape(d.shape)).sum(0)  # spans are not needed again
                bar.update(1)
        return totals

    def _reference_scores(
        self,
        inputs: Tuple[Tensor, ...],
        references: Tuple[Tensor, ...],
        drawn: Tensor,
        target: Any,
        afa: Any,
        internal_batch_size: Optional[int],
    ) -> Tensor:
        """Target scores of the drawn references, with each example's target and arguments: ``(N, S)``."""
        n, s = drawn.shape
        device = inputs[0].device
        scores = torch.empty(n, s, dtype=torch.float64, device=device)
        for examples, block in self._chunks(n, s, internal_batch_size):
            count = examples.stop - examples.start
            steps = block.stop - block.start
            ids = drawn[examples, block].t().reshape(-1).to(device)
            rows = tuple(r[ids] for r in references)
            out = forward_scores(
                self.forward_func,
                rows,
                expand_target(subset_target(target, examples, n), steps),
                expand_additional_forward_args(subset_additional_forward_args(afa, examples, n), steps),
            )
            scores[examples, block] = out.reshape(steps, count).t().to(torch.float64)
        return scores

    def has_convergence_delta(self) -> bool:
        return True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True
