"""fashion_search.assistant without a server: the photo forms read here (the app's upload cache under Gradio's rules,
its catalogue pictures, data: URLs), and the answers' JSON, line and thumbnails. Over MCP, end to end: test_mcp.py."""

from __future__ import annotations

import base64
import io
import logging
from types import SimpleNamespace
from urllib.parse import quote

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from test_live import MODEL, StubEmbedder, names, product_vector, publish

from fashion_search import assistant, live, webapp
from fashion_search.bundle import IMAGES, load_bundle, write_bundle
from fashion_search.images import FolderImages
from fashion_search.imaging import PREPROCESSING_ID
from fashion_search.search import Match
from fashion_search.snapshot import open_snapshot

LIMIT = 10_000  # bytes: the app's upload limit in these tests


@pytest.fixture
def followed(tmp_path):
    folder = publish(tmp_path / "bundle", names(1000, 12))
    source = live.FolderSource(folder)
    bundle, images = source.load(source.head())
    recommender = webapp.Recommender(open_snapshot(StubEmbedder(), bundle, images, revision=source.head()))
    return folder, source, recommender


def helper(recommender, tmp_path, blocked=()) -> assistant.Assistant:
    """An Assistant over `recommender` whose Gradio app has tmp_path/"uploads" as its upload folder."""
    blocks = SimpleNamespace(blocked_paths=list(blocked), allowed_paths=[], max_file_size=LIMIT)
    (tmp_path / "uploads").mkdir(exist_ok=True)
    return assistant.Assistant(recommender, blocks, str(tmp_path / "uploads"))


def test_an_upload_url_is_read_from_the_upload_folder_by_its_path_whatever_its_host_under_gradios_rules(
    followed, tmp_path
):
    _, _, recommender = followed
    helper_ = helper(recommender, tmp_path, blocked=[tmp_path / "uploads" / "secret"])
    upload = tmp_path / "uploads" / "abc" / "my photo.jpg"
    upload.parent.mkdir()
    upload.write_bytes(b"a photo")
    for host in ("http://127.0.0.1:7860", "https://owner-space.hf.space", "https://proxy.example/root"):
        assert helper_.own_photo(f"{host}/gradio_api/file={quote(str(upload))}") == str(upload)
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"not served by Gradio's file route")
    (tmp_path / "uploads" / "secret").mkdir()
    (tmp_path / "uploads" / "secret" / "x.jpg").write_bytes(b"blocked")
    for path in [
        outside,
        tmp_path / "uploads" / "secret" / "x.jpg",
        tmp_path / "uploads" / "abc",
        upload.with_name("no"),
    ]:
        assert helper_.own_photo(f"https://h/gradio_api/file={path}") is None, path
    assert helper_.own_photo(f"https://h/gradio_api/file={tmp_path}/uploads/abc/../../elsewhere.jpg") is None
    assert helper_.own_photo("https://example.com/photos/1.jpg") is None  # any other URL: fetched, not read here


def test_a_catalogue_picture_url_is_read_from_the_revision_it_names_or_the_one_served_now(followed, tmp_path):
    folder, source, recommender = followed
    helper_ = helper(recommender, tmp_path)
    old = recommender.snapshot.revision
    url = f"https://anywhere.example/gradio_api/catalogue-images/{old}/1005.jpg"
    assert helper_.own_photo(url) == b"picture of 1005.jpg"
    # gradio_client's form of it, through Gradio's file route
    assert helper_.own_photo(f"http://127.0.0.1:1/gradio_api/file={quote(url)}") == b"picture of 1005.jpg"

    publish(folder, names(1003, 12))  # 1000-1002 sold out
    live.Follower(recommender, source, every=3600, grace=0).check()
    assert recommender.snapshot.revision != old
    assert helper_.own_photo(url) == b"picture of 1005.jpg"  # from the revision served now
    assert helper_.own_photo(f"https://a/gradio_api/catalogue-images/{old}/1001.jpg") is None
    assert helper_.own_photo(f"https://a/gradio_api/catalogue-images/{old}/nothing.jpg") is None


