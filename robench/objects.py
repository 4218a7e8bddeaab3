"""In-memory models and purifiers as parts of cells: a name that fingerprints the object, so caches key honestly.

A cell names its parts by spec; an object a script passes (``robench.evaluate(model, defense)``)
gets the name ``object-<Class>-<fingerprint>``, where the fingerprint (12 hex of a sha256)
covers each submodule's class and source code (where Python can read it), its plain attributes
and every tensor of the state dict. A changed weight, hyperparameter or ``forward`` gives a new
name, hence a new cell key: a changed object never hits a stale cache entry. An attribute whose
``repr`` is not stable across processes (a function, say) only makes each process compute afresh.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from functools import lru_cache

import torch
from torch import nn

from robench.defense import Defense

PREFIX = "object-"


class ModuleDefense(Defense):
    """A plain ``nn.Module`` purifier as a Defense, with the attributes its user declares."""

    def __init__(self, module: nn.Module, *, differentiable: bool = True, stochastic: bool = False):
        super().__init__()
        self.module = module
        self.differentiable = bool(differentiable)
        self.stochastic = bool(stochastic)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def object_name(shown: nn.Module, fingerprinted: nn.Module | None = None) -> str:
    """``object-<class of shown>-<fingerprint of fingerprinted (default: shown)>``, a valid spec name."""
    label = re.sub(r"[^A-Za-z0-9_.\-]", "_", type(shown).__name__)
    return f"{PREFIX}{label}-{fingerprint(shown if fingerprinted is None else fingerprinted)}"


def fingerprint(module: nn.Module) -> str:
    """12 hex of a sha256 over a module's classes and their source, plain attributes and state-dict tensors."""
    digest = hashlib.sha256()
    for path, sub in module.named_modules():
        digest.update(f"module {path} {_class_text(type(sub))}\n".encode())
        for name, value in sorted(vars(sub).items()):
            if not name.startswith("_") and name != "training":
                digest.update(f"attribute {name}=".encode())
                _update(digest, value)
    for name, tensor in module.state_dict().items():
        digest.update(f"tensor {name}=".encode())
        _update(digest, tensor)
    return digest.hexdigest()[:12]


def _update(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{flat.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    else:
        digest.update(repr(value).encode())
    digest.update(b"\n")


@lru_cache(maxsize=None)
def _class_text(cls: type) -> str:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # defined interactively or built in: the qualified name is all there is
        source = ""
    return f"{cls.__module__}.{cls.__qualname__}\n{source}"
