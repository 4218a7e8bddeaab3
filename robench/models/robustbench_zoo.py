"""RobustBench's model zoo (Croce et al. 2021) behind robench, through the ``robustbench`` package when installed.

``robustbench`` is an optional dependency (``pip install robustbench``): it pins its own timm
version and downloads weights from Google Drive or the Hugging Face hub on first use.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from robench.checkpoint import CheckpointError, sha256_of
from robench.env import data_root
from robench.models.classifier import Classifier
from robench.models.weights import weights_digest

DATASETS = {"cifar10": (10, (3, 32, 32)), "cifar100": (100, (3, 32, 32)), "imagenet": (1000, (3, 224, 224))}
THREAT_MODELS = ("Linf", "L2", "corruptions")


def robustbench(
    *, name: str, dataset: str = "cifar10", threat_model: str = "Linf", model_dir: str | Path | None = None
) -> Classifier:
    """A RobustBench zoo model (Croce et al. 2021) by its leaderboard name; it normalises inside, inputs stay in [0, 1].

    Args:
        name: the model's name on the RobustBench leaderboard, e.g. ``Carmon2019Unlabeled``.
        dataset: ``cifar10``, ``cifar100`` or ``imagenet`` (ImageNet models take 224x224 crops).
        threat_model: ``Linf``, ``L2`` or ``corruptions``.
        model_dir: where robustbench keeps its downloads (default: ``<data root>/robustbench``).
    """
    if dataset not in DATASETS:
        raise ValueError(f"robustbench dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"robustbench threat_model must be one of {', '.join(THREAT_MODELS)}, got {threat_model!r}")
    try:
        from robustbench.utils import load_model
    except ImportError as err:
        if err.name == "robustbench":
            raise ImportError(
                f"the robustbench model {name!r} needs the robustbench package, which is not installed: "
                "pip install robustbench"
            ) from err
        raise ImportError(
            f"robustbench is installed but does not import: {err}; install what it misses (its releases also "
            "import the AutoAttack code as 'autoattack', from pip install git+https://github.com/fra31/auto-attack)"
        ) from err
    folder = Path(model_dir).expanduser() if model_dir else data_root() / "robustbench"
    try:
        # robustbench reads the file itself with torch.load, whose default is weights_only=True since torch 2.6
        net = load_model(name, model_dir=str(folder), dataset=dataset, threat_model=threat_model)
    except Exception as err:  # unknown names, network and file errors come in many types
        known = _zoo_names(dataset, threat_model)
        if isinstance(err, KeyError) and known is not None and name not in known:
            raise ValueError(
                f"robustbench has no {dataset} {threat_model} model {name!r}; close matches: "
                f"{difflib.get_close_matches(name, known, n=5)} (the names of the robustbench.github.io leaderboards)"
            ) from err
        raise CheckpointError(
            f"robustbench could not load {name!r} ({dataset}, {threat_model}): {err!r}. It downloads the weights "
            f"into {folder} on first use; without network access put "
            f"{folder / dataset / threat_model / (name + '.pt')} there"
        ) from err
    num_classes, shape = DATASETS[dataset]
    file = folder / dataset / threat_model / f"{name}.pt"
    digest = sha256_of(file) if file.is_file() else weights_digest(net)
    return Classifier(
        net.eval(), num_classes=num_classes, input_shape=shape,
        checkpoints={f"robustbench/{dataset}/{threat_model}/{name}": digest},
    )


def _zoo_names(dataset: str, threat_model: str) -> list[str] | None:
    """The zoo's model names for a dataset and threat model, or None when this robustbench keeps them elsewhere."""
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

        return list(model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)])
    except Exception:  # an unexpected layout of robustbench's internals only loses the suggestions
        return None
