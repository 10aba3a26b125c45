"""The demo as an MCP server (Gradio's, at /gradio_api/mcp/), called with the `mcp` package's own client over
streamable HTTP; photo URLs at loopback or private addresses refused; the server's log for ordinary bad requests."""

from __future__ import annotations

import ast
import asyncio
import base64
import io
import re

import httpx
import pytest
from app_runner import demo_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

from fashion_search.demo import example_images

pytestmark = pytest.mark.slow  # starts `python app.py` on the demo catalogue

PRIVATE_HOSTS = ["10.0.0.8", "172.16.5.4", "192.168.1.20", "169.254.169.254", "[fd00::1]"]
REFUSED = (
    "its address is not public, and this app fetches photos only from public addresses. Give the URL of a picture on a "
    "public web server."
)


@pytest.fixture(scope="module")
def demo():
    return demo_app()


@pytest.fixture(scope="module")
def client(demo) -> Client:
    return Client(demo.url, verbose=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A demo example (a dress) as a JPEG a phone might send: bytes and a file."""
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.open(next(p for p in example_images() if p.stem == "dress")).convert("RGB").resize((224, 224)).save(path)
    return path


def call_mcp(url: str, work):
    """`await work(session)` in an initialised MCP session with the app's server, over streamable HTTP."""

    async def run():
        async with (
            httpx.AsyncClient(timeout=300) as http,  # a first call on a busy 2-core machine can take a while
            streamable_http_client(f"{url}gradio_api/mcp/", http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(run())


def tool_listing(result) -> list[dict]:
    """The listing an MCP tool call returned: Gradio gives the outputs (gallery, listing) as one text, their repr."""
    assert not result.isError, result.content
    (content,) = result.content
    gallery, listing = ast.literal_eval(content.text)
    assert len(gallery) == len(listing)
    return listing


def data_url(path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def test_the_tools_are_recommend_and_similar_with_the_apis_parameters_typed_and_documented(demo, client):
    tools = {tool.name: tool for tool in call_mcp(demo.url, lambda session: session.list_tools()).tools}
    assert set(tools) == {"recommend", "similar"}
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name, tool in tools.items():
        schema = tool.inputSchema
        parameters = [p["parameter_name"] for p in endpoints[f"/{name}"]["parameters"]]
        assert list(schema["properties"]) == parameters
        assert schema["required"] == parameters[:1]
        assert all(prop.get("description") for prop in schema["properties"].values()), schema
        assert tool.description.startswith("The products of the catalogue that look most like")
        assert schema["properties"]["top_k"]["type"] == "integer"
        article_type = schema["properties"]["article_type"]
        assert article_type["type"] == "array" and "Dress" in article_type["items"]["enum"]
    image = tools["recommend"].inputSchema["properties"]["image"]
    assert image["type"] == "string" and "URL" in image["description"]
    assert tools["recommend"].inputSchema["properties"]["near_duplicate_distance"]["type"] == "number"


def test_the_tools_top_5_equals_gradio_clients(demo, client, photo):
    async def work(session):
        found = await session.call_tool("recommend", {"image": data_url(photo)})
        filtered = await session.call_tool(
            "recommend",
            {"image": data_url(photo), "top_k": 3, "master_category": ["Apparel"], "region": "20, 20, 200, 200"},
        )
        similar = await session.call_tool("similar", {"filename": "10000.png", "article_type": ["Dress", "Coat"]})
        return found, filtered, similar

    found, filtered, similar = call_mcp(demo.url, work)
    _, expected = client.predict(handle_file(str(photo)), api_name="/recommend")
    assert len(expected) == 5 and tool_listing(found) == expected
    _, expected = client.predict(
        handle_file(str(photo)), top_k=3, master_category=["Apparel"], region="20, 20, 200, 200", api_name="/recommend"
    )
    assert tool_listing(filtered) == expected
    assert {row["masterCategory"] for row in expected} == {"Apparel"}
    _, expected = client.predict("10000.png", article_type=["Dress", "Coat"], api_name="/similar")
    assert tool_listing(similar) == expected and {row["articleType"] for row in expected} <= {"Dress", "Coat"}


def test_a_photo_url_at_a_loopback_or_private_address_is_refused_and_never_fetched(demo, client, photo):
    """Gradio's download guard (safehttpx) fetches only from public addresses, for the MCP tool as for gradio_client.
    The photo is really there on 127.0.0.1: nothing asks for it. Nothing is sent to the private hosts either, and
    nothing tries: the app's connections beyond loopback (a guard that let one pass would fetch through a transport
    pinned to its address, past the proxy) are refused before a packet leaves and reported to the recorder, which is
    also its proxy (tests/loopback_only). The message is the guard's refusal, not a guess from the URL."""
    demo.outside.files["/photo.jpg"] = photo.read_bytes()
    loopback = [f"{demo.outside.url}/photo.jpg", f"http://localhost:{demo.outside.url.rsplit(':', 1)[1]}/photo.jpg"]
    urls = loopback + [f"http://{host}/photo.jpg" for host in PRIVATE_HOSTS]
    before = len(demo.log.read_text().splitlines())
    asked = len(demo.outside.requests)

    async def work(session):
        return [await session.call_tool("recommend", {"image": url}) for url in urls]

    results = call_mcp(demo.url, work)
    refusals = []
    for url in urls[:3]:
        with pytest.raises(AppError) as refused:
            client.predict(handle_file(url), api_name="/recommend")
        refusals.append(str(refused.value))

    # What left the app: only the guard's own look-up of each name (its DNS-over-HTTPS fallback), to the proxy,
    # refused; no connection to any of the hosts, nor a request for the photo.
    requests = demo.outside.requests[asked:]
    assert requests and all(line.startswith("CONNECT dns.google:443 ") for line in requests), requests
    for url, result in zip(urls, results):
        assert result.isError
        (content,) = result.content
        assert content.text == f"Could not fetch the photo at {url}: {REFUSED}"
    assert refusals == [f"Could not fetch the photo at {url}: {REFUSED}" for url in urls[:3]]
    assert len(client.predict(handle_file(str(photo)), api_name="/recommend")[1]) == 5  # and it keeps serving
    # One line in the log for each refusal, saying what it was.
    logged = demo.log.read_text().splitlines()[before:]
    assert logged == [
        f"WARNING fashion_search.upload_image: Could not fetch the photo at {url}: {REFUSED}" for url in urls + urls[:3]
    ]


def test_the_log_shows_the_apps_start_and_nothing_for_an_ordinary_bad_request(demo, client, photo, tmp_path):
    """TensorFlow's start-up lines hidden; Gradio's own refusals of an option (top_k out of range, a value not among a
    filter's choices) print no traceback, as the app's own refusals print nothing (a refused photo URL: one line)."""
    start = demo.log.read_text()
    head = start[: start.index("* Running on local URL:")]
    assert "oneDNN" not in start and "absl" not in start and "Traceback" not in start
    assert [line.split(":")[0] for line in head.splitlines()] == [
        "WARNING fashion_search.embedder",  # random weights
        "INFO fashion_search.demo",  # building the demo catalogue ...
        "INFO fashion_search.demo",  # ... and what it made
    ]
    assert "Streamable HTTP URL: http://127.0.0.1:" in start

    not_a_picture = tmp_path / "notes.jpg"
    not_a_picture.write_bytes(b"name,price\nshirt,12\n")
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buffer, format="PNG")
    small = tmp_path / "small.png"
    small.write_bytes(buffer.getvalue())
    bad_requests = [
        ((handle_file(str(photo)), 25), {}, "top_k must be a number from 1 to 20; got 25."),
        ((handle_file(str(photo)), "many"), {}, "top_k must be a number from 1 to 20; got 'many'."),
        ((handle_file(str(photo)),), {"near_duplicate_distance": 2}, "near_duplicate_distance must be a number from"),
        ((handle_file(str(photo)),), {"article_type": ["Tshirts"]}, "'Tshirts' is not a value of article_type: give"),
        ((handle_file(str(not_a_picture)),), {}, "This file is not an image that can be read."),
        ((handle_file(str(small)),), {"region": "10, 20, 200, 300"}, "is outside the picture, which is 40x30 pixels"),
        (("no-such.png",), {}, "No product 'no-such.png' in this catalogue"),
        # The photo's name alone (handle_file forgotten): pydantic's refusal of it printed a traceback.
        ((str(photo),), {}, 'The photo must be sent as a file, not as its name: from Python, handle_file("photo.jpg")'),
    ]
    before = len(demo.log.read_text().splitlines())
    for args, options, message in bad_requests:
        api_name = "/similar" if args[0] == "no-such.png" else "/recommend"
        with pytest.raises(AppError, match=re.escape(message)):
            client.predict(*args, **options, api_name=api_name)
    assert len(client.predict(handle_file(str(photo)), api_name="/recommend")[1]) == 5
    assert demo.log.read_text().splitlines()[before:] == []
