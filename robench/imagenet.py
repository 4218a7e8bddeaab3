"""ImageNet-class evaluation datasets read image by image: ``imagenet-val`` and ``nips17-dev``.

Both hold more pixels than fit comfortably in memory, so they list their images first and decode
only the ``n`` that :func:`robench.data.select` picks. Labels are ImageNet-1k indices 0..999 in
the order of the sorted WordNet ids (torchvision's ImageFolder and timm use the same order).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from robench.data import DataNotFound, Examples, ImageDataset, select

NUM_CLASSES = 1000
INTERPOLATIONS = ("bilinear", "bicubic")


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer number of pixels (224, 299, ...), got {size!r}")
    return size


def _transform(size: int, crop_pct: float | None, interpolation: str) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the shorter side to ``size / crop_pct`` and centre-crop ``size`` (no crop_pct: resize to size x size)."""
    from torchvision import transforms

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    mode = transforms.InterpolationMode(interpolation)
    if crop_pct is None:
        steps = [transforms.Resize((size, size), interpolation=mode)]
    else:
        steps = [transforms.Resize(int(size / crop_pct), interpolation=mode), transforms.CenterCrop(size)]
    return transforms.Compose([*steps, transforms.PILToTensor()])


class FileImageDataset(ImageDataset):
    """A dataset listed up front and decoded lazily: only the selected images are read from disk."""

    def load(self, *, split: str = "test", n: int | None = None, seed: int | None = None) -> Examples:
        """Return ``n`` examples chosen by ``seed`` (None: the first ``n`` in listing order), decoding only those."""
        self._check_split(split)
        ids, labels, read = self._listing(n)
        rows = select(len(ids), n, seed)
        x = torch.stack([self.transform(read(int(i))) for i in rows]).float().div(255)
        return Examples(tuple(ids[i] for i in rows), x, torch.as_tensor(np.asarray(labels)[rows], dtype=torch.int64))

    def _listing(self, n: int | None) -> tuple[Sequence[str], np.ndarray, Callable[[int], Image.Image]]:
        raise NotImplementedError


class ImageNetVal(FileImageDataset):
    """ImageNet-1k validation set (Russakovsky et al. 2015) from an ImageFolder tree ``imagenet/val/<wnid>/*.JPEG``.

    Preprocessing is the standard evaluation transform: resize the shorter side to
    ``size / crop_pct`` (256 for 224) and centre-crop ``size``; Inception models take ``size=299``.
    A class folder's label is its wnid's index among the 1000 sorted ImageNet-1k wnids, so a partial
    tree (``strict=false``, e.g. a few classes for a quick look) keeps the labels a 1000-class model
    expects; ``num_classes`` is always 1000. Ids are file paths relative to the tree.
    """

    name = "imagenet-val"
    num_classes = NUM_CLASSES
    hint = "or pass the folder itself as imagenet-val:path=DIR (ImageNet cannot be downloaded automatically)."

    def __init__(self, *, root=None, path: str | None = None, size: int = 224, crop_pct: float = 0.875,
                 interpolation: str = "bilinear", strict: bool = True):
        super().__init__(root=root, download=False)
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1] (0.875 is the standard 256->224 crop), got {crop_pct!r}")
        self.folder = Path(path).expanduser() if path else self.root / "imagenet" / "val"
        self.image_shape = (3, _check_size(size), size)
        self.transform = _transform(size, crop_pct, interpolation)
        self.strict = strict
        self._samples: list[tuple[str, int]] | None = None

    def _listing(self, n):
        from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, make_dataset

        if self._samples is None:
            self._samples = make_dataset(self.folder, self._class_to_idx(), extensions=IMG_EXTENSIONS)
        ids = [Path(p).relative_to(self.folder).as_posix() for p, _ in self._samples]
        labels = np.array([label for _, label in self._samples], dtype=np.int64)
        return ids, labels, lambda i: default_loader(self._samples[i][0])

    def _class_to_idx(self) -> dict[str, int]:
        if not self.folder.is_dir():
            raise self._not_found([self.folder / "<wnid>" / "*.JPEG"])
        try:
            from timm.data import ImageNetInfo
        except ImportError as err:
            raise ImportError("imagenet-val needs timm's ImageNet-1k class list: pip install timm") from err
        wnids = {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}
        folders = sorted(entry.name for entry in self.folder.iterdir() if entry.is_dir())
        unknown = [name for name in folders if name not in wnids]
        if unknown:
            raise ValueError(f"{self.folder} has class folders that are not ImageNet-1k wnids: {unknown[:5]} "
                             "(expected names like n01440764)")
        if self.strict and len(folders) != NUM_CLASSES:
            raise ValueError(f"{self.folder} has {len(folders)} class folders, the ImageNet validation set has "
                             f"{NUM_CLASSES}; pass imagenet-val:strict=false to evaluate on a partial tree")
        return {name: wnids[name] for name in folders}


