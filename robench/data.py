"""Evaluation datasets registered under ``robench.datasets``: images in [0, 1] with stable ids.

Each dataset returns deterministic subsets by ``(n, seed)``: ``seed=None`` takes the first
``n`` images of the split in their official order (as the papers do), an integer seed takes
a seeded random subset. Example ids (``test/123``) name the image's index in the official
split, so they stay stable across machines and enter the cell key. The ImageNet-class datasets,
decoded image by image, live in :mod:`robench.imagenet`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from robench.env import DATA_ENV, data_root, offline
from robench.errors import ConfigError


class DataNotFound(FileNotFoundError):
    """No copy of a dataset was found and none could be downloaded; says where robench looked."""


class NotEnoughData(ConfigError):
    """A dataset copy holds fewer images than asked for; says how many it holds."""


@dataclass(frozen=True)
class Examples:
    """A batch of evaluation examples: ids ``(N,)``, images ``(N, C, H, W)`` in [0, 1], labels ``(N,)``."""

    ids: tuple[str, ...]
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """sha256 of ids, pixels and labels: changes when the data behind a cell changes."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.ids).encode())
        digest.update(self.x.contiguous().numpy().tobytes())
        digest.update(self.y.numpy().astype(np.int64).tobytes())
        return digest.hexdigest()


def select(total: int, n: int | None, seed: int | None) -> np.ndarray:
    """Indices of a deterministic subset: the first ``n``, or a seeded sample kept in index order."""
    n = total if n is None else n
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if n > total:
        raise ValueError(f"asked for n={n} examples but only {total} are available")
    if seed is None:
        return np.arange(n)
    chosen = np.random.default_rng(seed).permutation(total)[:n]
    return np.sort(chosen)


class ImageDataset:
    """A labelled image dataset with a known image shape and class count.

    Subclasses provide :meth:`_arrays` returning ``(uint8 images NHWC or NHW, labels, index)`` for a
    split, where ``index`` holds each row's position in the official split (None: the row number);
    datasets too large to hold in memory override :meth:`load` and decode only what they select.
    """

    name: str = ""
    num_classes: int = 0
    image_shape: tuple[int, int, int] = (0, 0, 0)
    splits: tuple[str, ...] = ("test",)
    hint: str = "or allow the download (network access, without ROBENCH_OFFLINE set)."

    def __init__(self, *, root: "str | Path | None" = None, download: bool = True):
        self.root = data_root(root)
        self.download = download and not offline()
        self.download_error: str | None = None  # why the last download failed, shown in the not-found message

    def load(self, *, split: str = "test", n: int | None = None, seed: int | None = None) -> Examples:
        """Return ``n`` examples of ``split`` chosen by ``seed`` (None: the first ``n``)."""
        self._check_split(split)
        images, labels, official = self._arrays(split, n)
        if n is not None and n > len(images):
            raise NotEnoughData(f"{self.name} {split} split: asked for n={n} images, but it holds {len(images)}; "
                                f"use -n {len(images)} or fewer")
        rows = select(len(images), n, seed)
        x = torch.from_numpy(np.ascontiguousarray(images[rows]))
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        x = x.float().div(255).contiguous()
        y = torch.from_numpy(np.asarray(labels)[rows].astype(np.int64))
        index = rows if official is None else np.asarray(official)[rows]
        return Examples(tuple(f"{split}/{i}" for i in index), x, y)

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.name} has splits {', '.join(self.splits)}, not {split!r}")

    def _arrays(self, split: str, n: int | None) -> tuple[np.ndarray, np.ndarray, "np.ndarray | None"]:
        raise NotImplementedError

    def _try_download(self, fetch: Callable[[], "tuple | None"]) -> "tuple | None":
        """Run a download (and read) when downloads are allowed; keep its error for the not-found message."""
        if not self.download:
            return None
        try:
            return fetch()
        except (OSError, RuntimeError) as err:
            self.download_error = f"{type(err).__name__}: {err}"
            return None

    def _not_found(self, looked_for: list["str | Path"], why: str = "") -> DataNotFound:
        # strings name files under the data root; Paths are already complete (e.g. from a path= option)
        where = "\n".join(f"  - {p if isinstance(p, Path) else self.root / p}" for p in looked_for)
        return DataNotFound(
            f"{self.name} {why}not found. robench looked for:\n{where}\n"
            f"Point robench at a folder holding one of these with --data-root DIR or {DATA_ENV}=DIR{self._fix()}"
        )

    def _fix(self) -> str:
        if self.download_error is not None:
            return f".\nThe download was tried and failed: {self.download_error}"
        return f", {self.hint}"


