"""The machine a run happens on: device choice, per-batch seeds, provenance, and data-folder settings.

Attack trajectories depend on floating-point rounding, which differs between processors, BLAS
builds and thread counts: the same cell key gives the same numbers on the same machine and
versions, and numbers within the confidence interval elsewhere. :func:`environment` records
what it takes to tell which case a stored number is in.
"""

from __future__ import annotations

import os
import platform
import re
from functools import lru_cache
from pathlib import Path

import torch

from robench.errors import ConfigError
from robench.spec import brief

DATA_ENV = "ROBENCH_DATA"
OFFLINE_ENV = "ROBENCH_OFFLINE"


def data_root(explicit: "str | Path | None" = None) -> Path:
    """The data directory: ``explicit``, else ``$ROBENCH_DATA``, else ``~/.cache/robench/data``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".cache" / "robench" / "data"


def offline() -> bool:
    """True when ``$ROBENCH_OFFLINE`` forbids downloads."""
    return bool(os.environ.get(OFFLINE_ENV))


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything but ``cpu``, ``cuda`` or a present ``cuda:N`` is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {brief(name)} is not a device robench runs on; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA devices (cuda:0, ...)")
    return device


def batch_seed(seed: int, batch: int) -> int:
    """The seed of one batch: resuming at any batch replays the same randomness."""
    return (seed * 1_000_003 + batch) % (2**63)


def environment(device: torch.device) -> dict:
    """Versions, device and the arithmetic behind it (CPU model, BLAS, SIMD level, threads), stored with every run."""
    import torchattacks

    record = {
        "robench": _robench_version(),
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": blas_build(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        record["cuda"] = torch.version.cuda
        record["cudnn"] = torch.backends.cudnn.version()
    return record


def _robench_version() -> str:
    import robench

    return robench.__version__


@lru_cache(maxsize=None)
def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    found = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return found.group(1).strip() if found else (platform.processor() or platform.machine() or "unknown")


@lru_cache(maxsize=None)
def blas_build() -> str:
    """The BLAS torch was built with, as its build configuration names it (e.g. ``mkl``, ``open``)."""
    found = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return found.group(1) if found else "unknown"
