"""Argument checks shared by the methods and metrics: each raises a clear error naming the argument."""

import math
from numbers import Integral, Real
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "check_positive_int",
    "check_nonnegative_int",
    "check_positive_float",
    "check_probability",
    "check_finite_inputs",
    "check_same_batch",
    "check_internal_batch_size",
    "check_generator",
    "check_bool",
    "check_target",
    "check_additional_forward_args",
    "check_features_per_step",
    "features_per_step_count",
]


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return int(value)


def check_nonnegative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative int, got {value!r}")
    return int(value)


def check_positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


def check_probability(value: Any, name: str, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` in [0, 1], with either end excluded on request."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    lo_ok = value > 0 if low_open else value >= 0
    hi_ok = value < 1 if high_open else value <= 1
    if not (lo_ok and hi_ok):
        interval = ("(" if low_open else "[") + "0, 1" + (")" if high_open else "]")
        raise ValueError(f"`{name}` must lie in {interval}, got {value!r}")
    return float(value)


def check_finite_inputs(inputs: Tuple[Tensor, ...], name: str = "inputs") -> None:
    for i, x in enumerate(inputs):
        if not x.dtype.is_floating_point:
            raise TypeError(
                f"`{name}`[{i}] must be a real floating-point tensor (gradients are taken), got dtype {x.dtype}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"`{name}`[{i}] contains non-finite values (nan or inf)")


def check_same_batch(inputs: Tuple[Tensor, ...], name: str = "inputs") -> int:
    if any(x.dim() == 0 for x in inputs):
        raise ValueError(f"`{name}` must have a batch dimension (dim 0), got a 0-d tensor")
    n = inputs[0].shape[0]
    if any(x.shape[0] != n for x in inputs):
        raise ValueError(f"every tensor in `{name}` must have the same batch size, got {[x.shape[0] for x in inputs]}")
    return n


def check_internal_batch_size(value: Any, name: str = "internal_batch_size") -> Optional[int]:
    return None if value is None else check_positive_int(value, name)


def check_generator(generator: Any, name: str = "generator") -> Optional[torch.Generator]:
    """Accept ``None``, a ``torch.Generator`` or an int seed (turned into a fresh CPU generator)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, Integral) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(int(generator))
    raise TypeError(f"`{name}` must be None, an int seed or a torch.Generator, got {type(generator).__name__}")


def check_bool(value: Any, name: str) -> bool:
    """A real ``bool`` (``"no"`` or ``0`` would silently mean something else)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _check_tensor_target(target: Tensor, n_examples: int) -> None:
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"`target` tensor must hold integer indices, got dtype {target.dtype}")
    if target.numel() > 1 and (target.dim() not in (1, 2) or target.shape[0] != n_examples):
        raise ValueError(
            f"`target` tensor must have one element or one row per example (shape ({n_examples},)), "
            f"got shape {tuple(target.shape)}"
        )


def check_target(target: Any, n_examples: int) -> None:
    """Every Captum target format, checked against the batch size (indices are checked at the first pass).

    ``None``; an int; a tuple of ints (one index per output dimension); a tensor of integer indices with one
    element or one row per example; a list of ``n_examples`` ints or tuples of ints.
    """
    if target is None or _is_int(target):
        return
    if isinstance(target, tuple):
        if not all(_is_int(t) for t in target):
            raise TypeError(f"`target` as a tuple must hold ints (one index per output dimension), got {target!r}")
    elif isinstance(target, Tensor):
        _check_tensor_target(target, n_examples)
    elif isinstance(target, list):
        if len(target) != n_examples:
            raise ValueError(f"`target` is a list of {len(target)} entries but there are {n_examples} examples")
        for t in target:
            if not (_is_int(t) or (isinstance(t, tuple) and all(_is_int(i) for i in t))):
                raise TypeError(f"`target` list entries must be ints or tuples of ints, got {t!r}")
    else:
        raise TypeError(
            f"`target` must be None, an int, a tuple, an integer tensor or a list, got {type(target).__name__}"
        )


def check_additional_forward_args(additional_forward_args: Optional[Tuple], n_examples: int) -> None:
    """Tensor arguments with a batch dimension must have one row per example (others are shared)."""
    if additional_forward_args is None:
        return
    for i, a in enumerate(additional_forward_args):
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] != n_examples:
            raise ValueError(
                f"`additional_forward_args`[{i}] is a tensor with {a.shape[0]} rows but there are "
                f"{n_examples} examples: tensor arguments need one row per example (or no batch dimension)"
            )


def check_features_per_step(value: Any, name: str = "features_per_step") -> None:
    """``None`` (the caller's default rule), a positive int count, or a float fraction in ``(0, 1]``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"`{name}` must be None, a positive int or a float in (0, 1], got {value!r}")
    if isinstance(value, Integral):
        check_positive_int(value, name)
    elif not (math.isfinite(value) and 0 < value <= 1):
        raise ValueError(f"`{name}` as a float is a fraction of the features and must lie in (0, 1], got {value!r}")


def features_per_step_count(value: Any, n_features: int, name: str = "features_per_step") -> int:
    """A checked int or fraction (see :func:`check_features_per_step`, not ``None``) as a count of features:
    the int itself, or ``max(1, round(fraction * n_features))``."""
    check_features_per_step(value, name)
    if isinstance(value, Integral):
        return int(value)
    return max(1, int(round(value * n_features)))