def _from_torchvision(factory: Callable, root: Path, train: bool, download: bool):
    """torchvision's copy as arrays; None when absent (a failed download raises)."""
    try:
        ds = factory(str(root), train=train, download=download)
    except RuntimeError:
        if download:
            raise
        return None
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else ds.data
    return np.asarray(data), np.asarray(ds.targets), None


class CIFAR10(ImageDataset):
    """CIFAR-10 (Krizhevsky 2009): torchvision's copy, else the offline npz heads, else a download."""

    name = "cifar10"
    num_classes = 10
    image_shape = (3, 32, 32)
    splits = ("test", "train")
    _heads = {"test": "cifar10_test_head.npz", "train": "cifar10_train_head.npz"}

    def _arrays(self, split, n):
        import torchvision

        found = _from_torchvision(torchvision.datasets.CIFAR10, self.root, split == "train", False)
        if found is not None:
            return found
        head = self.root / self._heads[split]
        arrays = np.load(head) if head.is_file() else None
        if arrays is not None and (n is None or n <= len(arrays["x"])):
            return arrays["x"], arrays["y"], _head_index(split, len(arrays["y"]))
        train = split == "train"
        found = self._try_download(lambda: _from_torchvision(torchvision.datasets.CIFAR10, self.root, train, True))
        if found is not None:
            return found
        if arrays is not None:
            raise NotEnoughData(
                f"cifar10 {split} split: asked for n={n} images, but the offline head {head} holds "
                f"{len(arrays['y'])}; use -n {len(arrays['y'])} or fewer, or put torchvision's full copy "
                f"(cifar-10-batches-py/) in "
                f"{self.root} (--data-root DIR or {DATA_ENV}=DIR){self._fix() if self.download_error else ''}"
            )
        raise self._not_found(
            ["cifar-10-batches-py/ (torchvision's copy)", f"{head.name} (offline head)"], f"({split} split, n={n}) "
        )


def _head_index(split: str, count: int) -> "np.ndarray | None":
    """Official indices of an offline head's rows: the train head holds the first images of each of the 5 batches."""
    if split == "test":
        return None
    rows = np.arange(count)
    per_batch = count // 5
    return rows // per_batch * 10_000 + rows % per_batch


class MNIST(ImageDataset):
    """MNIST (LeCun et al. 1998): torchvision's copy, else the offline ``mnist_test.npz``, else a download."""

    name = "mnist"
    num_classes = 10
    image_shape = (1, 28, 28)
    splits = ("test", "train")

    def _arrays(self, split, n):
        import torchvision

        found = _from_torchvision(torchvision.datasets.MNIST, self.root, split == "train", False)
        if found is not None:
            return found
        npz = self.root / "mnist_test.npz"
        if split == "test" and npz.is_file():
            arrays = np.load(npz)
            return arrays["x"], arrays["y"], None
        train = split == "train"
        found = self._try_download(lambda: _from_torchvision(torchvision.datasets.MNIST, self.root, train, True))
        if found is not None:
            return found
        looked = ["MNIST/raw/ (torchvision's copy)"] + (["mnist_test.npz (offline test split)"] if split == "test" else [])
        raise self._not_found(looked, f"({split} split) ")


