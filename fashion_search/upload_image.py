"""The photo input: Gradio's image widget, with the uploaded file handed to our own decoder untouched.

Alone in its module because Gradio writes a stub (`upload_image.pyi`) next to the module of every component class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import safehttpx
from gradio import data_classes
from gradio_client.utils import is_http_url_like
from pydantic import ValidationError

from fashion_search.imaging import NOT_AN_IMAGE

log = logging.getLogger(__name__)
NOT_A_FILE = (
    'The photo must be sent as a file, not as its name: from Python, handle_file("photo.jpg") or handle_file(URL) '
    "(from gradio_client import handle_file)."
)
GIVE_A_PUBLIC_URL = "Give the URL of a picture on a public web server."


class ImageData(data_classes.ImageData):
    """Gradio's image payload (same name, same schema in the API's description), whose check of a request's value says
    what to send instead of printing pydantic's traceback: the name of a file alone is a common first call."""

    @classmethod
    def model_validate(cls, obj, **kwargs):
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError:
            raise gr.Error(NOT_A_FILE, print_exception=False) from None


class UploadedImage(gr.Image):
    """`gr.Image(type="filepath")` whose uploads skip Gradio's PIL check, which fails with a bare exception on a file
    that is not a picture; `fashion_search.imaging` then decodes the file and says what is wrong with it."""

    is_template = True  # the page shows it as gr.Image
    data_model = ImageData

    def preprocess(self, payload):
        if payload is None or not (payload.url or "").startswith("data:"):
            return None if payload is None else payload.path
        try:
            return super().preprocess(payload)  # a base64 data URL from an API client: Gradio writes it to a file
        except Exception as exc:
            raise gr.Error(NOT_AN_IMAGE) from exc

    async def async_move_resource_to_block_cache(self, url_or_file_path: str | Path | None) -> str | None:
        """Gradio's download of a photo given by URL (an API client's), which its guard refuses for a private or
        loopback address; a refusal or failure gets a message for people and one log line, not a traceback."""
        if not is_http_url_like(str(url_or_file_path)):
            return await super().async_move_resource_to_block_cache(url_or_file_path)
        return await fetch_photo(self, str(url_or_file_path))


async def fetch_photo(block: gr.Image, url: str, advice: str = GIVE_A_PUBLIC_URL) -> str:
    """The photo at `url` downloaded into `block`'s cache folder by Gradio, behind its guard against private and
    loopback addresses; a file path. A refusal or failure: a gr.Error saying why, then `advice`, and one log line.

    (fashion_search.assistant sends its own advice: the other forms an MCP tool takes a photo in.)"""
    try:
        return await gr.Image.async_move_resource_to_block_cache(block, url)
    except Exception as exc:
        message = photo_url_refused(url, exc, advice)
        log.warning("%s", message)
        raise gr.Error(message, print_exception=False) from None


def photo_url_refused(url: str, cause: Exception, advice: str = GIVE_A_PUBLIC_URL) -> str:
    """Why the photo at `url` was not fetched, for the caller (on one line): `cause` is what the download raised."""
    if refused_by_guard(cause):
        reason = "its address is not public, and this app fetches photos only from public addresses"
    else:
        reason = str(cause) or type(cause).__name__
    shown = url if len(url) <= 200 else url[:200] + "…"
    message = f"Could not fetch the photo at {shown}: {reason}. {advice}"
    return "".join(c if c.isprintable() else " " for c in message)


def refused_by_guard(cause: BaseException) -> bool:
    """Whether `cause` is the refusal of Gradio's download guard (safehttpx.async_validate_url): the URL's host has no
    public address, so nothing was fetched. Told by where it was raised and what it says, not by looking the host up
    again (the guard's other refusal there, a host that does not resolve, is shown as it is)."""
    last = cause.__traceback__
    while last is not None and last.tb_next is not None:
        last = last.tb_next
    return (
        isinstance(cause, ValueError)
        and last is not None
        and last.tb_frame.f_code is safehttpx.async_validate_url.__code__
        and str(cause).endswith(" failed validation")
    )
