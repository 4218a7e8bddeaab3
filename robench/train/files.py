"""Where trained files go, and atomic writes: a file is either the old complete one or the new one, never half written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

# Default folder of trained checkpoints and their cards (``--output`` chooses another).
CHECKPOINT_DIR = Path("checkpoints")


def _replace_with(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def save_torch(obj: Any, path: "str | Path") -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    _replace_with(Path(path), lambda temporary: torch.save(obj, temporary))


def save_json(obj: Any, path: "str | Path") -> None:
    """Write ``obj`` as indented JSON, atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _replace_with(Path(path), lambda temporary: temporary.write_text(text))
