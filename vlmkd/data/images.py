"""Reading image files as a viewer shows them: 8-bit RGB, EXIF orientation applied, high-bit-depth rescaled.

`load_rgb` is the one decoding function of the torch loader, captioning and evaluation. The DALI loader
decodes with DALI (which applies EXIF orientation too); `check_dali_decodable` refuses up front the files
DALI would not decode the same way (float and 16/32-bit integer images), so both loaders see the same pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlmkd.errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# Larger images are refused instead of risking a decompression bomb; 2x PIL's own warning limit. PIL refuses
# them first while its own limit is in force; this check holds when a user has lifted PIL's.
MAX_IMAGE_PIXELS = 2 * 89_478_485
# Modes holding more than 8 bits per sample: rescaled to 8 bits by `to_rgb`, refused by the DALI loader.
HIGH_BIT_DEPTH_MODES = frozenset({"F", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_CONVERTIBLE = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file to 8-bit RGB, upright (EXIF orientation applied) and with its full range.

    Grayscale, palette, CMYK and alpha are converted; 16-bit integer images are scaled by 255/65535, float
    images with values in [0, 1] by 255 (values in [0, 255] are kept). Raises `InputError` naming the file
    for missing, empty, truncated, corrupt, non-image or huge files and for pixel values it cannot map.
    """
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InputError(f"{path}: image of {image.width}x{image.height} pixels is too large")
            image.load()
            return to_rgb(ImageOps.exif_transpose(image), str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file PIL can read") from None
    except Image.DecompressionBombError as error:
        raise InputError(f"{path}: image is too large to decode safely ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(f"{path}: corrupt or truncated image ({error})") from None


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """8-bit RGB copy of `image`, high-bit-depth modes rescaled to the full 8-bit range (never clipped)."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        image = Image.fromarray(_to_8_bit(np.asarray(image), image.mode, where))
    elif image.mode not in _CONVERTIBLE:
        raise InputError(f"{where}: image mode {image.mode} is not supported; convert the file to RGB")
    return image.convert("RGB")


def _to_8_bit(values: np.ndarray, mode: str, where: str) -> np.ndarray:
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError(f"{where}: float image holds NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F" and low >= 0 and high <= 1:
        scale = 255.0
    elif mode == "F" and low >= 0 and high <= 255:
        scale = 1.0
    elif mode != "F" and low >= 0 and high <= 65535:
        scale = 255.0 / 65535.0
    else:
        kind = "float" if mode == "F" else "integer"
        accepted = "[0, 1] or [0, 255]" if mode == "F" else "[0, 65535]"
        raise InputError(
            f"{where}: {kind} image (mode {mode}) with values in [{low:.4g}, {high:.4g}]; vlmkd reads such images "
            f"with values in {accepted}: convert the file to 8-bit RGB"
        )
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def check_dali_decodable(paths: Iterable[Path]) -> None:
    """Refuse files DALI would decode differently from `load_rgb`: float and 16/32-bit integer images.

    Reads headers only, and only of non-JPEG files (baseline JPEG is 8-bit): cheap next to an epoch.
    """
    for path in paths:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            continue
        try:
            with Image.open(path) as image:
                mode = image.mode
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise InputError(f"{path}: not an image file DALI or PIL can read ({error})") from None
        if mode in HIGH_BIT_DEPTH_MODES:
            raise InputError(
                f"{path}: {'float' if mode == 'F' else 'high-bit-depth'} image (mode {mode}): the DALI loader "
                "decodes 8-bit images only; use --loader torch (which rescales such images) or convert the file"
            )
