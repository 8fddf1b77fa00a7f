import pickle

import numpy as np
import pytest
import torch

from conftest import SHARED, SHARED_DATA, SHARED_MODELS
from toolkit.data import BUNDLED_MNIST, cifar, load_dataset, roots
from toolkit.errors import BadDataError, BadInputError

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(),
                                reason=f"../shared/data not found at {SHARED_DATA} (CI provides it beside the clone)")
MNIST_TEST_PER_CLASS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # data README
MNIST_TRAIN_PER_CLASS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def assert_pixels(ds, n, shape):
    assert len(ds) == n and tuple(ds.x.shape) == (n, *shape)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert float(ds.x.min()) >= 0.0 and float(ds.x.max()) <= 1.0
    assert int(ds.y.min()) >= 0 and int(ds.y.max()) <= 9


# -- MNIST ---------------------------------------------------------------------------------------------------
@needs_data
def test_mnist_full_counts_labels_range():
    train = load_dataset("mnist", "train", SHARED_DATA)
    test = load_dataset("mnist", "test", SHARED_DATA)
    assert_pixels(train, 60000, (1, 28, 28))
    assert_pixels(test, 10000, (1, 28, 28))
    assert train.y.bincount().tolist() == MNIST_TRAIN_PER_CLASS
    assert test.y.bincount().tolist() == MNIST_TEST_PER_CLASS
    assert np.array_equal(test.index, np.arange(10000))
    # pixels are exact k/255 levels of the uint8 file
    k = test.x[:50] * 255
    assert torch.equal(k, k.round())
    picked = load_dataset("mnist", "test", SHARED_DATA, indices=[7, 3])
    assert picked.index.tolist() == [7, 3] and torch.equal(picked.x[0], test.x[7])
    assert load_dataset("mnist", "test", SHARED_DATA, indices=[9, 8, 7], n=2).index.tolist() == [9, 8]


@needs_data
def test_out_of_range_selection_is_bad_data():
    with pytest.raises(BadDataError, match="index 10000 is out of range for MNIST test with 10000 samples"):
        load_dataset("mnist", "test", SHARED_DATA, indices=[0, 10000])
    with pytest.raises(BadDataError, match="index -1 is out of range"):
        load_dataset("mnist", "test", SHARED_DATA, indices=[-1])
    with pytest.raises(BadDataError, match="n=10001"):
        load_dataset("mnist", "test", SHARED_DATA, n=10001)


