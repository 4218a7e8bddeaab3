"""robench: a pluggable benchmark suite for adversarial purification defenses.

The public names below are imported on first use, so ``import robench`` (and every CLI call
that does not compute anything) stays free of torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Attack": "robench.attack", "AttackNotApplicable": "robench.attack", "BPDA": "robench.defense",
    "Cell": "robench.cell", "Defense": "robench.defense", "EOT": "robench.target", "Ensemble": "robench.target",
    "Pipeline": "robench.target", "Spec": "robench.spec", "SpecError": "robench.spec",
    "ThreatModel": "robench.threat", "ThreatModelViolation": "robench.threat", "adaptive_view": "robench.target",
    "build": "robench.registry", "cell_key": "robench.cell", "names": "robench.registry",
    "parse_eps": "robench.spec", "parse_spec": "robench.spec", "evaluate": "robench.api",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import a public name from its module on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robench' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
