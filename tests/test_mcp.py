"""The demo as an MCP server (Gradio's, at /gradio_api/mcp, answering with fashion_search.assistant), called as an
assistant would by two clients the project did not write: the `mcp` package's own client over streamable HTTP, and
the MCP Inspector's CLI (npx, tests/inspector.py). Photos in each form, answers against gradio_client's, picture URLs
opened; photo URLs at loopback or private addresses refused; the server's log for ordinary bad requests."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import inspector
import pytest
from app_runner import demo_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image

import fashion_search
from fashion_search import assistant
from fashion_search.demo import ASSETS, example_images
from fashion_search.imaging import open_image
from fashion_search.upload_image import GIVE_A_PUBLIC_URL

pytestmark = pytest.mark.slow  # starts `python app.py` on the demo catalogue

PRIVATE_HOSTS = ["10.0.0.8", "172.16.5.4", "192.168.1.20", "169.254.169.254", "[fd00::1]"]
NOT_PUBLIC = "its address is not public, and this app fetches photos only from public addresses"
REFUSED = f"{NOT_PUBLIC}. {GIVE_A_PUBLIC_URL}"  # to gradio_client
REFUSED_TO_MCP = f"{NOT_PUBLIC}. {assistant.SEND_A_PHOTO}"  # to an assistant: every form a photo can take
ELSEWHERE = "http://10.0.0.8:7860"  # the app as seen through a proxy: another host (never asked: see test_photo_forms)
PICTURES = ASSETS / "catalogue" / "images"  # the demo catalogue's pictures, as its bundle holds them


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


def call_mcp(url: str, work, headers: dict | None = None):
    """`await work(session)` in an initialised MCP session with the app's server, over streamable HTTP, at the URL
    Gradio prints (with its slash)."""

    async def run():
        async with (
            httpx.AsyncClient(timeout=300, headers=headers) as http,  # a first call on a busy 2-core machine is slow
            streamable_http_client(f"{url}gradio_api/mcp/", http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(run())


def answer_of(result) -> dict:
    """The JSON of a tool's answer (structured content), after checking the rest: one line of text naming each
    product, then one thumbnail of at most 256 pixels a side per product, its catalogue picture's pixels."""
    assert not result.isError, result.content
    answer = result.structuredContent
    text, *thumbnails = result.content
    assert text.type == "text" and "\n" not in text.text
    assert all(product["filename"] in text.text for product in answer["products"])
    assert [item.type for item in thumbnails] == ["image"] * len(answer["products"])
    for item, product in zip(thumbnails, answer["products"]):
        picture = Image.open(io.BytesIO(base64.b64decode(item.data)))
        assert max(picture.size) <= assistant.THUMBNAIL_SIZE and item.mimeType == f"image/{picture.format.lower()}"
        assert picture.convert("RGB").tobytes() == open_image(PICTURES / product["filename"]).tobytes()
    return answer


def assert_same_products(products: list[dict], listing: list[dict]) -> None:
    """An MCP answer's products are gradio_client's listing (top-k, distances, columns, revision), with more fields."""
    assert [product["filename"] for product in products] == [row["filename"] for row in listing]
    for product, row in zip(products, listing):
        assert {key: product[key] for key in row} == row


