"""The hostile-upload corpus, generated: what a public Space receives, and what each upload must give.

Each `Upload` either must decode (`expected` is then the exact RGB picture the model must see, or, for lossy
CMYK, a picture it must be close to) or must be refused with an `ImageError` whose message contains `message`.
Shared by the imaging/search tests, the app tests through gradio_client and the load test.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from conftest import draw_product
from PIL import Image

NOT_AN_IMAGE = "not an image that can be read"
NOT_DECODED = "could not be decoded"
TOO_LARGE = "The image is too large"
EMPTY = "The file is empty."


@dataclass(frozen=True)
class Upload:
    name: str  # the file name the user's browser sends
    data: bytes
    message: str | None = None  # None: must give results; else a fragment of the ImageError message
    expected: Image.Image | None = None  # the upright RGB picture the model must see
    exact: bool = True  # expected is pixel-exact (False: lossy, compared with a tolerance)

    @property
    def good(self) -> bool:
        return self.message is None


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG whose header declares width x height RGB pixels, with almost no data behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is edited to declare width x height."""
    data = bytearray(encode(Image.new("RGB", (16, 16), "navy"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_declaring(width: int, height: int) -> bytes:
    """A real small GIF whose logical screen and frame are edited to declare width x height."""
    data = bytearray(encode(Image.new("P", (4, 4), 0), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    frame = data.index(b"\x2c")  # image descriptor: x, y, width, height
    data[frame + 5 : frame + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def product(seed: int = 0, size=(60, 80)) -> Image.Image:
    return draw_product(np.random.default_rng(seed), size)


def exif_rotated(upright: Image.Image, orientation: int) -> tuple[bytes, Image.Image]:
    """A JPEG storing `upright` turned as a camera would, with the EXIF tag that turns it back.

    Returns the file and the upright picture a viewer must show: the decoded stored pixels turned by numpy
    (JPEG is lossy, so the reference is made from what the file decodes to, not from the original).
    """
    store = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(upright.transpose(store), "JPEG", quality=90, exif=exif)
    with Image.open(io.BytesIO(data)) as stored:
        pixels = np.asarray(stored.convert("RGB"))
    turns = {3: 2, 6: -1, 8: 1}[orientation]  # np.rot90 turns counter-clockwise; 6 means "rotate 90 CW to view"
    return data, Image.fromarray(np.ascontiguousarray(np.rot90(pixels, turns)))


def _rgba_case() -> tuple[bytes, Image.Image]:
    base = product(1)
    rgba = base.convert("RGBA")
    arr = np.asarray(rgba).copy()
    arr[:20, :, :] = (0, 0, 0, 0)  # transparent black: must show as white, not black
    arr[20:30, :, 3] = 128  # half transparent: blended with white
    expected = Image.alpha_composite(Image.new("RGBA", base.size, "white"), Image.fromarray(arr)).convert("RGB")
    return encode(Image.fromarray(arr), "PNG"), expected


def _palette_case() -> tuple[bytes, Image.Image]:
    pal = product(2).quantize(16)
    transparent = pal.getpixel((0, 0))
    expected = np.asarray(pal.convert("RGB")).copy()
    expected[np.asarray(pal) == transparent] = 255
    return encode(pal, "PNG", transparency=transparent), Image.fromarray(expected)


def _animation(fmt: str, **kwargs) -> tuple[bytes, Image.Image]:
    first = product(3).quantize(64).convert("RGB") if fmt == "GIF" else product(3)
    frames = [first, Image.new("RGB", first.size, "red"), product(4)]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kwargs), first


def build_corpus() -> list[Upload]:
    grey = product(5).convert("L")
    grey16 = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # 16-bit of the same picture
    rgba, rgba_expected = _rgba_case()
    palette, palette_expected = _palette_case()
    gif, gif_first = _animation("GIF")
    webp, webp_first = _animation("WEBP", lossless=True)
    cmyk_source = product(6)
    good = encode(product(7), "JPEG")
    phone = product(11)  # a phone's multi-picture JPEG (MPO): the first picture is the photo
    mpo = encode(phone, "MPO", save_all=True, append_images=[Image.new("RGB", phone.size, "red")], quality=95)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    corpus = [
        Upload("empty.jpg", b"", EMPTY),
        Upload("notes.jpg", b"Just some text, saved with the wrong name.\n", NOT_AN_IMAGE),
        Upload("page.jpg", b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>", NOT_AN_IMAGE),
        Upload(
            "drawing.jpg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
            NOT_AN_IMAGE,
        ),
        Upload(
            "document.jpg",
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n",
            NOT_AN_IMAGE,
        ),
        Upload("postscript.jpg", eps, NOT_AN_IMAGE),  # Pillow would hand EPS to Ghostscript: never on uploads
        Upload("scan.jpg", encode(product(8), "TIFF"), NOT_AN_IMAGE),  # a real image, of a format we do not take
        Upload("truncated.jpg", good[: len(good) // 2], NOT_DECODED),
        Upload("truncated.png", encode(product(9), "PNG")[:300], NOT_DECODED),
        Upload("bomb.png", png_declaring(40000, 40000), TOO_LARGE),
        Upload("bomb.jpg", jpeg_declaring(65000, 65000), TOO_LARGE),
        Upload("bomb.gif", gif_declaring(65535, 65535), TOO_LARGE),
        Upload("grey.png", encode(grey, "PNG"), expected=grey.convert("RGB")),
        Upload("grey16.png", encode(grey16, "PNG"), expected=grey.convert("RGB")),
        Upload("cmyk.jpg", encode(cmyk_source.convert("CMYK"), "JPEG", quality=95), expected=cmyk_source, exact=False),
        Upload("rgba.png", rgba, expected=rgba_expected),
        Upload("palette.png", palette, expected=palette_expected),
        Upload("animated.gif", gif, expected=gif_first),
        Upload("animated.webp", webp, expected=webp_first),
        Upload(
            "pixel.png",
            encode(Image.new("RGB", (1, 1), (200, 30, 60)), "PNG"),
            expected=Image.new("RGB", (1, 1), (200, 30, 60)),
        ),
        Upload("phone.jpg", mpo, expected=phone, exact=False),
        Upload("jpeg-named.png", good, expected=Image.open(io.BytesIO(good)).convert("RGB")),
    ]
    for orientation in (3, 6, 8):
        data, upright = exif_rotated(product(10 + orientation), orientation)
        corpus.append(Upload(f"exif-orientation-{orientation}.jpg", data, expected=upright))
    return corpus
