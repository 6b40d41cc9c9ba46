"""Domain datasets for domain adaptation: one image classification dataset per domain, as tensors.

``load_domain(spec, size=...)`` reads one domain; every reader returns a ``DomainDataset`` whose
items are ``(image, label)``: ``image`` a ``(3, size, size)`` float32 tensor, in [0, 1] unless
``mean``/``std`` are given (then ``(x - mean) / std`` per channel), ``label`` an int indexing
``classes``. ``tensors()`` gives the whole domain as one cached ``(X, y)`` batch, which is how
the training loops use the small digit domains. ``spec`` is one of:

- ``mnist``, ``usps``: the 2,000 MNIST and 1,800 USPS 16x16 digits of ``MNIST_vs_USPS.mat``
  (JPDA's copy, MATLAB v7.3, read with h5py), found at ``path=`` or in the shared data folder
  (``$VVK_TEST_DATA/domains/digits/``). Layout, as read from the file: ``Xs`` (MNIST) and ``Xt``
  (USPS) are 256 x N in MATLAB (one image per column, h5py shows the transpose), values in [0, 1]
  with the ink high; each column is a row-major 16x16 image (``reshape(16, 16)`` in C order is
  upright); ``Ys``/``Yt`` hold 1..10 where 1 is the digit 0 and 10 the digit 9.
- ``FILE.mat:X`` or ``FILE.mat:X,Y``: images ``X`` of any .mat file with that layout (v7.3 via
  h5py, older versions via scipy), labels ``Y`` (default: ``X`` with its first letter made ``Y``,
  ``Xs`` -> ``Ys``); labels 0..9 or 1..10, values in [0, 1], [-1, 1] or [0, 255].
- ``mnist-m``: MNIST-M (colour digits on photo patches; ``path=`` the folder holding
  ``mnist_m_test/`` and ``mnist_m_test_labels.txt``, lines ``NAME LABEL``). The shared copy
  lists all 9,001 test images but holds the first 1,000: the rest count as ``missing_file``.
- ``sklearn-digits``: scikit-learn's 1,797 8x8 UCI digits (values 0..16).
- a folder ``DIR/<class>/<image>`` (Office-Caltech-10): class names sorted; images found
  recursively in each class folder by their suffix.

Digit domains are white digits on black, grey values repeated over 3 channels (MNIST-M is
colour, with no fixed polarity), resized bilinearly (antialiased when shrinking). Folder and
list images are decoded by ``vvk.data.images.load_rgb``, turned upright by EXIF, and resized so
the short side is ``size``, then centre-cropped (``resize="crop"``, keeps the aspect ratio) or
squashed to ``size`` x ``size`` (``resize="squash"``, keeps the whole object).

Bad records are skipped and counted in ``skipped``: ``malformed_line``, ``missing_file``,
``unreadable_image`` (its header cannot be read) and ``outside`` (a file in a scanned folder
reached through a link to elsewhere). A name in a labels file that leads outside its images
folder, an empty folder or class folder, or a malformed .mat variable is a ``VvkError`` naming
the file and the line or field. Folder and list images are decoded lazily; ``tensors()`` decodes
them all once and, with ``cache=True``, keeps them as a uint8 file in ``cache_dir()/domains``
keyed by the files' names, sizes and modification times, so a second run reads one file.

``split`` makes a stratified train/test split; ``partition`` deals one domain out to clients.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vvk.data.images import ImageReadError, load_rgb, probe_image
from vvk.data.paths import PathOutside, inside
from vvk.errors import VvkError

logger = logging.getLogger("vvk.data")

DIGIT_CLASSES = tuple(str(d) for d in range(10))
DIGIT_DOMAINS = ("mnist", "usps", "mnist-m", "sklearn-digits")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
_MAT_FILE = "domains/digits/MNIST_vs_USPS.mat"
_MAT_VARIABLES = {"mnist": ("Xs", "Ys"), "usps": ("Xt", "Yt")}
_MNIST_M_DIR = "domains/digits/mnist_m"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_CACHE_VERSION = 1


class DomainDataset(Dataset):
    """One domain: ``(image (3, size, size) float32, label int)`` items.

    Attributes:
        name: the domain (``mnist``, ``amazon``, ...).
        classes: class names; a label indexes this list.
        labels: (N,) int64 numpy array.
        skipped: Counter of the bad records left out, by kind (empty for a ``subset``).
        ids: (N,) int64 positions of the items in the domain as read (a subset keeps its items'),
            to tell which client holds what.
        files: the image files, in item order, or None for domains read from one file.
        size: the image side.

    Built by the readers below: ``pixels`` is an ``(N, C, S, S)`` tensor (C 1 or 3, uint8 or
    float32 in [0, 1]) held in memory, or None with ``files`` decoded on access.
    """

    def __init__(
        self,
        *,
        name: str,
        classes: Sequence[str],
        labels: np.ndarray,
        size: int,
        pixels: torch.Tensor | None = None,
        files: Sequence[str | os.PathLike] | None = None,
        orientations: Sequence[int] | None = None,
        resize: str = "crop",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        skipped: Counter | None = None,
        cache_file: Path | None = None,
        ids: np.ndarray | None = None,
    ):
        self.name, self.classes, self.size = name, list(classes), size
        self.labels = np.asarray(labels, dtype=np.int64)
        self.skipped = Counter(skipped or {})
        self.ids = np.arange(len(self.labels), dtype=np.int64) if ids is None else np.asarray(ids, np.int64)
        self.files = None if files is None else [Path(f) for f in files]
        self._pixels = pixels
        self._orientations = list(orientations) if orientations is not None else [1] * len(self.labels)
        self._resize, self._cache_file = resize, cache_file
        self._norm = (mean, std)
        self._mean, self._std = _norm_tensors(mean, std)
        self._tensors: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._pixels is not None:
            px = self._pixels[i]
        else:
            px = _decode_square(self.files[i], self.size, self._orientations[i], self._resize)
        return self._finish(px[None])[0], int(self.labels[i])

    def __repr__(self) -> str:
        return (
            f"DomainDataset({self.name!r}, {len(self)} images, {len(self.classes)} classes, size={self.size})"
        )

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All items as ``(X (N, 3, S, S) float32, y (N,) int64)``, computed once and kept (do not
        modify them in place). Decodes a lazy domain, and writes its cache file."""
        if self._tensors is None:
            self._materialize()
            self._tensors = (self._finish(self._pixels), torch.from_numpy(self.labels.copy()))
        return self._tensors

    def subset(self, indices: Sequence[int] | np.ndarray) -> DomainDataset:
        """The items at ``indices``, in that order, as a dataset with the same classes and norm."""
        idx = np.asarray(indices, dtype=np.int64)
        return DomainDataset(
            name=self.name,
            classes=self.classes,
            labels=self.labels[idx],
            size=self.size,
            pixels=None if self._pixels is None else self._pixels[torch.from_numpy(idx)],
            files=None if self.files is None else [self.files[i] for i in idx],
            orientations=[self._orientations[i] for i in idx],
            resize=self._resize,
            mean=self._norm[0],
            std=self._norm[1],
            ids=self.ids[idx],
        )

    def _finish(self, px: torch.Tensor) -> torch.Tensor:
        x = px.float() / 255.0 if px.dtype == torch.uint8 else px.float()
        x = x.expand(-1, 3, -1, -1)  # greyscale digits: one network takes every domain
        if self._mean is not None:
            return (x - self._mean) / self._std
        return x.contiguous()

    def _materialize(self) -> None:
        if self._pixels is not None:
            return
        decoded = [
            _decode_square(f, self.size, o, self._resize)
            for f, o in zip(self.files, self._orientations, strict=True)
        ]
        empty = torch.zeros((0, 3, self.size, self.size), dtype=torch.uint8)
        self._pixels = torch.stack(decoded) if decoded else empty
        if self._cache_file is not None:
            _write_cache(self._cache_file, self)


def _norm_tensors(mean, std) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if mean is None and std is None:
        return None, None
    if mean is None or std is None or len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise VvkError(f"mean={mean}, std={std}: give both, 3 values each, std > 0", params=("mean", "std"))
    return _channel_tensor(mean), _channel_tensor(std)


def _channel_tensor(values: Sequence[float]) -> torch.Tensor:
    return torch.tensor([float(v) for v in values]).view(1, 3, 1, 1)


def load_domain(
    spec: str | os.PathLike,
    *,
    size: int,
    path: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    resize: str = "crop",
    cache: bool = True,
) -> DomainDataset:
    """Read the domain ``spec`` names (see the module docstring) at ``size`` x ``size``.

    Args:
        path: the .mat file (``mnist``, ``usps``) or folder (``mnist-m``) instead of the shared one.
        mean, std: per-channel normalisation applied to the [0, 1] images.
        resize: ``crop`` or ``squash``, for folder and list images.
        cache: keep decoded folder and list images in vvk's cache (see ``tensors``).
    """
    spec = os.fspath(spec)
    if not isinstance(size, int) or size < 1:
        raise VvkError(f"size={size}: must be a positive integer", params=("size",))
    if resize not in ("crop", "squash"):
        raise VvkError(f"resize={resize}: must be crop or squash", params=("resize",))
    norm = {"size": size, "mean": mean, "std": std}
    files = {**norm, "resize": resize, "cache": cache}
    if path is not None and spec not in ("mnist", "usps", "mnist-m"):
        raise VvkError(f"path={path}: only used with spec=mnist, usps or mnist-m", params=("path",))
    if spec in _MAT_VARIABLES:
        file = Path(path) if path is not None else _shared(_MAT_FILE, spec)
        return read_mat_digits(file, *_MAT_VARIABLES[spec], name=spec, **norm)
    if spec == "mnist-m":
        folder = Path(path) if path is not None else _shared(_MNIST_M_DIR, spec)
        labels_file, image_dir = folder / "mnist_m_test_labels.txt", folder / "mnist_m_test"
        return read_image_list(labels_file, image_dir, classes=DIGIT_CLASSES, name=spec, **files)
    if spec == "sklearn-digits":
        return sklearn_digits(**norm)
    file, sep, variables = spec.rpartition(":")
    if sep and file.lower().endswith(".mat"):
        x_var, _, y_var = variables.partition(",")
        y_var = y_var or ("Y" + x_var[1:] if x_var[:1] in "Xx" and x_var else "")
        if not x_var or not y_var:
            raise VvkError(f"spec={spec}: give FILE.mat:X,Y (labels variable)", params=("spec",))
        return read_mat_digits(file, x_var, y_var, name=f"{Path(file).stem}:{x_var}", **norm)
    if os.path.isdir(spec):
        return read_image_folder(spec, **files)
    raise VvkError(
        f"spec={spec}: not a domain ({', '.join(DIGIT_DOMAINS)}), a FILE.mat:X or a folder", params=("spec",)
    )


def _shared(relative: str, spec: str) -> Path:
    from vvk.testing import ENV_VAR, shared_data_root

    root = shared_data_root()
    if root is None or not (root / relative).exists():
        raise VvkError(
            f"spec={spec}: {relative} not found in the shared data folder ({root or 'none found'})",
            hint=f"give path=, or set {ENV_VAR} to the folder that holds domains/",
            params=("spec", "path"),
        )
    return root / relative


# --- digits held in one file ---------------------------------------------------------------


def read_mat_digits(
    path: str | os.PathLike,
    images: str,
    labels: str,
    *,
    size: int,
    name: str | None = None,
    mean=None,
    std=None,
) -> DomainDataset:
    """Digits from a .mat file: ``images`` (side*side, N) one row-major image per column (or
    (N, side*side)), ``labels`` N digits as 0..9 or 1..10 (see the module docstring)."""
    path = Path(path)
    x, y = _read_mat(path, (images, labels))
    y = y.ravel() if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.number) or np.any(y != np.round(y)):
        raise VvkError(f"{path}: {labels}: expected N integer labels, got {y.dtype} of shape {y.shape}")
    n = len(y)
    if x.ndim == 2 and x.shape[1] == n and _is_square(x.shape[0]):
        x = x.T  # (N, side*side): one image per column, as MATLAB keeps them
    elif not (x.ndim == 2 and x.shape[0] == n and _is_square(x.shape[1])):
        raise VvkError(
            f"{path}: {images}: shape {x.shape} is not (side*side, {n}) images for {n} labels in {labels}"
        )
    side = round(np.sqrt(x.shape[1]))
    digits = _digit_labels(y.astype(np.int64), path, labels)
    grey = torch.from_numpy(_unit_range(np.asarray(x, dtype=np.float32), path, images))
    grey = grey.reshape(n, 1, side, side)  # each vector is a row-major (C-order) image: upright
    return _digits(name or path.stem, digits, grey, size=size, mean=mean, std=std)


