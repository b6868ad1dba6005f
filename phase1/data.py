"""Images for the codec: any folder (recursive) or the built-in photographs that installed packages ship.

Three disjoint splits: training samples are random crops with random horizontal flips; validation (model
selection) and test (final numbers) samples are whole images (the model pads them). Files that cannot be
decoded, or are smaller than a crop, are reported once and left out; a file that breaks later (e.g. replaced on
disk mid-run) is reported once and replaced by another sample, so a long run never dies on one bad image.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

# Real photographs shipped inside installed packages: (package, path inside it). Fixed split: validation
# (model selection) and test (final numbers) images are never trained on. Chosen for variety (people, animals,
# objects, landscape, astronomy); these twelve are all the RGB photographs the installed packages hold.
BUILTIN = {
    "train": [
        ("skimage", "data/astronaut.png"),
        ("skimage", "data/motorcycle_left.png"),
        ("skimage", "data/motorcycle_right.png"),
        ("skimage", "data/hubble_deep_field.jpg"),
        ("skimage", "data/retina.jpg"),
        ("skimage", "data/ihc.png"),
        ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    ],
    "val": [
        ("skimage", "data/rocket.jpg"),
        ("sklearn", "datasets/images/china.jpg"),
    ],
    "test": [
        ("skimage", "data/chelsea.png"),
        ("skimage", "data/coffee.png"),
        ("sklearn", "datasets/images/flower.jpg"),
    ],
}
SPLITS = tuple(BUILTIN)


def builtin_images(split: str) -> list[Path]:
    """Paths of the built-in photographs of `split` ("train", "val" or "test"); no download involved."""
    import importlib.util

    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    paths = []
    for package, rel in BUILTIN[split]:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"built-in image set needs the package {package!r}; run `make install`")
        path = Path(spec.origin).parent / rel
        if not path.is_file():
            raise FileNotFoundError(f"built-in image {path} is missing from the installed {package!r}")
        paths.append(path)
    return paths


def list_images(root: str | Path) -> list[Path]:
    """Every image file under `root` (recursive), sorted for a stable order."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"image folder {root} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


class UnsupportedImageError(ValueError):
    """An image the codec cannot take; the message is one line naming the file."""


# Larger images are refused before decoding: a small file can unpack to gigabytes (a decompression bomb).
# PIL's own limit, 89.5 million pixels, is about a 12,000 x 7,500 photo.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class RGBImage:
    pixels: torch.Tensor  # (3, H, W) float in [0, 1]
    gray: bool  # the file was grayscale (its three channels are equal)
    alpha: bool  # the file had an alpha channel (dropped)
    frames: int = 1  # an animation's frame count: only the first is read
    rotated: bool = False  # turned upright by its EXIF orientation, as viewers show it

    @property
    def note(self) -> str | None:
        notes = []
        if self.alpha:
            notes.append("has an alpha channel; it is dropped (only RGB is coded)")
        elif self.gray:
            notes.append("is grayscale; coded as RGB with three equal channels")
        if self.frames > 1:
            notes.append(f"has {self.frames} frames; only the first is coded")
        if self.rotated:
            notes.append("is turned upright by its EXIF orientation, as image viewers show it")
        return "; ".join(notes) or None


def read_rgb(path: str | Path) -> RGBImage:
    """The one image reader of phase 1 (training, evaluation and the codec): 8-bit RGB, grayscale or with
    alpha; 16-bit or float samples of any layout and images over MAX_PIXELS are refused, never cut down."""
    path = Path(path)
    if not path.is_file():
        raise UnsupportedImageError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            _refuse_unsupported(img, path)  # before load(): it empties img.tile, where 16-bit RGB shows
            img.load()
            frames = getattr(img, "n_frames", 1)
            gray = img.mode in ("1", "L", "LA")
            alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            rotated = img.getexif().get(0x0112, 1) not in (0, 1)  # EXIF Orientation: 1 is upright
            upright = ImageOps.exif_transpose(img) if rotated else img
            array = np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, UnsupportedImageError):
            raise
        detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise UnsupportedImageError(f"image {path} cannot be read ({detail})") from None
    return RGBImage(torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0), gray, alpha, frames, rotated)


def _refuse_unsupported(img: Image.Image, path: Path) -> None:
    rawmodes = [t[3][0] if isinstance(t[3], tuple) else t[3] for t in (img.tile or []) if len(t) > 3 and t[3]]
    if img.mode in _DEEP_MODES or any("16" in str(m) for m in rawmodes) or img.info.get("bits", 8) > 8:
        raise UnsupportedImageError(
            f"image {path} has 16-bit or float samples ({img.mode}); the codec takes 8-bit images: convert it first"
        )
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise UnsupportedImageError(
            f"image {path} is {width}x{height}, over the {MAX_PIXELS:,}-pixel limit: crop or downscale it first"
        )


