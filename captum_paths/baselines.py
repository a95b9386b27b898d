"""Baseline specifications: the path end points every captum_paths method and metric accepts.

Wherever an argument takes a baseline (``baselines`` of the methods, SAMP's ``insertion_start``, the metrics'
``substrate`` / ``baselines``), a specification is one of

* ``None``: the method's default;
* an ``int`` / ``float``: a constant image;
* a ``torch.Tensor`` broadcastable to the input (``(N, ...)``, ``(1, ...)`` or the per-example shape);
* a string: ``"zeros"``, ``"mean"``, ``"uniform"``, ``"gaussian"``, ``"blur"`` (each with its defaults);
* a :class:`Baseline` object (``Zeros()``, ``Constant(v)``, ``Mean()``, ``Uniform(low, high)``,
  ``GaussianNoise(std)``, ``Blur(klen, sigma)``) to set the parameters;
* a callable taking the input tensor and returning a tensor broadcastable to it.

For tuple inputs, pass a tuple with one specification per input tensor, or a single specification for all.
Random baselines draw from the ``torch.Generator`` the caller passes, so they are reproducible.
"""

import functools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Baseline",
    "Zeros",
    "Constant",
    "Mean",
    "Uniform",
    "GaussianNoise",
    "Blur",
    "rise_gaussian_kernel",
    "gaussian_blur",
    "resolve_baselines",
]


@functools.lru_cache(maxsize=32)
def _rise_kernel_numpy(klen: int, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1.0
    return gaussian_filter(delta, sigma)


def rise_gaussian_kernel(klen: int = 11, sigma: float = 5.0, dtype=torch.float32, device=None) -> Tensor:
    """The ``klen x klen`` blur kernel of RISE's causal metric (Petsiuk et al. 2018), shape ``(klen, klen)``.

    RISE builds it as ``scipy.ndimage.gaussian_filter`` of a centred unit impulse on a ``klen x klen``
    grid. Because scipy's default ``reflect`` boundary folds the Gaussian's tails back into the window,
    this is *not* a truncated, renormalised Gaussian when ``4 * sigma > klen // 2`` (e.g. RISE's 11 / 5):
    we build it the same way so that blurred substrates match RISE to float precision. It sums to one.
    """
    if not isinstance(klen, int) or isinstance(klen, bool) or klen < 1:
        raise ValueError(f"`klen` must be a positive int, got {klen!r}")
    if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"`sigma` must be a positive finite number, got {sigma!r}")
    return torch.as_tensor(_rise_kernel_numpy(klen, float(sigma)), dtype=dtype, device=device)


