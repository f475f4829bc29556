"""Datasets as numpy arrays with an explicit input domain and no hidden normalisation.

Every loader returns pixel values scaled to [0, 1] (``uint8 / 255``) and nothing else: no mean/std
normalisation, no augmentation. The domain is part of the :class:`Dataset`, because the L-inf ball that is
verified is ``{x : |x - x0|_inf <= eps} ∩ domain`` and the domain must match what the model was trained on.

Supported layouts:

- IDX files (MNIST, Fashion-MNIST): ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
  ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]`` -> x ``[N, 1, H, W]``;
- CIFAR-10 python batches (``data_batch_1..5``, ``test_batch``), in the directory itself or in its
  ``cifar-10-batches-py`` subdirectory -> x ``[N, 3, 32, 32]`` (NCHW);
- a ``.npz`` file with arrays ``x`` (float, in the domain) and ``y`` (integer labels), optionally ``name``
  and ``domain``.
"""

from __future__ import annotations

import difflib
import gzip
import io
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from faithverify.errors import DataError

DATA_ROOT_ENV = "FAITHVERIFY_DATA_ROOT"
KNOWN_DATASETS = ("mnist", "fashion-mnist", "cifar10")
SPLITS = ("train", "test")

# IDX header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per dimension.
_IDX_UBYTE = 0x08
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class Dataset:
    """Labelled samples ``x[i]`` (float32, inside ``domain``) with integer class labels ``y[i]`` (int64)."""

    x: np.ndarray
    y: np.ndarray
    name: str
    domain: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32:
            raise DataError(f"dataset {self.name!r}: x must be float32, got {self.x.dtype}")
        if self.y.dtype != np.int64 or self.y.ndim != 1:
            raise DataError(
                f"dataset {self.name!r}: y must be a 1-D int64 array, got {self.y.dtype} {self.y.shape}"
            )
        if self.x.ndim < 2 or len(self.x) != len(self.y):
            raise DataError(
                f"dataset {self.name!r}: x {self.x.shape} and y {self.y.shape} differ in sample count"
            )
        lo, hi = self.domain
        if not lo < hi:
            raise DataError(f"dataset {self.name!r}: empty domain [{lo}, {hi}]")
        if self.x.size and not np.isfinite(self.x).all():
            raise DataError(f"dataset {self.name!r}: x holds NaN or infinite values")
        if self.x.size and (self.x.min() < lo or self.x.max() > hi):
            raise DataError(
                f"dataset {self.name!r}: x has values in [{self.x.min()}, {self.x.max()}], "
                f"outside the domain [{lo}, {hi}]"
            )
        if self.y.size and self.y.min() < 0:
            raise DataError(f"dataset {self.name!r}: negative class label {self.y.min()}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def data_root() -> Path | None:
    """The directory named by ``$FAITHVERIFY_DATA_ROOT``; None if it is unset, empty or not a directory."""
    value = os.environ.get(DATA_ROOT_ENV, "")
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


# ------------------------------------------------------------------------------------------------------------
# IDX


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic (whatever its suffix)."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array with ``ndim`` dimensions, its header checked against the file size."""
    data = _read_bytes(Path(path))
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != _IDX_UBYTE or data[3] != ndim:
        raise DataError(
            f"{path}: not an unsigned-byte IDX file with {ndim} dimension(s) "
            f"(magic number {data[:4].hex() or 'missing'}, expected 0000{_IDX_UBYTE:02x}{ndim:02x})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes) but the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_idx_images(path: str | Path) -> np.ndarray:
    """IDX image file (``.gz`` or plain) -> float32 ``[N, 1, H, W]``, ``x = pixel / 255`` in [0, 1]."""
    images = _read_idx(Path(path), ndim=3)
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]


def load_idx_labels(path: str | Path) -> np.ndarray:
    """IDX label file (``.gz`` or plain) -> int64 ``[N]``."""
    return _read_idx(Path(path), ndim=1).astype(np.int64)


def _find_idx_file(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"{directory}: missing {stem}.gz (or {stem})")


def _load_idx_dir(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _IDX_PREFIX[split]
    x = load_idx_images(_find_idx_file(directory, f"{prefix}-images-idx3-ubyte"))
    y = load_idx_labels(_find_idx_file(directory, f"{prefix}-labels-idx1-ubyte"))
    if len(x) != len(y):
        raise DataError(f"{directory}: {len(x)} {split} images but {len(y)} labels")
    return x, y


# ------------------------------------------------------------------------------------------------------------
# CIFAR-10 python batches


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle may otherwise run arbitrary code on load."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch ``{b'data': uint8 [N, 3072] channel-major rows, b'labels': [N]}`` -> (x, y)."""
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 python batch (no b'data' / b'labels' entries)")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    size = int(np.prod(_CIFAR_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != size or len(data) != len(labels):
        raise DataError(
            f"{path}: b'data' is {data.dtype} {data.shape}, expected uint8 [{len(labels)}, {size}]"
        )
    x = data.reshape(len(data), *_CIFAR_SHAPE).astype(np.float32) / np.float32(255.0)
    return x, labels


def _cifar_dir(directory: Path) -> Path | None:
    """The directory that holds the CIFAR batches: ``directory`` itself or its ``cifar-10-batches-py``."""
    for candidate in (directory, directory / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file() or (candidate / "data_batch_1").is_file():
            return candidate
    return None


def _load_cifar_dir(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    parts = []
    for name in _CIFAR_FILES[split]:
        path = directory / name
        if not path.is_file():
            raise DataError(f"{directory}: missing CIFAR-10 batch {name}")
        parts.append(_load_cifar_batch(path))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# ------------------------------------------------------------------------------------------------------------
# .npz


def _load_npz(path: Path) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zlib.error, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: a .npz dataset needs arrays 'x' and 'y', found {sorted(arrays)}")
    x, y = arrays["x"], arrays["y"]
    if not np.issubdtype(x.dtype, np.floating):
        # Refuse rather than guess a scale (/255?): the domain must be explicit.
        raise DataError(f"{path}: x must be floating point values in the input domain, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer class labels, got {y.dtype}")
    name = str(arrays["name"]) if "name" in arrays else path.stem
    domain = (0.0, 1.0)
    if "domain" in arrays:
        d = np.asarray(arrays["domain"], dtype=np.float64).ravel()
        if d.shape != (2,):
            raise DataError(f"{path}: 'domain' must hold two numbers (low, high), got shape {d.shape}")
        domain = (float(d[0]), float(d[1]))
    return Dataset(x.astype(np.float32), y.astype(np.int64), name=name, domain=domain)


# ------------------------------------------------------------------------------------------------------------
# Entry points


def load_dataset(source: str | Path, split: str = "test", data_root: str | Path | None = None) -> Dataset:
    """Load ``split`` of a dataset given by name, directory or ``.npz`` file.

    ``source`` is one of :data:`KNOWN_DATASETS` (looked up as ``<data_root>/<name>``, ``data_root``
    defaulting to ``$FAITHVERIFY_DATA_ROOT``), a directory in the IDX or CIFAR layout, or a ``.npz`` file
    (which holds one split; ``split`` is ignored).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    path = Path(source)
    name = path.name
    # A bare known name always means the data root's copy; "./mnist" names a local directory instead.
    if isinstance(source, str) and source in KNOWN_DATASETS:
        root = Path(data_root) if data_root is not None else _env_root()
        path = root / str(source)
        name = str(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        return _load_npz(path)
    if not path.is_dir():
        raise DataError(f"dataset directory not found: {path}{_did_you_mean(str(source))}")
    cifar = _cifar_dir(path)
    if cifar is not None:
        x, y = _load_cifar_dir(cifar, split)
    elif any(path.glob("*-idx3-ubyte*")):
        x, y = _load_idx_dir(path, split)
    else:
        raise DataError(f"{path}: no IDX files (*-idx3-ubyte[.gz]) or CIFAR-10 batches found")
    return Dataset(x, y, name=f"{name}-{split}")


def _env_root() -> Path:
    root = data_root()
    if root is None:
        raise DataError(
            f"no data root: pass --data-root or set {DATA_ROOT_ENV} to a directory holding the datasets"
        )
    return root


def _did_you_mean(source: str) -> str:
    """A hint for a misspelt dataset name (``mnsit``): a close known name, or the list of them."""
    if "/" in source or "." in Path(source).name:
        return ""  # a path the user meant as one
    close = difflib.get_close_matches(source.lower(), KNOWN_DATASETS, n=1, cutoff=0.6)
    if close:
        return f" (did you mean the dataset {close[0]!r}?)"
    return f" (dataset names: {', '.join(KNOWN_DATASETS)})"


def fit_to_input_shape(x: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Reshape a batch ``x [N, *s]`` to ``[N, *input_shape]`` when ``prod(s) == prod(input_shape)``.

    ``input_shape`` is the model's per-sample shape (without the batch axis). The values are not touched; only
    the layout changes (row-major, as ``numpy.reshape``), e.g. MNIST ``[N, 1, 28, 28]`` -> ``[N, 784]``.
    """
    target = tuple(int(d) for d in input_shape)
    if any(d <= 0 for d in target):
        raise DataError(f"model input shape {target} has non-positive dimensions")
    sample = tuple(x.shape[1:])
    if sample == target:
        return x
    if x.ndim < 1 or int(np.prod(sample)) != int(np.prod(target)):
        raise DataError(
            f"data samples of shape {sample} ({int(np.prod(sample))} values) do not fit the model input "
            f"shape {target} ({int(np.prod(target))} values)"
        )
    return x.reshape(len(x), *target)


def save_npz_sample(dataset: Dataset, path: str | Path, n: int) -> None:
    """Write the first ``n`` points as ``.npz``: x float32, y int64, name and domain (for load_dataset)."""
    if not 1 <= n <= len(dataset):
        raise DataError(f"cannot take {n} points from dataset {dataset.name!r} of {len(dataset)} points")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        x=dataset.x[:n].astype(np.float32),
        y=dataset.y[:n].astype(np.int64),
        name=np.array(dataset.name),
        domain=np.array(dataset.domain, dtype=np.float64),
    )


def sample_beside(model: str | Path, source: str | None) -> str:
    """``source`` as given, or the ``sample.npz`` shipped beside a model file (the default of every command)."""
    if source is not None:
        return source
    sample = Path(model).parent / "sample.npz"
    if not sample.exists():
        raise DataError(f"no data given and no sample.npz beside {model}")
    return str(sample)


@dataclass(frozen=True)
class Points:
    """A slice of a dataset, shaped for a model: what certify, gate, heatmap and export-vnn work on."""

    x: np.ndarray  # [N, *input_shape] float32
    labels: np.ndarray | None
    indices: np.ndarray  # positions in the dataset
    source: str


def select_points(
    source: str,
    input_shape: tuple[int, ...],
    *,
    split: str = "test",
    data_root: str | Path | None = None,
    start: int = 0,
    count: int | None = None,
    domain: tuple[float, float] = (0.0, 1.0),
    num_classes: int | None = None,
) -> Points:
    """Points ``start .. start + count`` of ``source``, reshaped to ``input_shape`` and checked to lie in
    ``domain`` (a model verified over [0, 1] says nothing about pixels in [0, 255]), with labels checked to
    name one of ``num_classes`` classes where that is given."""
    dataset = load_dataset(source, split=split, data_root=data_root)
    if start < 0:
        raise DataError(f"start index {start} is negative")
    if len(dataset.x) == 0:
        raise DataError(f"{source} holds no points")
    if start >= len(dataset.x):
        raise DataError(f"start index {start} is past the end of the data ({len(dataset.x)} points)")
    stop = len(dataset.x) if count is None else min(len(dataset.x), start + count)
    x = fit_to_input_shape(dataset.x[start:stop], input_shape)
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < domain[0] or hi > domain[1]:
        raise DataError(f"the data's values span [{lo:g}, {hi:g}], outside the domain {list(domain)}")
    labels = dataset.y[start:stop] if dataset.y is not None else None
    if labels is not None and num_classes is not None:
        check_label_range(labels, np.arange(start, stop), num_classes)
    return Points(x, labels, np.arange(start, stop), source)


def check_label_range(labels: np.ndarray, indices: np.ndarray, num_classes: int) -> None:
    """A DataError naming the first label that is not one of ``num_classes`` classes (``indices``: the points'
    dataset indices, for the message)."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise DataError(
            f"label {int(labels[bad[0]])} of point {int(indices[bad[0]])} is not a class of the model "
            f"(0 .. {num_classes - 1}); {len(bad)} labels are out of range"
        )
