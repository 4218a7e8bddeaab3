"""ComDefend's official weight files (``enc20_0.0001.npy``, ``dec_mnist.npy``, ...), read without unpickling code.

Each official file is, despite its ``.npy`` name, an npz archive holding one array ``w``: a NumPy
*object* array of the network's convolution kernels, TensorFlow layout ``(3, 3, in, out)``, and
biases, alternating. An object array is a pickle, and ``np.load(..., allow_pickle=True)`` would
run whatever a file says; :func:`read_official` unpickles it with :class:`ArraysOnly`, which
builds NumPy arrays and dtypes and refuses every other global, so a crafted file fails before
anything in it runs.
"""

from __future__ import annotations

import codecs
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from robench.checkpoint import CheckpointError, sha256_of
from robench.defenses.comdefend.networks import LAYERS

MEMBER = "w.npy"  # the one array of an official file
NPY_MAGIC = b"\x93NUMPY"
HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

try:  # NumPy >= 2 (pickles written by NumPy 1 name numpy.core; both mean the same function)
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core.multiarray import _reconstruct


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as NumPy's protocol-2 pickles use it: array bytes stored as latin-1 text."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} (only 'latin1' holds array data)")
    return codecs.encode(text, "latin1")


class ArraysOnly(pickle.Unpickler):
    """An unpickler that reconstructs NumPy arrays and dtypes and refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it asks to import {module}.{name}; an official ComDefend file holds only NumPy arrays"
            ) from None


def is_official(path: "str | Path") -> bool:
    """Whether ``path`` is in the official format (an npz archive with ``w.npy``, or a bare ``.npy``)."""
    with open(path, "rb") as handle:
        if handle.read(len(NPY_MAGIC)) == NPY_MAGIC:
            return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return MEMBER in archive.namelist()


def decoder_path_for(encoder: "str | Path") -> Path | None:
    """The official RecCNN file beside an official ComCNN file: ``enc`` -> ``dec`` in the name (None without ``enc``)."""
    encoder = Path(encoder)
    if "enc" not in encoder.name:
        return None
    return encoder.with_name(encoder.name.replace("enc", "dec", 1))


def read_official(path: "str | Path") -> tuple[dict[str, torch.Tensor], str]:
    """One network of an official file as a :class:`~.networks.ConvStack` state dict (torch layout), and its sha256."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ComDefend weight file {str(path)!r} does not exist")
    arrays = _read_arrays(path)
    return _state_dict(arrays, str(path)), sha256_of(path)


def _read_arrays(path: Path) -> list[np.ndarray]:
    try:
        stream = _npy_stream(path)
        version = np.lib.format.read_magic(stream)
        if version not in HEADER_READERS:
            raise ValueError(f"its .npy format version {version} is not 1.0 or 2.0")
        shape, _, dtype = HEADER_READERS[version](stream)  # the header is a literal, read without pickle
        if dtype != np.dtype(object) or len(shape) != 1:
            raise ValueError(f"its array is {dtype} {shape}, not the official object array of kernels and biases")
        loaded = ArraysOnly(stream).load()
    except (pickle.UnpicklingError, ValueError, EOFError, OSError, TypeError, AttributeError, KeyError,
            IndexError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{str(path)!r} is refused as a ComDefend weight file: {err}") from None
    if not isinstance(loaded, np.ndarray) or loaded.dtype != object:
        raise CheckpointError(f"{str(path)!r} holds {type(loaded).__name__}, not ComDefend's object array of arrays")
    items = list(loaded.ravel())
    bad = [i for i, a in enumerate(items) if not isinstance(a, np.ndarray) or a.dtype.kind != "f"]
    if bad:
        raise CheckpointError(f"{str(path)!r}: entry {bad[0]} is not a float array (kernels and biases only)")
    return items


def _npy_stream(path: Path) -> io.BytesIO:
    """The bytes of the file's ``w.npy`` (the file itself when it is a bare ``.npy``)."""
    with open(path, "rb") as handle:
        if handle.read(len(NPY_MAGIC)) == NPY_MAGIC:
            return io.BytesIO(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        if MEMBER not in archive.namelist():
            raise ValueError(f"the archive holds {archive.namelist()[:5]}, not the official {MEMBER!r}")
        return io.BytesIO(archive.read(MEMBER))


def _state_dict(arrays: list[np.ndarray], source: str) -> dict[str, torch.Tensor]:
    """Alternating TF kernels (3, 3, in, out) and biases (out,) -> ``convs.<i>.weight`` (out, in, 3, 3) and ``.bias``."""
    if len(arrays) != 2 * LAYERS:
        raise CheckpointError(f"{source} holds {len(arrays)} arrays; an official ComDefend network holds "
                              f"{2 * LAYERS} ({LAYERS} kernels and their biases, alternating)")
    state, previous = {}, None
    for i in range(LAYERS):
        kernel, bias = arrays[2 * i], arrays[2 * i + 1]
        where = f"{source}, layer {i + 1} of {LAYERS}"
        if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
            raise CheckpointError(f"{where}: kernel of shape {kernel.shape}, expected (3, 3, in, out)")
        if previous is not None and kernel.shape[2] != previous:
            raise CheckpointError(f"{where}: kernel takes {kernel.shape[2]} channels, the layer before gives {previous}")
        if bias.shape != (kernel.shape[3],):
            raise CheckpointError(f"{where}: bias of shape {bias.shape}, expected ({kernel.shape[3]},)")
        previous = kernel.shape[3]
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state[f"convs.{i}.weight"] = torch.from_numpy(weight)
        state[f"convs.{i}.bias"] = torch.from_numpy(np.array(bias, dtype=np.float32))
    return state
