"""The app as an AI assistant's tool (MCP): photos in every form an assistant has them, answers it can read, facets.

    demo.launch(mcp_server=True, app_kwargs={"lifespan": assistant.lifespan(recommender)})

Gradio's MCP server (at /gradio_api/mcp) keeps its transport, its landing page and the tools `recommend` and `similar`
with the parameters, and the checks of them, of the endpoints of those names; this module answers tools/list and
tools/call in its place, because Gradio sends an endpoint's outputs as their Python repr. An answer here is JSON (MCP
structured content: the catalogue and revision, then each product's rank, name, details, distance, file name and
picture URL), one line of text saying what it is, and the products' thumbnails. The tool `facets` lists the values
each filter takes.

A photo is a public http(s) URL (fetched behind Gradio's guard against private addresses), a data: URL, or a URL of
this app itself, recognised by its path whatever its host (a Space sits behind a proxy) and read here, never fetched:
a file of Gradio's upload cache (what `upload_file_to_gradio` returns), under the rules of Gradio's own file route, or
a catalogue picture (an answer's picture_url), as the app's picture route serves it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import re
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import gradio as gr
from anyio.to_thread import run_sync
from gradio import route_utils, utils
from gradio.data_classes import _StaticFiles
from gradio_client.utils import is_http_url_like
from mcp import types
from PIL import Image

import fashion_search
from fashion_search import upload_image
from fashion_search.images import ROUTE
from fashion_search.imaging import ImageError, ImageSource, open_image
from fashion_search.search import MAX_K, Match
from fashion_search.snapshot import Snapshot
from fashion_search.webapp import QueryError, Recommender, describe_product

log = logging.getLogger(__name__)

SERVER_NAME = "fashion-search"
THUMBNAIL_SIZE = 256  # the largest side of a product's thumbnail in an answer, in pixels
PHOTO_FORMS = (
    "a public http(s) URL of a JPEG, PNG, WebP, GIF or BMP picture; a data: URL (data:image/jpeg;base64,...); the URL "
    "upload_file_to_gradio returns for this app (.../gradio_api/file=...); or the picture_url of a product in an "
    "answer of this app (.../gradio_api/catalogue-images/...)"
)
SEND_A_PHOTO = f"Send the photo as {PHOTO_FORMS}."
INSTRUCTIONS = (
    "Visual search in a fashion catalogue. recommend: the products that look most like a photo ("
    + PHOTO_FORMS
    + "). similar: more like one of the catalogue's products, by the filename an answer gives. facets: the values each "
    "filter takes (e.g. article_type), to ask for only some products. Answers are JSON (structured content): each "
    "product's rank, name, details, distance (0: the same picture, up to 2), filename and picture_url."
)
_UPLOADED = re.compile(r"/gradio_api/file=(?P<path>.+)$")  # Gradio's file route, as upload_file_to_gradio gives it
_PICTURE = re.compile(re.escape(ROUTE) + r"/(?P<revision>[^/]+)/(?P<name>.+)$")  # the app's picture route

_PRODUCT_FIELDS = {
    "name": {"type": "string", "description": "the product's name (its file name where the catalogue has none)"},
    "details": {"type": "string", "description": "its type, colour and gender where the catalogue has them"},
    "filename": {"type": "string", "description": "names the product: give it to similar for more like it"},
    "picture_url": {
        "type": "string",
        "description": "its picture on this app: opens in a browser, and recommend takes it as its image",
    },
}
_PRODUCT = {
    "type": "object",
    "properties": {
        "rank": {"type": "integer", "description": "1 for the nearest"},
        **_PRODUCT_FIELDS,
        "distance": {"type": "number", "description": "between the pictures: 0 for the same picture, up to 2"},
        "revision": {"type": "string", "description": "the catalogue revision it was found in"},
    },
    "required": ["rank", "name", "details", "filename", "picture_url", "distance", "revision"],
    "additionalProperties": True,  # the catalogue's own columns (articleType, baseColour, ...), where it has them
}
_CATALOGUE = {
    "catalogue": {"type": "string", "description": "the catalogue's name"},
    "revision": {"type": "string", "description": "the revision of the catalogue that answered"},
    "count": {"type": "integer", "description": "how many products the catalogue has"},
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {**_CATALOGUE, "products": {"type": "array", "items": _PRODUCT}},
    "required": [*_CATALOGUE, "products"],
}
SIMILAR_SCHEMA = {
    "type": "object",
    "properties": {
        **ANSWER_SCHEMA["properties"],
        "product": {
            "type": "object",
            "properties": _PRODUCT_FIELDS,
            "required": list(_PRODUCT_FIELDS),
            "additionalProperties": True,
            "description": "the product the others look like",
        },
    },
    "required": [*ANSWER_SCHEMA["required"], "product"],
}
FACETS_SCHEMA = {
    "type": "object",
    "properties": {
        **_CATALOGUE,
        "filters": {
            "type": "object",
            "description": "parameter of recommend and similar -> the catalogue column it filters and its values",
            "additionalProperties": {
                "type": "object",
                "properties": {"column": {"type": "string"}, "values": {"type": "array", "items": {"type": "string"}}},
                "required": ["column", "values"],
            },
        },
    },
    "required": [*_CATALOGUE, "filters"],
}
DESCRIPTIONS = {
    "recommend": "The products of the catalogue that look most like a photo, nearest first. Filters take the values "
    "the facets tool lists. Answers JSON: each product's rank, name, details, distance, filename and picture_url, "
    "with its thumbnail.",
    "similar": "More like this product: the products of the catalogue that look most like one of its own products "
    "(by the filename an answer gives), nearest first, itself left out. Answers JSON as recommend does, and the "
    "product itself.",
    "facets": "What the products of the catalogue can be filtered on: for each filter parameter of recommend and "
    'similar (e.g. article_type), the values it takes. Pass a list of them, e.g. article_type=["Dress"].',
}


def lifespan(recommender: Recommender):
    """A lifespan for Gradio's app (app_kwargs): at start, the tools of this module replace Gradio's own."""

    @contextlib.asynccontextmanager
    async def run(app):
        blocks = app.get_blocks()
        if blocks.mcp_server_obj is not None:
            Assistant(recommender, blocks, app.uploaded_file_dir).install(blocks.mcp_server_obj)
        yield

    return run


class Assistant:
    """The MCP tools recommend, similar and facets over one recommender, on Gradio's MCP server of `blocks`."""

    def __init__(self, recommender: Recommender, blocks: gr.Blocks, upload_dir: str):
        self.recommender = recommender
        self.blocks = blocks
        self.upload_dir = upload_dir
        self.gradio = None  # gradio.mcp.GradioMCPServer, once installed

    def install(self, gradio_server) -> None:
        """Answer tools/list and tools/call of `gradio_server` (Gradio's GradioMCPServer), under this app's name."""
        self.gradio = gradio_server
        server = gradio_server.mcp_server
        server.name, server.version, server.instructions = SERVER_NAME, fashion_search.__version__, INSTRUCTIONS
        server.list_tools()(self.list_tools)
        # The arguments are checked as the endpoints check theirs (against the filter values served now), not against
        # the schema of the last listing.
        server.call_tool(validate_input=False)(self.call_tool)

    # The tools' names: Gradio's for the endpoints (on a Space, prefixed with its name), and facets beside them.
    def _names(self) -> dict[str, str]:
        """tool name -> "recommend", "similar" or "facets"."""
        names = {tool: endpoint.lstrip("/") for tool, endpoint in self.gradio.tool_to_endpoint.items()}
        names = {tool: kind for tool, kind in names.items() if kind in ("recommend", "similar")}
        return {**names, self.gradio.tool_prefix + "facets": "facets"}

    async def list_tools(self) -> list[types.Tool]:
        selected = self.gradio.get_selected_tools_from_request()
        tools = []
        for name, kind in self._names().items():
            if selected is not None and name not in selected:
                continue
            schema = {"type": "object", "properties": {}} if kind == "facets" else self._input_schema(name, kind)
            output = {"recommend": ANSWER_SCHEMA, "similar": SIMILAR_SCHEMA, "facets": FACETS_SCHEMA}[kind]
            tools.append(
                types.Tool(
                    name=name,
                    title={"recommend": "Search by photo", "similar": "More like this product"}.get(kind, "Filters"),
                    description=DESCRIPTIONS[kind],
                    inputSchema=schema,
                    outputSchema=output,
                    annotations=types.ToolAnnotations(readOnlyHint=True, openWorldHint=kind == "recommend"),
                )
            )
        return tools

    def _input_schema(self, name: str, kind: str) -> dict:
        """Gradio's schema of the endpoint's parameters, with the photo's forms, top_k's range and the filter values
        of the revision served now."""
        _, descriptions = self.gradio.get_fn_description(self._endpoint(kind), name)
        schema, _ = self.gradio.get_input_schema(name, descriptions)
        properties = schema["properties"]
        if "image" in properties:
            properties["image"] = {"type": "string", "description": f"the photo of a product: {PHOTO_FORMS}"}
        properties["top_k"].update(minimum=1, maximum=MAX_K)
        choices = self.recommender.filter_choices
        for parameter, column in self.recommender.filter_columns.items():
            properties[parameter]["items"]["enum"] = choices.get(column, [])
        return schema

    def _endpoint(self, kind: str):
        return self.gradio.get_block_fn_from_endpoint_name("/" + kind)

    async def call_tool(self, name: str, arguments: dict):
        """A tool's answer: (content, structured content), or an error result with a message for the assistant."""
        kind = self._names().get(name)
        try:
            if kind is None:
                raise QueryError(f"No tool {name!r}: this server's tools are {', '.join(self._names())}.")
            snapshot = self.recommender.snapshot  # read once: the whole answer comes from this revision
            if kind == "facets":
                self._values(kind, name, arguments)
                return facets(snapshot, self.recommender.filter_columns)
            values = self._values(kind, name, arguments)
            filters = {column: values[parameter] for parameter, column in self.recommender.filter_columns.items()}
            k = int(values["top_k"])
            if kind == "recommend":
                photo = await self.photo(values["image"])
                gap, region = float(values["near_duplicate_distance"] or 0), values["region"]
                matches = await run_sync(lambda: self.recommender.recommend(photo, k, filters, gap, region, snapshot))
                product, about = None, "the photo"
            else:
                filename = values["filename"]
                product, matches = await run_sync(lambda: self.recommender.similar(filename, k, filters, snapshot))
                about = f"{describe_product(product)[0]} ({product.filename})"
            root = self._root_url()
            return await run_sync(lambda: answer(matches, snapshot, root, about, product))
        except (gr.Error, QueryError) as exc:
            message = exc.message if isinstance(exc, gr.Error) else str(exc)
            return types.CallToolResult(content=[types.TextContent(type="text", text=message)], isError=True)

    def _values(self, kind: str, name: str, arguments: dict) -> dict:
        """The endpoint's parameters -> their values, defaults filled in and checked by the endpoint's own inputs
        (the photo as it was given: see photo)."""
        if kind == "facets":
            parameters, inputs = [], []
        else:
            block_fn = self._endpoint(kind)
            parameters = self.gradio.api_info["named_endpoints"]["/" + kind]["parameters"]
            inputs = block_fn.inputs
        names = [parameter["parameter_name"] for parameter in parameters]
        unknown = [key for key in arguments if key not in names]
        if unknown:
            takes = f"its parameters are {', '.join(names)}" if names else "it takes no parameters"
            raise QueryError(f"{name} has no parameter {unknown[0]!r}: {takes}.")
        values = {}
        for parameter, component in zip(parameters, inputs):
            key = parameter["parameter_name"]
            if key not in arguments and not parameter.get("parameter_has_default"):
                raise QueryError(f"{name} needs {key}.")
            value = arguments.get(key, parameter.get("parameter_default"))
            values[key] = value if isinstance(component, gr.Image) else component.preprocess(value)
        return values

    def _root_url(self) -> str:
        """The app's public root URL, as Gradio computes it for the MCP request being answered (proxies included)."""
        request = self.gradio.mcp_server.request_context.request
        route = self.gradio.get_route_path(request)
        return route_utils.get_root_url(request=request, route_path=route, root_path=self.gradio.root_path)

    async def photo(self, value) -> ImageSource:
        """The photo of a recommend call, in any of PHOTO_FORMS: its bytes, or a file holding them.

        Raises:
            gr.Error: not a photo in one of those forms, or a URL that was refused or could not be fetched.
        """
        if not isinstance(value, str) or not value.strip():
            raise gr.Error(f"No photo. {SEND_A_PHOTO}", print_exception=False)
        value = value.strip()
        if value[:5].lower() == "data:":
            return self._data_url(value)
        if not is_http_url_like(value):
            shown = value if len(value) <= 100 else value[:100] + "…"
            raise gr.Error(f"The photo {shown!r} is not a URL. {SEND_A_PHOTO}", print_exception=False)
        found = self.own_photo(value)
        if found is not None:
            return found
        photo = self._endpoint("recommend").inputs[0]
        return await upload_image.fetch_photo(photo, value, SEND_A_PHOTO)

    def own_photo(self, url: str, depth: int = 0) -> ImageSource | None:
        """The photo at a URL of this app, read here: a file Gradio's file route serves, or a catalogue picture; None
        for any other URL (or one of those paths that names nothing here)."""
        path = urlsplit(url).path
        uploaded = _UPLOADED.search(path)
        if uploaded:
            inner = unquote(uploaded["path"])
            if is_http_url_like(inner):  # gradio_client's form of an outside URL: the URL itself
                return self.own_photo(inner, depth + 1) if depth == 0 else None
            return self._served_file(inner)
        picture = _PICTURE.search(path)
        if picture:
            return self._catalogue_picture(picture["revision"], unquote(picture["name"]))
        return None

    def _served_file(self, path: str) -> str | None:
        """`path` if Gradio's file route would serve it (its own rules: route_utils.file_fetch), else None."""
        try:
            file = utils.abspath(path)
            if not file.is_file():
                return None
        except (OSError, ValueError):
            return None
        allowed, _ = utils.is_allowed_file(
            file,
            blocked_paths=self.blocks.blocked_paths,
            allowed_paths=self.blocks.allowed_paths + _StaticFiles.all_paths,
            created_paths=[self.upload_dir, str(utils.get_cache_folder())],
        )
        return str(file) if allowed else None

    def _catalogue_picture(self, revision: str, name: str) -> bytes | None:
        """The picture the route serves at `revision`/`name`; for a revision no longer served, the product's picture in
        the revision served now (where the route redirects)."""
        try:
            found = self.recommender.picture(revision, name)
            if found is None:
                snapshot = self.recommender.snapshot
                row = snapshot.row_of(name)
                return None if row is None else snapshot.images.read(row)
            return found[0]
        except OSError:
            return None

    def _data_url(self, value: str) -> bytes:
        header, comma, data = value.partition(",")
        limit = self.blocks.max_file_size
        try:
            if not comma:
                raise ValueError("no comma")
            if header.lower().endswith(";base64"):
                decoded = base64.b64decode(re.sub(r"\s+", "", unquote(data)), validate=True)
            else:
                decoded = unquote_to_bytes(data)
        except (ValueError, binascii.Error):
            raise gr.Error(
                "The photo's data: URL could not be read: it should be data:image/jpeg;base64, then the picture's "
                f"bytes in base64. {SEND_A_PHOTO}",
                print_exception=False,
            ) from None
        if limit is not None and len(decoded) > limit:
            raise gr.Error(f"The photo is over the app's limit of {limit:,} bytes.", print_exception=False)
        return decoded


