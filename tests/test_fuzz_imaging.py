"""Bounded fuzz of the decoding path: random bytes and mutated valid images give a (224, 224, 3) input or ImageError.

Nothing else may escape `open_image` / `load_input`: not a Pillow internal (struct.error, KeyError, TypeError, ...),
not a half-decoded picture, not a warning from outside Pillow (numpy's invalid cast, say: the fuzz turns those into
errors). Pillow's own warnings on a damaged file ("Corrupt EXIF data", a malformed MPO) are noise and let pass.
The seeds cover every format a user may upload, with the features that have their own code paths (EXIF orientation,
animation, palette transparency, 16-bit, CMYK). Sized to run in well under a minute on two cores; FUZZ_EXAMPLES=N runs
a longer campaign.
"""

from __future__ import annotations

import io
import os
import struct
import warnings

import numpy as np
import pytest
from conftest import draw_product
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fashion_search.imaging import ImageError, load_input, open_image

pytestmark = pytest.mark.slow  # thousands of generated images

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("FUZZ_RANDOM") is None,  # fixed cases by default: a CI failure replays locally
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _seeds() -> dict[str, bytes]:
    product = draw_product(np.random.default_rng(3), (24, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [product, product.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    palette = product.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "png": _encode(product, "PNG"),
        "png-rgba": _encode(product.convert("RGBA"), "PNG"),
        "png-palette-transparent": _encode(palette, "PNG", transparency=0),
        "png-16bit": _encode(Image.fromarray(np.arange(24 * 32, dtype=np.uint16).reshape(32, 24) * 80), "PNG"),
        "jpeg": _encode(product, "JPEG", quality=80),
        "jpeg-progressive": _encode(product, "JPEG", progressive=True),
        "jpeg-exif": _encode(product, "JPEG", exif=exif),
        "jpeg-cmyk": _encode(product.convert("CMYK"), "JPEG"),
        "jpeg-mpo": _encode(product, "MPO", save_all=True, append_images=[frames[1]]),
        "gif-animated": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": _encode(product, "WEBP", quality=80),
        "webp-animated": _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
        "bmp": _encode(product, "BMP"),
        "bmp-rle": _bmp_rle8(),
    }


def _bmp_rle8() -> bytes:
    """A 4x2 8-bit RLE BMP (Pillow cannot write RLE, whose decoder has its own bounds to keep)."""
    pixels = b"\x04\x01\x00\x00" + b"\x04\x02\x00\x01"  # row: 4 x index 1, end of line; row: 4 x index 2, end of bitmap
    palette = b"".join(bytes((i * 80, 255 - i * 80, 40, 0)) for i in range(4))
    info = struct.pack("<IiiHHIIiiII", 40, 4, 2, 1, 8, 1, len(pixels), 2835, 2835, 4, 4)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels


SEEDS = _seeds()


def check_outcome(data: bytes) -> None:
    """The contract: an (224, 224, 3) float32 finite input, or ImageError with a message."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", module=r"PIL\.")  # Pillow's "Corrupt EXIF data" and the like: noise
        try:
            result = load_input(data)
        except ImageError as exc:
            assert str(exc).strip(), "an ImageError needs a message for the user"
            return
    assert result.shape == (224, 224, 3) and result.dtype == np.float32
    assert np.isfinite(result).all()


@st.composite
def mutated(draw) -> bytes:
    """A seed image with a few edits: bit flips, byte overwrites (biased to the header), truncation, insertion."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "overwrite", "header", "truncate", "insert", "extreme"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "overwrite":
            data[pos] = draw(st.integers(0, 255))
        elif op == "header":  # sizes, modes, chunk lengths and marker lengths live in the first bytes
            pos = draw(st.integers(0, min(len(data), 64) - 1))
            chunk = draw(st.binary(min_size=1, max_size=4))
            data[pos : pos + len(chunk)] = chunk
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:  # a field set to an extreme value: 0, 1, 0x7fff, 0xffff, 0xffffffff...
            pos = draw(st.integers(0, min(len(data), 64) - 1))
            value = draw(
                st.sampled_from(
                    [b"\x00\x00", b"\x00\x01", b"\x7f\xff", b"\xff\xff", b"\xff\xff\xff\xff", b"\x80\x00\x00\x00"]
                )
            )
            data[pos : pos + len(value)] = value
    return bytes(data)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_never_escape_as_anything_but_image_error(data):
    check_outcome(data)


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_truncated_images_never_escape(name, data):
    seed = SEEDS[name]
    check_outcome(seed[: data.draw(st.integers(0, len(seed) - 1))])


@settings(FUZZ, max_examples=EXAMPLES * 4)
@given(mutated())
def test_mutated_images_never_escape_as_anything_but_image_error(data):
    check_outcome(data)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_decodes(name):
    """The fuzz starts from valid files: each seed itself gives an input (else the mutations test nothing)."""
    result = load_input(SEEDS[name])
    assert result.shape == (224, 224, 3) and np.isfinite(result).all()
    assert open_image(SEEDS[name]).mode == "RGB"
