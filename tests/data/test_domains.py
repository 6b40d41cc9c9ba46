"""Domain datasets (vvk.data.domains): the real digit and Office-Caltech domains, bad input, splits."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import vvk.data.domains as domains
from vvk.data.domains import DIGIT_CLASSES, load_domain, partition, split
from vvk.errors import VvkError

HAS_H5PY = importlib.util.find_spec("h5py") is not None
needs_h5py = pytest.mark.skipif(
    not HAS_H5PY, reason="h5py is not installed (MNIST_vs_USPS.mat is MATLAB v7.3)"
)
OFFICE = {"amazon": 958, "caltech10": 1123, "dslr": 157, "webcam": 295}
OFFICE_CLASSES = ["backpack", "bike", "calculator", "headphones", "keyboard", "laptop", "monitor", "mouse"]
OFFICE_CLASSES += ["mug", "projector"]
# per-digit counts 0..9, read from the files
MNIST_COUNTS = [196, 227, 207, 202, 196, 179, 191, 206, 195, 201]
USPS_COUNTS = [352, 241, 165, 166, 166, 126, 139, 172, 129, 144]
SKLEARN_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
MNIST_M_COUNTS = [85, 126, 116, 107, 110, 87, 87, 99, 89, 94]


def write_png(path, pixels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def ink(X: torch.Tensor, colour: bool) -> torch.Tensor:
    """(N, H, W) how much each pixel is digit: the grey value, or for colour digits on photos the
    distance from the image's median colour."""
    if not colour:
        return X[:, 0]
    return (X - X.flatten(2).median(2).values[:, :, None, None]).abs().sum(1)


def tall_over_wide(ink_maps: torch.Tensor, labels: torch.Tensor, digit: int = 1) -> float:
    """Vertical over horizontal spread of what sets ``digit`` apart from the average digit."""
    m = ink_maps[labels == digit].mean(0) - ink_maps.mean(0)
    m = (m - m.flatten().quantile(0.9)).clamp(min=0)  # the strongest tenth: the stroke, not the photo
    ys = torch.arange(m.shape[0], dtype=torch.float32)[:, None]
    xs = torch.arange(m.shape[1], dtype=torch.float32)[None, :]
    total = m.sum()
    cy, cx = (m * ys).sum() / total, (m * xs).sum() / total
    return float((m * (ys - cy) ** 2).sum() / (m * (xs - cx) ** 2).sum())


# --- the real digit domains ---------------------------------------------------------------


MAT_DOMAINS = [pytest.param(spec, marks=needs_h5py) for spec in ("mnist", "usps")]


@pytest.mark.parametrize("spec", [*MAT_DOMAINS, "sklearn-digits", "mnist-m"])
def test_digit_domains_are_upright_white_on_black_in_unit_range(spec, shared_data):
    data = load_domain(spec, size=16)
    X, y = data.tensors()
    assert X.shape == (len(data), 3, 16, 16) and X.dtype == torch.float32
    assert float(X.min()) >= 0 and 0.99 <= float(X.max()) <= 1
    assert data.classes == list(DIGIT_CLASSES) and sorted(set(y.tolist())) == list(range(10))
    colour = spec == "mnist-m"
    # a 1 is a vertical stroke: transposed images would make it wide
    assert tall_over_wide(ink(X, colour), y) > 2.5
    if colour:
        assert float((X[:, 0] - X[:, 1]).abs().mean()) > 0.05  # real colour, not grey repeated
    else:
        assert torch.equal(X[:, 0], X[:, 1]) and torch.equal(X[:, 1], X[:, 2])
        g = X[:, 0]
        border = torch.cat([g[:, 0], g[:, -1], g[:, :, 0], g[:, :, -1]], 1).mean()
        assert border < 0.2 < g[:, 5:11, 5:11].mean()  # white digit on a black background


