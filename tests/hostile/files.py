"""Malicious and broken files a user may be handed: each writer returns the path it wrote.

Pickles that run a command on load leave a marker file when they succeed, so a test can check
that nothing ran; grid files exercise the YAML loader (python tags, alias bombs, encodings).
"""

from __future__ import annotations

import io
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import torch

ALIAS_LEVELS = 10  # each level repeats the one below 9 times: 9**10 (3.5e9) values once expanded


class _RunsCommand:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def touch_command(marker: Path) -> str:
    """A shell command whose only effect is to create ``marker``."""
    return f"touch {shlex.quote(str(marker))}"


def pickle_checkpoint(path: Path, marker: Path) -> Path:
    """A torch checkpoint (zip format) whose state dict holds an object that runs a command on load."""
    torch.save({"state_dict": {"weight": _RunsCommand(touch_command(marker))}}, path)
    return path


def raw_pickle(path: Path, marker: Path) -> Path:
    """A plain pickle (the legacy ``.pt`` format) that runs a command on load."""
    path.write_bytes(pickle.dumps(_RunsCommand(touch_command(marker)), protocol=2))
    return path


def pickle_in_renamed_zip(path: Path, marker: Path) -> Path:
    """A zip checkpoint whose data.pkl was swapped for a command-running pickle after saving."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(1)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps(_RunsCommand(touch_command(marker)), protocol=2)
            target.writestr(item, data)
    return path


def truncated_checkpoint(path: Path, state: dict) -> Path:
    """A genuine checkpoint of ``state`` cut to half its length, as an interrupted download leaves it."""
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def yaml_python_tag(path: Path, marker: Path) -> Path:
    """A grid file whose ``name`` is a python tag that would run a command under an unsafe YAML loader."""
    path.write_text(f"name: !!python/object/apply:os.system [{touch_command(marker)!r}]\n"
                    "dataset: synthetic\nmodels: [tiny]\ndefenses: [none]\nattacks: [fgsm]\neps: [6/255]\n")
    return path


def alias_bomb(path: Path, levels: int = ALIAS_LEVELS) -> Path:
    """A grid file of a few hundred bytes whose ``models:`` nest ``levels`` anchors, each aliasing the last 9 times."""
    anchors = ["&a0 [" + ", ".join(["tiny"] * 9) + "]"]
    anchors += [f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]" for level in range(1, levels)]
    path.write_text("dataset: synthetic\ndefenses: [none]\nattacks: [fgsm]\neps: [6/255]\n"
                    "models: [" + ", ".join(anchors) + "]\n")
    return path


def not_utf8(path: Path) -> Path:
    """A grid file in Latin-1 (a byte 0xe9 where UTF-8 expects a continuation byte)."""
    path.write_bytes("name: caf\u00e9\ndataset: synthetic\n".encode("latin-1"))
    return path


def deep_json(depth: int = 1_200) -> str:
    """A JSON value nested ``depth`` lists deep."""
    return "[" * depth + "]" * depth
