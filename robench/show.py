"""A readable page for one stored cell (``robench show``): what ran, its numbers with intervals, why to doubt them."""

from __future__ import annotations

import textwrap

from tabulate import tabulate

from robench.flags import FLAG_DOCS
from robench.report import machine_label, wilson_interval
from robench.spec import format_fraction
from robench.store import CellRecord

WIDTH = 100


def render_cell(record: CellRecord) -> str:
    """Spec, clean and robust accuracy with 95% intervals, flags with their meaning, wall time, provenance."""
    spec, summary = record.spec, record.summary or {}
    lines = [f"cell {record.key} ({record.status})", "", *_spec_lines(spec)]
    if summary:
        n = summary["n"]
        lines += ["", _accuracy("clean accuracy", summary["clean_correct"], n),
                  _accuracy("robust accuracy", summary["robust_correct"], n)]
        if spec.get("draws", 1) > 1:
            lines.append(f"  mean over {spec['draws']} scoring draws: clean {_percent(summary['clean_draw_acc'])}, "
                         f"robust {_percent(summary['robust_draw_acc'])}")
        lines.append(f"  attacked {summary['attacked']} examples (those classified correctly); largest perturbation "
                     f"{_size(summary['max_perturbation'])} ({spec['threat']['norm']})")
    if record.error:
        lines += ["", "error:", textwrap.indent(record.error.rstrip(), "  ")]
    lines += ["", "flags:" if record.flags else "flags: none"]
    for flag in record.flags:
        lines += textwrap.wrap(f"{flag}: {FLAG_DOCS.get(flag, '(undocumented flag)')}", WIDTH,
                               initial_indent="  - ", subsequent_indent="    ")
    lines += ["", f"wall time: {record.wall_s:.1f} s", "", "provenance:", *_provenance_lines(record.provenance, spec["attack"])]
    lines += ["", f"raw record: robench show {record.key[:12]} --json"]
    return "\n".join(lines)


def render_examples(rows: list[dict]) -> str:
    """Per-example outcomes as a table."""
    return "\n" + tabulate(rows, headers="keys", tablefmt="simple", floatfmt=".4g")


def _spec_lines(spec: dict) -> list[str]:
    return [f"  {name:<19}{value}" for name, value in spec_fields(spec)]


def spec_fields(spec: dict) -> list[tuple[str, str]]:
    """What a cell ran, as (field, value) pairs: dataset and sample, model, defense, attack, setting, threat, seeds."""
    sample = "first" if spec["sample_seed"] is None else f"seeded sample {spec['sample_seed']} of"
    fields = [
        ("dataset", f"{spec['dataset']} ({spec['split']} split, {sample} n={spec['n']})"),
        ("model", spec["model"]),
        ("defense", spec["defense"]),
        ("attack", spec["attack"]),
        ("setting", spec["setting"]),
        ("sources", ", ".join(spec.get("sources") or [])),
        ("attacker's defense", spec.get("attack_defense")),
        ("restored from", spec.get("restore_from")),
        ("threat", f"{spec['threat']['norm']} {format_fraction(spec['threat']['eps'])}"),
        ("seed", f"{spec['seed']}; scoring draws {spec['draws']}; EOT draws {spec['eot']}; batch {spec['batch_size']}"),
    ]
    return [(name, value) for name, value in fields if value]


def _accuracy(label: str, correct: int, n: int) -> str:
    low, high = wilson_interval(correct, n)
    return f"{label:<17}{_percent(correct / n if n else float('nan'))} ({correct}/{n}), " \
           f"95% CI [{_percent(low)}, {_percent(high)}]"


def _provenance_lines(provenance: dict, attack: str) -> list[str]:
    return [f"  {name:<17}{value}" for name, value in provenance_fields(provenance, attack)]


def provenance_fields(provenance: dict, attack: str) -> list[tuple[str, str]]:
    """Where a cell's numbers come from, as (field, value) pairs: machine, versions, plugin versions, data, checkpoints."""
    env = provenance.get("environment", {})
    versions = ", ".join(f"{k} {env[k]}" for k in ("robench", "torch", "torchattacks", "python") if k in env)
    plugins = [f"{attack} v{provenance['attack_version']}"] if "attack_version" in provenance else []
    plugins += [f"{name} v{version}" for name, version in provenance.get("defense_versions", {}).items()]
    checkpoints = [f"{owner}: {name} sha256 {sha}"
                   for owner, found in provenance.get("checkpoints", {}).items() for name, sha in _flat(found)]
    lines = [("machine", machine_label(env) if env else ""), ("versions", versions),
             ("plugin versions", ", ".join(plugins)), ("data sha256", str(provenance.get("data", ""))[:16]),
             ("device options", ", ".join(f"{k}={v}" for k, v in provenance.get("device_options", {}).items()))]
    return [(name, value) for name, value in lines if value] + [("checkpoint", line) for line in checkpoints]


def _flat(found, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(found, dict):
        return [pair for name, value in found.items() for pair in _flat(value, f"{prefix}{name} ")]
    return [(prefix.strip() or "weights", found)] if isinstance(found, str) else []


def _size(value: float) -> str:
    return f"{value:.4g} = {value * 255:.2f}/255"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"