@needs_h5py
def test_mnist_and_usps_from_the_mat_file(shared_data):
    mnist, usps = load_domain("mnist", size=16), load_domain("usps", size=28)
    assert len(mnist) == 2000 and len(usps) == 1800
    assert np.bincount(mnist.labels).tolist() == MNIST_COUNTS
    assert np.bincount(usps.labels).tolist() == USPS_COUNTS
    assert mnist.labels[0] == 0 and usps.labels[0] == 6  # the file's 1..10 are the digits 0..9
    assert mnist[0][0].shape == (3, 16, 16) and usps[0][0].shape == (3, 28, 28)
    explicit = load_domain(f"{shared_data}/domains/digits/MNIST_vs_USPS.mat:Xt", size=16)
    assert explicit.labels.tolist() == usps.labels.tolist()


def test_sklearn_digits():
    data = load_domain("sklearn-digits", size=32)
    assert len(data) == 1797 and data.name == "sklearn-digits" and not data.skipped and data.files is None
    assert np.bincount(data.labels).tolist() == SKLEARN_COUNTS
    image, label = data[10]
    X, y = data.tensors()
    assert image.shape == (3, 32, 32) and label == int(y[10]) and torch.equal(image, X[10])
    assert data.tensors()[0] is X  # computed once


def test_mnist_m_lists_9001_and_ships_1000(shared_data):
    data = load_domain("mnist-m", size=32)
    assert len(data) == 1000 and data.skipped == Counter(missing_file=8001)
    assert np.bincount(data.labels).tolist() == MNIST_M_COUNTS
    assert data.labels[0] == 7 and data.files[0].name == "00000000.png"
    image, _ = data[0]
    assert image.shape == (3, 32, 32)
    raw = np.asarray(Image.open(data.files[0]), dtype=np.float32) / 255  # 32x32 already: no resampling
    assert torch.allclose(image, torch.from_numpy(raw).permute(2, 0, 1), atol=1e-6)


def test_mat_reader_needs_h5py_for_v73(shared_data, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if it were not installed
    with pytest.raises(VvkError, match=r"MNIST_vs_USPS\.mat: a MATLAB v7\.3 .*needs h5py") as e:
        load_domain("mnist", size=16)
    assert "pip install h5py" in str(e.value) and "\n" not in str(e.value)


# --- .mat files of the same layout, made here ----------------------------------------------


def _matlab_columns(images: list[np.ndarray]) -> np.ndarray:
    """(side*side, N): one row-major image per column, the layout of MNIST_vs_USPS.mat."""
    return np.stack([im.reshape(-1) for im in images], axis=1)


def test_mat_layout_orientation_and_labels(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    bar = np.zeros((16, 16))
    bar[2:14, 7:9] = 255  # a vertical bar, 0..255 values
    images = [bar, bar.T, bar]
    path = tmp_path / "digits.mat"
    scipy_io.savemat(
        path, {"Xs": _matlab_columns(images), "Ys": np.array([[2], [1], [10]]), "L": np.array([[0, 3, 9]])}
    )
    data = load_domain(f"{path}:Xs", size=16)
    assert data.labels.tolist() == [1, 0, 9] and data.name == "digits:Xs"
    X, _ = data.tensors()
    assert float(X.max()) == 1.0
    rows, cols = X[0, 0].sum(1), X[0, 0].sum(0)
    assert (rows > 0).sum() == 12 and (cols > 0).sum() == 2  # upright: 12 rows tall, 2 columns wide
    assert torch.equal(X[1, 0], X[0, 0].T)
    # labels counted from 0, images one per row, given explicitly
    scipy_io.savemat(path, {"A": np.stack([im.reshape(-1) for im in images]), "L": np.array([[0, 3, 9]])})
    assert load_domain(f"{path}:A,L", size=8).labels.tolist() == [0, 3, 9]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"Xs": np.zeros((256, 2)), "Ys": np.array([[1, 11]])}, r"Ys: labels 1\.\.11 are neither"),
        ({"Xs": np.zeros((256, 2)), "Ys": np.array([[1, 9]])}, r"Ys: labels 1\.\.9: cannot tell"),
        ({"Xs": np.zeros((250, 2)), "Ys": np.array([[1, 2]])}, r"Xs: shape \(250, 2\) is not"),
        ({"Xs": np.full((256, 2), 300.0), "Ys": np.array([[1, 10]])}, r"Xs: values 300\.\.300"),
        ({"Xs": np.zeros((256, 2)), "Ys": np.array([[0.5, 2]])}, r"Ys: expected N integer labels"),
        ({"Xs": np.zeros((256, 2))}, r"no variable Ys"),
    ],
)
def test_mat_errors_name_the_file_and_variable(tmp_path, variables, message):
    scipy_io = pytest.importorskip("scipy.io")
    path = tmp_path / "bad.mat"
    scipy_io.savemat(path, variables)
    with pytest.raises(VvkError, match=message) as e:
        load_domain(f"{path}:Xs", size=16)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_a_file_that_is_not_a_mat_file(tmp_path):
    path = tmp_path / "notes.mat"
    path.write_text("hello")
    with pytest.raises(VvkError, match="notes.mat: not a readable MATLAB file"):
        load_domain(f"{path}:Xs", size=16)


