"""Loading untrusted checkpoints safely and identifying them by sha256."""

from __future__ import annotations

import hashlib
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch

_CHUNK = 1 << 20
RACY_S = 2.0


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, unsafe, or not the one that was registered."""


def sha256_of(path: "str | Path") -> str:
    """Hex sha256 of a file, read in chunks; remembered per version of the file (path, inode, size, modification time).

    Every model or defense built in a process hashes its weights: remembering saves reading them
    again. A file modified in the last ``RACY_S`` seconds is hashed afresh every time, since a
    rewrite within the file system's timestamp granularity would keep its modification time
    (git's "racy" files).
    """
    path = os.path.realpath(path)
    stat = os.stat(path)
    if time.time() - stat.st_mtime < RACY_S:
        return _sha256.__wrapped__(path)
    return _sha256(path, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256(path: str, *version: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: "str | Path", *, expected_sha256: str | None = None) -> tuple[Any, str]:
    """Load ``path`` with ``weights_only=True`` after checking its sha256; returns (object, sha256)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    digest = sha256_of(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has sha256 {digest[:16]}..., but the registered one is "
            f"{expected_sha256[:16]}...; it is a different or corrupted file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors from untrusted files come in many types
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be loaded safely (weights_only=True): {err}") from err
    return obj, digest


def load_weights(
    module: torch.nn.Module, path: "str | Path", state_of: Callable[[Any, str], dict]
) -> dict[str, str]:
    """Load ``path`` safely into ``module`` through ``state_of(obj, source)``; returns ``{file name: sha256}``."""
    obj, digest = load_checkpoint(path)
    load_state_dict_strict(module, state_of(obj, str(path)), source=str(path))
    return {Path(path).name: digest}


def load_state_dict_strict(module: torch.nn.Module, state: dict, *, source: str) -> None:
    """Load a state dict, naming the first missing and unexpected keys when it does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: "
            f"{len(missing)} missing keys (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})"
        )
    shapes = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if shapes:
        k = shapes[0]
        raise CheckpointError(
            f"{source} does not fit {type(module).__name__}: {k} has shape "
            f"{tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} in the model"
        )
    module.load_state_dict(state)
