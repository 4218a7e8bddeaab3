"""robench: a pluggable benchmark suite for adversarial purification defenses."""

__version__ = "0.1.0"

from importlib import import_module  # noqa: E402

from robench.attack import Attack, AttackNotApplicable  # noqa: E402
from robench.cell import Cell, cell_key  # noqa: E402
from robench.defense import BPDA, Defense  # noqa: E402
from robench.registry import build, names  # noqa: E402
from robench.spec import Spec, SpecError, parse_eps, parse_spec  # noqa: E402
from robench.target import EOT, Ensemble, Pipeline, adaptive_view  # noqa: E402
from robench.threat import ThreatModel, ThreatModelViolation  # noqa: E402

__all__ = [
    "Attack", "AttackNotApplicable", "BPDA", "Cell", "Defense", "EOT", "Ensemble", "Pipeline", "Spec",
    "SpecError", "ThreatModel", "ThreatModelViolation", "adaptive_view", "build", "cell_key", "names",
    "parse_eps", "parse_spec", "evaluate",
]


def __getattr__(name: str):
    """``robench.evaluate`` is imported on first use (PEP 562), so ``import robench`` does not load the runner."""
    if name == "evaluate":
        return import_module("robench.api").evaluate
    raise AttributeError(f"module 'robench' has no attribute {name!r}")