# --- labelled lists (the MNIST-M layout), made here --------------------------------------


def _mnist_m_folder(root, lines: list[str]):
    images = root / "mnist_m_test"
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        write_png(images / name, rng.integers(0, 256, (32, 32, 3)))
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "mnist_m_test_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def test_image_list_skips_and_counts_bad_records(tmp_path):
    lines = [
        "a.png 3",
        "b.png",
        "c.png seven",
        "c.png 10",
        "",
        "gone.png 4",
        "broken.png 1",
        "c.png 9",
        "a b 1",
    ]
    folder = _mnist_m_folder(tmp_path / "mm", lines)
    data = load_domain("mnist-m", size=16, path=folder)
    assert data.skipped == Counter(malformed_line=4, missing_file=1, unreadable_image=1)
    assert data.labels.tolist() == [3, 9] and [f.name for f in data.files] == ["a.png", "c.png"]
    assert data.tensors()[0].shape == (2, 3, 16, 16)


@pytest.mark.parametrize("name", ["../secret.png", "sub/../../secret.png", "/etc/passwd"])
def test_image_list_refuses_names_outside_its_folder(tmp_path, name):
    folder = _mnist_m_folder(tmp_path / "mm", ["a.png 3", f"{name} 1"])
    write_png(tmp_path / "mm" / "secret.png", np.zeros((4, 4, 3)))
    with pytest.raises(VvkError, match=r"mnist_m_test_labels\.txt:2: .*outside") as e:
        load_domain("mnist-m", size=16, path=folder)
    assert "\n" not in str(e.value)


# --- image folders ------------------------------------------------------------------------


def test_office_caltech_domains(shared_data):
    for domain, count in OFFICE.items():
        data = load_domain(str(shared_data / "domains" / "office_caltech10" / domain), size=32, cache=False)
        assert (data.name, len(data), data.classes, dict(data.skipped)) == (domain, count, OFFICE_CLASSES, {})
        assert sorted(set(data.labels.tolist())) == list(range(10))
        assert all(
            f.parent.name == data.classes[label] for f, label in zip(data.files, data.labels, strict=True)
        )
    image, label = data[0]  # webcam: one decoded lazily
    assert image.shape == (3, 32, 32) and label == 0 and 0 <= float(image.min()) < float(image.max()) <= 1


def _folder(root):
    write_png(root / "cat" / "grey.png", np.full((30, 20), 200))  # greyscale
    write_png(root / "cat" / "deep" / "rgba.png", np.full((8, 8, 4), 255))  # alpha, one folder down
    write_png(root / "dog" / "wide.png", np.zeros((10, 40, 3)))
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (root / "dog" / "notes.txt").write_text("not an image: ignored")
    return root


def test_image_folder_reads_classes_and_counts_unreadable_images(tmp_path):
    data = load_domain(str(_folder(tmp_path / "pets")), size=8)
    assert data.name == "pets" and data.classes == ["cat", "dog"]
    assert [f.name for f in data.files] == ["grey.png", "rgba.png", "wide.png"]  # class folder, then below
    assert data.labels.tolist() == [0, 0, 1]
    assert data.skipped == Counter(unreadable_image=1)
    X, _ = data.tensors()
    assert X.shape == (3, 3, 8, 8)
    assert torch.allclose(X[0], torch.full((3, 8, 8), 200 / 255))  # grey repeated on 3 channels
    assert torch.equal(X[1], torch.ones(3, 8, 8))  # alpha composited (opaque white stays white)


