"""Adversarial Gradient Integration (Pan, Li & Zhu: "Explaining Deep Neural Network Models with Adversarial
Gradient Integration", IJCAI 2021)."""

import math
import warnings
from dataclasses import dataclass
from numbers import Real
from typing import Any, Callable, List, Literal, Optional, Tuple, Union, overload

import torch
from torch import Tensor

from captum_paths.attr._core.base import PathAttribution, PathCall, PathOutput, check_finite_pass
from captum_paths.attr._utils.captum_compat import (
    _NO_GRAPH,
    TargetType,
    TensorOrTuple,
    check_score,
    compute_gradients,
    gradients_and_scores,
    log_usage,
    run_forward,
)
from captum_paths.attr._utils.validation import check_bool, check_positive_float, check_positive_int

__all__ = [
    "AdversarialGradientIntegration",
    "sign_step",
    "agi_term",
    "spaced_false_classes",
    "random_false_classes",
    "top_false_classes",
    "all_false_classes",
]

CLASS_RULES = ("spaced", "random", "top", "all")
STEP_FROM = ("input", "current")
Bounds = Optional[Tuple[Union[float, Tensor], Union[float, Tensor]]]


# ---------------------------------------------------------------------------------------- pure maths
def sign_step(base: Tensor, grad_adv: Tensor, epsilon: float, low: Any = None, high: Any = None) -> Tensor:
    """One adversarial step: ``clamp(base + epsilon * sign(grad_adv), low, high)`` (no clamping where
    ``low`` / ``high`` is None). ``low`` / ``high``: numbers or tensors broadcastable to ``base``."""
    point = base + epsilon * grad_adv.sign()
    if low is None and high is None:
        return point
    return torch.clamp(point, min=low, max=high)


def agi_term(grad_true: Tensor, new_point: Tensor, base: Tensor) -> Tensor:
    """One step's contribution ``-grad_true * (new_point - base)``, feature-wise."""
    return (new_point - base).mul_(grad_true).neg_()