def load_rgb(path: str | Path) -> tuple[torch.Tensor, str | None]:
    """(3, H, W) float tensor in [0, 1], plus a note naming the file when it was converted (grayscale, alpha)."""
    image = read_rgb(path)
    return image.pixels, f"{Path(path).name} {image.note}" if image.note else None


@dataclass
class ScanReport:
    usable: list[Path]
    skipped: list[str]  # "path: reason"


def scan(paths: list[Path], min_size: int) -> ScanReport:
    """Check every file once (header only) and keep the usable ones."""
    usable, skipped = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                width, height = img.size
                img.verify()
        except Exception as err:  # PIL raises many types for broken files; each is reported, none is fatal
            skipped.append(f"{path}: unreadable ({type(err).__name__})")
            continue
        if min(width, height) < min_size:
            skipped.append(f"{path}: {width}x{height} is smaller than the {min_size}px crop")
            continue
        usable.append(path)
    return ScanReport(usable, skipped)


class ImageCrops(Dataset):
    """Random `patch_size` crops with random horizontal flips (training), or whole images (`patch_size=None`).

    Randomness comes from torch's RNG, which `common.batches.EpochBatches` seeds per sample. With `cache`,
    each decoded image is kept (per worker process): worth it for a few photos seen many times per epoch."""

    def __init__(self, paths: list[Path], patch_size: int | None, name: str = "images", cache: bool = False):
        report = scan(paths, min_size=patch_size or 1)
        if report.skipped:
            warnings.warn(
                f"{name}: {len(report.skipped)} of {len(paths)} files left out: "
                + "; ".join(report.skipped[:5])
                + (" ..." if len(report.skipped) > 5 else ""),
                stacklevel=2,
            )
        if not report.usable:
            raise FileNotFoundError(f"{name}: none of the {len(paths)} files is a usable image")
        self.paths, self.patch_size, self.name = report.usable, patch_size, name
        self._reported: set[Path] = set()
        self._decoded: dict[Path, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                image = self._load(path)
            except UnsupportedImageError as err:
                if path not in self._reported:
                    self._reported.add(path)
                    warnings.warn(f"{self.name}: {err}; using another image instead", stacklevel=2)
                continue
            return self._augment(image) if self.patch_size else image.clone()  # never hand out the cached one
        raise FileNotFoundError(f"{self.name}: no image could be read any more")

    def _load(self, path: Path) -> torch.Tensor:
        if self._decoded is None:
            return load_rgb(path)[0]
        if path not in self._decoded:
            self._decoded[path] = load_rgb(path)[0]
        return self._decoded[path]

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        p = self.patch_size
        top = int(torch.randint(0, height - p + 1, ()))
        left = int(torch.randint(0, width - p + 1, ()))
        crop = image[:, top : top + p, left : left + p]
        if torch.rand(()) < 0.5:
            crop = crop.flip(-1)
        return crop.clone(memory_format=torch.contiguous_format)  # a copy: the image may be a cached one


class RepeatedDataset(Dataset):
    """A small dataset seen `repeats` times per epoch (a dozen photos give a dozen crops otherwise)."""

    def __init__(self, dataset: Dataset, repeats: int):
        self.dataset, self.repeats = dataset, repeats

    def __len__(self) -> int:
        return len(self.dataset) * self.repeats

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def image_paths(source: str, root: str | None, split: str, val_count: int = 2) -> list[Path]:
    """The images of `split` ("train", "val", "test"): the `builtin` photographs, or a `folder` laid out as
    root/train and root/test (recursive), with root/val if present. Without root/val, `val_count` training
    images are held out for validation, picked by a hash of their path inside root (the same ones on every
    machine and in every run), so validation never sees a training image."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    if source == "builtin":
        return builtin_images(split)
    if source != "folder":
        raise ValueError(f"data.source={source!r} is not one of: builtin, folder")
    if not root:
        raise ValueError("data.source=folder needs data.root=/path/to/images (with train/ and test/ inside)")
    base = Path(root)
    list_images(base)  # names a missing or empty folder first
    missing = [name for name in ("train", "test") if not (base / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"image folder {base} has no {' or '.join(f'{m}/' for m in missing)} folder: training needs "
            "root/train and root/test (root/val optional) so that evaluation images are never trained on"
        )
    if split == "test" or (base / "val").is_dir():
        return list_images(base / split)
    train = list_images(base / "train")
    if not 1 <= val_count < len(train):
        raise ValueError(
            f"data.val_count={val_count}: {base}/train holds {len(train)} images and has no val/ "
            "folder; hold out at least 1 and leave at least 1 to train on (or add root/val)"
        )
    held = set(sorted(train, key=lambda p: hashlib.sha1(str(p.relative_to(base)).encode()).hexdigest())[:val_count])
    return sorted(held) if split == "val" else [p for p in train if p not in held]