class ImageNetTrain(ImageNetVal):
    """ImageNet-1k training images from an ImageFolder tree ``imagenet/train/<wnid>/*.JPEG`` (split ``train``).

    ``per_class=K`` keeps the first K files of every class in sorted order (RDP trains its
    purifier on 25 per class, 25,000 images); preprocessing and labels are those of
    :class:`ImageNetVal` (resize and centre-crop ``size``), and training recipes crop further.
    """

    name = "imagenet-train"
    splits = ("train",)
    hint = "or pass the folder itself as imagenet-train:path=DIR (ImageNet cannot be downloaded automatically)."

    def __init__(self, *, per_class: int | None = None, path: str | None = None, **kwargs):
        super().__init__(path=path, **kwargs)
        if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
            raise ValueError(f"per_class must be a positive integer (RDP: 25), got {per_class!r}")
        self.per_class = per_class
        if path is None:
            self.folder = self.root / "imagenet" / "train"

    def load(self, *, split: str = "train", n: int | None = None, seed: int | None = None) -> Examples:
        """Return ``n`` training examples (all by default) chosen by ``seed``, decoding only those."""
        return super().load(split=split, n=n, seed=seed)

    def _listing(self, n):
        ids, labels, read = super()._listing(n)
        if self.per_class is None:
            return ids, labels, read
        seen: dict[int, int] = {}
        keep = []
        for i, label in enumerate(labels):
            seen[int(label)] = seen.get(int(label), 0) + 1
            if seen[int(label)] <= self.per_class:
                keep.append(i)
        return [ids[i] for i in keep], labels[keep], lambda i: read(keep[i])