def _read_mat(path: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    """The variables ``names`` in MATLAB's shape (rows, columns), from a v7.3 or older .mat."""
    try:
        with open(path, "rb") as f:
            head = f.read(520)
    except OSError as e:
        raise VvkError(f"{path}: cannot read ({e.strerror or e})") from None
    if head.startswith(b"MATLAB 7.3") or _HDF5_SIGNATURE in (head[:8], head[512:520]):
        return _read_hdf5_mat(path, names)
    import scipy.io

    try:
        data = scipy.io.loadmat(path, variable_names=names)
    except (scipy.io.matlab.MatReadError, ValueError, TypeError, OSError, NotImplementedError) as e:
        raise VvkError(f"{path}: not a readable MATLAB file ({e})") from None
    for var in names:
        if var not in data:
            raise VvkError(f"{path}: no variable {var}")
    return [np.asarray(data[var]) for var in names]


def _read_hdf5_mat(path: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    try:
        import h5py
    except ImportError:
        raise VvkError(f"{path}: a MATLAB v7.3 (HDF5) file needs h5py", hint="pip install h5py") from None
    try:
        with h5py.File(path, "r") as f:
            missing = [var for var in names if var not in f]
            if missing:
                raise VvkError(f"{path}: no variable {missing[0]} (has {', '.join(sorted(f.keys()))})")
            # HDF5 holds MATLAB's column-major arrays with their dimensions reversed
            return [np.asarray(f[var][()]).T for var in names]
    except OSError as e:
        raise VvkError(f"{path}: not a readable HDF5 file ({e})") from None


def _is_square(n: int) -> bool:
    return n > 0 and round(np.sqrt(n)) ** 2 == n


def _digit_labels(y: np.ndarray, path: Path, field: str) -> np.ndarray:
    lo, hi = (int(y.min()), int(y.max())) if len(y) else (0, 0)
    if lo == 0 and hi <= 9:
        return y
    if lo >= 1 and hi == 10:
        return y - 1  # MATLAB's 1-based classes: 1 is the digit 0, 10 the digit 9
    if lo >= 1 and hi <= 9:
        raise VvkError(f"{path}: {field}: labels {lo}..{hi}: cannot tell whether they count from 0 or 1")
    raise VvkError(f"{path}: {field}: labels {lo}..{hi} are neither 0..9 nor 1..10")


def _unit_range(x: np.ndarray, path: Path, field: str) -> np.ndarray:
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise VvkError(f"{path}: {field}: values are not finite")
    if lo >= 0 and hi <= 1:
        return x
    if lo >= -1 and hi <= 1:
        return (x + 1) / 2  # e.g. the original USPS scaling
    if lo >= 0 and hi <= 255:
        return x / 255
    raise VvkError(f"{path}: {field}: values {lo:g}..{hi:g} are not in [0, 1], [-1, 1] or [0, 255]")


def _resize_grey(grey: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, s, s) float in [0, 1] -> (N, 1, size, size), bilinear (antialiased when shrinking)."""
    if grey.shape[-1] == size:
        return grey.contiguous()
    out = torch.nn.functional.interpolate(
        grey, size=(size, size), mode="bilinear", align_corners=False, antialias=size < grey.shape[-1]
    )
    return out.clamp_(0, 1)


def sklearn_digits(*, size: int, mean=None, std=None) -> DomainDataset:
    """scikit-learn's 1,797 8x8 UCI digits, values 0..16 scaled to [0, 1], ink high."""
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]  # (N, 1, 8, 8)
    return _digits("sklearn-digits", data.target, grey, size=size, mean=mean, std=std)


def _digits(name: str, labels: np.ndarray, grey: torch.Tensor, **kwargs) -> DomainDataset:
    pixels = _resize_grey(grey, kwargs["size"])
    return DomainDataset(name=name, classes=DIGIT_CLASSES, labels=labels, pixels=pixels, **kwargs)


# --- images in files: folders and labelled lists ---------------------------------------------


def read_image_folder(
    folder: str | os.PathLike, *, size: int, resize: str = "crop", cache: bool = True, mean=None, std=None
) -> DomainDataset:
    """``folder/<class>/<image>``: classes sorted by name, images searched recursively."""
    folder = Path(folder)
    if not folder.is_dir():
        raise VvkError(f"{folder}: no such folder")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise VvkError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    entries, skipped = [], Counter()
    for label, cls in enumerate(classes):
        names = _image_names(folder / cls)
        if not names:
            raise VvkError(
                f"{folder / cls}: class folder without images ({' '.join(sorted(IMAGE_SUFFIXES))})"
            )
        for rel in names:
            try:
                entries.append((inside(folder, Path(cls) / rel, file_links=True), label))
            except PathOutside:
                skipped["outside"] += 1
    opts = {"size": size, "resize": resize, "cache": cache, "mean": mean, "std": std}
    return _file_domain(folder.name, folder, classes, entries, skipped, **opts)


def _image_names(class_dir: Path) -> list[str]:
    names = []
    for root, dirs, files in os.walk(class_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = os.path.relpath(root, class_dir)
        names += [
            os.path.normpath(os.path.join(rel, f))
            for f in sorted(files)
            if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES
        ]
    return names


def read_image_list(
    labels_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    *,
    classes: Sequence[str],
    size: int,
    name: str,
    resize: str = "crop",
    cache: bool = True,
    mean=None,
    std=None,
) -> DomainDataset:
    """Images listed as ``NAME LABEL`` lines (``LABEL`` an index into ``classes``), names relative
    to ``image_dir``. Malformed lines and missing files are skipped and counted; a name leading
    outside ``image_dir`` is an error naming the line."""
    labels_file, image_dir = Path(labels_file), Path(image_dir)
    if not image_dir.is_dir():
        raise VvkError(f"{image_dir}: no such folder (the images of {labels_file})")
    try:
        text = labels_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VvkError(
            f"{labels_file}: cannot read the labels file ({getattr(e, 'strerror', None) or e})"
        ) from None
    entries, skipped = [], Counter()
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) >= len(classes):
            skipped["malformed_line"] += 1
            continue
        try:
            file = inside(image_dir, fields[0])
        except PathOutside as e:
            raise VvkError(f"{labels_file}:{lineno}: {e}") from None
        if not file.is_file():
            skipped["missing_file"] += 1
            continue
        entries.append((file, int(fields[1])))
    opts = {"size": size, "resize": resize, "cache": cache, "mean": mean, "std": std}
    return _file_domain(name, labels_file, classes, entries, skipped, **opts)


def _file_domain(
    name, source: Path, classes, entries, skipped: Counter, *, cache: bool, **opts
) -> DomainDataset:
    """A lazy dataset of ``entries`` (file, label) whose headers read, or the cached decoded one.
    ``opts``: ``size``, ``resize``, ``mean``, ``std``."""
    cache_file = _cache_file(name, source, entries, skipped, opts["size"], opts["resize"]) if cache else None
    if cache_file is not None:
        cached = _read_cache(cache_file, classes, **opts)
        if cached is not None:
            _warn_skipped(source, cached.skipped)
            return cached
    files, labels, orientations = [], [], []
    for file, label in entries:
        try:
            probe = probe_image(file)
        except ImageReadError as e:
            skipped["missing_file" if str(e) == "missing" else "unreadable_image"] += 1
            continue
        files.append(file)
        labels.append(label)
        orientations.append(probe.exif_orientation)
    _warn_skipped(source, skipped)
    kept = {"labels": np.array(labels, dtype=np.int64), "files": files, "orientations": orientations}
    return DomainDataset(name=name, classes=classes, **kept, **opts, skipped=skipped, cache_file=cache_file)


def _decode_square(file: Path, size: int, orientation: int, resize: str) -> torch.Tensor:
    """(3, size, size) uint8: short side to ``size`` and centre crop, or squashed."""
    from PIL import Image

    try:
        im = Image.fromarray(load_rgb(file, exif_orientation=orientation))
    except ImageReadError as e:
        raise VvkError(
            f"{file}: {e}, although its header was read (the file changed or is truncated)"
        ) from None
    if resize == "crop":  # the centre square first, so that its borders do not blend into the crop
        w, h = im.size
        side = min(w, h)
        im = im.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    im = im.resize((size, size), Image.Resampling.BILINEAR)  # PIL filters over the footprint: antialiased
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def _warn_skipped(source: Path, skipped: Counter) -> None:
    # Every rank reads the same domain; only the first one speaks (torchrun sets RANK).
    if skipped and os.environ.get("RANK", "0") == "0":
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))
        logger.warning(f"{source}: skipped {sum(skipped.values())} records ({kinds})")


