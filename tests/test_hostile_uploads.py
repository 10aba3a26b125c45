"""Hostile uploads: each file of the corpus gives the right result or its own clear message, never anything else.

Checked at four depths: the decoder (`fashion_search.imaging`), the query path (`Recommender.recommend`, as the app
calls it, on a file path), the running app through gradio_client, and the page in headless Chromium.
"""

from __future__ import annotations

import json
import re
import urllib.request

import numpy as np
import pytest
from app_runner import launch_app
from conftest import NEEDS_CHROMIUM, embed_files
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from hostile_corpus import build_corpus, encode
from PIL import Image

from fashion_search import webapp
from fashion_search.imaging import ImageError, load_input, open_image

CORPUS = {upload.name: upload for upload in build_corpus()}
GOOD = [name for name, upload in CORPUS.items() if upload.good]
BAD = [name for name, upload in CORPUS.items() if not upload.good]
LOSSY_MEAN_ERROR = 4.0  # mean |difference| per channel allowed for the lossy cases (CMYK, MPO): JPEG noise only


@pytest.fixture
def upload_path(tmp_path):
    """Write an upload where the app would find it: a file with the name the browser sent."""

    def write(name: str, data: bytes | None = None):
        path = tmp_path / name
        path.write_bytes(CORPUS[name].data if data is None else data)
        return path

    return write


def results(matches) -> list[tuple[str, float]]:
    return [(m.filename, m.distance) for m in matches]


@pytest.mark.parametrize("name", GOOD)
def test_good_uploads_decode_to_the_picture_a_person_sees(name):
    upload = CORPUS[name]
    img = open_image(upload.data)
    assert img.mode == "RGB" and img.size == upload.expected.size
    ours, expected = np.asarray(img, dtype=np.int16), np.asarray(upload.expected, dtype=np.int16)
    if upload.exact:
        np.testing.assert_array_equal(ours, expected)
    else:
        assert np.abs(ours - expected).mean() < LOSSY_MEAN_ERROR
    x = load_input(upload.data)
    assert x.shape == (224, 224, 3) and x.dtype == np.float32 and np.isfinite(x).all()


@pytest.mark.parametrize("name", BAD)
def test_bad_uploads_are_refused_with_their_message(name):
    with pytest.raises(ImageError, match=re.escape(CORPUS[name].message)):
        open_image(CORPUS[name].data)


@pytest.mark.parametrize("name", GOOD)
def test_good_uploads_search_as_their_picture(name, recommender, embedder, upload_path):
    """Top-5 of the upload = top-5 of its expected picture stored as a plain PNG (exactly, where decoding is exact)."""
    upload = CORPUS[name]
    path, reference_path = upload_path(name), upload_path("reference.png", encode(upload.expected, "PNG"))
    got, reference = recommender.recommend(path), recommender.recommend(reference_path)
    assert len(got) == 5 and [m.rank for m in got] == [1, 2, 3, 4, 5]
    if upload.exact:
        assert results(got) == results(reference)
    else:  # JPEG noise moves the vector a little: less than the distance to any catalogue product
        vectors = embed_files(embedder, [path, reference_path])
        nearest_product = np.linalg.norm(recommender.bundle.embeddings - vectors[1], axis=1).min()
        assert np.linalg.norm(vectors[0] - vectors[1]) < nearest_product / 2


@pytest.mark.parametrize("name", BAD)
def test_bad_uploads_give_their_message_through_search(name, recommender, upload_path):
    with pytest.raises(webapp.QueryError, match=re.escape(CORPUS[name].message)):
        recommender.recommend(upload_path(name))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_photo_searches_as_the_upright_photo(orientation, recommender, embedder, upload_path):
    """Same vector and same top-5 as the upright picture; and the test has teeth: ignoring EXIF would change both."""
    name = f"exif-orientation-{orientation}.jpg"
    upright = upload_path("upright.png", encode(CORPUS[name].expected, "PNG"))
    rotated = upload_path(name)
    np.testing.assert_array_equal(embed_files(embedder, [rotated]), embed_files(embedder, [upright]))
    assert results(recommender.recommend(rotated)) == results(recommender.recommend(upright))

    with Image.open(rotated) as stored:  # the pixels as stored, EXIF ignored
        sideways = upload_path("sideways.png", encode(stored.convert("RGB"), "PNG"))
    assert not np.array_equal(embed_files(embedder, [sideways]), embed_files(embedder, [upright]))
    assert results(recommender.recommend(sideways)) != results(recommender.recommend(upright))


# Through the running app: gradio_client uploads the file as a browser would, the app answers or says why not.


@pytest.fixture(scope="module")
def app_url(bundle_dir, weights_file) -> str:
    return launch_app(bundle_dir, weights_file)[1]  # the session's in-process app, shared with test_app.py


@pytest.fixture(scope="module")
def client(app_url) -> Client:
    return Client(app_url, verbose=False)


def expected_listing(recommender, path) -> list[dict]:
    return [match.listing() for match in recommender.recommend(path)]


