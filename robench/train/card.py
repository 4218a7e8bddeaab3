"""The JSON model card written beside a trained checkpoint: how it was trained and how robust it measured."""

from __future__ import annotations

from robench.spec import Spec
from robench.train.loop import Runtime

CARD_FORMAT = "robench-model-card/1"


def model_card(
    plan,  # a robench.train.targets.TrainingPlan
    *,
    history: list[dict],
    sha256: str,
    usable: Spec,
    runtime: Runtime,
    environment: dict,
    wall_s: float,
    command: str,
) -> dict:
    """The model card of a finished run: recipe, data, schedule, final accuracy, checkpoint identity (robench)."""
    final = history[-1] if history else {}
    evaluation = None
    if plan.held_out is not None:
        evaluation = {
            **plan.evaluation.to_json(),
            "dataset": str(plan.dataset_spec),
            "fingerprint": plan.held_out.fingerprint(),
            "clean_acc": final.get("clean_acc"),
            "robust_acc": final.get("robust_acc"),
            "command": plan.evaluation.command(plan.dataset_spec, usable),
        }
    return {
        "format": CARD_FORMAT,
        "checkpoint": {"file": plan.output.name, "sha256": sha256, "bytes": plan.output.stat().st_size},
        "model": str(usable),
        "architecture": str(plan.model_spec),
        "recipe": {"name": plan.recipe.name, "spec": str(plan.recipe.spec),
                   "hyperparameters": plan.recipe.hyperparameters},
        "schedule": plan.schedule.to_json(),
        "augment": plan.augment,
        "data": {"dataset": str(plan.dataset_spec), "split": plan.split, "n": len(plan.train),
                 "sample_seed": plan.sample_seed, "first_id": plan.train.ids[0], "last_id": plan.train.ids[-1],
                 "fingerprint": plan.train.fingerprint()},
        "seed": plan.seed,
        "epochs": len(history),
        "evaluation": evaluation,
        "history": history,
        "training_s": round(sum(record["seconds"] for record in history), 3),
        "wall_s": round(wall_s, 3),
        "device": environment["device"],
        "autocast": runtime.autocast,
        "channels_last": runtime.channels_last,
        "versions": {k: v for k, v in environment.items() if k != "device"},
        "command": command or None,
    }
