"""Datasets as tensors: the bundled scikit-learn digits, or any `.npz` with train/test arrays.

>>> ds = load_dataset("digits")
>>> ds.x_train.shape, ds.num_classes
(torch.Size([1437, 1, 8, 8]), 10)

Images are float32 NCHW; labels int64. `normalized()` standardises per channel with
train statistics; `loaders()` wraps the tensors in seeded DataLoaders; `augmented()` makes the
training loader random-crop (zero padding 4) and horizontally flip each image, seeded per epoch.
"""

from dataclasses import dataclass, replace
from pathlib import Path
import zipfile

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .errors import DataError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
DATASET_CHOICES = ("digits", "path/to/file.npz", "path/to/file.py:factory", "package.module:factory")


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors: x (N, C, H, W) float32, y (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    name: str
    mean: tuple[float, ...] | None = None  # per-channel train statistics, set by normalized()
    std: tuple[float, ...] | None = None
    augment: bool = False  # training batches random-cropped (pad 4) and flipped (see augmented())

    def augmented(self) -> "Dataset":
        """A copy whose training loader random-crops (zero padding of 4 pixels, after normalisation:
        the mean) and horizontally flips each image: the standard CIFAR recipe. The test loader is
        untouched."""
        return replace(self, augment=True)

    def normalized(self) -> "Dataset":
        """A copy with each channel standardised by the train mean/std (stored on the copy).

        Already-normalised datasets are returned unchanged, so calling it twice is harmless.
        """
        if self.mean is not None:
            return self
        self.check_finite()
        mean = self.x_train.mean(dim=(0, 2, 3))  # (C,)
        std = self.x_train.std(dim=(0, 2, 3)).clamp_min(1e-6)  # constant channels stay finite
        m, s = mean[:, None, None], std[:, None, None]  # (C, 1, 1)
        return replace(self, x_train=(self.x_train - m) / s, x_test=(self.x_test - m) / s,
                       mean=tuple(mean.tolist()), std=tuple(std.tolist()))

    def check_finite(self) -> None:
        """:class:`DataError` naming the split and the first bad sample if any image holds NaN or Inf."""
        for key in ("x_train", "x_test"):
            _require_finite(getattr(self, key), f"data '{self.name}'", key)

    def loaders(self, batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
        """(train, test) loaders; train is shuffled by a generator seeded with `seed`."""
        if batch_size < 1:
            raise DataError(f"batch_size must be a positive integer, got {batch_size}")
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(TensorDataset(self.x_train, self.y_train), batch_size=batch_size,
                           shuffle=True, generator=generator, num_workers=0,
                           collate_fn=CropFlip(seed) if self.augment else None)
        test = DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=batch_size,
                          shuffle=False, num_workers=0)
        return train, test

    def subset(self, n_train: int, n_test: int, seed: int = 0) -> "Dataset":
        """A seeded random subset of at most n_train / n_test samples (fewer if fewer exist)."""
        if n_train < 1 or n_test < 1:
            raise DataError(f"subset sizes must be positive, got n_train={n_train}, "
                            f"n_test={n_test}")
        generator = torch.Generator().manual_seed(seed)
        train_idx = torch.randperm(len(self.y_train), generator=generator)[:n_train]
        test_idx = torch.randperm(len(self.y_test), generator=generator)[:n_test]
        return replace(self, x_train=self.x_train[train_idx], y_train=self.y_train[train_idx],
                       x_test=self.x_test[test_idx], y_test=self.y_test[test_idx])


class CropFlip:
    """collate_fn: stack a batch, then per image a random crop of the zero-padded image and a random
    horizontal flip, drawn from its own generator (``reseed`` it per epoch for a reproducible run)."""

    def __init__(self, seed: int = 0, pad: int = 4):
        self.pad = pad
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([b[0] for b in batch])
        y = torch.stack([b[1] for b in batch])
        n, _, h, w = x.shape
        p = self.pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=self.generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=self.generator)
        flip = torch.rand(n, generator=self.generator) < 0.5
        out = torch.empty_like(x)
        for i in range(n):
            img = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
            out[i] = img.flip(-1) if flip[i] else img
        return out, y


def load_digits_dataset(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (bundled, no download), scaled to [0, 1], stratified 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return Dataset(torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te),
                   torch.from_numpy(y_te), num_classes=10, input_shape=(1, 8, 8), name="digits")


def load_npz(path: str | Path, max_train: int | None = None,
             max_test: int | None = None) -> Dataset:
    """Load `x_train, y_train, x_test, y_test` from an .npz file.

    x may be NHWC or NCHW (told apart by a channel axis of size 1 or 3), or NHW for one
    channel; uint8 is scaled by 1/255, floats are kept. `max_train` / `max_test` read only the
    first rows of each array (streamed from the archive), for quick runs on large files.
    """
    path = Path(path)
    for limit in (max_train, max_test):
        if limit is not None and limit < 1:
            raise DataError(f"max_train / max_test must be positive, got {limit}")
    if not path.is_file():
        raise DataError(f"dataset file {str(path)!r} does not exist")
    arrays = _read_npz(path, {"x_train": max_train, "y_train": max_train,
                              "x_test": max_test, "y_test": max_test})
    x_train = _images_to_nchw(arrays["x_train"], path, "x_train")
    x_test = _images_to_nchw(arrays["x_test"], path, "x_test")
    y_train = _labels(arrays["y_train"], len(x_train), path, "y_train")
    y_test = _labels(arrays["y_test"], len(x_test), path, "y_test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{path}: x_train images are {tuple(x_train.shape[1:])} (C, H, W) but "
                        f"x_test images are {tuple(x_test.shape[1:])}; they must match")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(x_train, y_train, x_test, y_test, num_classes=num_classes,
                   input_shape=tuple(x_train.shape[1:]), name=path.stem)


