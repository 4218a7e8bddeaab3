"""The threat model: the only code that measures or projects perturbations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robench.spec import SpecError, format_fraction, parse_eps

NORMS = ("Linf", "L2")
# Float32 arithmetic on [0, 1] images: a perturbation this far past the budget is rounding, not cheating.
TOLERANCE = 1e-5


def canonical_norm(norm: str) -> str:
    """A norm's canonical spelling (``linf`` -> ``Linf``, ``l2`` -> ``L2``); unknown norms raise :class:`SpecError`."""
    found = {n.lower(): n for n in NORMS}.get(str(norm).strip().lower())
    if found is None:
        raise SpecError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return found


class ThreatModelViolation(RuntimeError):
    """An adversarial example lies outside the threat model; never silently clipped."""


@dataclass(frozen=True)
class ThreatModel:
    """An ``Linf`` or ``L2`` ball of radius ``eps`` around each image, intersected with ``bounds``."""

    norm: str
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        object.__setattr__(self, "eps", parse_eps(self.eps, norm=self.norm))
        lo, hi = self.bounds
        if not lo < hi:
            raise SpecError(f"bounds {self.bounds!r} must be (low, high) with low < high")
        object.__setattr__(self, "bounds", (float(lo), float(hi)))

    def __str__(self) -> str:
        return f"{self.norm} {format_fraction(self.eps)}"

    def to_json(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "bounds": list(self.bounds)}

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example perturbation size in this threat model's norm, shape ``(B,)``."""
        delta = (x_adv - x).flatten(1).float()
        if self.norm == "Linf":
            return delta.abs().amax(dim=1)
        return delta.norm(p=2, dim=1)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Nearest point of the ball around ``x`` (intersected with the bounds) to ``x_adv``."""
        delta = x_adv - x
        if self.norm == "Linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = delta.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        return (x + delta).clamp(*self.bounds)

    def violation(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example amount by which ``x_adv`` leaves the ball or the bounds (0 when inside)."""
        over_eps = (self.distance(x_adv, x) - self.eps).clamp_min(0)
        lo, hi = self.bounds
        flat = x_adv.flatten(1).float()
        over_bounds = torch.maximum((lo - flat).amax(dim=1), (flat - hi).amax(dim=1)).clamp_min(0)
        not_finite = (~torch.isfinite(flat)).any(dim=1).float() * float("inf")
        return torch.maximum(over_eps, over_bounds).nan_to_num(nan=float("inf")) + not_finite.nan_to_num(0)

    def check(self, x_adv: torch.Tensor, x: torch.Tensor) -> None:
        """Raise :class:`ThreatModelViolation` when any example leaves the threat model."""
        if x_adv.shape != x.shape:
            raise ThreatModelViolation(f"adversarial batch has shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
        excess = self.violation(x_adv, x)
        bad = (excess > TOLERANCE).nonzero().flatten()
        if len(bad):
            worst = excess.max().item()
            raise ThreatModelViolation(
                f"{len(bad)} of {len(x)} adversarial examples leave the {self} threat model "
                f"(worst excess {worst:.3g}, first offending index {bad[0].item()}); the attack is broken"
            )
