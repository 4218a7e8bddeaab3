"""The threat model: the only code that measures or projects perturbations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robench.spec import SpecError, brief, format_fraction, parse_eps

NORMS = ("Linf", "L2")
# Float32 rounding of x + delta on [0, 1] images is at most a few ulp of 1 (1.2e-7) per pixel: a
# pixel or an Linf perturbation further out than this is the attack's doing, not rounding's.
ABSOLUTE_TOLERANCE = 1e-6
# An L2 norm sums the rounding of every pixel, so its slack grows with the budget.
L2_RELATIVE_TOLERANCE = 1e-5


def canonical_norm(norm: str) -> str:
    """A norm's canonical spelling (``linf`` -> ``Linf``, ``l2`` -> ``L2``); unknown norms raise :class:`SpecError`."""
    found = {n.lower(): n for n in NORMS}.get(str(norm).strip().lower())
    if found is None:
        raise SpecError(f"unknown norm {brief(norm)}; choose one of {', '.join(NORMS)}")
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
            raise SpecError(f"bounds {brief(self.bounds)} must be (low, high) with low < high")
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

    @property
    def tolerance(self) -> float:
        """The largest excess (:meth:`violation`) that float32 rounding explains; anything beyond is a violation."""
        if self.norm == "Linf":
            return ABSOLUTE_TOLERANCE
        return max(ABSOLUTE_TOLERANCE, L2_RELATIVE_TOLERANCE * self.eps)

    def check(self, x_adv: torch.Tensor, x: torch.Tensor, *, source: str = "the attack") -> None:
        """Raise :class:`ThreatModelViolation`, naming ``source``, when any example leaves the threat model."""
        if x_adv.shape != x.shape:
            raise ThreatModelViolation(
                f"{source} returned a batch of shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}"
            )
        excess = self.violation(x_adv, x)
        bad = (excess > self.tolerance).nonzero().flatten()
        if len(bad):
            worst = excess.argmax()
            distance = self.distance(x_adv[worst:worst + 1], x[worst:worst + 1]).item()
            raise ThreatModelViolation(
                f"{source} returned {len(bad)} of {len(x)} adversarial examples that leave the {self} threat "
                f"model (worst excess {excess[worst].item():.3g}: example {worst.item()} at {self.norm} distance "
                f"{distance:.6g} for eps {self.eps:.6g}, pixels in [{x_adv[worst].min().item():.6g}, "
                f"{x_adv[worst].max().item():.6g}]; first offending index {bad[0].item()}); the attack is broken"
            )