class SVHN(ImageDataset):
    """SVHN cropped digits (Netzer et al. 2011): ``<split>_32x32.mat`` in the data root, else a download."""

    name = "svhn"
    num_classes = 10
    image_shape = (3, 32, 32)
    splits = ("test", "train", "extra")
    hint = "or allow the download (network access, without ROBENCH_OFFLINE set); robench ships no SVHN copy."

    def _arrays(self, split, n):
        filename = f"{split}_32x32.mat"
        for folder in (self.root, self.root / "svhn"):
            if (folder / filename).is_file():
                return _read_svhn(folder / filename)
        found = self._try_download(lambda: self._fetch(split, filename))
        if found is not None:
            return found
        raise self._not_found([filename, f"svhn/{filename}"], f"({split} split) ")


    def _fetch(self, split: str, filename: str) -> tuple:
        from torchvision.datasets import SVHN as TorchvisionSVHN
        from torchvision.datasets.utils import download_url

        url, _, md5 = TorchvisionSVHN.split_list[split]
        download_url(url, str(self.root / "svhn"), filename, md5)
        return _read_svhn(self.root / "svhn" / filename)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray, None]:
    # torchvision's SVHN reads a file only if its md5 is the official one, re-hashing it (182 MB,
    # 1.3 GB for `extra`) on every load; a present file is read here the way torchvision reads it
    # (scipy.io.loadmat) and checked by its structure instead. Downloads are md5-checked above.
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise ImportError("reading SVHN's .mat files needs scipy: pip install scipy") from err
    try:
        mat = loadmat(path)
    except ValueError as err:
        raise ValueError(f"{path} is not a readable MATLAB file ({err}); re-download it or remove it") from err
    images, labels = mat.get("X"), mat.get("y")
    if images is None or labels is None or images.ndim != 4 or images.shape[:3] != (32, 32, 3) \
            or labels.size != images.shape[3]:
        found = {k: getattr(v, "shape", None) for k, v in mat.items() if not k.startswith("__")}
        raise ValueError(f"{path} is not an SVHN file: expected X (32, 32, 3, N) and y (N, 1), found {found}")
    labels = labels.astype(np.int64).reshape(-1)
    labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10; torchvision maps it the same way
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path} has labels outside 1..10: {sorted(set(labels.tolist()))[:10]}")
    return np.moveaxis(images, 3, 0), labels, None


class Synthetic(ImageDataset):
    """Noisy copies of the ``tiny`` model's class templates: a dataset for tests that needs no files."""

    name = "synthetic"
    splits = ("test",)

    def __init__(self, *, size: int = 1024, channels: int = 3, image_size: int = 32, num_classes: int = 10, **_):
        super().__init__(download=False)
        self.size = size
        self.num_classes = num_classes
        self.image_shape = (channels, image_size, image_size)

    def _arrays(self, split, n):
        from robench.archs.templates import class_templates

        generator = torch.Generator().manual_seed(1)
        templates = class_templates(self.num_classes, self.image_shape[0], self.image_shape[1])
        labels = torch.randint(0, self.num_classes, (self.size,), generator=generator)
        noise = torch.rand((self.size, *self.image_shape), generator=generator) * 0.2 - 0.1
        images = (templates[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).numpy(), labels.numpy(), None


def cifar10(**kwargs) -> CIFAR10:
    """CIFAR-10 test/train split (32x32 RGB, 10 classes)."""
    return CIFAR10(**kwargs)


def mnist(**kwargs) -> MNIST:
    """MNIST test/train split (28x28 grey, 10 classes)."""
    return MNIST(**kwargs)


def svhn(**kwargs) -> SVHN:
    """SVHN test/train/extra split (32x32 RGB, 10 classes; digit 0 is class 0)."""
    return SVHN(**kwargs)


def synthetic(**kwargs) -> Synthetic:
    """Synthetic template images for tests (no files, no network)."""
    return Synthetic(**kwargs)
