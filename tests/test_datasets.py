"""SVHN, ImageNet-val and NIPS17-DEV loaders on tiny fake trees and the offline NIPS17 head; split handling."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError

from robench import registry
from robench.data import DataNotFound, cifar10, mnist, svhn
from robench.imagenet import imagenet_train, imagenet_val, nips17_dev
from tests.conftest import DATA, needs_cifar

HEAD = DATA / "imagenet_nips17_dev_head.npz"
HEAD_CREDITS = DATA / "imagenet_nips17_dev_head_attribution.csv"
needs_nips17 = pytest.mark.skipif(
    not (HEAD.is_file() and HEAD_CREDITS.is_file()), reason=f"offline NIPS17 head or its attribution not found in {DATA}"
)
WNIDS = ["n01440764", "n01443537", "n15075141"]  # ImageNet-1k classes 0, 1 and 999


@pytest.fixture
def root(monkeypatch, tmp_path):
    """An empty data root in tmp_path, downloads forbidden."""
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("ROBENCH_OFFLINE", "1")
    return tmp_path


def image_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


# --- SVHN -------------------------------------------------------------------------------------


def write_svhn(path, labels, seed=0):
    from scipy.io import savemat

    images = np.random.default_rng(seed).integers(0, 256, (32, 32, 3, len(labels)), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"X": images, "y": np.array(labels, dtype=np.uint8).reshape(-1, 1)})
    return images


def test_svhn_reads_the_official_mat_layout_and_maps_label_10_to_0(root):
    pytest.importorskip("scipy")
    images = write_svhn(root / "train_32x32.mat", [1, 10, 3, 10, 9, 5])
    examples = svhn().load(split="train", n=6)
    assert examples.x.shape == (6, 3, 32, 32) and examples.x.dtype == torch.float32
    assert examples.y.tolist() == [1, 0, 3, 0, 9, 5]
    assert examples.ids == tuple(f"train/{i}" for i in range(6))
    for i in range(6):
        assert np.array_equal(as_uint8(examples.x[i]), images[..., i])
    seeded = svhn().load(split="train", n=3, seed=5)
    for image_id, x in zip(seeded.ids, seeded.x):
        assert np.array_equal(as_uint8(x), images[..., int(image_id.split("/")[1])])


def test_svhn_splits_are_separate_files_and_a_missing_one_is_named(root):
    pytest.importorskip("scipy")
    write_svhn(root / "svhn" / "test_32x32.mat", [7, 7, 10], seed=1)
    assert svhn().load(split="test").y.tolist() == [7, 7, 0]
    with pytest.raises(DataNotFound, match="train_32x32.mat") as info:
        svhn().load(split="train", n=1)
    assert "train split" in str(info.value) and "ROBENCH_DATA=" in str(info.value)
    with pytest.raises(ValueError, match="test, train, extra"):
        svhn().load(split="val")


def test_svhn_without_files_says_which_files_it_expected(offline):
    with pytest.raises(DataNotFound) as info:
        svhn().load(n=4)
    message = str(info.value)
    assert str(offline / "test_32x32.mat") in message and "--data-root" in message and "no SVHN copy" in message


def test_svhn_rejects_a_mat_file_without_the_svhn_arrays(root):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(root / "test_32x32.mat", {"images": np.zeros((4, 32, 32, 3), dtype=np.uint8)})
    with pytest.raises(ValueError, match=r"expected X \(32, 32, 3, N\)"):
        svhn().load(n=1)


# --- ImageNet validation tree ----------------------------------------------------------------


def framed(width: int, height: int, border: int) -> np.ndarray:
    """A grey image with a green frame ``border`` pixels wide."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[:border], image[-border:], image[:, :border], image[:, -border:] = (0, 255, 0), (0, 255, 0), (0, 255, 0), (0, 255, 0)
    return image


def fake_val_tree(folder, corrupt_last_class=False):
    for k, wnid in enumerate(WNIDS):
        (folder / wnid).mkdir(parents=True)
        for j in range(2):
            name = f"ILSVRC2012_val_{10 * k + j:08d}.JPEG"
            data = b"not an image" if corrupt_last_class and k == 2 else image_bytes(framed(120, 80, 10), "PNG")
            (folder / wnid / name).write_bytes(data)
    return folder


@pytest.fixture
def timm():
    return pytest.importorskip("timm")


def test_imagenet_val_labels_are_imagenet_indices_of_the_wnid_folders(root, timm):
    fake_val_tree(root / "imagenet" / "val")
    data = imagenet_val(size=16, strict=False)
    examples = data.load()
    assert examples.y.tolist() == [0, 0, 1, 1, 999, 999]
    assert examples.ids[0] == "n01440764/ILSVRC2012_val_00000000.JPEG"
    assert examples.ids[-1] == "n15075141/ILSVRC2012_val_00000021.JPEG"
    assert examples.x.shape == (6, 3, 16, 16) and data.image_shape == (3, 16, 16) and data.num_classes == 1000


