"""Dataset readers: tiny hand-written IDX / CIFAR-pickle / .npz files, plus the real datasets when present."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from faithverify.data import (
    DATA_ROOT_ENV,
    Dataset,
    data_root,
    fit_to_input_shape,
    load_dataset,
    load_idx_images,
    load_idx_labels,
    save_npz_sample,
)
from faithverify.errors import DataError


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding written out by hand: 0x00 0x00 0x08 ndim, big-endian uint32 dims, raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def make_idx_dir(
    root: Path, n_train: int = 5, n_test: int = 3, compress: bool = True
) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    suffix = ".gz" if compress else ""
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = images, labels
    return arrays


def write_cifar_batch(path: Path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    with path.open("wb") as f:
        pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels, b"filenames": [b"a"] * n}, f)
    return data, labels


# --- IDX ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_idx_images_and_labels_roundtrip(tmp_path: Path, compress: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
    labels = np.array([3, 7], dtype=np.uint8)
    x = load_idx_images(write_idx(tmp_path / "img", images, compress))
    y = load_idx_labels(write_idx(tmp_path / "lab", labels, compress))
    assert x.dtype == np.float32 and x.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(x[:, 0], images.astype(np.float32) / 255)
    assert y.dtype == np.int64 and y.tolist() == [3, 7]


def test_idx_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(b"\x00\x00\x0d\x03" + idx_bytes(np.zeros((1, 2, 2)))[4:])  # type 0x0d = float
    with pytest.raises(DataError, match="magic number"):
        load_idx_images(path)


def test_idx_labels_file_read_as_images(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "lab.gz", np.zeros(4))
    with pytest.raises(DataError, match="3 dimension"):
        load_idx_images(path)


def test_idx_truncated_data(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(idx_bytes(np.zeros((3, 4, 4)))[:-5])
    with pytest.raises(DataError, match="header says shape"):
        load_idx_images(path)


def test_idx_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(idx_bytes(np.zeros((3, 4, 4)))[:9])
    with pytest.raises(DataError, match="truncated IDX header"):
        load_idx_images(path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "img.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((3, 4, 4))))[:-10])
    with pytest.raises(DataError, match="gzip"):
        load_idx_images(path)


def test_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_idx_labels(tmp_path / "nope.gz")


@pytest.mark.parametrize("compress", [True, False])
def test_load_dataset_idx_directory(tmp_path: Path, compress: bool) -> None:
    arrays = make_idx_dir(tmp_path, compress=compress)
    for split in ("train", "test"):
        ds = load_dataset(tmp_path, split)
        assert ds.x.shape == (len(arrays[f"{split}_y"]), 1, 28, 28)
        np.testing.assert_array_equal(ds.x[:, 0] * 255, arrays[f"{split}_x"].astype(np.float32))
        np.testing.assert_array_equal(ds.y, arrays[f"{split}_y"])
        assert ds.domain == (0.0, 1.0)


def test_idx_directory_count_mismatch(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(7))
    with pytest.raises(DataError, match="3 test images but 7 labels"):
        load_dataset(tmp_path, "test")


def test_idx_directory_missing_split(tmp_path: Path) -> None:
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels"):
        load_dataset(tmp_path, "test")


# --- CIFAR ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_load_dataset_cifar_batches(tmp_path: Path, nested: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    train = [write_cifar_batch(folder / f"data_batch_{i}", 2, seed=i) for i in range(1, 6)]
    test_data, test_labels = write_cifar_batch(folder / "test_batch", 3, seed=9)

    ds = load_dataset(tmp_path, "test")
    assert ds.x.shape == (3, 3, 32, 32) and ds.x.dtype == np.float32
    # Row layout: 1024 red values, then 1024 green, then 1024 blue, each row-major over 32x32.
    assert ds.x[1, 2, 0, 5] == np.float32(test_data[1, 2048 + 5]) / np.float32(255)
    assert ds.x[2, 0, 3, 1] == np.float32(test_data[2, 3 * 32 + 1]) / np.float32(255)
    assert ds.y.tolist() == test_labels

    ds_train = load_dataset(tmp_path, "train")
    assert ds_train.x.shape == (10, 3, 32, 32)
    assert ds_train.y.tolist() == [label for _, labels in train for label in labels]


def test_cifar_missing_batch(tmp_path: Path) -> None:
    write_cifar_batch(tmp_path / "test_batch", 2, seed=0)
    with pytest.raises(DataError, match="missing CIFAR-10 batch data_batch_1"):
        load_dataset(tmp_path, "train")


def test_cifar_wrong_shape(tmp_path: Path) -> None:
    with (tmp_path / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match="expected uint8"):
        load_dataset(tmp_path, "test")


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_cifar_pickle_with_code_is_refused(tmp_path: Path) -> None:
    with (tmp_path / "test_batch").open("wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(DataError, match="refusing to load"):
        load_dataset(tmp_path, "test")


# --- .npz -----------------------------------------------------------------------------------------


def small_dataset(n: int = 6) -> Dataset:
    rng = np.random.default_rng(1)
    return Dataset(rng.random((n, 1, 4, 4), dtype=np.float32), np.arange(n, dtype=np.int64) % 3, name="tiny")


def test_npz_roundtrip(tmp_path: Path) -> None:
    ds = small_dataset()
    path = tmp_path / "sub" / "sample.npz"
    save_npz_sample(ds, path, n=4)
    back = load_dataset(path)
    np.testing.assert_array_equal(back.x, ds.x[:4])
    np.testing.assert_array_equal(back.y, ds.y[:4])
    assert back.x.dtype == np.float32 and back.y.dtype == np.int64
    assert back.name == "tiny" and back.domain == (0.0, 1.0)


def test_npz_plain_arrays(tmp_path: Path) -> None:
    path = tmp_path / "pts.npz"
    np.savez(path, x=np.full((2, 3), 0.5), y=np.array([1, 2], dtype=np.int32))
    ds = load_dataset(path)
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and ds.name == "pts"


def test_npz_missing_y(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(DataError, match="needs arrays 'x' and 'y'"):
        load_dataset(path)


def test_npz_integer_pixels_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((2, 3), dtype=np.uint8), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match="floating point"):
        load_dataset(path)


def test_npz_values_outside_domain(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.full((2, 3), 255.0), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match="outside the domain"):
        load_dataset(path)


def test_npz_length_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((2, 3)), y=np.zeros(3, dtype=np.int64))
    with pytest.raises(DataError, match="sample count"):
        load_dataset(path)


def test_npz_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_dataset(path)


def test_save_sample_too_many_points(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot take 10 points"):
        save_npz_sample(small_dataset(6), tmp_path / "s.npz", n=10)


# --- Dataset, shapes, sources ---------------------------------------------------------------------


def test_dataset_rejects_wrong_dtypes() -> None:
    with pytest.raises(DataError, match="float32"):
        Dataset(np.zeros((2, 3)), np.zeros(2, dtype=np.int64), name="d")
    with pytest.raises(DataError, match="int64"):
        Dataset(np.zeros((2, 3), dtype=np.float32), np.zeros(2, dtype=np.int32), name="d")


def test_dataset_custom_domain() -> None:
    x = np.full((2, 3), -0.5, dtype=np.float32)
    Dataset(x, np.zeros(2, dtype=np.int64), name="d", domain=(-1.0, 1.0))
    with pytest.raises(DataError, match="outside the domain"):
        Dataset(x, np.zeros(2, dtype=np.int64), name="d")


def test_fit_to_input_shape() -> None:
    x = np.arange(2 * 784, dtype=np.float32).reshape(2, 1, 28, 28)
    flat = fit_to_input_shape(x, (784,))
    assert flat.shape == (2, 784)
    np.testing.assert_array_equal(flat[1], x[1].ravel())
    assert fit_to_input_shape(flat, (1, 28, 28)).shape == (2, 1, 28, 28)
    assert fit_to_input_shape(x, (1, 28, 28)) is x


def test_fit_to_input_shape_mismatch_names_both_shapes() -> None:
    x = np.zeros((2, 1, 28, 28), dtype=np.float32)
    with pytest.raises(DataError, match=r"\(1, 28, 28\).*\(3, 32, 32\)"):
        fit_to_input_shape(x, (3, 32, 32))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nowhere")


def test_directory_without_data(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no IDX files"):
        load_dataset(tmp_path)


def test_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown split"):
        load_dataset(tmp_path, "valid")


def test_known_name_under_explicit_root(tmp_path: Path) -> None:
    make_idx_dir(tmp_path / "fashion-mnist")
    ds = load_dataset("fashion-mnist", "train", data_root=tmp_path)
    assert len(ds) == 5 and ds.name == "fashion-mnist-train"


def test_known_name_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_idx_dir(tmp_path / "mnist")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert data_root() == tmp_path
    assert len(load_dataset("mnist")) == 3


def test_known_name_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert data_root() is None
    with pytest.raises(DataError, match=DATA_ROOT_ENV):
        load_dataset("mnist")


def test_data_root_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "gone"))
    assert data_root() is None


# --- The real datasets (only where FAITHVERIFY_DATA_ROOT points at them) --------------------------


@pytest.fixture
def real_root() -> Path:
    root = data_root()
    if root is None:
        pytest.skip(f"{DATA_ROOT_ENV} is not set to an existing directory")
    return root


@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "split", "shape", "first_labels"),
    [
        ("mnist", "test", (10000, 1, 28, 28), [7, 2, 1, 0, 4]),
        ("mnist", "train", (60000, 1, 28, 28), [5, 0, 4, 1, 9]),
        ("fashion-mnist", "test", (10000, 1, 28, 28), [9, 2, 1, 1, 6]),
        ("cifar10", "test", (1000, 3, 32, 32), [3, 8, 8, 0, 6]),
    ],
)
def test_real_dataset(
    real_root: Path, name: str, split: str, shape: tuple[int, ...], first_labels: list[int]
) -> None:
    if not (real_root / name).is_dir():
        pytest.skip(f"{real_root / name} is absent")
    ds = load_dataset(name, split)
    assert ds.x.shape == shape and ds.x.dtype == np.float32
    assert ds.x.min() >= 0.0 and ds.x.max() <= 1.0
    assert ds.y[:5].tolist() == first_labels
    assert sorted(set(ds.y.tolist())) == list(range(10))


@pytest.mark.data
def test_real_mnist_test_statistics(real_root: Path) -> None:
    if not (real_root / "mnist").is_dir():
        pytest.skip(f"{real_root / 'mnist'} is absent")
    ds = load_dataset("mnist", "test")
    # Mean pixel 33.79/255 and class counts as listed in the data's SOURCES.txt.
    assert abs(float(ds.x.mean()) - 0.1325) < 5e-4
    assert np.bincount(ds.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