def product_fields(match: Match, snapshot: Snapshot, root_url: str, found: bool = True) -> dict:
    """What an answer says of a product: rank, name, details, distance, file name, picture URL and revision (`found`:
    a result, not the product of a similar call), then the catalogue's own columns (the API's listing has them all)."""
    name, details = describe_product(match)
    listing = match.listing()  # rank, filename, distance, the columns
    url = root_url + snapshot.images.route_path(match.row)
    fields = {"rank": listing.pop("rank"), "name": name, "details": details, "distance": listing.pop("distance")}
    fields = fields if found else {"name": name, "details": details}
    fields.update(filename=listing.pop("filename"), picture_url=url)
    if found:
        fields["revision"] = snapshot.revision
    return {**fields, **{key: value for key, value in listing.items() if key not in fields}}


def answer(
    matches: list[Match], snapshot: Snapshot, root_url: str, about: str, product: Match | None = None
) -> tuple[list, dict]:
    """(a line of text and the products' thumbnails, the JSON) of a recommend or similar answer."""
    products = [product_fields(match, snapshot, root_url) for match in matches]
    structured = {**catalogue_fields(snapshot), "products": products}
    if product is not None:
        structured["product"] = product_fields(product, snapshot, root_url, found=False)
    found = "; ".join(
        f"{p['rank']}. {p['name']}" + (f" ({p['details']})" if p["details"] else "") + f", {p['filename']}, "
        f"distance {p['distance']:.3f}"
        for p in products
    )
    line = (
        f"The {len(products)} products most like {about} in {catalogue_words(snapshot)}, nearest first: {found}. "
        "The JSON gives each one's picture_url."
    )
    content: list = [types.TextContent(type="text", text=line)]
    for match in matches:
        picture = thumbnail(snapshot, match.row)
        if picture is not None:
            content.append(types.ImageContent(type="image", data=picture[0], mimeType=picture[1]))
    return content, structured