def test_a_data_url_gives_its_bytes_and_a_broken_or_too_big_one_a_message_naming_the_forms(followed, tmp_path):
    helper_ = helper(followed[2], tmp_path)
    data = bytes(range(256)) * 4
    encoded = base64.b64encode(data).decode()
    assert helper_._data_url(f"data:image/png;base64,{encoded}") == data
    assert helper_._data_url(f"data:image/png;base64,{encoded[:100]}\n{encoded[100:]}") == data  # wrapped lines
    assert helper_._data_url("data:image/svg+xml,%3Csvg%2F%3E") == b"<svg/>"
    unreadable = (
        "The photo's data: URL could not be read: it should be data:image/jpeg;base64, then the picture's bytes in "
        f"base64. {assistant.SEND_A_PHOTO}"
    )
    for broken in ("data:image/png;base64", "data:image/png;base64,abc$"):
        with pytest.raises(gr.Error) as refused:
            helper_._data_url(broken)
        assert refused.value.message == unreadable
    with pytest.raises(gr.Error, match="The photo is over the app's limit of 10,000 bytes."):
        helper_._data_url("data:image/png;base64," + base64.b64encode(b"x" * (LIMIT + 1)).decode())


def photo_bytes(size: tuple[int, int], colour: str, format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=format)
    return buffer.getvalue()


def test_an_answer_is_json_with_a_line_and_thumbnails_and_no_server_path(tmp_path, caplog):
    root = tmp_path / "bundle"
    (root / IMAGES).mkdir(parents=True)
    pictures = {
        "big.jpg": photo_bytes((600, 400), "navy", "JPEG"),
        "small.png": photo_bytes((60, 80), "red", "PNG"),
        "broken.jpg": b"not a picture",
    }
    for name, data in pictures.items():
        (root / IMAGES / name).write_bytes(data)
    names_ = list(pictures)
    write_bundle(
        root,
        embeddings=np.stack([product_vector(name) for name in names_]),
        filenames=names_,
        model=MODEL,
        preprocessing=PREPROCESSING_ID,
        metadata=[
            {"productDisplayName": "Navy Top", "articleType": "Tops", "baseColour": "Navy", "gender": "Women"},
            {"articleType": "Bags", "baseColour": "", "year": 2012},
            {},
        ],
    )
    bundle = load_bundle(root)
    images = FolderImages(bundle, "rev1")
    snapshot = open_snapshot(StubEmbedder(), bundle, images, revision="rev1", source=str(root), name="shop")
    matches = [snapshot.searcher.match(row) for row in range(3)]
    matches = [Match(rank, m.row, m.filename, 0.25 * rank, m.image_path, m.metadata) for rank, m in enumerate(matches)]
    with caplog.at_level(logging.WARNING, logger="fashion_search.assistant"):
        content, answer = assistant.answer(matches, snapshot, "https://shop.example", "the photo")
    assert (answer["catalogue"], answer["revision"], answer["count"]) == ("shop", "rev1", 3)
    first, second, third = answer["products"]
    assert first == {
        "rank": 0,
        "name": "Navy Top",
        "details": "Tops · Navy · Women",
        "distance": 0.0,
        "filename": "big.jpg",
        "picture_url": "https://shop.example/gradio_api/catalogue-images/rev1/big.jpg",
        "revision": "rev1",
        "productDisplayName": "Navy Top",
        "articleType": "Tops",
        "baseColour": "Navy",
        "gender": "Women",
    }
    assert second["name"] == "small.png" and second["details"] == "Bags" and second["year"] == 2012
    assert "baseColour" not in second  # empty values left out, as in the API's listing
    text, *thumbnails = content
    assert text.text.startswith("The 3 products most like the photo in the catalogue shop (3 products, revision rev1)")
    assert "0. Navy Top (Tops · Navy · Women), big.jpg, distance 0.000; 1. small.png (Bags), small.png" in text.text
    assert "\n" not in text.text and str(tmp_path) not in text.text + str(answer)
    # a thumbnail of each picture that can be read, at most 256 pixels a side; the broken one logged and left out
    assert [(t.mimeType, Image.open(io.BytesIO(base64.b64decode(t.data))).size) for t in thumbnails] == [
        ("image/jpeg", (256, 171)),
        ("image/png", (60, 80)),
    ]
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["No thumbnail for broken.jpg"]
    assert third["picture_url"].endswith("/broken.jpg")