# --- the decoded-images cache ------------------------------------------------------------


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)  # a broken link: counted when probed, and part of the key as such
    return (st.st_size, st.st_mtime_ns)


def _cache_file(name: str, source: Path, entries, skipped: Counter, size: int, resize: str) -> Path:
    """Where the decoded images of ``entries`` go: keyed by every input that shapes them."""
    from vvk.paths import cache_dir

    listed = [(str(file), label, *_stat(file)) for file, label in entries]
    key = json.dumps(
        [_CACHE_VERSION, name, str(source.resolve()), sorted(skipped.items()), size, resize, listed]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return cache_dir() / "domains" / f"{safe}-{size}-{digest}.safetensors"


def _write_cache(path: Path, data: DomainDataset) -> None:
    from safetensors.torch import save_file

    from vvk.atomic import atomic_path

    meta = {
        "name": data.name,
        "classes": data.classes,
        "skipped": dict(data.skipped),
        "files": [str(f) for f in data.files],
    }
    tensors = {"pixels": data._pixels.contiguous(), "labels": torch.from_numpy(data.labels.copy())}
    try:
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"vvk": json.dumps(meta)})
    except OSError as e:  # a cache that cannot be written costs time, not correctness
        logger.warning(f"{path}: decoded images not cached ({e.strerror or e})")


