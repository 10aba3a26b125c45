"""Image loading: as the reference design for ordinary files, correct for unusual ones, clear errors for the rest."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import draw_product
from PIL import Image

from fashion_search.imaging import (
    ImageError,
    RegionError,
    image_to_input,
    load_input,
    open_image,
    parse_region,
)


def keras_seed_input(path) -> np.ndarray:
    from keras.applications.resnet50 import preprocess_input
    from keras.preprocessing import image

    return preprocess_input(np.expand_dims(image.img_to_array(image.load_img(path, target_size=(224, 224))), 0))[0]


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture
def product():
    return draw_product(np.random.default_rng(11), (120, 160))


@pytest.mark.parametrize("fmt,size", [("JPEG", (60, 80)), ("PNG", (60, 80)), ("JPEG", (640, 480)), ("PNG", (224, 224))])
def test_ordinary_files_equal_keras_load_img_and_preprocess_input(tmp_path, fmt, size):
    path = tmp_path / f"x.{fmt.lower()}"
    draw_product(np.random.default_rng(1), size).save(path, format=fmt)
    ours = load_input(path)
    assert ours.shape == (224, 224, 3) and ours.dtype == np.float32 and ours.flags.c_contiguous
    np.testing.assert_array_equal(ours, keras_seed_input(path))


def test_all_sources_agree(tmp_path, product):
    path = tmp_path / "p.png"
    product.save(path)
    data = path.read_bytes()
    expected = load_input(path)
    for source in (str(path), data, io.BytesIO(data), Image.open(io.BytesIO(data))):
        np.testing.assert_array_equal(load_input(source), expected)


@pytest.mark.parametrize(
    "colour, expected",  # BGR order, less ImageNet's mean in that order: B 103.939, G 116.779, R 123.68
    [
        ((255, 0, 0), [-103.939, -116.779, 131.32]),
        ((0, 255, 0), [-103.939, 138.221, -123.68]),
        ((0, 0, 255), [151.061, -116.779, -123.68]),
    ],
)
def test_a_pure_colour_is_swapped_to_bgr_and_caffe_centred(colour, expected):
    pixels = image_to_input(Image.new("RGB", (224, 224), colour))
    np.testing.assert_allclose(pixels[0, 0], expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(pixels, np.broadcast_to(pixels[0, 0], pixels.shape))


def test_exif_orientation_is_applied(product):
    rotated = product.transpose(Image.Transpose.ROTATE_90)  # what a camera stored: the picture turned on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": undoes ROTATE_90 (counter-clockwise)
    data = encode(rotated, "PNG", exif=exif)
    np.testing.assert_array_equal(np.asarray(open_image(data)), np.asarray(product))


def test_a_callers_picture_is_not_turned(product):
    rotated = product.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    picture = Image.open(io.BytesIO(encode(rotated, "PNG", exif=exif)))
    np.testing.assert_array_equal(np.asarray(open_image(picture)), np.asarray(product))
    assert picture.size == rotated.size and picture.getexif()[0x0112] == 6  # upright copy; the original untouched
    np.testing.assert_array_equal(np.asarray(picture), np.asarray(rotated))


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    img = open_image(encode(rgba, "PNG"))
    assert img.mode == "RGB"
    assert img.getpixel((5, 5)) == (255, 255, 255)
    assert img.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency_is_composited_on_white():
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((1, 1), 1)
    img = open_image(encode(palette, "PNG", transparency=0))
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((1, 1)) == (200, 10, 10)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # mid-grey in 16 bits = 128 in 8 bits
    img = open_image(encode(grey, "PNG"))
    assert img.getpixel((0, 0)) == (128, 128, 128)


def test_grey_and_cmyk_become_rgb():
    assert open_image(encode(Image.new("L", (4, 4), 77), "PNG")).getpixel((0, 0)) == (77, 77, 77)
    cmyk = open_image(encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=100))
    r, g, b = cmyk.getpixel((0, 0))
    assert cmyk.mode == "RGB" and r > 240 and g < 20 and b < 20  # full magenta + yellow = red


def test_animation_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert open_image(buffer.getvalue()).getpixel((4, 4)) == (255, 0, 0)


def test_one_pixel_image_works():
    assert load_input(encode(Image.new("RGB", (1, 1), "red"), "PNG")).shape == (224, 224, 3)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "The file is empty."),
        (b"<html><body>hello</body></html>", "not an image that can be read"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not an image that can be read"),
        (b"%PDF-1.4\n%\xe2\xe3\n", "not an image that can be read"),
    ],
)
def test_non_images_are_refused_with_a_clear_message(data, message):
    with pytest.raises(ImageError, match=message):
        open_image(data)


def test_truncated_jpeg_is_refused(product):
    data = encode(product, "JPEG")
    with pytest.raises(ImageError, match="could not be decoded"):
        open_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    # A real PNG header declaring 40000 x 40000 pixels: refused from the header alone.
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match="too large"):
        open_image(data)


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="could not be read"):
        open_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize(
    "given,box",
    [
        ("10, 20, 90, 150", (10, 20, 90, 150)),
        ("[10,20,90,150]", (10, 20, 90, 150)),
        (" 10 20 90 150\n", (10, 20, 90, 150)),
        ([10, 20, 90.4, 149.6], (10, 20, 90, 150)),
        ((0, 0, 1, 1), (0, 0, 1, 1)),
    ],
)
def test_a_region_is_read_from_text_or_numbers(given, box):
    assert parse_region(given) == box


@pytest.mark.parametrize("given", [None, "", "  ", []])
def test_no_region_means_the_whole_picture(given):
    assert parse_region(given) is None


@pytest.mark.parametrize(
    "given,message",
    [
        ("10, 20, 90", "The region must be four numbers: left, top, right, bottom"),
        ("10, 20, 90, 150, 4", "The region must be four numbers"),
        ("left, top, right, bottom", "The region must be four numbers"),
        ("10, 20, nan, 150", "The region must be four numbers"),
        ([10, 20, None, 150], "The region must be four numbers"),
        ("90, 20, 10, 150", "The region (90, 20, 10, 150) is empty: right must be greater than left"),
        ("10, 20, 10, 150", "is empty"),
        ("10, 150, 90, 20", "bottom greater than top"),
    ],
)
def test_a_region_that_is_not_a_box_is_refused_with_a_clear_message(given, message):
    with pytest.raises(RegionError) as error:
        parse_region(given)
    assert message in str(error.value)


@pytest.mark.parametrize("box", [(-1, 0, 50, 50), (0, 0, 121, 50), (0, 0, 50, 161), (200, 200, 300, 300)])
def test_a_region_outside_the_picture_is_refused_naming_the_pictures_size(product, box):
    with pytest.raises(RegionError) as error:
        load_input(encode(product, "PNG"), box)
    assert "is outside the picture, which is 120x160 pixels" in str(error.value)


def test_a_region_is_in_the_upright_pictures_pixels_and_equals_searching_the_cropped_file(product):
    """A phone photo stored on its side: the box is drawn on the picture as it is shown (EXIF applied)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = encode(product.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
    box = (15, 30, 95, 140)
    cropped_file = encode(open_image(stored).crop(box), "PNG")
    np.testing.assert_array_equal(load_input(stored, box), load_input(cropped_file))
    np.testing.assert_array_equal(load_input(stored, (0, 0, 120, 160)), load_input(stored))
    assert not np.array_equal(load_input(stored, box), load_input(stored))
