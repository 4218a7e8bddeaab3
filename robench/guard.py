"""Checking that a cell leaves the models and defenses it was given as it found them (DESIGN §5).

Models and defenses are built once and shared by the cells of a run, so a plugin that changes
one (an attack that zeroes the weights, a defense whose forward updates its buffers) would
corrupt every later cell and store its numbers under the key of a clean run. :class:`Guard`
fingerprints every parameter and buffer before a cell and compares after each batch, before
the batch is stored. (Training mode is not part of it: the runner's views set it, and
:class:`robench.Attack` restores it around every attack.)

The fingerprint is exact on bits, not a cryptographic hash: per tensor, the sum of its raw bit
patterns and the sum of the XOR of neighbouring elements' bits (in int64), so a change of any
one element changes it, and so do most reorderings (not, say, a reversal). It guards against
mistakes, not malice: a plugin runs in the same process and could defeat any check. Two
reductions per tensor run on the tensor's device; one transfer per object brings the results
back. Measured on resnet18-standard (11.2M parameters and buffers) on one contended CPU core:
about 0.1 s per fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import Callable

import torch
from torch import nn

BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ObjectModified(RuntimeError):
    """A plugin changed the parameters, buffers or mode of a model or defense it was given (``kind``, ``spec``)."""

    def __init__(self, message: str, kind: str, spec):
        super().__init__(message)
        self.kind, self.spec = kind, spec


@dataclass(frozen=True)
class Guarded:
    """An object a cell uses: its registry kind and spec, the module, and the plugins that could change it."""

    kind: str
    spec: object
    module: nn.Module
    suspects: tuple[str, ...]


def fingerprint(module: nn.Module) -> dict[str, tuple]:
    """Per parameter and buffer: dtype, shape and two sums of its bits."""
    named = list(chain(module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)))
    with torch.no_grad():
        sums = [_sums(tensor) for _, tensor in named]
    values = torch.stack(sums).tolist() if sums else []
    return {name: (str(t.dtype), tuple(t.shape), *v) for (name, t), v in zip(named, values)}


def _sums(tensor: torch.Tensor) -> torch.Tensor:
    bits = tensor.detach().reshape(-1)
    if bits.dtype.is_floating_point or bits.dtype.is_complex:
        bits = bits.view(BITS.get(bits.element_size(), torch.uint8))
    return torch.stack([bits.sum(dtype=torch.int64), (bits[1:] ^ bits[:-1]).sum(dtype=torch.int64)])


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    """Names of the tensors that differ between two fingerprints (changed, added or removed)."""
    return sorted(name for name in {*before, *after} if before.get(name) != after.get(name))


class Guard:
    """Fingerprints of a cell's models and defenses, and a check that they still hold.

    ``original`` gives an object's fingerprint as first seen (default: taken now); a run that
    remembers it per object fingerprints each object once, not once per cell, and catches a
    change made at any time since.
    """

    def __init__(self, objects: list[Guarded], original: Callable[[nn.Module], dict] | None = None):
        self.objects = objects
        self.before = [(original or fingerprint)(found.module) for found in objects]

    def check(self) -> None:
        """Raise :class:`ObjectModified` naming the object, what changed and the plugins that ran on it."""
        for found, before in zip(self.objects, self.before):
            changed = changes(before, fingerprint(found.module))
            if changed:
                shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
                raise ObjectModified(
                    f"{found.kind[:-1]} {found.spec} was modified during this cell ({shown}) by "
                    f"{' or '.join(found.suspects)}: a plugin must not change the models and defenses it is given "
                    "(no in-place updates); the batch computed on it was not stored and "
                    "the object is rebuilt for the next cell",
                    found.kind, found.spec,
                )