def _read_cache(path: Path, classes, **opts) -> DomainDataset | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["vvk"])
            pixels, labels = f.get_tensor("pixels"), f.get_tensor("labels").numpy()
        found = {"name": str(meta["name"]), "files": list(meta["files"]), "skipped": Counter(meta["skipped"])}
    except (OSError, KeyError, ValueError, TypeError, SafetensorError):
        return None  # a damaged cache is rebuilt
    if meta.get("classes") != list(classes) or not len(found["files"]) == len(labels) == len(pixels):
        return None
    return DomainDataset(classes=classes, labels=labels, pixels=pixels, **found, **opts)


# --- splitting a domain ---------------------------------------------------------------------


def split(
    dataset: DomainDataset, test: float | int = 0.2, *, seed: int = 0
) -> tuple[DomainDataset, DomainDataset]:
    """A stratified ``(train, test)`` split, the same for the same ``seed``.

    ``test`` is a fraction of the dataset (0 < test < 1) or a number of items (1 <= test < N);
    each class gives its share, rounded so the total is exact (largest remainders first). Both
    parts keep the dataset's order.
    """
    n = len(dataset)
    if isinstance(test, bool) or not isinstance(test, (numbers.Integral, numbers.Real)):
        raise VvkError(f"test={test}: a fraction or a count", params=("test",))
    fraction = not isinstance(test, numbers.Integral)
    total = round(test * n) if fraction else int(test)
    if (fraction and not 0 < test < 1) or not 0 < total < n:
        raise VvkError(f"test={test}: leaves no train or no test item of {n}", params=("test",))
    counts = np.bincount(dataset.labels, minlength=len(dataset.classes))
    quota = counts * total / n
    take = np.floor(quota).astype(np.int64)
    order = sorted(range(len(counts)), key=lambda c: (-(quota[c] - take[c]), c))
    take[order[: total - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    test_idx = [rng.permutation(np.flatnonzero(dataset.labels == c))[: take[c]] for c in range(len(counts))]
    is_test = np.zeros(n, dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    return dataset.subset(np.flatnonzero(~is_test)), dataset.subset(np.flatnonzero(is_test))


def partition(
    dataset: DomainDataset, clients: int, *, seed: int = 0, how: str = "iid", alpha: float = 0.5
) -> list[DomainDataset]:
    """Deal one domain out to ``clients`` disjoint parts that together hold every item.

    ``how="iid"``: each class shuffled and dealt round-robin, so every client gets N/clients
    items (within one) with the domain's class mix. ``how="dirichlet"``: each class shared out
    in proportions drawn from Dirichlet(``alpha``) (label skew; small alpha, strong skew), drawn
    again until every client has an item. The same ``seed`` gives the same parts.
    """
    n = len(dataset)
    if isinstance(clients, bool) or not isinstance(clients, numbers.Integral) or not 1 <= clients <= n:
        raise VvkError(
            f"clients={clients}: must be 1..{n} (the items of {dataset.name})", params=("clients",)
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(dataset.labels == c) for c in range(len(dataset.classes))]
    if how == "iid":
        dealt = np.concatenate([rng.permutation(idx) for idx in by_class])
        parts = [np.sort(dealt[k::clients]) for k in range(clients)]
    elif how == "dirichlet":
        parts = _dirichlet_parts(by_class, clients, alpha, rng)
    else:
        raise VvkError(f"how={how}: must be iid or dirichlet", params=("how",))
    return [dataset.subset(p) for p in parts]


def _dirichlet_parts(by_class: list[np.ndarray], clients: int, alpha: float, rng) -> list[np.ndarray]:
    if not alpha > 0:
        raise VvkError(f"alpha={alpha}: must be > 0", params=("alpha",))
    for _ in range(1000):
        parts = [[] for _ in range(clients)]
        for idx in by_class:
            cuts = (np.cumsum(rng.dirichlet([alpha] * clients))[:-1] * len(idx)).astype(np.int64)
            for k, piece in enumerate(np.split(rng.permutation(idx), cuts)):
                parts[k].append(piece)
        parts = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in parts) > 0:
            return parts
    raise VvkError(
        f"clients={clients}: no Dirichlet(alpha={alpha}) draw gave every client an item",
        hint="raise alpha or use fewer clients",
        params=("clients", "alpha"),
    )
