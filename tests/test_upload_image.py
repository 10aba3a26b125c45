"""The photo input: uploaded files reach our decoder untouched; a data URL that is not a picture gets our message."""

from __future__ import annotations

import base64

import gradio as gr
import pytest
from gradio.data_classes import ImageData

from fashion_search.imaging import NOT_AN_IMAGE
from fashion_search.upload_image import UploadedImage


def test_an_uploaded_file_is_handed_on_untouched(tmp_path):
    """Gradio's own gr.Image opens it with PIL first; ours leaves that to fashion_search.imaging."""
    not_a_picture = tmp_path / "notes.jpg"
    not_a_picture.write_bytes(b"not a picture")
    payload = ImageData(path=str(not_a_picture), orig_name="notes.jpg")
    assert UploadedImage(type="filepath").preprocess(payload) == str(not_a_picture)
    assert not_a_picture.read_bytes() == b"not a picture"
    assert UploadedImage(type="filepath").preprocess(None) is None


def test_a_data_url_that_is_not_a_picture_gets_our_message():
    url = "data:image/png;base64," + base64.b64encode(b"not a picture").decode()
    with pytest.raises(gr.Error) as caught:
        UploadedImage(type="filepath").preprocess(ImageData(url=url))
    assert caught.value.message == NOT_AN_IMAGE


def test_a_data_url_picture_is_written_to_a_file(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 6), "red").save(tmp_path / "red.png")
    url = "data:image/png;base64," + base64.b64encode((tmp_path / "red.png").read_bytes()).decode()
    path = UploadedImage(type="filepath", format="png").preprocess(ImageData(url=url))
    with Image.open(path) as written:
        assert written.size == (8, 6) and written.getpixel((0, 0)) == (255, 0, 0)


def test_the_page_shows_it_as_gradios_image_widget():
    with gr.Blocks() as page:
        UploadedImage(type="filepath", sources=["upload", "webcam", "clipboard"])
    (component,) = [c for c in page.config["components"] if c.get("props", {}).get("sources")]
    assert component["type"] == "image"