def test_image_folder_errors_name_the_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VvkError, match=r"empty: no class folders"):
        load_domain(str(tmp_path / "empty"), size=8)
    root = _folder(tmp_path / "pets")
    (root / "bird").mkdir()
    (root / "bird" / "readme.txt").write_text("no images here")
    with pytest.raises(VvkError, match=r"pets/bird: class folder without images") as e:
        load_domain(str(root), size=8)
    assert "\n" not in str(e.value)


def test_image_folder_counts_a_class_linked_from_elsewhere(tmp_path):
    root = _folder(tmp_path / "pets")
    write_png(tmp_path / "elsewhere" / "x.png", np.zeros((8, 8, 3)))
    os.symlink(tmp_path / "elsewhere", root / "fish")
    data = load_domain(str(root), size=8)
    assert data.classes == ["cat", "dog", "fish"] and data.skipped == Counter(unreadable_image=1, outside=1)
    assert all(str(f).startswith(str(root)) for f in data.files)


def test_resize_crops_the_centre_or_squashes(tmp_path):
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, :20, 0] = 255  # red left third
    wide[:, 20:40, 1] = 255  # green centre third
    write_png(tmp_path / "d" / "c" / "wide.png", wide)
    crop = load_domain(str(tmp_path / "d"), size=10, cache=False)[0][0]
    squash = load_domain(str(tmp_path / "d"), size=10, resize="squash", cache=False)[0][0]
    assert torch.allclose(crop[1], torch.ones(10, 10)) and float(crop[0].max()) == 0
    assert float(squash[0, :, 0].min()) == 1 and float(squash[1].max()) == 1 and float(squash[2].max()) == 0


def test_images_are_turned_upright_by_exif(tmp_path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20, 0] = 255  # red left half as stored; orientation 6 shows the left edge on top
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "d" / "c").mkdir(parents=True)
    Image.fromarray(stored).save(tmp_path / "d" / "c" / "turned.jpg", quality=95, exif=exif)
    image = load_domain(str(tmp_path / "d"), size=8, resize="squash", cache=False)[0][0]
    assert float(image[0, :3].mean()) > 0.9 and float(image[0, -3:].mean()) < 0.1


def test_decoded_folder_is_cached_until_a_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "pets")
    X, y = load_domain(str(root), size=8).tensors()
    cached = list((tmp_path / "cache" / "domains").iterdir())
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(domains, "load_rgb", no_decoding)
    again = load_domain(str(root), size=8)
    assert again.skipped == Counter(unreadable_image=1) and again.name == "pets"
    assert torch.equal(again.tensors()[0], X) and torch.equal(again.tensors()[1], y)
    write_png(root / "dog" / "wide.png", np.full((10, 41, 3), 7))  # another size: another key
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_domain(str(root), size=8).tensors()
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_domain(str(root), size=8, resize="squash").tensors()


def test_no_cache_written_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    load_domain(str(_folder(tmp_path / "pets")), size=8, cache=False).tensors()
    assert not (tmp_path / "cache").exists()


# --- normalisation, loading, bad arguments --------------------------------------------------


def test_normalisation_is_per_channel():
    plain = load_domain("sklearn-digits", size=8)
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    normed = load_domain("sklearn-digits", size=8, mean=mean, std=std)
    expected = (plain.tensors()[0] - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normed.tensors()[0], expected)
    assert torch.allclose(normed[3][0], expected[3])
    assert torch.allclose(split(normed, 0.5)[1][0][0], expected[split(plain, 0.5)[1].ids[0]])