def assert_same_listing(got: list[dict], expected: list[dict]) -> None:
    """The app's listing is the searcher's (`expected`, made in this process), each row naming one revision too."""
    assert len({row["revision"] for row in got}) == 1
    left_out = ("distance", "revision")
    assert [{k: v for k, v in row.items() if k not in left_out} for row in got] == [
        {k: v for k, v in row.items() if k not in left_out} for row in expected
    ]
    np.testing.assert_allclose([row["distance"] for row in got], [row["distance"] for row in expected], atol=2e-6)


def assert_server_answers(client, recommender, upload_path) -> None:
    """A good request after a bad one gets its right answer: the bad one did not break the server."""
    path = upload_path("after.jpg", encode(Image.open(recommender.bundle.image_path(4)).convert("RGB"), "JPEG"))
    gallery, listing = client.predict(handle_file(str(path)), api_name="/recommend")
    assert_same_listing(listing, expected_listing(recommender, path))
    assert len(gallery) == 5


@pytest.mark.slow
@pytest.mark.parametrize("name", GOOD)
def test_app_answers_good_uploads_like_the_searcher(name, client, recommender, upload_path):
    path = upload_path(name)
    gallery, listing = client.predict(handle_file(str(path)), api_name="/recommend")
    assert_same_listing(listing, expected_listing(recommender, path))
    assert [item["caption"].splitlines()[0] for item in gallery] == [row["productDisplayName"] for row in listing]


@pytest.mark.slow
@pytest.mark.parametrize("name", BAD)
def test_app_gives_our_message_for_bad_uploads(name, client, recommender, upload_path):
    path = upload_path(name)
    with pytest.raises(ImageError) as ours:
        open_image(path)
    with pytest.raises(AppError) as answer:
        client.predict(handle_file(str(path)), api_name="/recommend")
    assert str(answer.value) == str(ours.value)  # our sentence, word for word: not Gradio's bare "Error"
    assert CORPUS[name].message in str(answer.value)
    assert_server_answers(client, recommender, upload_path)


def _call_api(app_url: str, data: list) -> tuple[str, str]:
    """A raw API call (what a script can send without gradio_client): returns the SSE event name and its data."""
    request = urllib.request.Request(
        app_url + "gradio_api/call/recommend",
        data=json.dumps({"data": data}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        event_id = json.load(response)["event_id"]
    with urllib.request.urlopen(f"{app_url}gradio_api/call/recommend/{event_id}", timeout=120) as response:
        lines = response.read().decode().splitlines()
    event = next(line.split(": ", 1)[1] for line in lines if line.startswith("event: "))
    payload = next(line.split(": ", 1)[1] for line in lines if line.startswith("data: "))
    return event, payload


@pytest.mark.slow
def test_app_serves_no_server_file_named_in_a_raw_api_call(app_url, client, recommender, upload_path, capfd):
    """A request naming a server path instead of uploading a file is refused by Gradio, and nothing of it leaks."""
    options = [5, *[[]] * len(recommender.filter_choices), 0, ""]  # top_k, no filter, no near-duplicate hiding, whole
    for path in ("/etc/passwd", str(upload_path("elsewhere.png", encode(Image.new("RGB", (4, 4)), "PNG")))):
        event, payload = _call_api(app_url, [{"path": path, "meta": {"_type": "gradio.FileData"}}, *options])
        assert event == "error" and "root:" not in payload
        assert "was not uploaded by a user" in capfd.readouterr().err  # refused for the right reason: Gradio's check
    event, payload = _call_api(app_url, [None, *options])
    assert event == "error" and "Please upload a photo of a product first" in payload
    assert_server_answers(client, recommender, upload_path)


# Through the page: the file chosen in the browser's file input, the answer as a person sees it.


@pytest.fixture(scope="module")
def browser_page():
    from conftest import CHROMIUM
    from playwright.sync_api import sync_playwright
    from test_browser import CHROMIUM_ARGS, TIMEOUT_MS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_the_page_answers_every_upload_of_the_corpus(browser_page, app_url, recommender, upload_path):
    """Each upload in turn, on a fresh page: five products (the recommender's), or our message in a notice as the
    file is dropped, the photo left empty."""
    from playwright.sync_api import expect
    from test_browser import ALL_IMAGES_LOADED

    page = browser_page
    for name, upload in CORPUS.items():
        path = upload_path(name)
        page.goto(app_url)
        page.set_input_files("#query input[type=file]", str(path))
        if upload.good:
            page.locator("#query img[src*='gradio_api/file=']").wait_for(state="attached")
            page.get_by_role("button", name="Submit").click()
            page.wait_for_function(ALL_IMAGES_LOADED, arg=5)
            captions = page.locator("#products .caption-label").all_inner_texts()
            expected = [m.metadata["productDisplayName"] for m in recommender.recommend(path)]
            assert [caption.splitlines()[0] for caption in captions] == expected, name
        else:
            with pytest.raises(ImageError) as ours:
                open_image(path)
            toast = page.get_by_text(str(ours.value))
            toast.first.wait_for()
            assert toast.first.is_visible(), name
            expect(page.locator("#query img")).to_have_count(0)