def load_dataset(name_or_path: str | Path, seed: int = 0) -> Dataset:
    """"digits" -> the bundled digits (split by `seed`); a path to an .npz -> `load_npz`."""
    if str(name_or_path) == "digits":
        return load_digits_dataset(seed)
    if str(name_or_path).endswith(".npz"):
        return load_npz(name_or_path)
    if ":" in str(name_or_path):
        return load_factory_dataset(str(name_or_path))
    raise DataError(f"unknown dataset {str(name_or_path)!r}; valid choices: "
                    f"{', '.join(DATASET_CHOICES)}")


def load_factory_dataset(spec: str) -> Dataset:
    """Data from your code: ``file.py:factory`` / ``pkg.mod:factory`` returning a :class:`Dataset` or
    ``(x_train, y_train, x_test, y_test)`` tensors (x ``(N, C, H, W)`` float; y class labels ``(N,)``
    or per-pixel labels ``(N, H, W)``, int). Importing the file runs its code (logged)."""
    from .modelspec import import_factory

    factory = import_factory(spec, "data")
    try:
        made = factory() if callable(factory) else factory
    except Exception as exc:
        raise DataError(f"data {spec!r}: the factory failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(made, Dataset):
        return made
    if not (isinstance(made, (tuple, list)) and len(made) == 4):
        raise DataError(f"data {spec!r}: the factory must return a Dataset or (x_train, y_train, x_test, y_test), "
                        f"got {type(made).__name__}")
    x_train, y_train, x_test, y_test = (torch.as_tensor(t) for t in made)
    for key, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x.ndim != 4 or len(x) != len(y) or y.dtype.is_floating_point:
            raise DataError(f"data {spec!r}: {key} split needs x (N, C, H, W) and integer labels y with N rows, "
                            f"got x {tuple(x.shape)}, y {tuple(y.shape)} {y.dtype}")
    return Dataset(x_train.float(), y_train.long(), x_test.float(), y_test.long(),
                   num_classes=int(max(y_train.max(), y_test.max())) + 1, input_shape=tuple(x_train.shape[1:]),
                   name=spec)


def _read_npz(path: Path, limits: dict[str, int | None]) -> dict[str, np.ndarray]:
    """Each key of `limits` from the archive, truncated to its limit of rows (None: all)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            missing = [key for key in limits if key not in members]
            if missing:
                raise DataError(f"{path}: missing key(s) {', '.join(missing)}; an .npz dataset "
                                f"needs {', '.join(NPZ_KEYS)} (found: {', '.join(members)})")
            return {key: _read_npy(archive, members[key], limit, path)
                    for key, limit in limits.items()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None


def _read_npy(archive: zipfile.ZipFile, member: str, limit: int | None,
              path: Path) -> np.ndarray:
    """Read one .npy member; with `limit`, only the bytes of its first `limit` rows."""
    with archive.open(member) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(stream)
        except ValueError as exc:
            raise DataError(f"{path}: member {member!r} is not a .npy array ({exc})") from None
        if dtype.hasobject or fortran or not shape:
            raise DataError(f"{path}: {member!r} must be a C-ordered numeric array with a "
                            f"sample axis (got dtype {dtype}, shape {shape})")
        rows = shape[0] if limit is None else min(limit, shape[0])
        shape = (rows, *shape[1:])
        count = int(np.prod(shape))
        data = stream.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise DataError(f"{path}: member {member!r} is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _images_to_nchw(x: np.ndarray, path: Path, key: str) -> torch.Tensor:
    """uint8 or float images, (N, H, W), (N, C, H, W) or (N, H, W, C), to float32 NCHW."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"{path}: {key} has shape {x.shape}; expected (N, H, W), "
                        f"(N, C, H, W) or (N, H, W, C) with C = 1 or 3")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: {key} has dtype {x.dtype}; expected uint8 (0-255) or float")
    images = np.array(x, dtype=np.float32, order="C")  # a writable, contiguous copy
    if x.dtype == np.uint8:
        images /= 255.0
    return _require_finite(torch.from_numpy(images), str(path), key)


def _require_finite(x: torch.Tensor, where: str, key: str) -> torch.Tensor:
    """``x`` if every value is finite (as float32: 1e39 in a float64 file is Inf here), else a DataError."""
    bad = ~torch.isfinite(x).flatten(1).all(dim=1) if x.ndim > 1 else ~torch.isfinite(x)  # (N,)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        kinds = " and ".join(k for k, f in (("NaN", torch.isnan), ("Inf", torch.isinf)) if bool(f(x).any()))
        raise DataError(f"{where}: {key} holds {kinds} values in {int(bad.sum())} sample(s) (the first at index "
                        f"{first}); remove or fix them")
    return x


def _labels(y: np.ndarray, n_images: int, path: Path, key: str) -> torch.Tensor:
    """Integer class labels, (N,) or (N, 1), to int64 (N,), checked against the image count."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: {key} has shape {y.shape}; expected (N,) class labels")
    if len(y) == 0:
        raise DataError(f"{path}: {key} is empty; a dataset needs at least one sample per split")
    if len(y) != n_images:
        raise DataError(f"{path}: {key} has {len(y)} labels but there are {n_images} images")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DataError(f"{path}: {key} must hold non-negative integer class labels "
                        f"(got dtype {y.dtype})")
    return torch.from_numpy(y.astype(np.int64))