def spaced_false_classes(n_outputs: int, k: int, true_classes: Tensor) -> Tensor:
    """The reference script's fixed class ids ``range(0, C - 1, max(1, C // k))`` without each example's
    true class: ``(N, K)`` long, ``-1`` where an example's true class was dropped (that example has one
    chain fewer, as the reference skips it). ``C - 1`` is the reference's bound (class ``C - 1`` is never
    chosen when it falls on the grid); ``max(1, .)`` keeps ``k > C`` meaningful (the reference's step would
    be 0)."""
    ids = torch.arange(0, n_outputs - 1, max(1, n_outputs // k), device=true_classes.device)
    classes = ids.expand(true_classes.shape[0], -1).clone()
    classes[classes == true_classes[:, None]] = -1
    return classes


def all_false_classes(n_outputs: int, true_classes: Tensor) -> Tensor:
    """Every class but each example's true class, ascending: ``(N, C - 1)`` long."""
    ids = torch.arange(n_outputs, device=true_classes.device).expand(true_classes.shape[0], -1)
    keep = ids != true_classes[:, None]
    return ids[keep].reshape(true_classes.shape[0], n_outputs - 1)


def top_false_classes(outputs: Tensor, k: int, true_classes: Tensor) -> Tensor:
    """The ``k`` highest-scoring classes of ``outputs`` ``(N, C)`` other than the true class, highest
    first: ``(N, min(k, C - 1))`` long."""
    masked = outputs.detach().clone()
    masked.scatter_(1, true_classes[:, None], -math.inf)
    return masked.topk(min(k, outputs.shape[1] - 1), dim=1).indices


def random_false_classes(
    n_outputs: int, k: int, true_classes: Tensor, generator: Optional[torch.Generator] = None
) -> Tensor:
    """``min(k, C - 1)`` distinct classes drawn uniformly among the classes other than each example's true
    class, in draw order: ``(N, K)`` long, on ``true_classes``' device.

    Random keys are drawn example by example (``C`` float64 uniforms each, on the generator's device), so
    explaining examples one at a time with one generator gives the same classes as a batch.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    rows = []
    for true_class in true_classes.tolist():
        keys = torch.rand(n_outputs, dtype=torch.float64, device=device, generator=generator)
        keys[true_class] = math.inf
        rows.append(keys.argsort()[: min(k, n_outputs - 1)])
    return torch.stack(rows).to(true_classes.device)


# ------------------------------------------------------------------------------------------ options
@dataclass
class AGIOptions:
    """AGI's knobs (validated on construction); see :meth:`AdversarialGradientIntegration.attribute`."""

    epsilon: float = 0.05
    n_iterations: int = 20
    n_false_classes: int = 20
    false_classes: Any = "spaced"
    score: str = "softmax"
    early_stop: bool = True
    step_from: str = "input"
    clamp: Bounds = (0.0, 1.0)

    def __post_init__(self) -> None:
        self.epsilon = check_positive_float(self.epsilon, "epsilon")
        self.n_iterations = check_positive_int(self.n_iterations, "n_iterations")
        self.n_false_classes = check_positive_int(self.n_false_classes, "n_false_classes")
        self.false_classes = _check_false_classes(self.false_classes)
        check_score(self.score)
        self.early_stop = check_bool(self.early_stop, "early_stop")
        if self.step_from not in STEP_FROM:
            raise ValueError(f"`step_from` must be one of {STEP_FROM}, got {self.step_from!r}")
        self.clamp = _check_clamp(self.clamp)


@dataclass
class _Chains:
    """The flattened (example, false class) chains of one call, example-major, valid ones only."""

    examples: Tensor  # (R,) long, the example of each chain
    false_classes: Tensor  # (R,) long, the class each chain attacks
    true_classes: Tensor  # (R,) long, the class whose gradient it integrates


class AdversarialGradientIntegration(PathAttribution):
    r"""
    Adversarial Gradient Integration (AGI) of Pan, Li and Zhu, "Explaining Deep Neural Network Models with
    Adversarial Gradient Integration", IJCAI 2021 (https://doi.org/10.24963/ijcai.2021/396; reference code
    ``pd90506/AGI``).

    AGI needs no baseline. For each false class :math:`t` of a set :math:`T` it runs a targeted sign-gradient
    attack (PGD without projection) from the input :math:`x_0` toward :math:`t`, and integrates the gradient of
    the true class :math:`y` along it. With :math:`s_c` the score of class :math:`c` (softmax probability by
    default), :math:`z_0 = x_0`, and :math:`b_k` the step's base point:

    .. math::

        z_{k+1} = \operatorname{clip}\big(b_k + \epsilon\, \operatorname{sign} \nabla s_t(z_k),\ l,\ u\big),
        \qquad
        A = \sum_{t \in T} \sum_{k < K_t} -\nabla s_y(z_k) \odot (z_{k+1} - b_k),

    where the chain toward :math:`t` stops before step :math:`k` as soon as :math:`\arg\max f(z_k) = t`
    (checked before any update; at most ``n_iterations`` steps). The reference code takes every step from
    the input, :math:`b_k = x_0` (``step_from="input"``, the default): each iterate stays within
    :math:`\epsilon` of :math:`x_0` in L-infinity and every term uses the displacement from :math:`x_0`. The
    paper's path is cumulative, :math:`b_k = z_k` (``step_from="current"``, the fix also made by the
    ``cleanig`` package); the terms then telescope, and for a model linear in its inputs the attribution sums
    to exactly :math:`\sum_t s_y(x_0) - s_y(z_{K_t})`.

    **Completeness.** AGI has none: there is no baseline, the reference's terms do not form a path, and even
    on the cumulative path the total depends on where each attack stopped. ``return_convergence_delta`` must
    stay False (``has_convergence_delta()`` is False).

    **Targets.** ``target`` is the *true* class :math:`y`, whose gradient is integrated (the reference uses the
    model's prediction; ``target=None`` does the same: the argmax of the model at the input). The false
    classes are chosen per example and never equal its true class; internally every chain (example, false
    class) is a row whose attacked class and integrated class are built explicitly, so the model must return
    ``(N, n_classes)`` scores and ``target`` must name classes: an int, a ``(1,)``-tuple, a tensor of ``N``
    (or one) class indices, or a list of ``N`` ints / ``(1,)``-tuples.

    **False classes** (``false_classes``, ``n_false_classes = k``):

    - ``"spaced"`` (the reference ``AGI_main.py``): the fixed ids ``range(0, C - 1, max(1, C // k))``,
      skipping the true class (ImageNet, k = 20: 0, 50, ..., 950);
    - ``"random"`` (``AGI_quantitive.py``, the LPI authors' copy and the LPI paper): ``k`` distinct classes
      drawn uniformly per example among the classes other than the true one, from ``generator``;
    - ``"top"``: the ``k`` highest-scoring other classes at the input (the closest decision boundaries);
    - ``"all"``: every other class (``k`` ignored), e.g. for 10-class models;
    - a tensor or list of class ids, ``(k,)`` for every example or ``(N, k)``; an entry equal to the example's
      true class is skipped (as the reference skips it), ``-1`` entries are padding.

    **Settings.** The defaults are the reference script with the paper's settings (the README: "In the
    paper, we choose iter=20 and k=20"): ``epsilon=0.05, n_iterations=20, n_false_classes=20,
    false_classes="spaced", score="softmax", early_stop=True, step_from="input", clamp=(0, 1)``. The script's
    own defaults are ``n_iterations=15, n_false_classes=15``. The LPI paper's setting ("PGD with 20 steps
    and a single random target class", the LPI code's objective being the raw logit and without early stop)
    is ``false_classes="random", n_false_classes=1, n_iterations=20, score="logit", early_stop=False``.

    **Deviations from the reference code**, each on purpose: examples and their chains are batched
    (identical results); ``"random"`` draws per example and excludes the true class (the LPI copy's
    ``select_id`` can return it and never draws the last two classes; ``AGI_quantitive.py`` draws once for
    the whole run and replaces a clash by the neighbouring id); its softmax-of-softmax (a Softmax inside its
    model) is not reproduced. The reference clamps to ``[0, 1]`` because its images are in ``[0, 1]`` with the
    normalisation inside the model (the LPI copy clamps ImageNet-normalised inputs to ``[0, 1]``, a bug):
    pass ``clamp`` = the valid range of *your* inputs (per-channel tensors for normalised images) or None;
    inputs outside ``clamp`` warn.

    **Cost.** A no-grad pass to learn the classes: over the ``N`` inputs when ``target`` is None or
    ``false_classes="top"`` (the outputs are needed), else over one image (only their number is). Then, per
    chain and step, one forward and two backward passes (both gradients from one forward, as the reference),
    at most ``N * k * n_iterations`` chain steps; chains that reached their class stop and leave the batch.
    Chains of all examples share passes, ``internal_batch_size`` chains per pass, and memory is bounded by it
    (each chunk of chains runs to its end before the next). Measured on the digits CNN
    (``benchmarks/bench_agi.py``): 1.00-1.07x the bare passes in CPU time. A swapped ``self.gradient_func``
    is honoured: two calls per step, each with its own forward (identical results, one more forward per
    step). The progress bar counts chain steps (images through the model).
    """

    _completeness = False
    _no_baselines = "its paths start at the input and are found by the adversarial attack"

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        r"""
        Args:

            forward_func (Callable): The classifier (or any function of the inputs) returning ``(N, n_classes)``
                    scores (logits: ``score="softmax"`` applies the softmax itself).
        """
        super().__init__(forward_func)

    @overload
    def attribute(
        self,
        inputs: TensorOrTuple,
        baselines: None = None,
        target: TargetType = None,
        additional_forward_args: Any = None,
        *,
        epsilon: float = 0.05,
        n_iterations: int = 20,
        n_false_classes: int = 20,
        false_classes: Any = "spaced",
        score: str = "softmax",
        early_stop: bool = True,
        step_from: str = "input",
        clamp: Bounds = (0.0, 1.0),
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
        epsilon: float = 0.05,
        n_iterations: int = 20,
        n_false_classes: int = 20,
        false_classes: Any = "spaced",
        score: str = "softmax",
        early_stop: bool = True,
        step_from: str = "input",
        clamp: Bounds = (0.0, 1.0),
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
        epsilon: float = 0.05,
        n_iterations: int = 20,
        n_false_classes: int = 20,
        false_classes: Any = "spaced",
        score: str = "softmax",
        early_stop: bool = True,
        step_from: str = "input",
        clamp: Bounds = (0.0, 1.0),
        internal_batch_size: Optional[int] = None,
        return_convergence_delta: bool = False,
        generator: Union[None, int, torch.Generator] = None,
        show_progress: Optional[bool] = None,
    ) -> Union[TensorOrTuple, Tuple[TensorOrTuple, Tensor]]:
        r"""
        Args:

            inputs (Tensor or tuple[Tensor, ...]): Input(s) to explain, each ``(N, ...)`` with the examples
                    along dimension 0 (aligned across the tuple). Floating point.
            baselines (None): AGI has no baseline (its paths start at the input and go where the attack
                    leads); anything but None raises ``ValueError``. Kept for Captum's signature.
            target (optional): The true class of each example, whose gradient is integrated: None (the
                    model's prediction at the input, as the reference), an int or ``(c,)`` for every
                    example, a tensor of ``N`` class indices (or one), or a list of ``N`` ints /
                    ``(c,)``-tuples. Default: None.
            additional_forward_args (Any, optional): Extra arguments of ``forward_func`` after the inputs;
                    tensors with ``N`` rows are per example and gathered for every chain. Default: None.
            epsilon (float, optional): The step size of the sign step (L-infinity radius of each step).
                    Reference and LPI: 0.05. Default: 0.05.
            n_iterations (int, optional): Maximum attack steps per chain. Paper and LPI paper: 20
                    (``AGI_main.py``: 15; the LPI code's harness: 5). Default: 20.
            n_false_classes (int, optional): ``k``, the number of false classes (see ``false_classes``).
                    Paper: 20 (``AGI_main.py``: 15), LPI paper: 1. Default: 20.
            false_classes (str, Tensor or list, optional): ``"spaced"`` (reference), ``"random"`` (LPI),
                    ``"top"``, ``"all"``, or explicit class ids ``(k,)`` / ``(N, k)``; see the class
                    docstring. Default: ``"spaced"``.
            score (str, optional): ``"softmax"`` (reference): both gradients are of softmax probabilities
                    over dimension 1; ``"logit"`` (LPI code): of the raw outputs. Default: ``"softmax"``.
            early_stop (bool, optional): Stop a chain before the step at which the model's argmax is its
                    false class (reference); False runs every chain ``n_iterations`` steps (LPI code).
                    Default: True.
            step_from (str, optional): ``"input"`` (reference): every step starts at the input, so each
                    iterate lies within ``epsilon`` of it; ``"current"`` (paper, cumulative path): each step
                    starts at the previous iterate. Default: ``"input"``.
            clamp (tuple or None, optional): ``(low, high)`` bounds of every iterate, numbers or tensors
                    broadcastable to each input's per-example shape (e.g. ``(3, 1, 1)`` per-channel bounds);
                    None: no clamping. Reference: ``(0, 1)`` (its images are in [0, 1]). Default: (0, 1).
            internal_batch_size (int, optional): At most this many chains (rows) per model pass; memory is
                    proportional to it. ``None``: automatic, at most 2**22 input elements per pass (see
                    :func:`~captum_paths.attr.default_internal_batch_size`). Default: None.
            return_convergence_delta (bool, optional): Must be False: AGI has no completeness.
            generator (None, int or torch.Generator, optional): Source of the ``"random"`` false classes (an
                    int seeds a fresh CPU generator; torch's global RNG is untouched when one is given).
                    Default: None (torch's global CPU generator).
            show_progress (bool or None, optional): a tqdm bar counting model passes (images through the
                model): ``True`` shows it, ``False`` never; ``None`` (default) shows it once the call has run
                for 5 seconds, so that long calls report their progress and short ones stay silent.

        Returns:
            **attributions** (Tensor or tuple[Tensor, ...]): One tensor per input, of the input's shape.

        Raises:
            ValueError / TypeError before any model pass for bad knobs, baselines other than None, a target
            that is not class indices; ``ValueError`` at the first pass for a model output that is not
            ``(N, n_classes)`` or class ids out of range.

        Examples::

            >>> agi = AdversarialGradientIntegration(model)
            >>> attr = agi.attribute(images, target=labels)  # reference script, paper settings
            >>> lpi_setting = agi.attribute(images, target=labels, false_classes="random", n_false_classes=1,
            ...                             n_iterations=20, score="logit", early_stop=False, generator=0)
        """
        options = AGIOptions(epsilon, n_iterations, n_false_classes, false_classes, score, early_stop, step_from, clamp)
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

    # ------------------------------------------------------------------------------------------ hooks
    def _expected_passes(self, call: PathCall, options: AGIOptions) -> int:
        k = _explicit_k(options.false_classes) or options.n_false_classes
        return call.n_examples * (1 + k * options.n_iterations)

    def _path(self, call: PathCall, options: AGIOptions) -> PathOutput:
        """Choose the chains, run them chunk by chunk to their end, add each chain to its example."""
        bounds = _input_bounds(options.clamp, call.inputs)
        chains = self._chains(call, options)
        result = tuple(torch.zeros_like(x) for x in call.inputs)
        for rows in call.row_chunks(chains.examples.shape[0]):
            examples = chains.examples[rows]
            starts = tuple(x.index_select(0, examples) for x in call.inputs)
            totals = self._run_chains(
                call, options, starts, examples, chains.false_classes[rows], chains.true_classes[rows], bounds
            )
            for acc, total in zip(result, totals):
                acc.index_add_(0, examples, total)
        return PathOutput(result, None)

    # ------------------------------------------------------------------------------------- the chains
    def _chains(self, call: PathCall, options: AGIOptions) -> _Chains:
        """True and false classes of every example, flattened into the valid chains (example-major).

        One no-grad pass gives the number of classes: over every input when the true classes (``target``
        None) or the ``"top"`` rule need the outputs, else over the first input only.
        """
        n, device, rule = call.n_examples, call.inputs[0].device, options.false_classes
        _check_true_target_format(call.target)
        needs_outputs = call.target is None or (isinstance(rule, str) and rule == "top")
        outputs = self._outputs(call, n if needs_outputs else 1)
        n_outputs = outputs.shape[1]
        true_classes = _true_classes(call.target, outputs, n, device)
        if isinstance(rule, Tensor):
            classes = _explicit_classes(rule, n, n_outputs, device)
        elif rule == "spaced":
            classes = spaced_false_classes(n_outputs, options.n_false_classes, true_classes)
        elif rule == "all":
            classes = all_false_classes(n_outputs, true_classes)
        elif rule == "top":
            classes = top_false_classes(outputs, options.n_false_classes, true_classes)
        else:
            classes = random_false_classes(n_outputs, options.n_false_classes, true_classes, call.generator)
        classes = torch.where(classes == true_classes[:, None], -1, classes)
        valid = (classes >= 0).flatten()
        examples = torch.arange(n, device=device).repeat_interleave(classes.shape[1])[valid]
        _set_bar_total(call.bar, outputs.shape[0] + examples.numel() * options.n_iterations)
        return _Chains(examples, classes.flatten()[valid], true_classes.index_select(0, examples))

    def _outputs(self, call: PathCall, n_rows: int) -> Tensor:
        """The model's outputs at the first ``n_rows`` inputs, without gradients: ``(n_rows, C)``."""
        outputs = []
        with torch.no_grad():
            for rows in call.row_chunks(n_rows):
                examples = torch.arange(rows.start, rows.stop, device=call.inputs[0].device)
                _, args = call.rows_of(examples)
                output = _check_output(run_forward(call.forward_func, tuple(x[rows] for x in call.inputs), None, args))
                check_finite_pass(output, (), examples)
                outputs.append(output)
                call.bar.update(rows.stop - rows.start)
        return torch.cat(outputs)

    def _run_chains(
        self,
        call: PathCall,
        options: AGIOptions,
        starts: Tuple[Tensor, ...],
        examples: Tensor,
        false_classes: Tensor,
        true_classes: Tensor,
        bounds: List[Tuple[Any, Any]],
    ) -> Tuple[Tensor, ...]:
        """Every step of a chunk of chains (rows); returns each chain's summed terms (the starts' shapes).

        Chains that reached their class leave the batch: later passes run on the active rows only.
        """
        points = tuple(s.clone() for s in starts)
        totals = tuple(torch.zeros_like(s) for s in starts)
        rows: Optional[Tensor] = None  # the chains still running (None: every chain of the chunk)
        for iteration in range(options.n_iterations):
            current = _take(points, rows)
            (row_examples, row_false, row_true) = _take((examples, false_classes, true_classes), rows)
            reached, g_adv, g_true = self._step_gradients(call, options, current, row_examples, row_false, row_true)
            if options.early_stop and bool(reached.any()):
                _shrink_bar_total(call.bar, int(reached.sum()) * (options.n_iterations - iteration - 1))
                go = ~reached
                rows = (torch.arange(examples.shape[0], device=examples.device) if rows is None else rows)[go]
                if rows.numel() == 0:
                    break
                current, g_adv, g_true = (tuple(t[go] for t in ts) for ts in (current, g_adv, g_true))
            bases = current if options.step_from == "current" else _take(starts, rows)
            for i, (base, ga, gt) in enumerate(zip(bases, g_adv, g_true)):
                new = sign_step(base, ga, options.epsilon, *bounds[i])
                term = agi_term(gt, new, base)
                if rows is None:
                    totals[i].add_(term)
                    points[i].copy_(new)
                else:
                    totals[i].index_add_(0, rows, term)
                    points[i].index_copy_(0, rows, new)
        return totals

    def _step_gradients(
        self,
        call: PathCall,
        options: AGIOptions,
        points: Tuple[Tensor, ...],
        examples: Tensor,
        false_classes: Tensor,
        true_classes: Tensor,
    ) -> Tuple[Tensor, Optional[Tuple[Tensor, ...]], Optional[Tuple[Tensor, ...]]]:
        """One step's model work on rows: whether each row's argmax is its false class ``(R,)`` bool, and
        the gradients of the false and of the true class's score (None when every row has reached its class
        and ``early_stop`` is on: no backward pass then)."""
        _, args = call.rows_of(examples)
        with torch.enable_grad():
            leaves = tuple(p.detach().requires_grad_() for p in points)
            if self.gradient_func is compute_gradients:
                reached, g_adv, g_true, output = _one_forward_two_backwards(
                    call.forward_func, leaves, args, false_classes, true_classes, options
                )
            else:
                reached, g_adv, g_true, output = self._through_gradient_func(
                    call.forward_func, leaves, args, false_classes, true_classes, options
                )
        check_finite_pass(output, () if g_adv is None else g_adv + g_true, examples)
        call.bar.update(int(examples.shape[0]))
        return reached, g_adv, g_true

    def _through_gradient_func(self, forward_func, leaves, args, false_classes, true_classes, options):
        """The two gradients through the swappable ``self.gradient_func`` (two calls, one forward each)."""
        seen: List[Tensor] = []

        def attacked(*inputs_and_args):
            output = _check_output(forward_func(*inputs_and_args))
            seen.append(output.detach())
            return _scored(output, options.score)

        g_adv, _ = gradients_and_scores(self.gradient_func, attacked, leaves, false_classes, args)
        g_true, _ = gradients_and_scores(
            self.gradient_func, lambda *a: _scored(_check_output(forward_func(*a)), options.score), leaves,
            true_classes, args,
        )  # fmt: skip
        if seen:
            output = seen[-1]
        else:  # a gradient_func that never called the forward function
            with torch.no_grad():
                output = _check_output(run_forward(forward_func, leaves, None, args))
        reached = output.argmax(dim=1) == false_classes
        return reached, tuple(g.detach() for g in g_adv), tuple(g.detach() for g in g_true), output


# ------------------------------------------------------------------------------------------ helpers
def _one_forward_two_backwards(forward_func, leaves, args, false_classes, true_classes, options):
    """Both gradients from one forward pass (two ``torch.autograd.grad`` calls, the graph kept once)."""
    output = _check_output(run_forward(forward_func, leaves, None, args))
    reached = output.detach().argmax(dim=1) == false_classes
    if options.early_stop and bool(reached.all()):
        return reached, None, None, output.detach()
    if not output.requires_grad:
        raise ValueError(_NO_GRAPH)
    scores = _scored(output, options.score)
    adv = scores.gather(1, false_classes[:, None]).sum()
    true = scores.gather(1, true_classes[:, None]).sum()
    try:
        g_adv = torch.autograd.grad(adv, leaves, retain_graph=True)
    except RuntimeError as error:  # an input the output does not depend on (e.g. a detaching forward)
        if "not have been used in the graph" not in str(error):
            raise
        raise ValueError(_NO_GRAPH) from error
    g_true = torch.autograd.grad(true, leaves)
    return reached, g_adv, g_true, output.detach()


def _take(tensors: Tuple[Tensor, ...], rows: Optional[Tensor]) -> Tuple[Tensor, ...]:
    return tensors if rows is None else tuple(t.index_select(0, rows) for t in tensors)


def _scored(output: Tensor, score: str) -> Tensor:
    return torch.softmax(output, dim=1) if score == "softmax" else output


def _check_output(output: Any) -> Tensor:
    if not isinstance(output, Tensor) or output.dim() != 2 or output.shape[1] < 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(
            "AdversarialGradientIntegration needs a classifier: the forward function must return "
            f"(N, n_classes) scores with at least 2 classes, got {shape}"
        )
    return output


def _set_bar_total(bar: Any, total: int) -> None:
    if hasattr(bar, "total"):
        bar.total = total
        bar.refresh()


def _shrink_bar_total(bar: Any, skipped: int) -> None:
    """Stopped chains skip their remaining passes: the bar's total drops (it counts passes really run)."""
    if hasattr(bar, "total") and bar.total is not None and skipped:
        _set_bar_total(bar, bar.total - skipped)


def _check_true_target_format(target: Any) -> None:
    """``target`` must name one class per example (the true class): no multi-index tuples."""
    bad = None
    if isinstance(target, tuple) and len(target) != 1:
        bad = target
    elif isinstance(target, Tensor) and target.dim() == 2 and target.shape[1] != 1:
        bad = f"a tensor of shape {tuple(target.shape)}"
    elif isinstance(target, list):
        bad = next((t for t in target if isinstance(t, tuple) and len(t) != 1), None)
    if bad is not None:
        raise ValueError(
            "AdversarialGradientIntegration's `target` names each example's true class (one index into the "
            f"model's (N, n_classes) output), got {bad!r}"
        )


def _true_classes(target: Any, outputs: Tensor, n: int, device) -> Tensor:
    """The true class of every example, ``(N,)`` long (None: the model's argmax at the input)."""
    n_outputs = outputs.shape[1]
    if target is None:
        classes = outputs.argmax(dim=1)
    elif isinstance(target, Tensor):
        classes = target.reshape(-1).to(device=device, dtype=torch.long).expand(n) if target.numel() == 1 else None
        classes = target.reshape(n).to(device=device, dtype=torch.long) if classes is None else classes
    else:
        entries = target if isinstance(target, list) else [target] * n
        classes = torch.tensor([t[0] if isinstance(t, tuple) else int(t) for t in entries], device=device)
    _check_class_range(classes, n_outputs, "`target`")
    return classes.remainder(n_outputs)  # negative indices count from the end, as for any Captum target


def _check_class_range(classes: Tensor, n_outputs: int, name: str) -> None:
    if classes.numel() and (int(classes.min()) < -n_outputs or int(classes.max()) >= n_outputs):
        raise ValueError(
            f"{name} holds class indices outside the model's {n_outputs} outputs: "
            f"[{int(classes.min())}, {int(classes.max())}]"
        )


def _explicit_classes(classes: Tensor, n: int, n_outputs: int, device) -> Tensor:
    """Explicit false classes as ``(N, k)`` long (``-1`` = padding)."""
    if classes.dim() == 2 and classes.shape[0] != n:
        raise ValueError(
            f"`false_classes` as a 2-d tensor needs one row per example ({n}), got shape {tuple(classes.shape)}"
        )
    classes = classes.to(device).expand(n, -1) if classes.dim() == 1 else classes.to(device)
    if classes.numel() and (int(classes.min()) < -1 or int(classes.max()) >= n_outputs):
        raise ValueError(
            f"`false_classes` must hold class indices in [0, {n_outputs}) (or -1 as padding), got values in "
            f"[{int(classes.min())}, {int(classes.max())}]"
        )
    return classes


def _explicit_k(false_classes: Any) -> Optional[int]:
    return int(false_classes.shape[-1]) if isinstance(false_classes, Tensor) else None


def _check_false_classes(value: Any) -> Union[str, Tensor]:
    if isinstance(value, str):
        if value not in CLASS_RULES:
            raise ValueError(f"`false_classes` must be one of {CLASS_RULES} or class ids, got {value!r}")
        return value
    if isinstance(value, list):
        try:
            value = torch.tensor(value, dtype=torch.long)
        except (TypeError, ValueError) as error:
            raise TypeError(f"`false_classes` as a list must hold ints (or lists of ints), got {value!r}") from error
    if not isinstance(value, Tensor):
        raise TypeError(
            f"`false_classes` must be one of {CLASS_RULES}, a tensor or a list of class ids, got {type(value).__name__}"
        )
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"`false_classes` must hold integer class ids, got dtype {value.dtype}")
    if value.dim() not in (1, 2) or value.shape[-1] == 0:
        raise ValueError(
            f"`false_classes` must be (k,) or (N, k) class ids with k >= 1, got shape {tuple(value.shape)}"
        )
    return value.long()


def _check_clamp(value: Any) -> Bounds:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"`clamp` must be None or a (low, high) pair, got {value!r}")
    low, high = value
    for name, bound in (("low", low), ("high", high)):
        number = isinstance(bound, Real) and not isinstance(bound, bool) and math.isfinite(bound)
        tensor = isinstance(bound, Tensor) and bound.dtype.is_floating_point and bool(torch.isfinite(bound).all())
        if not (number or tensor):
            raise TypeError(f"`clamp` {name} bound must be a finite number or floating tensor, got {bound!r}")
    if isinstance(low, Real) and isinstance(high, Real) and not low < high:
        raise ValueError(f"`clamp` must have low < high, got {value!r}")
    return (float(low) if isinstance(low, Real) else low, float(high) if isinstance(high, Real) else high)


