"""Image decoding and normalising: any upload or catalogue file -> the reference design's 224x224 input array."""

from __future__ import annotations

import io
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import (  # noqa: F401 - importing a plugin module registers its reader
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageCms,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,
)

IMAGE_SIZE = (224, 224)  # (height, width), as Keras' target_size
# Keras' caffe mode: RGB -> BGR, then subtract ImageNet's per-channel mean (BGR order), no scaling.
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
PREPROCESSING_ID = "keras-load_img-rgb-nearest-224x224+caffe/v1"
# Pillow only warns between MAX_IMAGE_PIXELS and twice that; a public upload path refuses at the limit itself.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# The formats a photo comes in, their readers registered by the imports above (JPEG's also reads phones' MPO files).
# Pillow's other readers stay shut: rarely exercised parsers are attack surface, and EPS would run Ghostscript.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
NOT_AN_IMAGE_REASON = "This file is not an image that can be read."
UPLOAD_ANOTHER = "Please upload a JPEG, PNG, WebP, GIF or BMP photo."  # advice for the app's users, not precompute's
UPLOAD_SMALLER = "Please upload a smaller photo."
NOT_AN_IMAGE = f"{NOT_AN_IMAGE_REASON} {UPLOAD_ANOTHER}"

ImageSource = str | os.PathLike | bytes | BinaryIO | Image.Image
Box = tuple[int, int, int, int]  # (left, top, right, bottom) in pixels, as Pillow's crop takes it
REGION_FORMAT = "four numbers: left, top, right, bottom, in the picture's pixels (e.g. 10, 20, 200, 300)"


class ImageError(ValueError):
    """An upload or catalogue file that cannot be turned into a picture; the message says why, for a person.

    `reason` is the message without the advice to whoever uploads (precompute lists a catalogue's files with it)."""

    def __init__(self, reason: str, advice: str = ""):
        super().__init__(f"{reason} {advice}" if advice else reason)
        self.reason = reason


class RegionError(ValueError):
    """A region of the picture that cannot be searched; the message says why, for a person."""


def open_image(source: ImageSource) -> Image.Image:
    """Decode `source` into an upright RGB picture.

    Ordinary RGB JPEG/PNG files come out exactly as Keras' `load_img` would give them (PIL, RGB). Beyond that:
    EXIF orientation is applied, animations give their first frame, transparency is composited on white,
    CMYK / 16-bit / grey are converted properly, and bombs, truncated files and non-images raise `ImageError`.
    """
    ours = not isinstance(source, Image.Image)
    img = _open(source) if ours else source
    try:
        _check_pixels(img)
        img.load()  # decode now, so truncation and corrupt data surface here, inside the try
        if ours:  # in place: a copy of every phone photo is costly
            ImageOps.exif_transpose(img, in_place=True)
        else:  # a copy: the caller's picture stays as it was
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        raise ImageError(f"The image could not be decoded ({_describe(exc)}). Is the file complete?") from exc


def image_to_input(img: Image.Image) -> np.ndarray:
    """Resize like Keras `load_img(target_size=(224, 224))` (nearest) and apply `preprocess_input` (caffe).

    Returns:
        (224, 224, 3) float32, BGR, mean-subtracted.
    """
    width_height = (IMAGE_SIZE[1], IMAGE_SIZE[0])
    if img.size != width_height:
        img = img.resize(width_height, Image.NEAREST)
    x = np.asarray(img, dtype=np.float32)
    return np.ascontiguousarray(x[..., ::-1] - CAFFE_MEAN_BGR)


def load_input(source: ImageSource, region: Box | None = None) -> np.ndarray:
    """`image_to_input(open_image(source))`, of `region` only when given: the one path every picture takes."""
    img = open_image(source)
    return image_to_input(img if region is None else crop(img, region))


def parse_region(value: str | Sequence[float] | None) -> Box | None:
    """A region as a person or a program gives it ("10, 20, 200, 300", "[10, 20, 200, 300]" or a list of four
    numbers) -> a box of whole pixels; None when no region is given (None, "" or []).

    Raises:
        RegionError: not four numbers, or an empty box.
    """
    if (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, (list, tuple)) and not value)
    ):
        return None
    parts = re.split(r"[\s,]+", value.strip(" \t\n[]()")) if isinstance(value, str) else value
    try:
        numbers = [float(part) for part in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(number) for number in numbers):
        raise RegionError(f"The region must be {REGION_FORMAT}; got {value!r}.")
    left, top, right, bottom = (round(number) for number in numbers)
    if right <= left or bottom <= top:
        raise RegionError(
            f"The region ({left}, {top}, {right}, {bottom}) is empty: right must be greater than left, and bottom "
            "greater than top."
        )
    return left, top, right, bottom


def crop(img: Image.Image, region: Box) -> Image.Image:
    """`region` of the upright picture (EXIF orientation applied, as a browser shows it).

    Raises:
        RegionError: the region reaches outside the picture.
    """
    left, top, right, bottom = region
    if left < 0 or top < 0 or right > img.width or bottom > img.height:
        # The example is the picture's middle half, inside the limits stated (REGION_FORMAT's may not be).
        w, h = img.width, img.height
        raise RegionError(
            f"The region ({left}, {top}, {right}, {bottom}) is outside the picture, which is {w}x{h} pixels: give four "
            f"numbers: left, top, right, bottom, in the picture's pixels, within 0, 0, {w}, {h} (e.g. {w // 4}, "
            f"{h // 4}, {w - w // 4}, {h - h // 4})."
        )
    return img.crop(region)


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, (str, os.PathLike)):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ImageError(f"The file could not be read ({_describe(exc)}).") from exc
    elif isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        data = source.read()
    if not data:
        raise ImageError("The file is empty.")
    try:
        return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(_bomb_message(), UPLOAD_SMALLER) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(NOT_AN_IMAGE_REASON, UPLOAD_ANOTHER) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"The image could not be decoded ({_describe(exc)}).") from exc


def _check_pixels(img: Image.Image) -> None:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("The image has no pixels.")
    if width * height > MAX_PIXELS:
        raise ImageError(_bomb_message(width, height), UPLOAD_SMALLER)


def _bomb_message(width: int | None = None, height: int | None = None) -> str:
    size = f" ({width}x{height} pixels)" if width else ""
    return f"The image is too large{size}; the limit is {MAX_PIXELS:,} pixels."


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: Pillow's convert("RGB") clips at 255 instead of scaling, turning most pictures white.
        grey = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), mode="L")
    elif mode == "F":
        img = Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), mode="L")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's plain conversion
    return img.convert("RGB")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__
