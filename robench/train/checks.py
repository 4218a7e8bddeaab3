"""The checks every trainer runs: before fitting (specs, data, output, target), and after saving (the reload).

Each raises :class:`~robench.train.loop.TrainingError` (or :class:`~robench.checkpoint.CheckpointError`)
with a message naming what was wrong and what to do, so ``robench train`` fails before any epoch.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from robench import registry
from robench.checkpoint import CheckpointError
from robench.data import Examples
from robench.spec import Spec, parse_spec
from robench.train.loop import TrainingError


def parse_option(text: "str | Spec", option: str) -> Spec:
    """The spec given to ``--OPTION``, or a TrainingError naming the option."""
    try:
        return parse_spec(text)
    except ValueError as err:
        raise TrainingError(f"{option}: {err}") from None


def build_plugin(kind: str, spec: Spec):
    """``registry.build(kind, spec)`` with its errors as a TrainingError naming the plugin."""
    try:
        return registry.build(kind, spec)
    except (registry.PluginError, ValueError, OSError) as err:
        raise TrainingError(f"{kind[:-1]} {str(spec)!r}: {err}") from None


def check_writable(output: Path) -> None:
    """Fail now, not after the first epoch, when the output folder cannot be created or written."""
    if output.is_dir():
        raise TrainingError(f"--output {output} is a folder; give a file path such as {output / 'model.pt'}")
    folder = output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".robench-write-test-"):
            pass
    except OSError as err:
        raise TrainingError(
            f"cannot write the checkpoint to {folder}{os.sep} ({err.strerror or err}); choose another --output"
        ) from None


def load_split(data, spec: Spec, split: str, n: int | None, sample_seed: int | None) -> Examples:
    """The training (or held-out) examples of ``split``: all, the first ``n``, or a seeded sample of ``n``."""
    if split not in data.splits:
        raise TrainingError(f"dataset {str(spec)!r} has splits {', '.join(data.splits)}, not {split!r}")
    try:
        return data.load(split=split, n=n, seed=sample_seed)
    except (ValueError, OSError) as err:
        raise TrainingError(f"dataset {str(spec)!r}, {split} split: {err}") from None


def check_fits(model: nn.Module, model_spec: Spec, data, dataset_spec: Spec) -> None:
    """The classifier takes the dataset's image shape and has its number of classes."""
    shape = tuple(getattr(model, "input_shape", data.image_shape))
    if shape != tuple(data.image_shape):
        raise TrainingError(
            f"model {str(model_spec)!r} takes inputs shaped {shape}, but {str(dataset_spec)!r} images are "
            f"{tuple(data.image_shape)}; pick a model for this dataset"
        )
    classes = getattr(model, "num_classes", data.num_classes)
    if classes != data.num_classes:
        raise TrainingError(
            f"model {str(model_spec)!r} has {classes} classes, {str(dataset_spec)!r} has {data.num_classes}"
        )


def check_trained(model: nn.Module, model_spec: Spec, trainee: str) -> None:
    """A fixed target must load trained weights: a learned defense trained in front of random weights is meaningless."""
    if not getattr(model, "checkpoints", None):
        raise TrainingError(
            f"target {str(model_spec)!r} loads no trained weights; {trainee} trains in front of a trained, fixed "
            "classifier: give its checkpoint, e.g. resnet18:weights=checkpoints/resnet18-at-cifar10.pt"
        )


def check_saved(path: Path, state: dict) -> None:
    """The file at ``path`` loads with ``weights_only=True`` and holds exactly ``state``."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle error of any type: the file is unusable either way
        raise CheckpointError(f"{path} does not load back with weights_only=True: {err}") from err
    _check_same_state(saved, state, f"{path} does not hold the trained weights")


def check_reloads(usable: Spec, trained: nn.Module, reloaded: nn.Module, probe: torch.Tensor) -> None:
    """``reloaded`` (built from ``usable``) holds ``trained``'s weights and computes its outputs on ``probe``."""
    what = f"{usable} does not load the trained weights back"
    _check_same_state(reloaded.state_dict(), trained.state_dict(), what)
    device = next(iter(trained.state_dict().values()), probe).device
    reloaded.to(device).eval()
    trained_mode = trained.training
    trained.eval()
    outputs = []
    with torch.no_grad():
        for module in (trained, reloaded):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(0)  # the same draws for stochastic modules
                outputs.append(module(probe.to(device)).float())
    trained.train(trained_mode)
    if outputs[0].shape != outputs[1].shape or not torch.allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6):
        raise CheckpointError(f"{what}: its outputs differ from the trained module's on the same images")


def _check_same_state(got: dict, expected: dict, what: str) -> None:
    if not isinstance(got, dict) or got.keys() != expected.keys():
        keys = sorted(set(got) ^ set(expected)) if isinstance(got, dict) else type(got).__name__
        raise CheckpointError(f"{what} (keys differ: {keys if isinstance(keys, str) else keys[:3]})")
    differing = [k for k in expected if not torch.equal(got[k].cpu(), expected[k].cpu())]
    if differing:
        raise CheckpointError(f"{what} (values differ in {', '.join(differing[:3])})")