def _broadcasts(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _input_bounds(clamp: Bounds, inputs: Tuple[Tensor, ...]) -> List[Tuple[Any, Any]]:
    """``clamp`` as per-input ``(low, high)`` (tensors on each input's device and dtype, with a leading row
    dimension); warns when an input lies outside its bounds (the iterates would jump to them)."""
    if clamp is None:
        return [(None, None)] * len(inputs)
    bounds = []
    for i, x in enumerate(inputs):
        pair = []
        for bound in clamp:
            if isinstance(bound, Tensor):
                if not _broadcasts(bound.shape, x.shape[1:]):
                    raise ValueError(
                        f"`clamp` bound of shape {tuple(bound.shape)} does not broadcast to the per-example shape "
                        f"{tuple(x.shape[1:])} of inputs[{i}]"
                    )
                bound = bound.to(device=x.device, dtype=x.dtype).unsqueeze(0)
            pair.append(bound)
        low, high = pair
        if isinstance(low, Tensor) or isinstance(high, Tensor):
            if bool((torch.as_tensor(low, dtype=x.dtype) > torch.as_tensor(high, dtype=x.dtype)).any()):
                raise ValueError("`clamp` must have low <= high everywhere")
        if x.numel() and bool(((x < low) | (x > high)).any()):
            warnings.warn(
                f"inputs[{i}] lie outside `clamp` (values in [{float(x.min()):.4g}, {float(x.max()):.4g}]): the "
                "first step jumps onto the bounds. Pass the valid range of your inputs (e.g. per-channel "
                "bounds for normalised images) or clamp=None",
                UserWarning,
                stacklevel=5,
            )
        bounds.append((low, high))
    return bounds
