"""A chain of defenses applied in order, e.g. RDP's dynamic noise layer in front of another purifier."""

from __future__ import annotations

import torch
from torch import nn

from robench import registry
from robench.defense import Defense, gradient_view
from robench.spec import Spec, parse_spec


class Compose(Defense):
    """Apply ``defenses`` left to right: ``compose:defenses=["gaussian-noise:sigma=0.05","jpeg"]``.

    Each part is built from its spec string through the ``defenses`` registry (so any registered
    defense, a nested ``compose`` included) and kept in an ``nn.ModuleList``, so ``.to(device)``,
    ``.eval()`` and ``state_dict`` reach every part.

    Attributes are derived from the parts, per instance (they shadow the class defaults):

    * ``stochastic``: any part is stochastic;
    * ``differentiable``: every part is differentiable;
    * ``version``: ``"1+"`` then the parts' versions joined by ``+`` (e.g. ``"1+1+1"``);
    * ``checkpoints``: the parts' checkpoints, each name prefixed by the part's index (``"1.name"``).

    BPDA for a chain (used when some part is not differentiable): :meth:`surrogate` runs the
    chain with every part replaced by its own gradient view (``robench.defense.gradient_view``):
    a differentiable part runs for real, a non-differentiable part returns its real output with
    the gradient of its own surrogate. So each part's backward is evaluated at the input that
    part really receives, which is what BPDA prescribes (only the backward of the
    non-differentiable layers is approximated; Athalye et al. 2018). Composing the parts'
    surrogates instead (e.g. ``median(x)`` for ``jpeg`` then ``median-filter``) would evaluate
    the median's gradient at the unpurified image. Consequences to know:

    * the surrogate's *value* is a real output of the chain, so a "surrogate far from the
      defense" check on a ``compose`` measures only its randomness; check the parts instead;
    * the core BPDA view runs the chain twice (value and surrogate); for a stochastic chain the
      two runs use independent draws, so the gradient belongs to another draw than the value,
      which is what EOT averages over anyway.

    Args:
        defenses: a non-empty list of defense spec strings (or :class:`robench.spec.Spec`).
    """

    version = "1"

    def __init__(self, *, defenses: list):
        super().__init__()
        if isinstance(defenses, (str, Spec)) or not isinstance(defenses, (list, tuple)) or not defenses:
            raise ValueError(
                "defenses must be a non-empty list of defense specs, e.g. "
                f'defenses=["gaussian-noise:sigma=0.05","jpeg"]; got {defenses!r}'
            )
        parts = []
        for i, spec in enumerate(defenses):
            if not isinstance(spec, (str, Spec)):
                raise ValueError(f"defenses[{i}] must be a spec string like 'jpeg:quality=75', got {spec!r}")
            part = registry.build("defenses", parse_spec(spec))
            if not isinstance(part, Defense):
                raise ValueError(f"defenses[{i}] = {str(spec)!r} built {type(part).__name__}, not a Defense")
            parts.append(part)
        self.specs = tuple(str(parse_spec(s)) for s in defenses)
        self.parts = nn.ModuleList(parts)
        self.stochastic = any(p.stochastic for p in parts)
        self.differentiable = all(p.differentiable for p in parts)
        self.version = "+".join([type(self).version, *(str(p.version) for p in parts)])

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """The chain with every part as attacks differentiate it (per-part BPDA); see the class doc."""
        for part in self.parts:
            x = gradient_view(part)(x)
        return x

    @property
    def checkpoints(self) -> dict[str, str]:
        return {f"{i}.{name}": sha for i, part in enumerate(self.parts) for name, sha in part.checkpoints.items()}

    def extra_repr(self) -> str:
        return f"defenses={list(self.specs)!r}"
