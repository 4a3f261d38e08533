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
# Pixels alone do not bound memory: a 16-bit image takes more bytes per pixel to decode and rescale than an
# 8-bit one (a 280 KB 12000 x 12000 16-bit PNG once took 4.5 GB and 23 s). The budget is what an 8-bit RGB
# image at the pixel limit needs (PIL's 4-byte pixels, then the RGB copy): about 1.4 GB (`decode_bytes`).
MAX_DECODE_BYTES = 8 * MAX_IMAGE_PIXELS + (16 << 20)
# Modes holding more than 8 bits per sample: rescaled to 8 bits by `to_rgb`, refused by the DALI loader.
HIGH_BIT_DEPTH_MODES = frozenset({"F", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_CONVERTIBLE = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
# Peak bytes per pixel of `load_rgb` by the mode of the file: PIL's own storage (1 byte for 1/L/P, 2 for 16-bit,
# 4 for the rest) and the RGB result (4); high-bit-depth modes add numpy's copy of the pixels, the rescaling's
# working array (uint32; float64 for F), the 8-bit result and its grayscale image. Measured peaks (VmHWM, 2000
# and 4000 px squares) stay under these: L 5.1, RGB 8.1, I;16 9.2, I 13.2, F 16.1 bytes per pixel.
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_HIGH_BIT_DEPTH_BYTES = {"F": 4 + 4 + 8 + 1 + 1 + 4, "I": 4 + 4 + 4 + 1 + 1 + 4}
_SIXTEEN_BIT_BYTES = 2 + 2 + 4 + 1 + 1 + 4
_DECODER_BUFFERS = 16 << 20  # rows, zlib windows, the file's chunks: what decoding adds whatever the size


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
            needed = decode_bytes(image.mode, image.width * image.height)
            if needed > MAX_DECODE_BYTES:
                raise InputError(
                    f"{path}: image of {image.width}x{image.height} pixels in mode {image.mode} would take "
                    f"{needed / 2**30:.1f} GiB to decode, more than the {MAX_DECODE_BYTES / 2**30:.1f} GiB allowed; "
                    "shrink it or convert it to 8-bit"
                )
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # a copy would be one more image in memory
            return to_rgb(image, str(path))
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


def decode_bytes(mode: str, pixels: int) -> int:
    """An upper bound of the memory `load_rgb` needs for an image of `pixels` pixels stored in `mode`, in bytes."""
    if mode in _HIGH_BIT_DEPTH_BYTES:
        per_pixel = _HIGH_BIT_DEPTH_BYTES[mode]
    elif mode in HIGH_BIT_DEPTH_MODES:
        per_pixel = _SIXTEEN_BIT_BYTES
    else:
        per_pixel = (1 if mode in _ONE_BYTE_MODES else 4) + 4
    return pixels * per_pixel + _DECODER_BUFFERS


def to_rgb(image: Image.Image, where: str = "image") -> Image.Image:
    """8-bit RGB copy of `image`, high-bit-depth modes rescaled to the full 8-bit range (never clipped)."""
    if image.mode in HIGH_BIT_DEPTH_MODES:
        image = Image.fromarray(_to_8_bit(np.asarray(image), image.mode, where))
    elif image.mode not in _CONVERTIBLE:
        raise InputError(f"{where}: image mode {image.mode} is not supported; convert the file to RGB")
    return image.convert("RGB")


def _to_8_bit(values: np.ndarray, mode: str, where: str) -> np.ndarray:
    """Rescale in place where possible: the working array is float64 for float images, uint32 for integers."""
    if mode == "F":
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            raise InputError(f"{where}: float image holds NaN or infinite pixel values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F" and low >= 0 and high <= 255:
        values *= 255.0 if high <= 1 else 1.0
        return np.clip(np.rint(values, out=values), 0, 255, out=values).astype(np.uint8)
    if mode != "F" and low >= 0 and high <= 65535:
        # round(v * 255 / 65535) in integers: v / 257 is never halfway between two integers, so this is exact
        wide = values.astype(np.uint32)
        wide *= 255
        wide += 32767
        wide //= 65535
        return wide.astype(np.uint8)
    kind = "float" if mode == "F" else "integer"
    accepted = "[0, 1] or [0, 255]" if mode == "F" else "[0, 65535]"
    raise InputError(
        f"{where}: {kind} image (mode {mode}) with values in [{low:.4g}, {high:.4g}]; vlmkd reads such images "
        f"with values in {accepted}: convert the file to 8-bit RGB"
    )


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
