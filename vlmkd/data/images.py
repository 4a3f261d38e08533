"""Reading image files as RGB, with a clear error naming the file when one cannot be used."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from vlmkd.errors import InputError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# Larger images are refused instead of risking a decompression bomb; 2x PIL's own warning limit. PIL refuses
# them first while its own limit is in force; this check holds when a user has lifted PIL's.
MAX_IMAGE_PIXELS = 2 * 89_478_485


def load_rgb(path: Path) -> Image.Image:
    """Decode an image file to 8-bit RGB (grayscale, palette, CMYK, 16-bit and alpha are converted).

    Raises `InputError` naming the file for missing, empty, truncated, corrupt, non-image or huge files.
    """
    try:
        if path.stat().st_size == 0:
            raise InputError(f"{path}: empty file (0 bytes)")
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InputError(f"{path}: image of {image.width}x{image.height} pixels is too large")
            image.load()
            return to_rgb(image)
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


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB copy of `image`; 16-bit grayscale is rescaled to 8 bits instead of clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value / 256).convert("L")
    return image.convert("RGB")
