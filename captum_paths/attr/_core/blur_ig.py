"""Blur Integrated Gradients (Xu, Venugopalan, Sundararajan, CVPR 2020)."""

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union, overload

import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput
from captum_paths.attr._utils.captum_compat import TargetType, TensorOrTuple, log_usage
from captum_paths.attr._utils.idgi import idgi_segment
from captum_paths.attr._utils.validation import check_bool, check_positive_float, check_positive_int

__all__ = [
    "BlurIG",
    "blur_sigmas",
    "gaussian_blur_matrices",
    "blur_last_dims",
    "gaussian_blurs",
    "blur_rows",
    "blur_points",
    "BlurLevels",
]

#: scipy.ndimage.gaussian_filter's default truncation: the kernel radius is int(4 * sigma + 0.5)
TRUNCATE = 4.0


def blur_sigmas(max_sigma: float, n_steps: int, sqrt_spacing: bool = False) -> List[float]:
    """The ``n_steps + 1`` blur levels ``sigma_i = i * max_sigma / n_steps`` (python floats, reference order).

    With ``sqrt_spacing`` ``sigma_i = sqrt(i * max_sigma / n_steps)``: the last level is then
    ``sqrt(max_sigma)``, not ``max_sigma`` (the reference's ``sqrt`` option, kept as it is).
    """
    levels = [float(i) * max_sigma / float(n_steps) for i in range(n_steps + 1)]
    return [math.sqrt(s) for s in levels] if sqrt_spacing else levels


def gaussian_blur_matrices(sigmas: Sequence[float], size: int, dtype=torch.float64, device=None) -> Tensor:
    """Matrices of a 1-D Gaussian blur along an axis of ``size``, one per sigma: ``(len(sigmas), size, size)``.

    Row ``i`` of a matrix holds the weights of output ``i``: ``scipy.ndimage.gaussian_filter1d`` with
    ``mode="constant"`` (zero padding) and ``truncate=4``, i.e. the sampled Gaussian
    ``exp(-k^2 / (2 sigma^2))``, ``|k| <= int(4 sigma + 0.5)``, normalised over the whole kernel (also where
    it overhangs the edge: edges darken). Any radius, even beyond the axis. ``sigma = 0`` (or a radius of 0)
    is the identity. Every sigma at once (a few tensor operations, whatever their number).
    """
    f64 = dict(dtype=torch.float64, device=device)
    sigma = torch.tensor([float(s) for s in sigmas], **f64)
    radius = torch.tensor([int(TRUNCATE * float(s) + 0.5) for s in sigmas], **f64)
    identity = (sigma == 0) | (radius == 0)
    scale = (-0.5 / (sigma * sigma)).masked_fill_(identity, 0.0)[:, None]
    reach = int(radius.max()) if len(sigmas) else 0
    taps = torch.arange(-reach, reach + 1, **f64)[None, :]
    norm = torch.exp(scale * taps**2).masked_fill_(taps.abs() > radius[:, None], 0.0).sum(dim=1)
    offsets = torch.arange(size, **f64)
    offsets = (offsets[None, :] - offsets[:, None])[None]
    weights = torch.exp(scale[:, :, None] * offsets**2) / norm[:, None, None]
    weights.masked_fill_(offsets.abs() > radius[:, None, None], 0.0)
    weights[identity] = torch.eye(size, **f64)
    return weights.to(dtype)