def test_imagenet_train_reads_the_train_tree_and_keeps_the_first_per_class_files(root, timm):
    fake_val_tree(root / "imagenet" / "train")
    everything = imagenet_train(size=16, strict=False).load()
    assert everything.y.tolist() == [0, 0, 1, 1, 999, 999]
    first = imagenet_train(size=16, strict=False, per_class=1).load()
    assert first.y.tolist() == [0, 1, 999]
    assert first.ids == (everything.ids[0], everything.ids[2], everything.ids[4])
    assert torch.equal(first.x, everything.x[[0, 2, 4]])
    with pytest.raises(ValueError, match="splits train"):
        imagenet_train(size=16, strict=False).load(split="test")
    with pytest.raises(ValueError, match="per_class"):
        imagenet_train(per_class=0)


def test_imagenet_val_resizes_the_shorter_side_then_centre_crops(root, timm):
    fake_val_tree(root / "imagenet" / "val")
    cropped = imagenet_val(size=16, crop_pct=0.5, strict=False).load(n=1).x[0]
    assert torch.allclose(cropped, torch.full_like(cropped, 128 / 255), atol=3 / 255)  # the frame is cropped away
    whole = imagenet_val(size=16, crop_pct=1.0, strict=False).load(n=1).x[0]
    assert whole[1, 0, 8] > 0.9 and whole[0, 0, 8] < 0.1  # green frame kept at the top edge


def test_imagenet_val_decodes_only_the_selected_images(root, timm):
    fake_val_tree(root / "imagenet" / "val", corrupt_last_class=True)
    data = imagenet_val(size=8, strict=False)
    assert data.load(n=4).y.tolist() == [0, 0, 1, 1]
    with pytest.raises(UnidentifiedImageError, match="ILSVRC2012_val_00000020"):
        data.load()


def test_imagenet_val_wants_a_full_tree_unless_told_otherwise(root, timm):
    fake_val_tree(root / "imagenet" / "val")
    with pytest.raises(ValueError, match="3 class folders.*strict=false"):
        imagenet_val().load(n=1)
    (root / "imagenet" / "val" / "cats").mkdir()
    with pytest.raises(ValueError, match="not ImageNet-1k wnids.*cats"):
        imagenet_val(strict=False).load(n=1)


def test_imagenet_val_path_option_and_missing_tree(root, timm):
    elsewhere = fake_val_tree(root / "somewhere" / "val")
    assert imagenet_val(path=str(elsewhere), size=8, strict=False).load(n=2, seed=0).x.shape == (2, 3, 8, 8)
    with pytest.raises(DataNotFound) as info:
        imagenet_val().load(n=1)
    assert str(root / "imagenet" / "val") in str(info.value) and "path=" in str(info.value)


@pytest.mark.parametrize("spec, error", [
    ("imagenet-val:size=0", "size must be a positive integer"),
    ("imagenet-val:crop_pct=1.5", "crop_pct must be in"),
    ("imagenet-val:interpolation=nearest", "interpolation must be one of"),
    ("nips17-dev:size=224.5", "option size=224.5 is not of type int"),
])
def test_bad_preprocessing_options_are_named(spec, error):
    with pytest.raises(ValueError, match=error):
        registry.build("datasets", spec)


# --- NIPS 2017 DEV set ------------------------------------------------------------------------