def gaussian_blur(x: Tensor, klen: int = 11, sigma: float = 5.0) -> Tensor:
    """Blur every channel of ``x`` (``(N, C, H, W)``) as RISE does: its kernel, zero padding ``klen // 2``.

    Channels are blurred independently (depthwise convolution). Returns a tensor of ``x``'s shape,
    dtype and device.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"gaussian_blur expects an (N, C, H, W) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    kernel = rise_gaussian_kernel(klen, sigma, dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    weight = kernel.expand(channels, 1, klen, klen)
    out = F.conv2d(x, weight, padding=klen // 2, groups=channels)
    if klen % 2 == 0:  # even kernels grow the map by one: crop back, as an odd kernel would leave it
        out = out[..., : x.shape[-2], : x.shape[-1]]
    return out


class Baseline(float):
    """A named baseline rule: ``baseline(x, generator)`` returns a tensor of ``x``'s shape.

    Why a ``float``: Captum's ``NoiseTunnel`` (and ``captum._utils.common._format_baseline``) let only tensors
    and numbers through as ``baselines``. A specification object is a number to Captum (a NaN it never
    reads: NoiseTunnel passes numbers on unchanged), so ``NoiseTunnel(method).attribute(x, baselines=Blur())``
    works; captum_paths resolves it by its rule. The string forms (``"blur"``, ...) are plain strings, which
    Captum's NoiseTunnel rejects: under NoiseTunnel use the object form (``Blur()``, ``Mean()``, ...).
    Do not pass these objects to Captum's own methods (``IntegratedGradients`` would read the NaN).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> "Baseline":
        return super().__new__(cls, float("nan"))

    def __call__(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"

    def __eq__(self, other: Any) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


class Zeros(Baseline):
    def __call__(self, x, generator=None):
        return torch.zeros_like(x)


class Constant(Baseline):
    def __init__(self, value: float):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            raise ValueError(f"`value` must be a finite number, got {value!r}")
        self.value = float(value)

    def __call__(self, x, generator=None):
        return torch.full_like(x, self.value)


class Mean(Baseline):
    """Per example (and per channel for ``(N, C, ...)`` inputs with 3+ dims): the mean value."""

    def __call__(self, x, generator=None):
        dims = tuple(range(2, x.dim())) if x.dim() >= 3 else tuple(range(1, x.dim()))
        if not dims:
            return x.clone()
        return x.mean(dim=dims, keepdim=True).expand_as(x).clone()


class Uniform(Baseline):
    """Uniform noise on ``[low, high)``; ``None`` bounds take the input's min / max (over the batch)."""

    def __init__(self, low: Optional[float] = None, high: Optional[float] = None):
        if low is not None and high is not None and not low < high:
            raise ValueError(f"`low` must be below `high`, got low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def __call__(self, x, generator=None):
        low = float(x.min()) if self.low is None else self.low
        high = float(x.max()) if self.high is None else self.high
        u = torch.rand(x.shape, generator=generator, device=_generator_device(generator, x), dtype=x.dtype)
        return (low + (high - low) * u).to(x.device)


class GaussianNoise(Baseline):
    """The input plus i.i.d. ``N(0, std^2)`` noise (the 'Gaussian' baseline of Sturmfels et al. 2020)."""

    def __init__(self, std: float = 1.0):
        if not isinstance(std, (int, float)) or not np.isfinite(std) or std <= 0:
            raise ValueError(f"`std` must be a positive finite number, got {std!r}")
        self.std = float(std)

    def __call__(self, x, generator=None):
        noise = torch.randn(x.shape, generator=generator, device=_generator_device(generator, x), dtype=x.dtype)
        return x + self.std * noise.to(x.device)


class Blur(Baseline):
    """The input blurred with RISE's kernel (see :func:`gaussian_blur`). Needs ``(N, C, H, W)`` inputs."""

    def __init__(self, klen: int = 11, sigma: float = 5.0):
        rise_gaussian_kernel(klen, sigma)  # validates
        self.klen, self.sigma = klen, float(sigma)

    def __call__(self, x, generator=None):
        return gaussian_blur(x, self.klen, self.sigma)


_NAMED = {
    "zeros": Zeros,
    "zero": Zeros,
    "mean": Mean,
    "uniform": Uniform,
    "gaussian": GaussianNoise,
    "blur": Blur,
}

BaselineSpec = Union[None, int, float, str, Tensor, Baseline, Callable[[Tensor], Tensor]]
#: one specification for every input tensor, or a tuple with one per input
BaselinesType = Union[BaselineSpec, Tuple[BaselineSpec, ...]]


def _generator_device(generator: Optional[torch.Generator], x: Tensor):
    # draw on the generator's device (a CPU generator with CUDA inputs draws on the CPU, then moves)
    return generator.device if generator is not None else x.device


def _one_baseline(spec: BaselineSpec, x: Tensor, name: str, generator) -> Tensor:
    if isinstance(spec, str):
        if spec not in _NAMED:
            raise ValueError(f"`{name}`: unknown baseline name {spec!r}; expected one of {sorted(_NAMED)}")
        spec = _NAMED[spec]()
    if isinstance(spec, bool):
        raise TypeError(f"`{name}` must not be a bool")
    if isinstance(spec, (int, float)) and not isinstance(spec, Baseline):
        if not np.isfinite(spec):
            raise ValueError(f"`{name}` must be finite, got {spec!r}")
        return torch.full_like(x, float(spec))
    if isinstance(spec, Blur) and x.dim() != 4:
        raise ValueError(
            f"`{name}`: the blur baseline needs (N, C, H, W) images, got an input of shape {tuple(x.shape)}; "
            "pass a number, a tensor or 'zeros' instead"
        )
    if isinstance(spec, Baseline):
        out = spec(x, generator)
    elif isinstance(spec, Tensor):
        out = spec
    elif callable(spec):
        out = spec(x)
        if not isinstance(out, Tensor):
            raise TypeError(f"`{name}`: the callable must return a torch.Tensor, got {type(out).__name__}")
    else:
        raise TypeError(
            f"`{name}` must be None, a number, a string, a Tensor, a Baseline or a callable, got {type(spec).__name__}"
        )
    return _broadcast_to_input(out, x, name)


def _broadcast_to_input(b: Tensor, x: Tensor, name: str) -> Tensor:
    if b.dim() == x.dim() - 1:
        b = b.unsqueeze(0)
    ok = b.dim() == x.dim() and all(bs in (1, xs) for bs, xs in zip(b.shape, x.shape))
    if not ok:
        raise ValueError(
            f"`{name}` of shape {tuple(b.shape)} does not match the input of shape {tuple(x.shape)}: "
            "expected the input's shape, its per-example shape, or a shape broadcastable to it"
        )
    b = b.to(device=x.device, dtype=x.dtype).expand_as(x)
    if not torch.isfinite(b).all():
        raise ValueError(f"`{name}` contains non-finite values")
    return b


def resolve_baselines(
    baselines: Union[BaselineSpec, Sequence[BaselineSpec]],
    inputs: Tuple[Tensor, ...],
    default: BaselineSpec = "zeros",
    name: str = "baselines",
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, ...]:
    """Turn a baseline specification into a tuple of tensors of exactly the inputs' shapes.

    ``baselines`` may be one specification for every input tensor or a tuple with one per input.
    Errors name ``name`` and say what was expected.
    """
    if baselines is None:
        baselines = default
    if isinstance(baselines, tuple):
        if len(baselines) != len(inputs):
            raise ValueError(f"`{name}` is a tuple of {len(baselines)} but there are {len(inputs)} input tensors")
        specs = baselines
    else:
        specs = (baselines,) * len(inputs)
    return tuple(_one_baseline(default if s is None else s, x, name, generator) for s, x in zip(specs, inputs))