def test_bad_arguments_are_bad_input():
    with pytest.raises(BadInputError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(BadInputError, match="unknown split 'val'"):
        load_dataset("mnist", "val")
    with pytest.raises(BadInputError, match="n must be a positive integer"):
        load_dataset("mnist", n=0)
    with pytest.raises(BadInputError, match="indices must be"):
        load_dataset("mnist", indices=[0.5])


# -- CIFAR-10 ------------------------------------------------------------------------------------------------
@needs_data
def test_cifar_test_jpeg_full_in_original_order():
    test = load_dataset("cifar10_jpeg", "test", SHARED_DATA)
    assert_pixels(test, 10000, (3, 32, 32))
    assert test.y.bincount().tolist() == [1000] * 10
    assert np.array_equal(test.index, np.arange(10000)) and test.meta["index"] == "original"
    with np.load(SHARED_DATA / "cifar10" / "cifar10_test_exact.npz") as z:
        labels_all, exact_x, exact_index = z["test_labels_all"], z["x"], z["index"]
    assert np.array_equal(test.y.numpy(), labels_all)
    # The JPEG at original index i is a lossy copy of exact image i: this checks the index mapping.
    rows = np.flatnonzero(exact_index < 200)
    mae = (test.x[exact_index[rows]] * 255 - torch.from_numpy(exact_x[rows]).float()).abs().mean((1, 2, 3))
    assert float(mae.max()) < 12.0


@needs_data
def test_cifar_train_counts_by_listing_and_a_slice():
    src = cifar.find_jpeg(SHARED_DATA, "train")
    members = cifar._members(str(src), src.stat().st_mtime, "train")
    assert len(members) == 50000
    assert np.bincount([m[0] for m in members]).tolist() == [5000] * 10
    ds = load_dataset("cifar10", "train", SHARED_DATA, indices=[0, 49999])
    assert_pixels(ds, 2, (3, 32, 32))
    assert ds.y.tolist() == [0, 9] and "JPEG" in ds.name  # interleaved order: airplane first, truck last
    # Any prefix is class-balanced (a class-major order would give train_n = 10,000 only two classes).
    head = load_dataset("cifar10", "train", SHARED_DATA, n=1000)
    assert np.bincount(head.y.numpy(), minlength=10).tolist() == [100] * 10
    with pytest.raises(BadDataError, match="out of range"):
        load_dataset("cifar10", "train", SHARED_DATA, indices=[50000])


@needs_data
def test_cifar_auto_prefers_exact_pixels_when_request_is_covered():
    with np.load(SHARED_DATA / "cifar10" / "cifar10_test_exact.npz") as z:
        exact_x, exact_index = z["x"], z["index"]
    first_missing = int(next(i for i in range(10000) if i not in set(exact_index.tolist())))
    assert first_missing > 100  # data README: indices 0..100 are all present
    ds = load_dataset("cifar10", "test", SHARED_DATA, n=first_missing)
    assert "exact" in ds.name and ds.meta["pixels"] == "exact"
    assert torch.equal(ds.x, torch.from_numpy(exact_x[:first_missing]).float() / 255)
    assert np.array_equal(ds.index, np.arange(first_missing))
    some = exact_index[[500, 3, 1200]]
    ds = load_dataset("cifar10", "test", SHARED_DATA, indices=some)
    assert np.array_equal(ds.index, some) and "exact" in ds.name
    # one index outside the exact subset sends the whole request to the JPEG copy
    ds = load_dataset("cifar10", "test", SHARED_DATA, n=first_missing + 1)
    assert "JPEG" in ds.name and np.array_equal(ds.index, np.arange(first_missing + 1))
    subset = load_dataset("cifar10_exact", data_root=SHARED_DATA)
    assert len(subset) == 1685 and np.array_equal(subset.index, exact_index)
    assert "source" in subset.per_sample and len(subset.per_sample["source"]) == 1685


def _fake_cifar_batches(root, n, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = (np.arange(n) % 10).tolist()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": labels}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(cifar.CLASSES)}, f)
    return data


def test_cifar_pickle_batches_take_precedence(tmp_path, monkeypatch):
    data = _fake_cifar_batches(tmp_path, 10000)
    # torchvision verifies the md5 of the real batches; fake batches must first fail that check ...
    with pytest.raises(BadDataError, match="missing or corrupted"):
        load_dataset("cifar10", "test", tmp_path, n=3)
    # ... and, with the check bypassed, load in original order with channel-first pixels.
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: True)
    ds = load_dataset("cifar10", "test", tmp_path, indices=[4, 1])
    assert "exact" in ds.name and ds.index.tolist() == [4, 1] and ds.y.tolist() == [4, 1]
    want = torch.from_numpy(data[4].reshape(3, 32, 32)).float() / 255
    assert torch.equal(ds.x[0], want)


def _image_folder(root, split, per_class, classes=cifar.CLASSES):
    from PIL import Image
    rng = np.random.default_rng(1)
    for c in classes:
        d = root / "cifar10" / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i:04d}.png")


def test_cifar_image_folder_without_label_order_interleaves_classes(tmp_path):
    _image_folder(tmp_path, "test", 2)
    ds = load_dataset("cifar10", "test", tmp_path)
    assert_pixels(ds, 20, (3, 32, 32))
    assert ds.y.tolist() == list(range(10)) * 2
    assert ds.index.tolist() == list(range(20))
    assert ds.meta["index"].startswith("interleaved")
    first = load_dataset("cifar10", "test", tmp_path, n=10)
    assert first.y.tolist() == list(range(10)) and torch.equal(first.x, ds.x[:10])