def facets(snapshot: Snapshot, filter_columns: dict[str, str]) -> tuple[list, dict]:
    """(a line of text, the JSON) of the facets tool: each filter parameter, its column and its values now."""
    choices = snapshot.filter_choices
    filters = {name: {"column": column, "values": choices.get(column, [])} for name, column in filter_columns.items()}
    shown = "; ".join(f"{parameter}: {', '.join(entry['values'])}" for parameter, entry in filters.items())
    line = f"Filters of {catalogue_words(snapshot)} (parameter: values): {shown or 'none'}."
    return [types.TextContent(type="text", text=line)], {**catalogue_fields(snapshot), "filters": filters}


def catalogue_fields(snapshot: Snapshot) -> dict:
    info = snapshot.info
    return {"catalogue": info.name, "revision": snapshot.revision, "count": info.count}


def catalogue_words(snapshot: Snapshot) -> str:
    info = snapshot.info
    name = "the demo catalogue" if info.source == "demo" else f"the catalogue {info.name}"
    return f"{name} ({info.count:,} products, revision {snapshot.revision[:12]})"


def thumbnail(snapshot: Snapshot, row: int) -> tuple[str, str] | None:
    """(base64, media type) of the product's picture at most THUMBNAIL_SIZE pixels a side; None if it cannot be read."""
    try:
        data = snapshot.images.read(row)
        with Image.open(io.BytesIO(data)) as peek:
            jpeg = peek.format == "JPEG"
        picture = open_image(data)
    except (OSError, ImageError, ValueError) as exc:
        log.warning("No thumbnail for %s: %s", snapshot.bundle.filenames[row], exc)
        return None
    picture.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG" if jpeg else "PNG", **({"quality": 85} if jpeg else {}))
    return base64.b64encode(buffer.getvalue()).decode("ascii"), "image/jpeg" if jpeg else "image/png"