class NIPS17Dev(FileImageDataset):
    """NIPS 2017 adversarial competition DEV set (Kurakin et al. 2018): 1000 ImageNet-compatible 299x299 images.

    Read from a folder with ``dev_dataset.csv`` and ``images/<ImageId>.png`` (``path=`` or
    ``<root>/nips17-dev``), else from the offline head ``imagenet_nips17_dev_head.npz`` (250 images)
    with its attribution file. The CSV's labels are in the 1001-class convention (0 = background)
    and become 0..999 (TrueLabel - 1); :meth:`targets` gives the competition's target classes
    likewise. Images are CC BY 2.0: :attr:`attribution` is the file crediting their authors.
    Ids are the ImageIds; ``size`` (default 299, RDP's) resizes the whole image when different.
    """

    name = "nips17-dev"
    num_classes = NUM_CLASSES
    head = "imagenet_nips17_dev_head.npz"
    head_attribution = "imagenet_nips17_dev_head_attribution.csv"
    hint = "or pass the folder itself as nips17-dev:path=DIR (the competition DEV set cannot be downloaded automatically)."

    def __init__(self, *, root=None, path: str | None = None, size: int = 299):
        super().__init__(root=root, download=False)
        self.folder = Path(path).expanduser() if path else self.root / "nips17-dev"
        self.image_shape = (3, _check_size(size), size)
        self.transform = _transform(size, None, "bilinear")
        self._files: tuple[Path, Path] | None = None  # (source, attribution), once listed
        self._index: tuple[list[str], np.ndarray, np.ndarray, Callable[[int], Image.Image]] | None = None

    @property
    def source(self) -> Path:
        """The CSV or npz file the images are listed in."""
        self._load_index()
        return self._files[0]

    @property
    def attribution(self) -> Path:
        """The file crediting each image's author (CC BY 2.0 requires it to travel with the images)."""
        self._load_index()
        return self._files[1]

    def targets(self, ids: Sequence[str]) -> torch.Tensor:
        """The competition's target class (0..999) of each id, for targeted attacks."""
        listed, _, targets, _ = self._load_index()
        position = {image_id: i for i, image_id in enumerate(listed)}
        missing = [i for i in ids if i not in position]
        if missing:
            raise KeyError(f"{self.name} has no image ids {missing[:5]}")
        return torch.as_tensor(targets[[position[i] for i in ids]], dtype=torch.int64)

    def _listing(self, n):
        ids, labels, _, read = self._load_index()
        if n is not None and n > len(ids) and self.source == self.root / self.head:
            why = f"(n={n}; the offline head {self.head} holds only {len(ids)}) "
            raise self._not_found([self.folder / "dev_dataset.csv"], why)
        return ids, labels, read

    def _load_index(self):
        if self._index is None:
            csv_path, npz = self.folder / "dev_dataset.csv", self.root / self.head
            if csv_path.is_file():
                self._index = self._from_folder(csv_path)
            elif npz.is_file():
                self._index = self._from_head(npz)
            else:
                raise self._not_found([csv_path, self.folder / "images" / "<ImageId>.png", npz])
        return self._index

    def _from_folder(self, csv_path: Path):
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        missing = {"ImageId", "TrueLabel", "TargetClass"} - set(rows[0] if rows else ())
        if missing:
            raise ValueError(f"{csv_path} lacks the columns {sorted(missing)} of the competition's dev_dataset.csv")
        ids = [row["ImageId"] for row in rows]
        labels = _from_1001(csv_path, "TrueLabel", [row["TrueLabel"] for row in rows])
        targets = _from_1001(csv_path, "TargetClass", [row["TargetClass"] for row in rows])
        self._files = (csv_path, csv_path)  # its Author / License columns credit every image

        def read(i: int) -> Image.Image:
            image = csv_path.parent / "images" / f"{ids[i]}.png"
            if not image.is_file():
                raise DataNotFound(f"{image} is listed in {csv_path.name} but missing")
            return Image.open(image).convert("RGB")

        return ids, labels, targets, read

    def _from_head(self, npz: Path):
        attribution = self.root / self.head_attribution
        if not attribution.is_file():
            raise DataNotFound(f"{npz.name} must come with {attribution} (its images are CC BY 2.0, which requires "
                               "crediting their authors); copy the attribution file next to it")
        with np.load(npz) as arrays:
            ids = [str(i) for i in arrays["image_id"]]
            png, offsets, labels, targets = (arrays[k] for k in ("png", "offsets", "y", "target"))
        with open(attribution, newline="", encoding="utf-8") as handle:
            credited = [row["ImageId"] for row in csv.DictReader(handle)]
        if credited != ids:
            raise ValueError(f"{attribution.name} does not credit the images of {npz.name} (ImageIds differ)")
        self._files = (npz, attribution)

        def read(i: int) -> Image.Image:
            return Image.open(io.BytesIO(png[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB")

        return ids, labels.astype(np.int64), targets.astype(np.int64), read


def _from_1001(path: Path, column: str, values: list[str]) -> np.ndarray:
    """Labels of the 1001-class TF-slim convention (0 = background) as ImageNet-1k indices."""
    try:
        labels = np.array([int(v) for v in values], dtype=np.int64) - 1
    except ValueError as err:
        raise ValueError(f"{path}: {column} must hold integers 1..1000 ({err})") from err
    bad = np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))
    if bad.size:
        raise ValueError(f"{path}: {column} must be 1..1000 (1001-class convention), data row {bad[0] + 1} has {values[bad[0]]}")
    return labels


def imagenet_val(**kwargs) -> ImageNetVal:
    """ImageNet-1k validation set from an ImageFolder tree (resize + centre crop to ``size``, 1000 classes)."""
    return ImageNetVal(**kwargs)


def imagenet_train(**kwargs) -> ImageNetTrain:
    """ImageNet-1k training images from an ImageFolder tree, optionally the first ``per_class`` per class."""
    return ImageNetTrain(**kwargs)


def nips17_dev(**kwargs) -> NIPS17Dev:
    """NIPS 2017 adversarial competition DEV set (299x299, 1000 classes, with target classes)."""
    return NIPS17Dev(**kwargs)