def blur_last_dims(x: Tensor, matrices: Sequence[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """Blur ``x`` along its last ``len(matrices)`` dimensions (1 or 2), one ``(size, size)`` matrix each (into
    ``out`` when given).

    ``(.., H, W)`` with ``(M_H, M_W)``: ``M_H @ x @ M_W^T`` (each channel separately, as the reference's
    sigma ``(s, s, 0)`` on HWC images); ``(.., L)`` with ``(M_L,)``: ``x @ M_L^T``.
    """
    if len(matrices) == 1:
        return torch.matmul(x, matrices[0].transpose(-1, -2), out=out)
    return torch.matmul(matrices[0] @ x, matrices[1].transpose(-1, -2), out=out)


def blur_points(x: Tensor, sigmas: Sequence[float], counts: Sequence[int], grad_step: float) -> Tuple[Tensor, Tensor]:
    """:func:`blur_rows` of rows in blocks: the first ``counts[0]`` rows of ``x`` at ``sigmas[0]``, the next
    ``counts[1]`` at ``sigmas[1]``, and so on: ``(points, derivatives)``, each of ``x``'s shape.

    The blur matrices of every level are built at once, then each block is one product per blurred dimension:
    a few operations per block instead of building its matrices one by one.
    """
    levels = BlurLevels(sigmas, grad_step, x)
    return levels.blur_blocks(x, range(len(sigmas)), counts)


#: bytes of blur matrices a :class:`BlurLevels` holds at once (a 28x28 path's 100 levels; 5 levels at 224x224)
LEVEL_MATRIX_BUDGET = 4 * 2**20


class BlurLevels:
    """The blur matrices of a path's levels ``sigma_i`` and ``sigma_i + grad_step``, for the blurred dimensions
    of inputs like ``like``, built in groups of consecutive levels (as many as fit in ``budget`` bytes).

    A path visits its levels in order, so each group is built once, with a few tensor operations whatever its
    number of levels, instead of a few per chunk.
    """

    def __init__(self, sigmas: Sequence[float], grad_step: float, like: Tensor, budget: Optional[int] = None):
        budget = LEVEL_MATRIX_BUDGET if budget is None else budget
        self.sigmas, self.grad_step = list(sigmas), grad_step
        self.dtype, self.device = like.dtype, like.device
        self.sizes = tuple(like.shape[like.dim() - _blur_dims(like) :])
        per_level = 2 * sum(size * size for size in set(self.sizes)) * like.element_size()
        self.group = max(1, budget // per_level)
        self.first, self.stop = 0, 0  # the levels held: [first, stop)
        self.stacks: Dict[int, Tensor] = {}

    def matrices(self, levels: Sequence[int]) -> Dict[int, Tuple[Tensor, Tensor]]:
        """Per blurred size, the ``(at, ahead)`` matrices of ``levels``: ``(len(levels), size, size)`` each."""
        low, high = min(levels), max(levels)
        if low < self.first or high >= self.stop:  # a new group: down from the highest level (blurriest first)
            self.first, self.stop = min(low, max(0, high + 1 - self.group)), high + 1
            held = self.sigmas[self.first : self.stop]
            both = held + [s + self.grad_step for s in held]
            self.stacks = {n: gaussian_blur_matrices(both, n, self.dtype, self.device) for n in set(self.sizes)}
        at = torch.tensor([level - self.first for level in levels], device=self.device)
        ahead = at + (self.stop - self.first)
        return {n: (stack[at], stack[ahead]) for n, stack in self.stacks.items()}

    def blur_blocks(self, x: Tensor, levels: Sequence[int], counts: Sequence[int]) -> Tuple[Tensor, Tensor]:
        """Rows of ``x`` in blocks of ``counts`` at ``levels``: ``(points, derivatives)`` (see :func:`blur_points`)."""
        stacks = self.matrices(levels)
        points, derivatives = torch.empty_like(x), torch.empty_like(x)
        start = 0
        for i, count in enumerate(counts):
            rows = slice(start, start + count)
            blur_last_dims(x[rows], [stacks[n][0][i] for n in self.sizes], out=points[rows])
            ahead = blur_last_dims(x[rows], [stacks[n][1][i] for n in self.sizes])
            torch.sub(ahead, points[rows], out=derivatives[rows]).div_(self.grad_step)
            start += count
        return points, derivatives


def _blur_dims(x: Tensor) -> int:
    """How many trailing dimensions of an ``(N, ...)`` input are blurred: 2 (``H, W``), or 1 for ``(N, L)``."""
    return 2 if x.dim() >= 3 else 1


def gaussian_blurs(x: Tensor, sigmas: Sequence[float]) -> List[Tensor]:
    """``Blur(x, sigma)`` for each sigma: tensors of ``x``'s shape and dtype.

    ``x`` is ``(R, ...)`` (float64 advised); the blur acts on the last two dimensions (the one feature
    dimension of a 2-D ``x``), see :func:`gaussian_blur_matrices`.
    """
    sizes = x.shape[x.dim() - _blur_dims(x) :]
    matrices = {size: gaussian_blur_matrices(sigmas, size, x.dtype, x.device) for size in set(sizes)}
    return [blur_last_dims(x, [matrices[size][k] for size in sizes]) for k in range(len(sigmas))]


def blur_rows(x: Tensor, sigma: float, grad_step: float) -> Tuple[Tensor, Tensor]:
    """``Blur(x, sigma)`` and the forward difference ``(Blur(x, sigma + h) - Blur(x, sigma)) / h``, ``h = grad_step``.

    The reference's derivative of the blur in sigma (a finite difference, not the analytic one). Both of
    ``x``'s shape and dtype.
    """
    return blur_points(x, [sigma], [x.shape[0]], grad_step)


@dataclass
class BlurIGOptions:
    """Blur IG's knobs (validated on construction); see :meth:`BlurIG.attribute`."""

    max_sigma: float = 50.0
    n_steps: int = 100
    grad_step: float = 0.01
    sqrt_spacing: bool = False
    idgi: bool = False

    def __post_init__(self) -> None:
        self.max_sigma = check_positive_float(self.max_sigma, "max_sigma")
        self.n_steps = check_positive_int(self.n_steps, "n_steps")
        self.grad_step = check_positive_float(self.grad_step, "grad_step")
        self.sqrt_spacing = check_bool(self.sqrt_spacing, "sqrt_spacing")
        self.idgi = check_bool(self.idgi, "idgi")


def _point_runs(rows: slice, n_examples: int, n_steps: int) -> List[Tuple[int, slice, slice]]:
    """Runs of one path point in a chunk of the blurred-to-sharp row order: ``(point, chunk rows, examples)``.

    Row ``r`` of the virtual ``N * T`` batch is example ``r % N`` at blur level ``T - 1 - r // N``: every
    example's blurrier points come before its sharper ones (IDGI needs the next level's score first).
    """
    runs, r = [], rows.start
    while r < rows.stop:
        block = r // n_examples
        stop = min(rows.stop, (block + 1) * n_examples)
        first = r % n_examples
        runs.append((n_steps - 1 - block, slice(r - rows.start, stop - rows.start), slice(first, first + stop - r)))
        r = stop
    return runs


class BlurIG(PathAttribution):
    r"""
    Blur Integrated Gradients (Blur IG) of Xu, Venugopalan and Sundararajan, "Attribution in Scale and Space",
    CVPR 2020 (https://arxiv.org/abs/2004.03383); reference implementation PAIR-code/saliency
    ``core/blur_ig.py``.

    The path runs through Gaussian blurs of the input itself, from the blurriest ``Blur(x, sigma_T)`` to the
    input ``Blur(x, 0) = x``: no baseline is needed, no artefact is introduced (blurring only removes
    information). With the levels ``sigma_i = i sigma_M / T`` (``i = 0..T``) and the gradient at each
    interval's sharp end,

    .. math::

        A = -\sum_{i=0}^{T-1} (\sigma_{i+1} - \sigma_i)\;
            \frac{\partial\, \mathrm{Blur}(x, \sigma)}{\partial \sigma}\Big|_{\sigma_i} \odot
            \nabla f\big(\mathrm{Blur}(x, \sigma_i)\big),
        \qquad \textstyle\sum_j A_j \approx f(x) - f(\mathrm{Blur}(x, \sigma_T)),

    the minus sign because the attribution path runs against ``sigma``. As the reference, the derivative in
    sigma is the forward difference ``(Blur(x, sigma_i + h) - Blur(x, sigma_i)) / h`` with ``h = grad_step``,
    and the blur is ``scipy.ndimage.gaussian_filter`` with zero padding (``mode="constant"``: edges darken)
    and radius ``int(4 sigma + 0.5)`` (:func:`gaussian_blur_matrices`; not torchvision's blur, whose padding
    and kernel size differ). The fully blurred image ``Blur(x, sigma_T)`` is never differentiated.

    The blur acts on the **last two dimensions** of each input (``(N, C, H, W)``: each channel separately,
    as the reference's ``(s, s, 0)`` on HWC images; also ``(N, H, W)``); a 2-D input ``(N, L)`` is blurred
    along its one feature axis (the reference fails on 2-D inputs). A 1-D ``(N,)`` input is refused.

    **Baselines.** Blur IG has none: its start is ``Blur(x, sigma_T)``, set by ``max_sigma``. ``baselines``
    is accepted (the position of Captum's signature) but must be ``None``; anything else raises
    ``ValueError`` (use IG or Guided IG for a chosen baseline).

    With ``idgi=True`` the attribution is IDGI's reweighting (Yang, Wang and Bilgic, CVPR 2023) of the same
    path and gradients: ``I = sum_i (f(Blur(x, sigma_i)) - f(Blur(x, sigma_{i+1}))) g_i^2 / ||g_i||^2``,
    ``g_i = grad f(Blur(x, sigma_i))``. Each segment ``sigma_{i+1} -> sigma_i`` is paired with the gradient at
    its *sharp* end, which is where Blur IG takes its gradients (so no extra gradient pass; a strict
    baseline-to-input ordering would need a gradient at ``sigma_T`` instead); the TMLR reproduction pairs them
    the same way. It sums to ``f(x) - f(Blur(x, sigma_T))`` exactly; ``f(Blur(x, sigma_T))`` costs one extra
    forward pass per example.

    Defaults are the reference's: ``max_sigma=50``, ``n_steps=100``, ``grad_step=0.01``, linear spacing. The
    SAMP authors' harness uses these with the softmax probability of the predicted class: pass a
    softmax-wrapped model for that.

    Deviations: (1) the reference's ``batch_size > 1`` with ``sqrt`` spacing scales a whole batch of
    intervals by the last interval's width (a bug); here each interval has its own width whatever
    ``internal_batch_size``, which equals the reference at its default ``batch_size=1`` (and at any batch size
    with linear spacing); (2) the blurs, their difference and the sum are computed in float64 whatever the
    input dtype (the model sees each point in the input's dtype); (3) examples and levels are batched.

    Cost: ``T`` forward+backward passes per example (all ``N * T`` points are independent and stream to the
    model in chunks of ``internal_batch_size``), plus one forward pass per example at ``sigma_T`` when
    ``idgi`` or ``return_convergence_delta`` asks for ``f(Blur(x, sigma_T))``. Besides: ``2 T`` separable
    blurs per example, each two small matrix products (``H x H`` and ``W x W``). Memory: a chunk's points,
    their derivatives and gradients, and the blur matrices of a group of levels (at most
    ``LEVEL_MATRIX_BUDGET``, 4 MB); the attributions are a running sum.
    """

    _no_baselines = (
        "its path starts at the maximally blurred input, set by `max_sigma`; use GuidedIG or IntegratedGradients "
        "for a path from a chosen baseline"
    )

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: None = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        max_sigma: float = 50.0,
        n_steps: int = 100,
        grad_step: float = 0.01,
        sqrt_spacing: bool = False,
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
        baselines: None = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        max_sigma: float = 50.0,
        n_steps: int = 100,
        grad_step: float = 0.01,
        sqrt_spacing: bool = False,
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
        baselines: None = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        max_sigma: float = 50.0,
        n_steps: int = 100,
        grad_step: float = 0.01,
        sqrt_spacing: bool = False,
        idgi: bool = False,
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Tensor]]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input(s) to explain, each ``(N, ...)`` with the examples
                    along dimension 0; images ``(N, C, H, W)`` or ``(N, H, W)`` (the last two dimensions are
                    blurred), or ``(N, L)`` signals. Floating point.
            baselines (None): Must be ``None``: Blur IG's path starts at the maximally blurred input.
            target (int, tuple, Tensor or list, optional): Output index whose score is differentiated, in any
                    Captum format (``None`` for one output per example). Default: None.
            additional_forward_args (Any, optional): Extra arguments of ``forward_func`` after the inputs;
                    tensors must have ``N`` rows. Default: None.
            max_sigma (float, optional): ``sigma_M``, the blur of the path's start (with ``sqrt_spacing`` the
                    start is ``sqrt(sigma_M)``). Reference default 50. Default: 50.0.
            n_steps (int, optional): ``T``, the intervals (gradients) of the path. Reference default 100.
            grad_step (float, optional): ``h`` of the forward difference in sigma. Reference default 0.01.
            sqrt_spacing (bool, optional): The reference's ``sqrt`` option: ``sigma_i = sqrt(i sigma_M / T)``.
                    Default: False.
            idgi (bool, optional): Attribute with IDGI's reweighting of the same path (see the class
                    docstring); one extra forward pass per example. Default: False.
            internal_batch_size (int, optional): At most this many path points (rows, of any examples and
                    levels) per model pass. ``None``: automatic, at most 2**22 input elements per pass (see
                    :func:`~captum_paths.attr.default_internal_batch_size`). Default: None.
            return_convergence_delta (bool, optional): Also return, per example,
                    ``sum(attributions) - (f(x) - f(Blur(x, sigma_T)))``; one forward pass per example
                    (shared with ``idgi``). Default: False.
            generator (None, int or torch.Generator, optional): Unused (Blur IG is deterministic); accepted for
                    the common signature. Default: None.
            show_progress (bool or None, optional): a tqdm bar counting model passes (images through the
                model): ``True`` shows it, ``False`` never; ``None`` (default) shows it once the call has run
                for 5 seconds, so that long calls report their progress and short ones stay silent.

        Returns:
            **attributions** or (**attributions**, **delta**): one tensor per input of the input's shape (a
            tensor if ``inputs`` was one), and with ``return_convergence_delta`` the ``(N,)`` delta.

        Raises:
            ValueError / TypeError before any model pass for: non-None ``baselines``, 1-D inputs, non-floating
            or non-finite inputs, mismatched batch sizes, a non-positive ``max_sigma``, ``grad_step`` or
            ``n_steps``, non-bool flags, bad targets, arguments or ``internal_batch_size``.

        Examples::

            >>> blur_ig = BlurIG(model)
            >>> attr, delta = blur_ig.attribute(images, target=labels, internal_batch_size=512,
            ...                                 return_convergence_delta=True)
        """
        options = BlurIGOptions(max_sigma, n_steps, grad_step, sqrt_spacing, idgi)
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

    def _expected_passes(self, call: PathCall, options: BlurIGOptions) -> int:
        return call.n_examples * (options.n_steps + int(options.idgi or call.need_delta))

    def _path(self, call: PathCall, options: BlurIGOptions) -> PathOutput:
        """Stream the ``N * T`` points, blurriest first, in chunks; fold each chunk into the running sums."""
        for i, x in enumerate(call.inputs):  # before any model pass
            if x.dim() < 2:
                raise ValueError(
                    f"BlurIG blurs the last two dimensions of each input (one for (N, L) inputs): `inputs`[{i}] "
                    f"of shape {tuple(x.shape)} has none; reshape it to (N, L) or (N, C, H, W)"
                )
        n, n_steps = call.n_examples, options.n_steps
        sigmas = blur_sigmas(options.max_sigma, n_steps, options.sqrt_spacing)
        inputs64 = tuple(x.to(torch.float64) for x in call.inputs)
        attributions = tuple(torch.zeros_like(x) for x in inputs64)
        scores: Optional[Tensor] = None  # (N, T + 1) scores of every level, when IDGI or the delta needs them
        if options.idgi or call.need_delta:
            scores = inputs64[0].new_full((n, n_steps + 1), math.nan)
            for rows in call.row_chunks(n):
                blurred = tuple(self._model_dtype(gaussian_blurs(x[rows], [sigmas[-1]])[0], x) for x in call.inputs)
                scores[rows, n_steps] = call.scores(
                    blurred, torch.arange(rows.start, rows.stop, device=inputs64[0].device)
                ).to(torch.float64)
        levels = [BlurLevels(sigmas, options.grad_step, x) for x in inputs64]
        for rows in call.row_chunks(n * n_steps):
            self._chunk(call, options, rows, (inputs64, levels), sigmas, attributions, scores)
        expected = None if scores is None else scores[:, 0] - scores[:, n_steps]
        return PathOutput(attributions, expected)

    def _chunk(
        self,
        call: PathCall,
        options: BlurIGOptions,
        rows: slice,
        sources: Tuple[Tuple[Tensor, ...], List[BlurLevels]],
        sigmas: List[float],
        attributions: Tuple[Tensor, ...],
        scores: Optional[Tensor],
    ) -> None:
        """One model pass over a chunk of rows: build its blurred points, take gradients, add the terms.

        ``sources``: the inputs in float64 and, for each, the :class:`BlurLevels` of the call's path."""
        runs = _point_runs(rows, call.n_examples, options.n_steps)
        inputs64, blur_levels = sources
        device = inputs64[0].device
        examples = torch.cat([torch.arange(batch.start, batch.stop, device=device) for _, _, batch in runs])
        levels, counts = [level for level, _, _ in runs], [b.stop - b.start for _, _, b in runs]
        blurred = [bl.blur_blocks(x.index_select(0, examples), levels, counts) for x, bl in zip(inputs64, blur_levels)]
        points, derivatives = tuple(p for p, _ in blurred), tuple(d for _, d in blurred)
        model_points = tuple(self._model_dtype(p, x) for p, x in zip(points, call.inputs))
        grads, row_scores = call.gradients(model_points, examples)
        if scores is not None:
            for level, chunk_rows, batch in runs:
                scores[batch, level] = row_scores[chunk_rows].to(torch.float64)
        if options.idgi:
            change = torch.cat([scores[batch, level] - scores[batch, level + 1] for level, _, batch in runs])
            terms = idgi_segment(tuple(g.to(torch.float64) for g in grads), change)
            for _, chunk_rows, batch in runs:
                for total, term in zip(attributions, terms):
                    total[batch] += term[chunk_rows]
            return
        # each row adds -(sigma_{i+1} - sigma_i) * dBlur/dsigma * g to its example (the width scales g as it
        # becomes float64, the derivatives take the product in place: one pass over the chunk each)
        widths = torch.cat([torch.full((b.stop - b.start,), sigmas[lv] - sigmas[lv + 1], dtype=torch.float64,
                                       device=device) for lv, _, b in runs])  # fmt: skip
        for total, d, g in zip(attributions, derivatives, grads):
            scaled = torch.mul(g, widths.reshape((-1,) + (1,) * (d.dim() - 1)), out=torch.empty_like(d))
            total.index_add_(0, examples, d.mul_(scaled))

    @staticmethod
    def _model_dtype(point: Tensor, x: Tensor) -> Tensor:
        return point.to(x.dtype).contiguous()
