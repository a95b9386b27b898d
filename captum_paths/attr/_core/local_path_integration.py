"""Local Path Integration (Yang, Akhtar, Wen, Mian: "Local Path Integration for Attribution", AAAI 2023)."""

import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, List, Literal, Optional, Tuple, Union, overload

import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput
from captum_paths.attr._core.reference_bank import ReferenceBank
from captum_paths.attr._utils.captum_compat import TargetType, TensorOrTuple, log_usage
from captum_paths.attr._utils.progress import chunk_slices
from captum_paths.attr._utils.validation import check_bool, check_positive_int

__all__ = ["LocalPathIntegration"]

ESTIMATORS = ("stratified", "sampled")

#: rows per forward pass when the bank is checked against the model at construction (no call, no internal_batch_size)
_CHECK_CHUNK = 256


# ---------------------------------------------------------------------------------------- pure maths
@dataclass
class Draws:
    """The Monte Carlo design of one call, per example (all on the CPU).

    Attributes:
        ref_ids: ``(N, D)`` long, the reference of each gradient evaluation (a global row of the references).
        alphas: ``(N, D)`` float64, its interpolation coefficient.
        weights: ``(N, D)`` float64, its weight: the attribution of example ``i`` is
            ``sum_d weights[i, d] (x_i - r) * grad f_t(r + alphas[i, d] (x_i - r))`` with ``r = ref_ids[i, d]``.
        lengths: ``(N,)`` long, evaluations of each example (entries ``d >= lengths[i]`` are padding, never run).
        delta_ids, delta_weights, delta_lengths: ``(N, U)``, ``(N, U)``, ``(N,)``: the references whose scores
            the convergence delta needs and their weights (``f_t(x) - sum_u delta_weights[i, u] f_t(r_u)``).
    """

    ref_ids: Tensor
    alphas: Tensor
    weights: Tensor
    lengths: Tensor
    delta_ids: Tensor
    delta_weights: Tensor
    delta_lengths: Tensor