def test_a_lazy_folder_works_with_a_data_loader(tmp_path):
    data = load_domain(str(_folder(tmp_path / "pets")), size=8, cache=False)
    images, labels = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert images.shape == (3, 3, 8, 8) and labels.tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spec": "svhn", "size": 32}, r"spec=svhn: not a domain \(mnist, usps, mnist-m, sklearn-digits\)"),
        ({"spec": "sklearn-digits", "size": 0}, r"size=0: must be a positive integer"),
        ({"spec": "sklearn-digits", "size": 8, "path": "x"}, r"path=x: only used with"),
        ({"spec": "sklearn-digits", "size": 8, "resize": "pad"}, r"resize=pad: must be crop or squash"),
        ({"spec": "sklearn-digits", "size": 8, "mean": (0.5,) * 3}, r"mean=.*give both"),
        ({"spec": "sklearn-digits", "size": 8, "mean": (0,) * 3, "std": (1, 0, 1)}, r"std > 0"),
        ({"spec": "digits.mat:", "size": 8}, r"spec=digits\.mat:: give FILE\.mat:X,Y"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(VvkError, match=message):
        load_domain(kwargs.pop("spec"), **kwargs)


def test_named_domain_without_the_shared_data(tmp_path, monkeypatch):
    monkeypatch.setenv("VVK_TEST_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(VvkError, match=r"spec=mnist-m: domains/digits/mnist_m not found .*give path="):
        load_domain("mnist-m", size=16)


# --- split and partition -------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_domain("sklearn-digits", size=8)


def test_split_is_stratified_disjoint_and_deterministic(digits):
    train, test = split(digits, 0.25, seed=3)
    assert len(test) == round(0.25 * 1797) and len(train) + len(test) == 1797
    assert not set(train.ids) & set(test.ids) and sorted([*train.ids, *test.ids]) == list(range(1797))
    assert np.array_equal(digits.labels[test.ids], test.labels)
    per_class = np.bincount(test.labels, minlength=10)
    assert np.all(np.abs(per_class - np.array(SKLEARN_COUNTS) * 0.25) < 1)
    assert np.array_equal(split(digits, 0.25, seed=3)[1].ids, test.ids)
    assert not np.array_equal(split(digits, 0.25, seed=4)[1].ids, test.ids)
    assert len(split(digits, 100, seed=0)[1]) == 100
    assert torch.equal(test.tensors()[0], digits.tensors()[0][torch.from_numpy(test.ids)])
    assert test.skipped == Counter() and test.classes == digits.classes


@pytest.mark.parametrize("test", [0, 0.0, 1.0, 1797, 5000, -3, True, "half"])
def test_split_refuses_an_empty_part(digits, test):
    with pytest.raises(VvkError, match=rf"test={test}"):
        split(digits, test)


def test_iid_partition_deals_every_class_evenly(digits):
    parts = partition(digits, 4, seed=1)
    ids = np.concatenate([p.ids for p in parts])
    assert len(ids) == len(set(ids)) == 1797  # disjoint and covering
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    for c, n in enumerate(SKLEARN_COUNTS):
        held = [int((p.labels == c).sum()) for p in parts]
        assert sum(held) == n and max(held) - min(held) <= 1
    again = partition(digits, 4, seed=1)
    assert all(np.array_equal(a.ids, b.ids) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(partition(digits, 4, seed=2)[0].ids, parts[0].ids)
    # a client's share of a training split: ids still point into the domain
    train, _ = split(digits, 0.2, seed=0)
    shares = partition(train, 3, seed=0)
    assert sorted(np.concatenate([s.ids for s in shares]).tolist()) == sorted(train.ids.tolist())


def test_dirichlet_partition_skews_labels(digits):
    parts = partition(digits, 5, seed=0, how="dirichlet", alpha=0.1)
    ids = np.concatenate([p.ids for p in parts])
    assert len(ids) == len(set(ids)) == 1797 and min(len(p) for p in parts) > 0
    top_share = [np.bincount(p.labels, minlength=10).max() / len(p) for p in parts]
    assert max(top_share) > 0.4  # iid would give about 0.1
    assert all(
        np.array_equal(a.ids, b.ids)
        for a, b in zip(parts, partition(digits, 5, seed=0, how="dirichlet", alpha=0.1), strict=True)
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clients": 0}, r"clients=0: must be 1\.\.1797"),
        ({"clients": 1798}, r"clients=1798"),
        ({"clients": 2, "how": "shards"}, r"how=shards: must be iid or dirichlet"),
        ({"clients": 2, "how": "dirichlet", "alpha": 0}, r"alpha=0: must be > 0"),
    ],
)
def test_partition_bad_arguments(digits, kwargs, message):
    with pytest.raises(VvkError, match=message):
        partition(digits, **kwargs)
