"""The photo input: Gradio's image widget, with the uploaded file handed to our own decoder untouched.

Alone in its module because Gradio writes a stub (`upload_image.pyi`) next to the module of every component class.
"""

from __future__ import annotations

import gradio as gr

from fashion_search.imaging import NOT_AN_IMAGE


class UploadedImage(gr.Image):
    """`gr.Image(type="filepath")` whose uploads skip Gradio's PIL check, which fails with a bare exception on a file
    that is not a picture; `fashion_search.imaging` then decodes the file and says what is wrong with it."""

    is_template = True  # the page shows it as gr.Image

    def preprocess(self, payload):
        if payload is None or not (payload.url or "").startswith("data:"):
            return None if payload is None else payload.path
        try:
            return super().preprocess(payload)  # a base64 data URL from an API client: Gradio writes it to a file
        except Exception as exc:
            raise gr.Error(NOT_AN_IMAGE) from exc
