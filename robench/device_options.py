"""How a gradient attack loop runs its model on the device: autocast, channels_last, torch.compile.

One option set for every gradient attack loop (``pgd``, ``bpda-eot``, ``mask-adaptive``, the
momentum family, the training recipes' inner attacks): attacks take the options as keyword
options, :func:`resolve` turns ``"auto"`` into the device's defaults, and
:meth:`DeviceOptions.wrap` gives the model call every loop makes. The input, its gradient, the
step and the projection always stay float32; only the model's forward (and so its backward)
runs in the autocast dtype.

Defaults (``"auto"``): on CUDA, bf16 autocast and channels_last on, compile off. On CPU every
option is off. The issue asks "off unless native bf16"; robench keeps the CPU off even where
the processor has native bf16 (``avx512_bf16``, AMX), on purpose: CPU results then stay
float32-exact, equal to torchattacks' draw for draw and comparable with every stored CPU
result. Ask for ``autocast=bf16`` to use it. The options a cell ran with are recorded in its
provenance (:func:`record`), outside its key: like the device itself, they change rounding,
not what the cell means.
"""

from __future__ import annotations

import warnings
import weakref
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

AUTO = "auto"
# fp16 needs no GradScaler here: the loops differentiate with respect to the float32 input only,
# and every consumer of the gradient (sign step, L2 normalisation, L1-normalised momentum) is
# invariant to its scale. What fp16 can lose is gradient entries that underflow to zero (a
# pixel that does not move that step); bf16 has float32's exponent range, hence the CUDA default.
AUTOCAST = {None: None, "off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_FLOAT32 = ContextVar("robench_device_options_float32", default=False)


@dataclass(frozen=True)
class DeviceOptions:
    """Resolved options of one attack run (robench): ``autocast`` None | ``"bf16"`` | ``"fp16"``, two switches.

    Args:
        autocast: forward passes under ``torch.autocast(device, dtype)``; the logits come back float32.
        channels_last: the model gets its 4-D input in ``torch.channels_last`` memory format. Only
            the input is converted, never the model, which other cells and views may share.
        compile: the model runs through ``torch.compile``; when compiling its forward or backward
            fails it runs eagerly and one warning says why. The first call runs one extra forward
            and backward pass to find out (a stochastic model draws once more).
    """

    autocast: str | None = None
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        if self.autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of auto, bf16, fp16, off, got {self.autocast!r}")
        object.__setattr__(self, "autocast", None if self.autocast == "off" else self.autocast)
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true, false or auto, got {getattr(self, name)!r}")

    @property
    def on(self) -> bool:
        """True when any option changes how the model runs."""
        return self.autocast is not None or self.channels_last or self.compile

    def to_json(self) -> dict:
        return asdict(self)

    def autocast_context(self, device_type: str):
        """``torch.autocast`` for ``device_type`` (``"cpu"``, ``"cuda"``) when autocast is on, else a no-op."""
        dtype = AUTOCAST[self.autocast]
        if dtype is None or _FLOAT32.get():
            return nullcontext()
        return torch.autocast(device_type, dtype=dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in channels_last memory format when that option is on (4-D images only)."""
        if not self.channels_last:
            return x
        if x.dim() != 4:
            raise ValueError(f"channels_last needs 4-D images (B, C, H, W); got shape {tuple(x.shape)}; "
                             "set channels_last=false")
        return x.contiguous(memory_format=torch.channels_last)

    def wrap(self, model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``model``'s forward under these options (``model`` itself when all are off); float32 logits out."""
        if not self.on:
            return model
        forward = compiled(model) if self.compile else model

        def call(x: torch.Tensor) -> torch.Tensor:
            with self.autocast_context(x.device.type):
                out = forward(self.layout(x))
            return out.float() if self.autocast is not None else out

        return call


def check(*, autocast: Any = AUTO, channels_last: Any = AUTO, compile: Any = False) -> None:
    """Raise ValueError for option values :func:`resolve` cannot take (attacks check at construction)."""
    resolve("cpu", autocast=autocast, channels_last=channels_last, compile=compile)


def resolve(device: "torch.device | str", *, autocast: Any = AUTO, channels_last: Any = AUTO,
            compile: Any = False) -> DeviceOptions:
    """The options on ``device``: ``"auto"`` gives bf16 and channels_last on CUDA, everything off elsewhere.

    ``autocast``: ``"auto"``, ``"bf16"``, ``"fp16"``, ``"off"`` or None (off). ``channels_last``
    and ``compile``: True, False or ``"auto"`` (compile's ``auto`` is off: compilation pays only
    for long runs and can fail on unusual models).
    """
    cuda = torch.device(device).type == "cuda"
    if autocast == AUTO:
        autocast = "bf16" if cuda else None
    if channels_last == AUTO:
        channels_last = cuda
    if compile == AUTO:
        compile = False
    return DeviceOptions(autocast=autocast, channels_last=channels_last, compile=compile)


def record(attack: Any, device: "torch.device | str") -> dict | None:
    """The device options ``attack`` resolves to on ``device`` (JSON), or None when it takes none; for provenance."""
    options = getattr(attack, "device_options", None)
    return None if options is None else options(device).to_json()


@contextmanager
def float32() -> Iterator[None]:
    """Inside the block, wrapped model calls skip autocast: early stop confirms a low-precision verdict in float32."""
    token = _FLOAT32.set(True)
    try:
        yield
    finally:
        _FLOAT32.reset(token)


class _Compiled:
    """``torch.compile(model)``, falling back to ``model`` itself, with one warning, when compiling fails.

    torch.compile compiles lazily: the forward graph at the first call, the backward graph at the
    first backward pass. The first call therefore runs one forward and backward pass on a copy
    of its input, so that a failure of either shows here, not halfway through an attack.
    """

    def __init__(self, model: Callable[[torch.Tensor], torch.Tensor]):
        self.model = model
        self.tried = False
        try:
            self.compiled = torch.compile(model)
        except Exception as error:  # noqa: BLE001 - any failure of the compiler means: run eagerly
            self._fall_back(error)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                if not self.tried:
                    self._try(x)
                return self.compiled(x)
            except Exception as error:  # noqa: BLE001 - dynamo/inductor raise many types; eager decides
                self._fall_back(error)
        return self.model(x)

    def _try(self, x: torch.Tensor) -> None:
        probe = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = self.compiled(probe)
            if out.requires_grad:
                torch.autograd.grad(out.float().sum(), probe, allow_unused=True)
        self.tried = True

    def _fall_back(self, error: Exception) -> None:
        self.compiled = None
        message = str(error).splitlines()[0] if str(error) else ""
        warnings.warn(f"torch.compile failed on {type(self.model).__name__} ({type(error).__name__}: {message}); "
                      "running it eagerly", RuntimeWarning, stacklevel=3)


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, _Compiled]" = weakref.WeakKeyDictionary()


def compiled(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` compiled once per module (later calls reuse it; a failure warns once), eager where compiling fails."""
    try:
        found = _COMPILED.get(model)
    except TypeError:  # not weak-referenceable (a plain function): compiled for this run only
        return _Compiled(model)
    if found is None:
        found = _COMPILED[model] = _Compiled(model)
    return found


class TakesDeviceOptions:
    """Mixin of the attacks that take the device options as keyword options of the same names."""

    autocast: "str | None" = AUTO
    channels_last: "bool | str" = AUTO
    compile: "bool | str" = False

    def set_device_options(self, *, autocast: Any, channels_last: Any, compile: Any) -> None:
        """Check and keep the options as given (``"auto"`` is resolved per run, on the images' device)."""
        check(autocast=autocast, channels_last=channels_last, compile=compile)
        self.autocast, self.channels_last, self.compile = autocast, channels_last, compile

    def device_options(self, device: "torch.device | str") -> DeviceOptions:
        """The options this attack runs with on ``device``."""
        return resolve(device, autocast=self.autocast, channels_last=self.channels_last, compile=self.compile)