def data_url(path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def elsewhere(url: str) -> str:
    """`url` on another host: the app's own paths are recognised whatever the host they are given with."""
    return urlunsplit(urlsplit(ELSEWHERE)[:2] + urlsplit(url)[2:])


def gradio_command() -> str:
    """Gradio's own command (`gradio upload-mcp` serves the tool upload_file_to_gradio), beside this Python's."""
    return shutil.which("gradio", path=str(Path(sys.executable).parent)) or shutil.which("gradio") or "gradio"


def test_the_server_names_itself_and_its_tools_are_typed_and_documented(demo, client):
    listed = call_mcp(demo.url, lambda session: session.list_tools())
    tools = {tool.name: tool for tool in listed.tools}
    assert set(tools) == {"recommend", "similar", "facets"}
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for name in ("recommend", "similar"):  # the endpoints' parameters, as gradio_client calls them
        schema = tools[name].inputSchema
        parameters = [p["parameter_name"] for p in endpoints[f"/{name}"]["parameters"]]
        assert list(schema["properties"]) == parameters
        assert schema["required"] == parameters[:1]
        assert all(prop.get("description") for prop in schema["properties"].values()), schema
        assert schema["properties"]["top_k"] | {"description": ""} == {
            "type": "integer",
            "default": 5,
            "minimum": 1,
            "maximum": 20,
            "description": "",
        }
        article_type = schema["properties"]["article_type"]
        assert article_type["type"] == "array" and "Dress" in article_type["items"]["enum"]
        assert tools[name].outputSchema["properties"]["products"]["items"]["required"] == [
            "rank",
            "name",
            "details",
            "filename",
            "picture_url",
            "distance",
            "revision",
        ]
    assert tools["recommend"].description.startswith("The products of the catalogue that look most like a photo")
    assert tools["similar"].description.startswith("More like this product: ")
    assert "product" in tools["similar"].outputSchema["required"]
    assert tools["facets"].inputSchema == {"type": "object", "properties": {}}
    assert tools["facets"].outputSchema["required"] == ["catalogue", "revision", "count", "filters"]
    image = tools["recommend"].inputSchema["properties"]["image"]
    assert image["type"] == "string"
    for form in ("public http(s) URL", "data: URL", "upload_file_to_gradio", "picture_url"):
        assert form in image["description"]
    assert tools["recommend"].inputSchema["properties"]["near_duplicate_distance"]["type"] == "number"


def test_the_server_reports_its_own_name_and_version(demo):
    async def initialise():
        async with (
            httpx.AsyncClient(timeout=300) as http,
            streamable_http_client(f"{demo.url}gradio_api/mcp", http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            return await session.initialize()

    result = asyncio.run(initialise())
    assert (result.serverInfo.name, result.serverInfo.version) == ("fashion-search", fashion_search.__version__)
    assert "data: URL" in result.instructions and "facets" in result.instructions


def test_answers_are_json_equal_to_gradio_clients_with_a_line_thumbnails_and_picture_urls(demo, client, photo):
    """The JSON gives gradio_client's top-k and distances, and for each product its name, details and a picture URL
    on the app's public root (behind a proxy: the host it was asked by), naming the product and opening in a browser;
    no server path, no Python repr."""

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
    answer = answer_of(found)
    assert len(expected) == 5
    assert_same_products(answer["products"], expected)
    revision = expected[0]["revision"]
    assert {key: answer[key] for key in ("catalogue", "revision", "count")} == {
        "catalogue": "demo",
        "revision": revision,
        "count": 500,
    }
    for product in answer["products"]:
        assert product["name"] == product["productDisplayName"] and product["details"] == product["articleType"]
        assert product["picture_url"] == f"{demo.url}gradio_api/catalogue-images/{revision}/{product['filename']}"
        opened = httpx.get(product["picture_url"], timeout=30)
        assert opened.status_code == 200 and opened.headers["content-type"] == "image/png"
        assert opened.content == (PICTURES / product["filename"]).read_bytes()
    everything = json.dumps([item.model_dump() for item in found.content]) + json.dumps(answer)
    assert str(demo.log.parent) not in everything and "gradio_api/file=" not in everything
    assert "None" not in everything and "'rank'" not in everything  # JSON, not a repr

    _, expected = client.predict(
        handle_file(str(photo)), top_k=3, master_category=["Apparel"], region="20, 20, 200, 200", api_name="/recommend"
    )
    assert_same_products(answer_of(filtered)["products"], expected)
    assert {row["masterCategory"] for row in expected} == {"Apparel"}
    _, expected = client.predict("10000.png", article_type=["Dress", "Coat"], api_name="/similar")
    answer = answer_of(similar)
    assert_same_products(answer["products"], expected)
    assert {row["articleType"] for row in expected} <= {"Dress", "Coat"}
    assert answer["product"]["filename"] == "10000.png" and answer["product"]["name"].startswith("Fashion-MNIST ")

    # Behind a proxy (a Space): the URLs are on the root the assistant reached, not the app's own address.
    proxied = {"X-Forwarded-Host": "shop.example.org", "X-Forwarded-Proto": "https"}
    proxied_answer = call_mcp(
        demo.url, lambda session: session.call_tool("similar", {"filename": "10000.png", "top_k": 1}), headers=proxied
    )
    (product,) = answer_of(proxied_answer)["products"]
    assert (
        product["picture_url"]
        == f"https://shop.example.org/gradio_api/catalogue-images/{revision}/{product['filename']}"
    )


def test_facets_list_each_filter_and_its_values_and_a_filter_by_facet_gives_only_those(demo, client, photo):
    async def work(session):
        facets = await session.call_tool("facets", {})
        values = facets.structuredContent["filters"]["article_type"]["values"]
        return facets, await session.call_tool("recommend", {"image": data_url(photo), "article_type": values[3:4]})

    facets, only = call_mcp(demo.url, work)
    assert not facets.isError
    answer = facets.structuredContent
    kinds = ["Ankle boot", "Bag", "Coat", "Dress", "Pullover", "Sandal", "Shirt", "Sneaker", "T-shirt/top", "Trouser"]
    assert answer["filters"] == {
        "master_category": {"column": "masterCategory", "values": ["Accessories", "Apparel", "Footwear"]},
        "article_type": {"column": "articleType", "values": kinds},
    }
    assert (answer["catalogue"], answer["count"]) == ("demo", 500)
    (text,) = facets.content
    assert text.text.startswith("Filters of the demo catalogue (500 products, revision ")
    assert "article_type: Ankle boot, Bag, Coat, Dress," in text.text
    _, expected = client.predict(handle_file(str(photo)), article_type=["Dress"], api_name="/recommend")
    assert_same_products(answer_of(only)["products"], expected)
    assert {row["articleType"] for row in expected} == {"Dress"}


def test_a_photo_in_each_form_an_assistant_has_it(demo, client, photo):
    """A data: URL; the URL upload_file_to_gradio gives (Gradio's own `gradio upload-mcp`, over stdio); and a
    picture_url from an answer: the last two on another host (the app behind a proxy), read from the app's own upload
    cache and catalogue, never fetched nor even looked up: nothing leaves the app meanwhile. Each answers as
    gradio_client does for the same picture."""

    async def upload():
        server = StdioServerParameters(command=gradio_command(), args=["upload-mcp", demo.url, str(photo.parent)])
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("upload_file_to_gradio", {"file": str(photo)})
            assert not result.isError, result.content
            return result.content[0].text

    uploaded = asyncio.run(upload())
    assert uploaded.startswith(f"{demo.url}gradio_api/file=") and uploaded.endswith("/photo.jpg")
    _, expected = client.predict(handle_file(str(photo)), api_name="/recommend")
    shown = answer_of(call_mcp(demo.url, lambda session: session.call_tool("similar", {"filename": "10042.png"})))
    picture = shown["products"][0]
    asked = len(demo.outside.requests)

    async def work(session):
        forms = [data_url(photo), elsewhere(uploaded), elsewhere(picture["picture_url"]), picture["picture_url"]]
        return [await session.call_tool("recommend", {"image": form}) for form in forms]

    from_data, from_upload, from_picture, from_own_host = call_mcp(demo.url, work)
    assert demo.outside.requests[asked:] == []
    assert_same_products(answer_of(from_data)["products"], expected)
    assert_same_products(answer_of(from_upload)["products"], expected)
    _, expected = client.predict(handle_file(str(PICTURES / picture["filename"])), api_name="/recommend")
    for result in (from_picture, from_own_host):
        products = answer_of(result)["products"]
        assert_same_products(products, expected)
        assert products[0]["filename"] == picture["filename"] and products[0]["distance"] == 0


def test_a_photo_that_is_no_form_gets_a_message_naming_the_forms(demo, photo):
    """Not a URL, a data: URL that is not base64, and a file of the server that Gradio's file route does not serve
    (then asked of its host like any URL: here a private one, refused by the guard)."""
    refused_file = "http://10.0.0.8/gradio_api/file=" + str(demo.log)
    forms = {
        "photo.jpg": f"The photo 'photo.jpg' is not a URL. {assistant.SEND_A_PHOTO}",
        "data:image/jpeg;base64,@@@": "The photo's data: URL could not be read: it should be data:image/jpeg;base64, "
        f"then the picture's bytes in base64. {assistant.SEND_A_PHOTO}",
        refused_file: f"Could not fetch the photo at {refused_file}: {REFUSED_TO_MCP}",
    }

    async def work(session):
        return [await session.call_tool("recommend", {"image": form}) for form in forms]

    for result, message in zip(call_mcp(demo.url, work), forms.values()):
        assert result.isError and [item.text for item in result.content] == [message]


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
        assert content.text == f"Could not fetch the photo at {url}: {REFUSED_TO_MCP}"
    assert refusals == [f"Could not fetch the photo at {url}: {REFUSED}" for url in urls[:3]]
    assert len(client.predict(handle_file(str(photo)), api_name="/recommend")[1]) == 5  # and it keeps serving
    # One line in the log for each refusal, saying what it was.
    logged = demo.log.read_text().splitlines()[before:]
    line = "WARNING fashion_search.upload_image: Could not fetch the photo at {}: {}"
    assert logged == [line.format(url, REFUSED_TO_MCP) for url in urls] + [line.format(u, REFUSED) for u in urls[:3]]


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


@pytest.fixture(scope="module")
def inspector_folder():
    return inspector.install()  # a no-op where scripts/test.sh installed it


def inspect(folder, *args: str) -> dict:
    """The MCP Inspector CLI's answer (its JSON) to one request, at the URL the README gives (without the slash)."""
    done = inspector.run(folder, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_the_mcp_inspector_cli_lists_the_tools_and_gets_answers_in_each_form(demo, client, photo, inspector_folder):
    """The other client: the tools listed; the facets, then a filter by one of them; a photo as a data: URL, as the
    URL of an upload (made by the Inspector through `gradio upload-mcp`, over stdio) and as a picture_url; similar;
    each answer JSON equal to gradio_client's, whose picture URLs open."""
    url = f"{demo.url}gradio_api/mcp"
    listed = inspect(inspector_folder, url, "--method", "tools/list")
    tools = {tool["name"]: tool for tool in listed["tools"]}
    assert set(tools) == {"recommend", "similar", "facets"} and all(t["outputSchema"] for t in tools.values())

    def call(tool: str, *arguments: str) -> dict:
        given = ["--tool-arg", *arguments] if arguments else []
        result = inspect(inspector_folder, url, "--method", "tools/call", "--tool-name", tool, *given)
        assert result["isError"] is False, result
        return result

    facets = call("facets")
    dress = facets["structuredContent"]["filters"]["article_type"]["values"][3]
    found = call("recommend", f"image={data_url(photo)}", "top_k=3", f'article_type=["{dress}"]')
    _, expected = client.predict(handle_file(str(photo)), top_k=3, article_type=["Dress"], api_name="/recommend")
    assert_same_products(found["structuredContent"]["products"], expected)
    assert [item["type"] for item in found["content"]] == ["text", "image", "image", "image"]
    for product in found["structuredContent"]["products"]:
        assert httpx.get(product["picture_url"], timeout=30).content == (PICTURES / product["filename"]).read_bytes()

    uploaded = inspect(
        inspector_folder,
        gradio_command(),
        "upload-mcp",
        demo.url,
        str(photo.parent),
        "--method",
        "tools/call",
        "--tool-name",
        "upload_file_to_gradio",
        "--tool-arg",
        f"file={photo}",
    )["content"][0]["text"]
    assert uploaded.startswith(f"{demo.url}gradio_api/file=")
    _, expected = client.predict(handle_file(str(photo)), api_name="/recommend")
    assert_same_products(call("recommend", f"image={elsewhere(uploaded)}")["structuredContent"]["products"], expected)

    picture = found["structuredContent"]["products"][1]
    _, expected = client.predict(handle_file(str(PICTURES / picture["filename"])), api_name="/recommend")
    products = call("recommend", f"image={picture['picture_url']}")["structuredContent"]["products"]
    assert_same_products(products, expected)
    assert products[0]["filename"] == picture["filename"] and products[0]["distance"] == 0

    _, expected = client.predict(picture["filename"], top_k=4, api_name="/similar")
    answer = call("similar", f"filename={picture['filename']}", "top_k=4")["structuredContent"]
    assert_same_products(answer["products"], expected)
    assert answer["product"]["picture_url"] == picture["picture_url"]
