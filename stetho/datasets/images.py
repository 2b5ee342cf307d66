"""Image novelty-detection data: MNIST / Fashion-MNIST IDX files, COIL-100 PNGs, scikit-learn digits.

Every loader returns an :class:`ImageSet`: images flattened to ``(n, H·W[·C])`` float32 in [0, 1],
integer class labels, and the official split of each image (``"train"`` / ``"test"``) where the
data set has one. Nothing is downloaded: files are read from a folder the user gives.
"""

from __future__ import annotations

import gzip
import re
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


def load_image_set(name: str, root: str | Path | None = None, **options) -> ImageSet:
    """The image set ``name`` (``digits``, ``mnist``, ``fashion_mnist``, ``coil100``) from ``root``."""
    if name == "digits":
        return load_digits_set(**options)
    if name not in IMAGE_SETS:
        raise DatasetError(f"unknown image data set '{name}'; choose from {', '.join(IMAGE_SETS)}")
    if root is None:
        raise DatasetError(f"{name}: give the folder holding its files (nothing is downloaded)")
    if name == "coil100":
        return load_coil100(root, **options)
    return load_mnist(root, name)