def write_dev_folder(folder, rows, images):
    """A dev_dataset.csv with the competition's columns plus images/<ImageId>.png."""
    (folder / "images").mkdir(parents=True)
    with open(folder / "dev_dataset.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "URL", "x1", "y1", "x2", "y2", "TrueLabel", "TargetClass", "License", "Author"])
        for image_id, true_label, target in rows:
            writer.writerow([image_id, "https://example.org", 0, 0, 1, 1, true_label, target, "CC BY 2.0", "someone"])
    for (image_id, *_), data in zip(rows, images):
        (folder / "images" / f"{image_id}.png").write_bytes(data)
    return folder


def test_nips17_folder_converts_1001_class_labels_and_targets(root):
    colours = [(255, 0, 0), (0, 0, 255), (10, 200, 30)]
    pngs = [image_bytes(np.full((299, 299, 3), c, dtype=np.uint8)) for c in colours]
    write_dev_folder(root / "nips17-dev", [("aa01", 1, 1000), ("bb02", 1000, 1), ("cc03", 306, 779)], pngs)
    data = nips17_dev()
    examples = data.load()
    assert examples.ids == ("aa01", "bb02", "cc03")
    assert examples.y.tolist() == [0, 999, 305]
    assert data.targets(examples.ids).tolist() == [999, 0, 778]
    assert examples.x.shape == (3, 3, 299, 299)
    assert np.array_equal(as_uint8(examples.x[2])[150, 150], colours[2])
    assert data.attribution == root / "nips17-dev" / "dev_dataset.csv" == data.source
    small = nips17_dev(size=64).load(n=1)
    assert small.x.shape == (1, 3, 64, 64) and np.array_equal(as_uint8(small.x[0])[5, 5], colours[0])
    with pytest.raises(KeyError, match="zz99"):
        data.targets(["zz99"])


@pytest.mark.parametrize("rows, error", [
    ([("aa01", 0, 5)], "TrueLabel must be 1..1000"),
    ([("aa01", 5, 1001)], "TargetClass must be 1..1000"),
])
def test_nips17_background_or_out_of_range_labels_are_errors(root, rows, error):
    write_dev_folder(root / "nips17-dev", rows, [image_bytes(np.zeros((4, 4, 3), dtype=np.uint8))])
    with pytest.raises(ValueError, match=error):
        nips17_dev().load()


def test_nips17_csv_without_label_columns_or_with_missing_images(root):
    folder = root / "dev"
    write_dev_folder(folder, [("aa01", 3, 4), ("bb02", 5, 6)], [image_bytes(np.zeros((4, 4, 3), dtype=np.uint8))])
    with pytest.raises(DataNotFound, match="bb02.png is listed in dev_dataset.csv but missing"):
        nips17_dev(path=str(folder)).load()
    (folder / "dev_dataset.csv").write_text("ImageId,TrueLabel\naa01,3\n")
    with pytest.raises(ValueError, match="TargetClass"):
        nips17_dev(path=str(folder)).load()


def test_nips17_without_data_names_the_folder_and_the_offline_head(root):
    with pytest.raises(DataNotFound) as info:
        nips17_dev().load(n=1)
    message = str(info.value)
    assert "dev_dataset.csv" in message and "imagenet_nips17_dev_head.npz" in message and "path=DIR" in message


@needs_nips17
def test_nips17_head_matches_the_npz_and_the_readme_classes(shared_data):
    from timm.data import ImageNetInfo

    data = nips17_dev()
    examples = data.load(n=8)
    with np.load(HEAD) as arrays:
        assert examples.ids == tuple(arrays["image_id"][:8])
        assert examples.y.tolist() == arrays["y"][:8].tolist()
        assert data.targets(examples.ids).tolist() == arrays["target"][:8].tolist()
        first = np.array(Image.open(io.BytesIO(arrays["png"][arrays["offsets"][0]:arrays["offsets"][1]].tobytes())))
    assert np.array_equal(as_uint8(examples.x[0]), first)
    names = [ImageNetInfo().index_to_description(k).split(",")[0] for k in examples.y.tolist()]
    assert names == ["dung beetle", "vase", "bull mastiff", "folding chair", "beaker", "buckeye", "strawberry", "thatch"]
    assert data.attribution == DATA / "imagenet_nips17_dev_head_attribution.csv"
    assert registry.build("datasets", "nips17-dev:size=224").load(n=2, seed=1).x.shape == (2, 3, 224, 224)


@needs_nips17
def test_nips17_folder_and_offline_head_give_the_same_examples(shared_data, tmp_path):
    with np.load(HEAD) as arrays:
        png, offsets, ids = arrays["png"], arrays["offsets"], arrays["image_id"][:4]
    with open(HEAD_CREDITS, newline="") as handle:
        credits = list(csv.DictReader(handle))[:4]
    head = nips17_dev().load(n=4)
    rows = [(row["ImageId"], int(row["TrueLabel_1001"]), t + 1) for row, t in zip(credits, nips17_dev().targets(ids).tolist())]
    images = [png[offsets[i]:offsets[i + 1]].tobytes() for i in range(4)]
    folder = nips17_dev(path=str(write_dev_folder(tmp_path / "dev", rows, images))).load()
    assert folder.ids == head.ids and torch.equal(folder.y, head.y) and torch.equal(folder.x, head.x)


@needs_nips17
def test_nips17_head_needs_its_attribution_and_holds_250(root):
    (root / HEAD.name).symlink_to(HEAD)
    with pytest.raises(DataNotFound, match="CC BY 2.0"):
        nips17_dev().load(n=1)
    (root / HEAD_CREDITS.name).symlink_to(HEAD_CREDITS)
    with pytest.raises(DataNotFound, match="holds only 250"):
        nips17_dev().load(n=300)


# --- splits of the small datasets and the registry --------------------------------------------


@needs_cifar
def test_cifar10_train_head_ids_name_the_official_training_index(shared_data):
    examples = cifar10().load(split="train", n=1019)
    assert examples.ids[1016:] == ("train/1016", "train/10000", "train/10001")
    seeded = cifar10().load(split="train", n=20, seed=0)
    assert all(int(i.split("/")[1]) % 10_000 < 1017 for i in seeded.ids)


def test_mnist_train_split_without_a_copy_names_the_split(shared_data):
    with pytest.raises(DataNotFound, match=r"train split[\s\S]*MNIST/raw") as info:
        mnist().load(split="train", n=4)
    assert "mnist_test.npz" not in str(info.value)


@pytest.mark.parametrize("spec, shape, classes", [
    ("svhn", (3, 32, 32), 10),
    ("imagenet-val", (3, 224, 224), 1000),
    ("imagenet-val:size=299", (3, 299, 299), 1000),
    ("nips17-dev", (3, 299, 299), 1000),
    ("nips17-dev:size=224", (3, 224, 224), 1000),
])
def test_registered_datasets_declare_shape_and_classes_before_loading(spec, shape, classes):
    data = registry.build("datasets", spec)
    assert tuple(data.image_shape) == shape and data.num_classes == classes
