"""The JSON model card written beside a trained checkpoint: how it was trained and how robust it measured."""

from __future__ import annotations

from pathlib import Path

from robench.data import Examples
from robench.spec import Spec
from robench.train.loop import Runtime

CARD_FORMAT = "robench-model-card/1"


def data_entry(dataset: Spec, split: str, examples: Examples, sample_seed: int | None) -> dict:
    """The card's (and resume file's) description of the training data: which images, exactly."""
    return {"dataset": str(dataset), "split": split, "n": len(examples), "sample_seed": sample_seed,
            "first_id": examples.ids[0], "last_id": examples.ids[-1], "fingerprint": examples.fingerprint()}


def model_card(
    *,
    output: Path,
    sha256: str,
    architecture: Spec,
    recipe,
    augment: str,
    data: dict,
    seed: int,
    records: list[dict],
    runtime: Runtime,
    environment: dict,
    wall_s: float,
    command: str,
    **entries,
) -> dict:
    """The card of a finished run from plain fields; ``entries`` are the trainer's own (model, schedule, history...).

    Args:
        output, sha256: the checkpoint written.
        architecture: the spec that built the trained module.
        recipe: the training objective (``name``, ``spec``, ``hyperparameters``).
        augment, data, seed: the training data and its randomness (``data`` from :func:`data_entry`).
        records: every epoch's history record of every phase (their seconds sum to ``training_s``).
        runtime, environment: where it ran (:func:`robench.env.environment`).
        wall_s: seconds from start to card; command: the command line (None when empty).
    """
    return {
        "format": CARD_FORMAT,
        "checkpoint": {"file": output.name, "sha256": sha256, "bytes": output.stat().st_size},
        "architecture": str(architecture),
        "recipe": {"name": recipe.name, "spec": str(recipe.spec), "hyperparameters": recipe.hyperparameters},
        "augment": augment,
        "data": data,
        "seed": seed,
        "training_s": round(sum(record["seconds"] for record in records), 3),
        "wall_s": round(wall_s, 3),
        "device": environment["device"],
        "autocast": runtime.autocast,
        "channels_last": runtime.channels_last,
        "versions": {k: v for k, v in environment.items() if k != "device"},
        "command": command or None,
        **entries,
    }