def test_cifar_unknown_class_folder_and_missing_split(tmp_path):
    _image_folder(tmp_path, "test", 1, classes=("airplane", "zebra"))
    with pytest.raises(BadDataError, match="unknown CIFAR-10 class folder 'zebra'"):
        load_dataset("cifar10", "test", tmp_path)
    with pytest.raises(BadDataError, match=r"CIFAR-10 train data not found: looked for cifar-10-batches-py"):
        load_dataset("cifar10", "train", tmp_path)


# -- bundled subset ------------------------------------------------------------------------------------------
def test_bundled_subset_loads_without_shared(monkeypatch, tmp_path):
    if not BUNDLED_MNIST.is_file():
        pytest.fail(f"bundled subset {BUNDLED_MNIST} is missing; run models/train_default.py")
    monkeypatch.setenv(roots.ENV_VAR, str(tmp_path / "nowhere"))  # no data root may be consulted
    ds = load_dataset("mnist_test_1000")
    assert_pixels(ds, 1000, (1, 28, 28))
    assert np.array_equal(ds.index, np.arange(1000))
    with np.load(BUNDLED_MNIST) as z:
        assert z["x"].dtype == np.uint8 and z["x"].shape == (1000, 1, 28, 28) and z["y"].dtype == np.int64
    assert BUNDLED_MNIST.stat().st_size <= 1_000_000
    assert len(load_dataset(str(BUNDLED_MNIST), n=10)) == 10


@needs_data
def test_bundled_subset_equals_first_1000_mnist_test():
    ds, full = load_dataset("mnist_test_1000"), load_dataset("mnist", "test", SHARED_DATA, n=1000)
    assert torch.equal(ds.x, full.x) and torch.equal(ds.y, full.y)


# -- npz -----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=f"../shared not found at {SHARED}")
def test_points_npz_keeps_layout_space_and_boxes():
    path = SHARED_MODELS / "mnist-net_256x2" / "points.npz"
    ds = load_dataset(str(path), indices=[2, 0])
    with np.load(path) as z:
        assert tuple(ds.x.shape) == (2, 784, 1) and torch.equal(ds.x[1], torch.from_numpy(z["x"][0]))
        assert torch.equal(ds.lo[0], torch.from_numpy(z["lo"][2])) and torch.equal(ds.eps, torch.from_numpy(z["eps"][[2, 0]]))
        assert ds.y.tolist() == z["label"][[2, 0]].tolist()
        assert list(ds.per_sample["truth"]) == list(z["truth"][[2, 0]])
    assert ds.name == "mnist-net_256x2/points" and "mean" in ds.meta
    cifar_pts = load_dataset(str(SHARED_MODELS / "cifar_base_kw" / "points.npz"))
    assert float(cifar_pts.x.min()) < 0  # normalised input space is kept as is


def _save(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_npz_eps_box_uint8_and_label_key(tmp_path):
    x = np.arange(2 * 4, dtype=np.uint8).reshape(2, 1, 2, 2) * 30
    ds = load_dataset(_save(tmp_path, x=x, label=np.array([1, 2]), eps=np.float32(0.1)))
    assert torch.allclose(ds.x, torch.from_numpy(x).float() / 255) and ds.y.tolist() == [1, 2]
    assert ds.eps.tolist() == pytest.approx([0.1, 0.1]) and ds.lo is None
    xf = np.random.default_rng(0).random((3, 5)).astype(np.float32)
    ds = load_dataset(_save(tmp_path, x=xf, y=np.arange(3), eps=np.full(3, 0.2, np.float32), lo=xf - 0.1,
                            hi=xf + 0.1, index=np.array([7, 8, 9])), n=2)
    assert ds.lo.shape == (2, 5) and torch.allclose(ds.hi - ds.lo, torch.full((2, 5), 0.2))
    assert ds.index.tolist() == [7, 8] and ds.eps.shape == (2,)


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((3, 4), np.float32), y=np.zeros(2, np.int64)), r"'y' has shape \(2,\); expected \(3,\)"),
    (dict(x=np.zeros(4, np.float32), y=np.zeros(4, np.int64)), r"'x' has shape \(4,\)"),
    (dict(x=np.zeros((2, 4), np.int32), y=np.zeros(2, np.int64)), "'x' has dtype int32"),
    (dict(x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.float32)), "'y' has dtype float32"),
    (dict(x=np.array([[0.0, np.nan]], np.float32), y=np.zeros(1, np.int64)), "'x' contains NaN or inf"),
    (dict(x=np.zeros((2, 4), np.float32)), "no labels"),
    (dict(y=np.zeros(2, np.int64)), "no array 'x'"),
    (dict(x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64), eps=-np.ones(2)), "negative radius"),
    (dict(x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64), eps=np.ones(3)), "'eps' has shape"),
    (dict(x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64), lo=np.zeros((2, 4))), "only one of"),
    (dict(x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64), lo=np.ones((2, 4)), hi=np.zeros((2, 4))),
     "lo > hi"),
    (dict(x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64), lo=np.zeros((2, 3)), hi=np.zeros((2, 3))),
     "'lo' has shape"),
    (dict(x=np.zeros((2, 4), np.float32), y=np.array([0, -1])), "negative label"),
])
def test_bad_npz_is_one_line_bad_data(tmp_path, arrays, message):
    with pytest.raises(BadDataError, match=message) as err:
        load_dataset(_save(tmp_path, **arrays))
    assert "\n" not in str(err.value) and "d.npz" in str(err.value)


