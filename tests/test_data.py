"""Datasets: digits split, npz layouts and dtypes, normalisation, loaders, clear errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from npu_compress import models
from npu_compress.data import load_dataset, load_digits_dataset, load_npz
from npu_compress.errors import DataError

CIFAR = Path("/work/shared/data/cifar10.npz")


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def image_arrays(rng: np.random.Generator, layout: str, dtype: str) -> dict[str, np.ndarray]:
    """A 3-class, 3-channel, 6x5-pixel dataset in the given layout and dtype."""
    shape = {"nhwc": (6, 5, 3), "nchw": (3, 6, 5)}[layout]
    make = (lambda n: rng.integers(0, 256, (n, *shape), dtype=np.uint8)) if dtype == "uint8" \
        else (lambda n: rng.random((n, *shape), dtype=np.float32))
    return {"x_train": make(10), "y_train": rng.integers(0, 3, 10),
            "x_test": make(4), "y_test": np.array([0, 1, 2, 2])}


def test_digits_shapes_ranges_split():
    ds = load_digits_dataset(seed=0)
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_test.shape == (360, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert (ds.num_classes, ds.input_shape, ds.name) == (10, (1, 8, 8), "digits")
    assert all(35 <= c <= 37 for c in torch.bincount(ds.y_test).tolist())  # stratified


def test_digits_split_is_deterministic_by_seed():
    a, b, c = load_digits_dataset(0), load_digits_dataset(0), load_digits_dataset(1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)
    assert load_dataset("digits").x_test.shape == (360, 1, 8, 8)


def test_normalized_uses_train_statistics():
    ds = load_digits_dataset()
    norm = ds.normalized()
    assert ds.mean is None and len(norm.mean) == len(norm.std) == 1
    assert abs(float(norm.x_train.mean())) < 1e-5
    assert abs(float(norm.x_train.std()) - 1.0) < 1e-3
    restored = norm.x_test * norm.std[0] + norm.mean[0]
    torch.testing.assert_close(restored, ds.x_test, atol=1e-5, rtol=0)
    assert norm.normalized() is norm


def test_loaders_are_seeded_and_sized():
    ds = load_digits_dataset().subset(100, 30, seed=0)
    train, test = ds.loaders(batch_size=32, seed=5)
    assert [len(y) for _, y in train] == [32, 32, 32, 4]
    assert [len(y) for _, y in test] == [30]
    order = lambda loader: torch.cat([y for _, y in loader])  # noqa: E731
    assert torch.equal(order(ds.loaders(32, seed=5)[0]), order(ds.loaders(32, seed=5)[0]))
    assert not torch.equal(order(ds.loaders(32, seed=5)[0]), order(ds.loaders(32, seed=6)[0]))
    assert torch.equal(order(test), ds.y_test)


def test_subset_sizes_and_determinism():
    ds = load_digits_dataset()
    small = ds.subset(50, 20, seed=3)
    assert small.x_train.shape == (50, 1, 8, 8) and small.y_test.shape == (20,)
    assert torch.equal(small.x_train, ds.subset(50, 20, seed=3).x_train)
    assert len(ds.subset(10_000, 10_000).y_train) == 1437  # clamped to what exists
    with pytest.raises(DataError):
        ds.subset(0, 5)


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_npz_round_trip(tmp_path, layout, dtype):
    arrays = image_arrays(np.random.default_rng(0), layout, dtype)
    ds = load_npz(write_npz(tmp_path / "d.npz", **arrays))
    expected = arrays["x_train"].astype(np.float32) / (255.0 if dtype == "uint8" else 1.0)
    if layout == "nhwc":
        expected = expected.transpose(0, 3, 1, 2)
    assert ds.x_train.shape == (10, 3, 6, 5) and ds.input_shape == (3, 6, 5)
    assert ds.x_train.is_contiguous() and ds.x_train.dtype == torch.float32
    np.testing.assert_allclose(ds.x_train.numpy(), expected, rtol=0, atol=1e-7)
    assert ds.y_test.tolist() == [0, 1, 2, 2] and ds.y_test.dtype == torch.int64
    assert (ds.num_classes, ds.name) == (3, "d")


def test_npz_grayscale_column_labels_and_partial_read(tmp_path):
    rng = np.random.default_rng(1)
    path = write_npz(tmp_path / "g.npz", x_train=rng.random((8, 7, 7)),
                     y_train=np.arange(8)[:, None], x_test=rng.random((3, 7, 7)),
                     y_test=np.array([1, 2, 3]))
    ds = load_npz(path)
    assert ds.x_train.shape == (8, 1, 7, 7) and ds.y_train.shape == (8,)
    part = load_npz(path, max_train=5, max_test=2)
    assert part.x_train.shape == (5, 1, 7, 7) and part.y_test.tolist() == [1, 2]
    torch.testing.assert_close(part.x_train, ds.x_train[:5])
    assert load_dataset(str(path)).x_test.shape == (3, 1, 7, 7)


def test_npz_errors_name_file_and_problem(tmp_path):
    rng = np.random.default_rng(2)
    good = image_arrays(rng, "nhwc", "uint8")
    cases = {
        "missing_key": ({k: v for k, v in good.items() if k != "y_test"}, "missing key.*y_test"),
        "bad_shape": ({**good, "x_train": np.zeros((10, 6, 5, 4, 2), np.uint8)},
                      "x_train has shape"),
        "channels": ({**good, "x_test": np.zeros((4, 5, 6, 5), np.uint8)}, "x_test has shape"),
        "count": ({**good, "y_train": np.zeros(9, np.int64)}, "9 labels but there are 10 images"),
        "float_labels": ({**good, "y_test": np.array([0.0, 1.0, 2.0, 1.0])}, "integer"),
        "negative": ({**good, "y_test": np.array([0, -1, 2, 1])}, "non-negative"),
        "dtype": ({**good, "x_train": good["x_train"].astype(np.int32)}, "dtype int32"),
        "mismatch": ({**good, "x_test": np.zeros((4, 3, 7, 5), np.uint8)}, "must match"),
    }
    for name, (arrays, message) in cases.items():
        path = write_npz(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(DataError, match=message) as info:
            load_npz(path)
        assert str(path) in str(info.value), name


def test_missing_or_corrupt_file_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "absent.npz")
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"definitely not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_npz(corrupt)
    with pytest.raises(DataError, match="'cifar100'.*digits.*npz"):
        load_dataset("cifar100")
    with pytest.raises(DataError, match="positive"):
        load_npz(corrupt, max_train=0)


def test_cifar10_file_first_rows():
    if not CIFAR.is_file():
        pytest.skip(f"{CIFAR} is absent (real CIFAR-10 data is not shipped with the repo)")
    ds = load_npz(CIFAR, max_train=64, max_test=32)  # streams only the first rows
    assert ds.x_train.shape == (64, 3, 32, 32) and ds.x_test.shape == (32, 3, 32, 32)
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0
    assert ds.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # from cifar10.md
    assert ds.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]


@pytest.fixture
def one_thread():
    """Tiny batches train fastest on one thread, and are not slowed by a busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_digits_cnn_trains_above_90_percent(one_thread):
    torch.manual_seed(0)
    ds = load_digits_dataset(seed=0).normalized()
    net = models.create("digits-cnn")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    train, _ = ds.loaders(batch_size=64, seed=0)
    for _ in range(3):  # ~0.96 after 3 epochs for seeds 0-2
        net.train()
        for x, y in train:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert accuracy > 0.9