def draw_references_and_alphas(
    neighborhoods: Tensor,
    probabilities: Tensor,
    reference_rows: Tensor,
    n_samples: int,
    n_alphas: int,
    alpha_range: Tuple[float, float],
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """The draws of the ``"sampled"`` estimator for each example (on the generator's device; returned on the CPU).

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


def paths_per_reference(n_references: int, n_samples: int) -> int:
    """Stratified estimator: ``ceil(n_samples / n_references)`` paths per reference (at least one each)."""
    return -(-n_samples // n_references)


def sampled_draws(neighborhoods, probabilities, reference_rows, options: "LPIOptions", generator) -> Draws:
    """``"sampled"``: ``n_samples`` references by density with replacement, ``n_alphas`` alphas each, weight
    ``1 / (n_samples n_alphas)`` per evaluation; the delta averages the ``n_samples`` references drawn."""
    s, a = options.n_samples, options.n_alphas
    ids, alphas = draw_references_and_alphas(
        neighborhoods, probabilities, reference_rows, s, a, options.alpha_range, generator
    )
    n = ids.shape[0]
    return Draws(
        ids,
        alphas,
        torch.full(ids.shape, 1.0 / (s * a), dtype=torch.float64),
        torch.full((n,), s * a, dtype=torch.long),
        ids[:, ::a],
        torch.full((n, s), 1.0 / s, dtype=torch.float64),
        torch.full((n,), s, dtype=torch.long),
    )


def stratified_draws(neighborhoods, probabilities, reference_rows, options: "LPIOptions", generator) -> Draws:
    """``"stratified"`` (the authors' estimator): every reference ``m`` of the example's neighbourhood, each with
    ``k = ceil(n_samples / R_g) * n_alphas`` uniform alphas, weight ``p_m / k`` per evaluation; the delta
    weighs each reference's score by its density. Only alphas are random: the generator is consumed example by
    example (``R_g k`` alphas each), so one-at-a-time and batched calls draw the same numbers."""
    lo, hi = options.alpha_range
    device = generator.device if generator is not None else torch.device("cpu")
    counts = (probabilities > 0).sum(1)
    hoods = neighborhoods.tolist()
    per_ref = [paths_per_reference(int(counts[g]), options.n_samples) * options.n_alphas for g in range(len(counts))]
    lengths = torch.tensor([int(counts[g]) * per_ref[g] for g in hoods], dtype=torch.long)
    n, width = len(hoods), int(lengths.max()) if hoods else 0
    ids = torch.zeros(n, width, dtype=torch.long)
    weights = torch.zeros(n, width, dtype=torch.float64)
    alphas = torch.zeros(n, width, dtype=torch.float64)
    for i, g in enumerate(hoods):
        c, k = int(counts[g]), per_ref[g]
        ids[i, : c * k] = reference_rows[g, :c].repeat_interleave(k)
        weights[i, : c * k] = (probabilities[g, :c] / k).repeat_interleave(k)
        drawn = torch.rand(c * k, dtype=torch.float64, device=device, generator=generator)
        alphas[i, : c * k] = lo + (hi - lo) * drawn.cpu()
    delta_counts = torch.tensor([int(counts[g]) for g in hoods], dtype=torch.long)
    return Draws(
        ids, alphas, weights, lengths, reference_rows[neighborhoods], probabilities[neighborhoods], delta_counts
    )


def interpolate(starts: Tensor, inputs: Tensor, alphas: Tensor) -> Tuple[Tensor, Tensor]:
    """Points ``x' + alpha (x - x')`` on the straight paths, and the spans ``x - x'``.

    ``starts`` ``(V, ...)`` are references, ``inputs`` ``(V, ...)`` the inputs of the same rows, ``alphas``
    ``(V,)``. Returns ``points`` and ``spans``, both ``(V, ...)``.
    """
    spans = inputs - starts
    a = alphas.to(device=spans.device, dtype=spans.dtype).reshape((-1,) + (1,) * (spans.dim() - 1))
    return torch.addcmul(starts, a, spans), spans


def lpi_passes(n_refs: Tensor, options: "LPIOptions", need_delta: bool) -> int:
    """Gradient (and delta) passes of a call whose examples see ``n_refs`` ``(N,)`` references each.

    ``"sampled"``: ``n_samples n_alphas`` gradient passes per example (+ ``n_samples`` delta forwards).
    ``"stratified"``: ``R ceil(n_samples / R) n_alphas`` gradient passes per example (+ ``R`` delta forwards),
    ``R`` being the references of the example's neighbourhood (or the given baselines).
    """
    s, a = options.n_samples, options.n_alphas
    if options.estimator == "sampled":
        return int(n_refs.numel()) * (s * a + s * int(need_delta))
    total = 0
    for r in n_refs.tolist():
        total += r * paths_per_reference(r, s) * a + r * int(need_delta)
    return total


@dataclass
class LPIOptions:
    """LPI's knobs (validated on construction); see :meth:`LocalPathIntegration.attribute`."""

    n_samples: int = 20
    n_alphas: int = 1
    alpha_range: Tuple[float, float] = (0.0, 1.0)
    estimator: str = "stratified"

    def __post_init__(self) -> None:
        self.n_samples = check_positive_int(self.n_samples, "n_samples")
        self.n_alphas = check_positive_int(self.n_alphas, "n_alphas")
        self.alpha_range = _check_alpha_range(self.alpha_range)
        if not isinstance(self.estimator, str) or self.estimator not in ESTIMATORS:
            raise ValueError(f"`estimator` must be one of {ESTIMATORS}, got {self.estimator!r}")


@dataclass
class _Design:
    """Where one call's references come from: the references, each example's neighbourhood, the padded
    ``(G, M)`` densities and reference rows, and the input scores when the neighbourhood pass computed them."""

    references: Tuple[Tensor, ...]
    neighborhoods: Tensor
    probabilities: Tensor
    reference_rows: Tensor
    input_scores: Optional[Tensor] = None


class LocalPathIntegration(PathAttribution):
    r"""Local Path Integration (LPI): expected gradients over references from the input's neighbourhood.

    Yang, Akhtar, Wen, Mian, "Local Path Integration for Attribution", AAAI 2023. A fitted
    :class:`ReferenceBank` summarises the distribution the model learned: neighbourhoods (K-means
    centres ``c_g`` of training logits) and, in each, ``R_g`` references ``r_{g,m}`` with densities
    ``p_{g,m}`` (``sum_m p_{g,m} = 1``). For an input ``x`` with logits ``f(x)``, the neighbourhood is
    ``g(x) = argmin_g ||f(x) - c_g||`` and the attribution of feature ``i`` is

    .. math::
        \phi_i(x) = \sum_m p_{g,m}\ \mathbb{E}_{\alpha \sim U(a, b)}
            \left[(x_i - r_{g,m,i})\ \frac{\partial f_t}{\partial x_i}(r_{g,m} + \alpha (x - r_{g,m}))\right],

    the expectation over ``x' ~ p_g``. Two estimators (``estimator=``):

    * ``"stratified"`` (default, the authors' estimator): every reference of the neighbourhood, each with
      ``k = ceil(n_samples / R_g) * n_alphas`` uniform alphas, weighted by its density:
      ``phi(x) = sum_m p_{g,m} (1/k) sum_j (x - r_{g,m}) * grad f_t(r_{g,m} + alpha_{m,j} (x - r_{g,m}))``.
      Only the alphas are random, so the references' spread adds no noise. Cost per example:
      ``R_g ceil(n_samples / R_g) n_alphas`` gradient passes (``R_g n_alphas`` when ``n_samples <= R_g``,
      e.g. the paper's 20 references x 1 alpha = 20 passes with ``n_samples=20``).
    * ``"sampled"``: ``n_samples`` references drawn by density with replacement, ``n_alphas`` alphas each,
      averaged: ``n_samples n_alphas`` gradient passes per example. Unbiased too, but noisier at equal
      passes (the references' spread adds Monte Carlo variance); useful when ``R_g`` is large and fewer
      passes than references are wanted.

    So ``n_samples`` is the number of paths per example under both estimators: drawn ones under
    ``"sampled"``; under ``"stratified"`` spread evenly over the references, rounded up to a whole number of
    paths per reference (pick a multiple of ``R_g`` for equal cost). Plus, with a bank, one forward pass per
    example to find its neighbourhood.

    With the paper's ``(a, b) = (0, 1)``, completeness holds in expectation:
    ``E[sum_i phi_i(x)] = f_t(x) - sum_m p_{g,m} f_t(r_{g,m})``; the convergence delta is measured against
    ``f_t(x)`` minus the weighted scores of the references used (every reference of the neighbourhood with
    its density under ``"stratified"``, the drawn ones averaged under ``"sampled"``).

    Paper knobs and defaults: ``n_samples=20`` paths per input and ``n_alphas=1`` alpha per path (the
    paper's 20 back-propagations per input with 20 references); the authors' README runs 5 alphas per
    reference. ``alpha_range=(0, 1)`` as in the paper; the authors' code draws alphas from
    ``U(0.01, 0.99)``: pass ``alpha_range=(0.01, 0.99)`` to match it (completeness in expectation then
    no longer holds exactly).

    Deviations from the authors' code (``ypeiyu/LPI``, ``saliency_methods/LPI.py``):

    * they weight each reference's gradients by its density and then *average* over the references, which
      scales the attribution by ``1 / R_g``; we sum (the paper's expectation), so completeness holds.
    * with ``k > 1`` alphas per reference they pair references and alphas wrongly: the references are tiled
      with ``repeat(1, k, ...)`` (``r_0 .. r_{R-1}, r_0 .. r_{R-1}, ...``) but evaluation ``k_id`` of reference
      ``bg_id`` reads slot ``bg_id * k + k_id``, i.e. reference ``(bg_id * k + k_id) mod R``, while the
      density and the span ``x - r`` are those of ``bg_id``. Gradients from one reference are then multiplied
      by another's span, which breaks completeness. We do not copy that: every evaluation uses the span and
      density of the reference it was taken on.
    * the gradient is that of the target output of ``forward_func`` (Captum convention); the authors
      differentiate ``-nll_loss`` of the raw model output, i.e. the target logit, which is what a
      ``forward_func`` returning logits gives.

    A bank fitted for another model is refused: the bank keeps its fitting model's logits on the references
    (:attr:`ReferenceBank.reference_logits_`), and once per instance and bank this attribution runs
    ``forward_func(*references)`` (without ``additional_forward_args``, as ``ReferenceBank.fit`` ran its model)
    and raises ``ValueError`` when the logits differ. The check runs at construction when the bank is fitted
    and ``forward_func`` is a module with floating-point parameters (their device and dtype are used);
    otherwise at the first ``attribute`` call that uses the bank, on the inputs' device and dtype, counted in
    its progress (``R`` extra forward rows, once). Banks loaded from version-1 files have no logits: a
    warning says the check is skipped.

    Args:
        forward_func (callable): the model, or any function returning its outputs ``(N, ...)``. Its
            outputs also place each input in a neighbourhood, so they must be the logits the bank was
            fitted on (same number of values per example).
        reference_bank (ReferenceBank, optional): a fitted (or loaded) bank for this model and input shapes;
            may be fitted after construction. ``None``: only explicit ``baselines`` can be used.
        check_bank (bool, keyword-only): check that the bank was fitted for ``forward_func`` (see above).
            Default True; pass False for a ``forward_func`` that cannot run on the references alone (it needs
            ``additional_forward_args``) and that you know gives the fitting model's logits.
    """

    def __init__(
        self, forward_func: Callable, reference_bank: Optional[ReferenceBank] = None, *, check_bank: bool = True
    ) -> None:
        if reference_bank is not None and not isinstance(reference_bank, ReferenceBank):
            raise TypeError(
                f"`reference_bank` must be a captum_paths.ReferenceBank or None, got {type(reference_bank).__name__}"
            )
        super().__init__(forward_func)
        self.reference_bank = reference_bank
        self.check_bank = check_bool(check_bank, "check_bank")
        self._checked: Tuple[Any, Any] = (None, None)  # (bank, its reference_logits_) this instance checked
        where = _module_dtype_device(forward_func)
        if where is not None and self._bank_check_pending():
            self._check_bank_model(*where, chunk=_CHECK_CHUNK, bar=None)

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        n_samples: int = 20,
        n_alphas: int = 1,
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        estimator: Literal["stratified", "sampled"] = "stratified",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[False] = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> TensorOrTuple: ...

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        n_samples: int = 20,
        n_alphas: int = 1,
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        estimator: Literal["stratified", "sampled"] = "stratified",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: Literal[True],
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Tuple[TensorOrTuple, Tensor]: ...

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        n_samples: int = 20,
        n_alphas: int = 1,
        alpha_range: Tuple[float, float] = (0.0, 1.0),
        estimator: Literal["stratified", "sampled"] = "stratified",
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Tensor]]:
        r"""LPI attributions, in the shape of ``inputs`` (see the class docstring for the maths and both estimators).

        Args:
            inputs (Tensor or tuple of Tensor): ``(N, ...)`` inputs to explain; a tuple when the model
                (and the bank) take several inputs. Per-example shapes must equal the bank's.
            baselines (Tensor or tuple of Tensor, optional): ``None`` (default): the references of the input's
                neighbourhood in the ``reference_bank`` with their densities (LPI). A tensor ``(R, ...)`` (or a
                tuple, one per input; a single per-example-shaped tensor is one reference): ``R`` references
                shared by every example, each of weight ``1 / R``: ``"stratified"`` uses every one of them
                (``R ceil(n_samples / R) n_alphas`` passes per example: many baselines cost many passes, use
                ``"sampled"`` to draw ``n_samples`` of them), ``"sampled"`` draws ``n_samples`` uniformly with
                replacement (expected gradients, as Captum's ``GradientShap`` treats its baselines).
            target (int, tuple, Tensor or list, optional): the output to explain, any Captum format
                (``None`` for models with one output per example; an int; a tuple index; a tensor or
                list with one entry per example).
            additional_forward_args (Any, optional): extra arguments of ``forward_func`` after the
                inputs; tensors are repeated along the batch for every evaluation.
            n_samples (int): paths per example. ``"sampled"``: references drawn by density. ``"stratified"``:
                ``ceil(n_samples / R_g)`` paths on each of the neighbourhood's ``R_g`` references. Default 20
                (paper: 20 references, one back-propagation each).
            n_alphas (int): alphas per path, uniform in ``alpha_range``. Default 1 (paper; authors' README 5).
            alpha_range (tuple of two floats): ``(a, b)``, ``0 <= a <= b <= 1``: alphas are uniform in it.
                Default ``(0.0, 1.0)`` (paper); ``(0.01, 0.99)`` in the authors' code.
            estimator (str): ``"stratified"`` (default, the authors': every reference, density weights) or
                ``"sampled"`` (references drawn by density with replacement).
            internal_batch_size (int, optional): at most this many interpolated points per forward and
                backward pass (bounds memory). ``None``: automatic, at most 2**22 input elements per pass (see
                :func:`~captum_paths.attr.default_internal_batch_size`). Default: None.
            return_convergence_delta (bool): also return ``delta`` ``(N,)``: the attributions' sum minus
                ``f_t(x) - sum_m w_m f_t(r_m)`` over the references used (``"stratified"``: all ``R_g`` with
                their densities, ``R_g`` extra forward rows per example; ``"sampled"``: the ``n_samples`` drawn,
                averaged, ``n_samples`` extra rows). Zero in expectation when ``alpha_range=(0, 1)``.
            generator (torch.Generator or int, optional): source of every random draw (a CPU or CUDA
                generator; an int seeds a fresh CPU one), consumed example by example. Default None: torch's
                global CPU generator.
            show_progress (bool or None, optional): a tqdm bar counting model passes (images through the
                model): ``True`` shows it, ``False`` never; ``None`` (default) shows it once the call has run
                for 5 seconds, so that long calls report their progress and short ones stay silent.

        Returns:
            attributions (Tensor or tuple of Tensor) in the shape of ``inputs``, and ``delta`` ``(N,)`` if
            ``return_convergence_delta``.

        Cost (rows through the model): with a bank, ``N`` forward rows for the neighbourhoods (and, once per
        instance when not done at construction, ``R`` rows checking the bank against ``forward_func``); then the
        gradient passes of the estimator (class docstring) and the delta's forward rows.
        """
        options = LPIOptions(n_samples, n_alphas, alpha_range, estimator)
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

    # ------------------------------------------------------------------------------ the bank check
    def _bank_check_pending(self) -> bool:
        bank = self.reference_bank
        if not self.check_bank or bank is None or not bank.is_fitted:
            return False
        return not (self._checked[0] is bank and self._checked[1] is bank.reference_logits_)

    def _check_bank_model(self, dtype: torch.dtype, device: torch.device, chunk: Optional[int], bar: Any) -> None:
        """Run ``forward_func`` on the bank's references and refuse a bank fitted for another model."""
        bank = self.reference_bank
        self._checked = (bank, bank.reference_logits_)
        if bank.reference_logits_ is None:
            warnings.warn(
                "this ReferenceBank was loaded from a version-1 file, which holds no logits of its fitting model: "
                "it cannot be checked against `forward_func`. Fit and save it again to enable the check",
                UserWarning,
                stacklevel=3,
            )
            return
        refs = tuple(
            r.to(device=device, dtype=dtype if r.dtype.is_floating_point else r.dtype) for r in bank.references_
        )
        outputs = []
        with torch.no_grad():
            for rows in chunk_slices(refs[0].shape[0], chunk):
                try:
                    out = self.forward_func(*(r[rows] for r in refs))
                except Exception as exc:
                    self._checked = (None, None)
                    raise ValueError(
                        "`forward_func` could not be run on the reference bank's references alone (as "
                        "ReferenceBank.fit ran its model) to check that the bank was fitted for it: "
                        f"{type(exc).__name__}: {str(exc)[:200]}. Pass check_bank=False to the constructor if "
                        "it needs `additional_forward_args` and you know it gives the fitting model's logits"
                    ) from exc
                outputs.append(out.detach().reshape(rows.stop - rows.start, -1))
                if bar is not None:
                    bar.update(rows.stop - rows.start)
        try:
            bank.check_model_logits(torch.cat(outputs), "`forward_func`")
        except ValueError:
            self._checked = (None, None)
            raise

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
        """Exact, except with a bank whose neighbourhoods hold different numbers of references under
        ``"stratified"``: then the largest is assumed and the bar's total corrected after the neighbourhood pass."""
        n = call.n_examples
        if call.baselines is not None:
            return lpi_passes(torch.full((n,), call.baselines[0].shape[0]), options, call.need_delta)
        bank = self.reference_bank
        counts = bank.offsets_[1:] - bank.offsets_[:-1]
        check = int(bank.offsets_[-1]) if self._bank_check_pending() else 0
        return check + n + lpi_passes(torch.full((n,), int(counts.max())), options, call.need_delta)

    def _path(self, call: PathCall, options: LPIOptions) -> PathOutput:
        if call.baselines is None and self._bank_check_pending():
            x = call.inputs[0]
            self._check_bank_model(x.dtype, x.device, call.internal_batch_size, call.bar)
        design = self._design(call)
        estimate = stratified_draws if options.estimator == "stratified" else sampled_draws
        draws = estimate(design.neighborhoods, design.probabilities, design.reference_rows, options, call.generator)
        if call.baselines is None and options.estimator == "stratified":
            self._correct_bar_total(call, options, draws)
        attributions = self._integrate(call, design.references, draws)
        if not call.need_delta:
            return PathOutput(attributions)
        reference_scores = self._reference_scores(call, design.references, draws)
        input_scores = design.input_scores
        if input_scores is None:
            input_scores = call.scores(call.inputs, torch.arange(call.n_examples, device=call.inputs[0].device))
        return PathOutput(attributions, input_scores.to(torch.float64) - reference_scores)

    def _correct_bar_total(self, call: PathCall, options: LPIOptions, draws: Draws) -> None:
        """The exact pass count once the neighbourhoods are known (they may hold different numbers of references)."""
        total = getattr(call.bar, "total", None)
        if total is None:
            return
        upper = lpi_passes(torch.full((call.n_examples,), int(draws.delta_ids.shape[1])), options, call.need_delta)
        exact = lpi_passes(draws.delta_lengths, options, call.need_delta)
        if exact != upper:
            call.bar.total = total - upper + exact
            call.bar.refresh()

    def _design(self, call: PathCall) -> _Design:
        """The references and each example's neighbourhood: from the bank by the input's logits, or the given
        references as one neighbourhood of equal densities."""
        if call.baselines is not None:
            n_refs = call.baselines[0].shape[0]
            return _Design(
                call.baselines,
                torch.zeros(call.n_examples, dtype=torch.long),
                torch.full((1, n_refs), 1.0 / n_refs, dtype=torch.float64),
                torch.arange(n_refs).reshape(1, n_refs),
            )
        bank, inputs = self.reference_bank, call.inputs
        neighborhoods = torch.empty(call.n_examples, dtype=torch.long)

        def place(rows: slice, output: Tensor) -> None:
            neighborhoods[rows] = bank.neighborhoods(output.detach()).cpu()

        # the inputs' own forward passes (chunked): place each in a neighbourhood and check `target`
        input_scores = call.scores(inputs, torch.arange(call.n_examples, device=inputs[0].device), on_output=place)
        probabilities, reference_rows = bank.reference_probabilities()
        references = tuple(r.to(device=x.device, dtype=x.dtype) for r, x in zip(bank.references_, inputs))
        return _Design(references, neighborhoods, probabilities, reference_rows, input_scores)

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

    @staticmethod
    def _block_rows(lengths: Tensor, examples: slice, block: slice) -> Tuple[Tensor, Tensor]:
        """(example, draw) indices of a block's evaluations that exist, draw-major (row ``j * count + i`` is
        draw ``j`` of example ``i`` when nothing is padding: Captum's repeat-whole-batch order)."""
        count, steps = examples.stop - examples.start, block.stop - block.start
        d = torch.arange(block.start, block.stop).repeat_interleave(count)
        e = torch.arange(examples.start, examples.stop).repeat(steps)
        keep = d < lengths[e]
        return e[keep], d[keep]

    def _integrate(self, call: PathCall, references: Tuple[Tensor, ...], draws: Draws) -> Tuple[Tensor, ...]:
        """``sum_d w_d (x - r_d) * grad f_t(r_d + alpha_d (x - r_d))`` per example and input tensor."""
        inputs = call.inputs
        device = inputs[0].device
        totals = tuple(torch.zeros_like(x) for x in inputs)
        for examples, block in self._chunks(*draws.ref_ids.shape, call.internal_batch_size):
            e, d = self._block_rows(draws.lengths, examples, block)
            if e.numel() == 0:
                continue
            ids, rows = draws.ref_ids[e, d].to(device), e.to(device)
            paths = [interpolate(r[ids], x[rows], draws.alphas[e, d]) for r, x in zip(references, inputs)]
            grads, _ = call.gradients(tuple(p for p, _ in paths), rows)
            for total, g, (_, span), x in zip(totals, grads, paths, inputs):
                w = draws.weights[e, d].to(device=device, dtype=x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
                total.index_add_(0, rows, span.mul_(g).mul_(w))  # spans are not needed again
        return totals

    def _reference_scores(self, call: PathCall, references: Tuple[Tensor, ...], draws: Draws) -> Tensor:
        """``sum_u w_u f_t(r_u)`` over the delta's references, each with its example's target and arguments:
        ``(N,)`` float64."""
        device = call.inputs[0].device
        totals = torch.zeros(call.n_examples, dtype=torch.float64, device=device)
        for examples, block in self._chunks(*draws.delta_ids.shape, call.internal_batch_size):
            e, u = self._block_rows(draws.delta_lengths, examples, block)
            if e.numel() == 0:
                continue
            ids, rows = draws.delta_ids[e, u].to(device), e.to(device)
            scores = call.scores(tuple(r[ids] for r in references), rows).to(torch.float64)
            totals.index_add_(0, rows, scores * draws.delta_weights[e, u].to(device))
        return totals


def _module_dtype_device(forward_func: Any) -> Optional[Tuple[torch.dtype, torch.device]]:
    """The dtype and device of a module's first floating-point parameter (``None``: not known before a call)."""
    if not isinstance(forward_func, torch.nn.Module):
        return None
    for p in forward_func.parameters():
        if p.dtype.is_floating_point:
            return p.dtype, p.device
    return None


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