def test_unreadable_or_missing_npz(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(BadDataError, match="junk.npz is not a readable .npz"):
        load_dataset(str(tmp_path / "junk.npz"))
    with pytest.raises(BadDataError, match="absent.npz does not exist"):
        load_dataset(str(tmp_path / "absent.npz"))


# -- data root -----------------------------------------------------------------------------------------------
def test_missing_data_root_is_bad_data(tmp_path, monkeypatch):
    with pytest.raises(BadDataError, match=r"data root .*nowhere does not exist"):
        load_dataset("mnist", data_root=tmp_path / "nowhere")
    monkeypatch.setenv(roots.ENV_VAR, str(tmp_path / "env-nowhere"))
    with pytest.raises(BadDataError, match=r"env-nowhere \(from \$TIGHTCERT_DATA\)"):
        load_dataset("mnist")
    monkeypatch.delenv(roots.ENV_VAR)
    monkeypatch.setattr(roots, "default_roots", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(BadDataError, match="no data root found .*--data-root or set \\$TIGHTCERT_DATA"):
        load_dataset("cifar10")


def test_empty_data_root_names_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv(roots.ENV_VAR, str(tmp_path))
    with pytest.raises(BadDataError, match=r"MNIST test files \(t10k-images-idx3-ubyte\[\.gz\].*not found in "
                                           + str(tmp_path) + "/mnist/raw"):
        load_dataset("mnist")
    with pytest.raises(BadDataError, match="CIFAR-10 test data not found"):
        load_dataset("cifar10")
    with pytest.raises(BadDataError, match="cifar10_test_exact.npz not found"):
        load_dataset("cifar10_exact")


def _idx(path, magic, dims, payload):
    header = np.array([magic, *dims], dtype=">u4").tobytes()
    path.write_bytes(header + payload.astype(np.uint8).tobytes())


def test_mnist_raw_idx_with_dotted_names(tmp_path):
    # Uncompressed files named as in the original gzip headers, in torchvision's MNIST/raw folder.
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.zeros((10000, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(10000) % 256
    _idx(raw / "t10k-images.idx3-ubyte", 2051, (10000, 28, 28), images)
    _idx(raw / "t10k-labels.idx1-ubyte", 2049, (10000,), np.arange(10000) % 10)
    ds = load_dataset("mnist", "test", tmp_path, indices=[257, 3])
    assert ds.y.tolist() == [7, 3] and float(ds.x[0, 0, 0, 0]) == pytest.approx(1 / 255)
    _idx(raw / "t10k-labels.idx1-ubyte", 2049, (9999,), np.arange(9999) % 10)
    with pytest.raises(BadDataError, match="expected 10000 images of 28x28 and 10000 labels"):
        load_dataset("mnist", "test", tmp_path)


def test_corrupt_mnist_file_is_bad_data(tmp_path):
    raw = tmp_path / "mnist" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00" * 16)
    with pytest.raises(BadDataError, match="is not a valid MNIST IDX file"):
        load_dataset("mnist", data_root=tmp_path)
