"""Fashion visual search, the Gradio app: upload a photo of a product, see the most similar products of a catalogue.

Usage:
    python app.py                                   # the embedded Fashion-MNIST demo catalogue, ImageNet weights
    python app.py --catalog bundles/kaggle          # a bundle made by precompute.py (or FASHION_CATALOG=...)
    python app.py --catalog OWNER/NAME@REVISION     # a bundle on the Hugging Face Hub
    python app.py --weights resnet50_notop.h5       # weights from a file when the ImageNet download is not possible
    GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=7860 python app.py

From Python:
    from gradio_client import Client, handle_file
    gallery, listing = Client("http://127.0.0.1:7860/").predict(handle_file("photo.jpg"), api_name="/recommend")

As an MCP server (tools `recommend`, `similar` and `facets`): http://127.0.0.1:7860/gradio_api/mcp
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import sys
from pathlib import Path

import gradio as gr

from fashion_search import assistant, config, image_route, webapp
from fashion_search import demo as demo_assets
from fashion_search.imaging import ImageError, open_image
from fashion_search.search import DEFAULT_K, MAX_K
from fashion_search.upload_image import UploadedImage

# Drawing the region box on the photo: pointer events in the browser fill the region field with image pixels.
REGION_JS = (Path(__file__).parent / "fashion_search" / "region_box.js").read_text()
# The page: title, a short description, and the products as cards.
CSS = """
.gradio-container {max-width: min(1200px, 100%) !important; margin: auto; box-sizing: border-box;}
#products .grid-wrap.fixed-height, #products .gallery-container {max-height: none; height: auto; overflow: visible;}
#products .grid-container {grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)) !important;}
@media (max-width: 480px) {#products .grid-container {grid-template-columns: repeat(2, minmax(0, 1fr)) !important;}}
#products .thumbnail-item.thumbnail-lg {aspect-ratio: auto; height: auto; display: flex; flex-direction: column;
                                        background: #fff;}
#products .thumbnail-lg > img {aspect-ratio: 1; height: auto; object-fit: contain; padding: 10px;}
#products .caption-label {position: static; max-width: none; white-space: pre-line; text-align: left; border: none;
                          border-top: 1px solid var(--border-color-primary); border-radius: 0; font-size: .8rem;
                          line-height: 1.3; padding: 6px 10px;}
#query .region-box {position: absolute; box-sizing: border-box; border: 3px solid #f0a020;
                    background: rgba(240, 160, 32, .18); pointer-events: none; display: none;}
#query img {touch-action: none; cursor: crosshair;}
/* The photo's label in the flow, above the picture and clear of its buttons (it names a clicked result, at length). */
#query {height: auto !important;}
#query > label[data-testid="block-label"] {position: relative; max-width: calc(100% - 84px); white-space: normal;}
#query .image-container {height: 300px;}
/* A small picture is drawn up to its frame, so a box can be dragged on it precisely (region_box.js keeps it sharp). */
#query .image-frame {width: 100%; height: 100%;}
#query .image-frame img {width: 100%; height: 100%; object-fit: contain;}
#query .image-frame img.upscaled {image-rendering: pixelated;}
#products .grid-wrap {padding-top: 2.4rem;}
#options .label-wrap {gap: .75rem; text-align: left;}
/* A phone: the examples right under the photo, then the options and buttons, then the results. */
@media (max-width: 640px) {
  .row:has(> .column #query), .row:has(> .column #query) > .column:has(#query), .column:has(> #query) {
    display: contents;
  }
  #query {order: 1;}
  .block:has(> .gallery > .gallery-item) {order: 2;}
  #options {order: 3;}
  .column:has(> .column > #query) > .row {order: 4;}
  .row:has(> .column #query) > .column:has(#products) {order: 5;}
  .row:has(> .column #query) ~ .block:not(:has(.gallery-item)) {order: 6;}
}
.random-weights {background: #fff4e5; border: 1px solid #f0a020; border-radius: 8px; padding: .6rem .9rem;
                 color: #7a4100; font-weight: 600;}
"""

# Gradio scopes `css` to the page's blocks; its footer's "Use via API or MCP", which it hides on a phone, is shown here.
HEAD = (
    "<style>@media (max-width: 640px) {footer .show-api, footer .show-api-divider {display: flex !important;}}</style>"
)

FILTER_LABELS = {
    "gender": "Gender",
    "masterCategory": "Category",
    "articleType": "Article type",
    "baseColour": "Colour",
}


def description(info: webapp.CatalogueInfo) -> str:
    catalogue = "the Fashion-MNIST demo catalogue" if info.source == "demo" else f"the catalogue <b>{info.name}</b>"
    text = (
        "Upload a photo of a garment, a shoe or a bag — or take one with your webcam, or paste one — and see the most "
        f"similar of the {info.count:,} products in {catalogue}, nearest first."
    )
    if info.source != "demo" and info.revision:
        since = info.live_since.replace("T", " ").replace("+00:00", " UTC")
        text += f" Revision <code>{info.revision[:12]}</code>, live since {since}."
    if info.search:
        text += f" Searched with an {info.search}."
    if info.precision != "float32":
        text += f" The model runs in {info.precision}: faster, with results close to float32's but not always the same."
    if info.random_weights:
        text = (
            '<p class="random-weights">⚠ This app runs with random model weights '
            f"({settings.weights_given or 'FASHION_WEIGHTS=random'}): "
            "the results are not meaningful.</p>" + text
        )
    return text


def article(info: webapp.CatalogueInfo) -> str:
    return (
        "Distance: between the pictures' ResNet50 embeddings (unit vectors), from 0 for the same picture up to 2. "
        'Also an API: `Client(url).predict(handle_file("photo.jpg"), api_name="/recommend")` returns the gallery '
        "and a JSON listing; AI assistants call the same as MCP tools at `/gradio_api/mcp/`."
        + (" Demo catalogue and examples: Fashion-MNIST, © Zalando SE, MIT licence." if info.source == "demo" else "")
    )


PHOTO_LABEL = "Your photo (drag a box to search part of it)"
MAX_CHOICES_SHOWN = 12  # a refused filter value's message lists at most this many of the accepted values
# The endpoints' docstrings: Gradio's MCP server describes the tools and their parameters with them ({filters}: one
# line per filter of the catalogue). Types and choices come from the components.
RECOMMEND_DOC = """The products of the catalogue that look most like a photo, nearest first.

Args:
    image: the photo of a product: a public http(s) URL of a JPEG, PNG, WebP, GIF or BMP picture, or a data: URL
    top_k: how many products to return, from 1 to 20 (default 5)
{filters}
    near_duplicate_distance: leave out a product closer than this to a better result, from 0 to 0.5 (default 0: none)
    region: search only this part of the photo: "left, top, right, bottom" in its pixels (default "": the whole photo)
Returns:
    the products' pictures with their captions, and a listing: rank, filename, distance and the product's details
"""
SIMILAR_DOC = """The products of the catalogue that look most like one of its products, nearest first, itself left out.

Args:
    filename: the product, by its filename as a listing of recommend or similar gives it
    top_k: how many products to return, from 1 to 20 (default 5)
{filters}
Returns:
    the products' pictures with their captions, and a listing: rank, filename, distance and the product's details
"""


class KeepPage(Exception):
    """A request from the page was refused and its message shown: the page keeps what it shows (answer)."""


def answer(call):
    """`call()`'s result; a QueryError becomes the message the page and the API show (no traceback in the log).

    An API or MCP caller gets it as an error. On the page it shows once, as a notice, and KeepPage is raised so the
    handler leaves the results and their labels as they were (a Gradio error would blank them and mark them "Error")."""
    try:
        return call()
    except webapp.QueryError as exc:
        if not asked_by_the_page():
            raise gr.Error(str(exc), print_exception=False) from None
        gr.Warning(str(exc), title="Cannot search")
        raise KeepPage from None


def asked_by_the_page() -> bool:
    """Whether the event being answered was sent by this app's page: Gradio's front end marks its calls with the
    header x-gradio-user: app (gradio_client and Gradio's JS client send "api", its MCP server "mcp")."""
    from gradio.context import LocalContext

    request = LocalContext.request.get(None)
    return (getattr(request, "headers", None) or {}).get("x-gradio-user") == "app"


def api_signature(fn, documentation: str, leading: list[str], filters: dict[str, str], trailing: dict) -> None:
    """Give `fn` the API's parameters and their documentation: Gradio names the endpoint's parameters (and the MCP
    tool's) from inspect.signature, which reads __signature__, and describes them from the docstring's Args.

    `filters`: the API's name of each filter -> its column; `trailing`: parameters after the filters -> defaults."""
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    defaults = {"top_k": DEFAULT_K, **{name: [] for name in filters}, **trailing}
    fn.__signature__ = inspect.Signature(
        [
            inspect.Parameter(name, keyword, **({"default": defaults[name]} if name in defaults else {}))
            for name in [*leading, "top_k", *filters, *trailing]
        ]
    )
    line = "    {}: only products whose {} is any of these (default []: all)"
    lines = [line.format(name, column) for name, column in filters.items()]
    fn.__doc__ = documentation.format(filters="\n".join(lines))


def refuse_quietly(component, name: str, choices=None) -> None:
    """A value Gradio's own check of `component` refuses (a number outside a slider's range, a value not among a
    dropdown's choices, a value of the wrong type) gets a message naming the parameter, and no traceback in the log.
    A multiselect dropdown also takes a single value for a list of one, and, given `choices()` (the values of the
    catalogue served now, which may have changed since the page was built), is checked against those instead."""
    check = component.preprocess

    def preprocess(payload):
        if choices is not None:
            values = [] if payload is None else payload if isinstance(payload, list) else [payload]
            allowed = choices()
            if not all(isinstance(value, str) and value in allowed for value in values):
                raise gr.Error(refusal(component, name, payload, allowed), print_exception=False)
            return values
        try:
            value = check(payload)
        except Exception:
            raise gr.Error(refusal(component, name, payload), print_exception=False) from None
        if isinstance(component, gr.Slider) and component.precision == 0 and value != payload:  # 2.5 would become 2
            raise gr.Error(refusal(component, name, payload), print_exception=False)
        multiselect = isinstance(component, gr.Dropdown) and component.multiselect
        return [value] if multiselect and isinstance(value, (str, int, float)) else value

    component.preprocess = preprocess


def refusal(component, name: str, payload, choices: list | None = None) -> str:
    """The message for a value `component` refused (`choices`: a dropdown's accepted values, if not its own)."""
    if isinstance(component, gr.Slider):
        whole = component.precision == 0 and isinstance(payload, float) and not payload.is_integer()
        number = "a whole number" if whole else "a number"
        return f"{name} must be {number} from {component.minimum:g} to {component.maximum:g}; got {payload!r}."
    if isinstance(component, gr.Dropdown):
        choices = choices if choices is not None else [value for _, value in component.choices]
        given = payload if isinstance(payload, list) else [payload]
        wrong = next((value for value in given if value not in choices), payload)
        shown = ", ".join(map(repr, choices[:MAX_CHOICES_SHOWN])) + (", …" if len(choices) > MAX_CHOICES_SHOWN else "")
        return f"{wrong!r} is not a value of {name}: give a list of values among {shown}."
    return f"{name} cannot take {payload!r}."


def refuse_missing_inputs(demo: gr.Blocks) -> None:
    """A call over raw HTTP that sends fewer inputs than the endpoint takes gets a message naming them all, and no
    traceback in the log (Gradio's own check answers {"error": null} and logs one). gradio_client and MCP send all."""
    check = demo.validate_inputs

    def validate_inputs(block_fn, inputs):
        try:
            check(block_fn, inputs)
        except ValueError:
            names = list(inspect.signature(block_fn.fn).parameters) if block_fn.fn else []
            wanted = len(block_fn.inputs)
            order = f", in this order: {', '.join(names)}" if len(names) == wanted else ""
            raise gr.Error(
                f"/{block_fn.api_name} takes {wanted} inputs, every one of them{order}; got {len(inputs)}.",
                print_exception=False,
            ) from None

    demo.validate_inputs = validate_inputs


def build_demo(recommender: webapp.Recommender) -> gr.Interface:
    """The page and the `/recommend` endpoint: a photo, then the options (number of results, one filter per column)."""
    filter_names = list(recommender.filter_columns)  # the API's names (snake_case) of the catalogue's filter columns

    def recommend(image: str | None, top_k: float = DEFAULT_K, *options) -> tuple[list, list[dict]]:
        # One request: the uploaded file -> (gallery of (image, caption), listing of {rank, filename, ...}).
        # `options`: one list of chosen values per filter, then the near-duplicate distance (0: off), then the region
        # of the photo to search ("left, top, right, bottom" in pixels; empty: the whole photo). Documented below.
        filters, extra = options[: len(filter_names)], options[len(filter_names) :]
        gap, region = (*extra, *(0.0, "")[len(extra) :])
        chosen = {recommender.filter_columns[name]: values for name, values in zip(filter_names, filters)}
        snapshot = recommender.snapshot  # read once: the whole answer comes from this revision

        def search():
            return recommender.recommend(image, int(top_k), chosen, float(gap or 0), region, snapshot)

        try:
            return served(answer(search), snapshot)
        except KeepPage:
            return gr.skip(), gr.skip()

    trailing = {"near_duplicate_distance": 0.0, "region": ""}
    api_signature(recommend, RECOMMEND_DOC, ["image"], recommender.filter_columns, trailing)
    photo = UploadedImage(
        type="filepath",
        image_mode=None,
        format="png",  # a base64 data URL from an API client is written losslessly (Gradio's default is WebP)
        sources=["upload", "webcam", "clipboard"],
        label=PHOTO_LABEL,
        elem_id="query",
    )
    filters = {
        name: gr.Dropdown(
            values,
            value=[],
            multiselect=True,
            label=FILTER_LABELS.get(column, column),
            info="any of these; empty = all",
        )
        for name, (column, values) in zip(filter_names, recommender.filter_choices.items())
    }
    gallery = gr.Gallery(
        label="Similar products",
        columns=3,
        object_fit="contain",
        height="auto",
        allow_preview=False,  # a click on a product searches with it (more like this) instead of enlarging it
        elem_id="products",
    )
    results = gr.JSON(label="Results", max_height=260)
    top_k = gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, precision=0, label="Number of results")
    near_duplicates = gr.Slider(
        0,
        webapp.MAX_GAP,
        value=0,
        step=0.01,
        label="Hide near-duplicates",
        info="leave out a product closer than this to a better result (distance; 0 = show all)",
    )
    region = gr.Textbox(
        "",  # an initial value makes the API parameter optional
        label="Region of the photo",
        placeholder="left, top, right, bottom (pixels)",
        info="only this part of the photo is searched: drag a box on the photo, or type it; empty = the whole photo",
        elem_id="region",
    )
    refuse_quietly(top_k, "top_k")
    for name, dropdown in filters.items():
        column = recommender.filter_columns[name]
        refuse_quietly(dropdown, name, lambda column=column: recommender.filter_choices.get(column, []))
    refuse_quietly(near_duplicates, "near_duplicate_distance")
    refuse_quietly(region, "region")
    demo = gr.Interface(
        fn=recommend,
        inputs=photo,
        outputs=[gallery, results],
        additional_inputs=[top_k, *filters.values(), near_duplicates, region],
        additional_inputs_accordion=gr.Accordion(
            "Options: number of results, filters, region", open=False, elem_id="options"
        ),
        examples=[[str(path)] for path in demo_assets.example_images()],
        cache_examples=False,  # a query costs well under a second; cached results would ignore the options
        title="Fashion visual search",
        description=(text := description(recommender.info)),
        article=article(recommender.info),
        api_name="recommend",
        flagging_mode="never",
        concurrency_limit=webapp.MAX_BATCH_SIZE,  # concurrent requests share forward passes and searches
    )
    add_more_like_this(demo, recommender, photo, gallery, results, top_k, filters)

    def search_example(image: str | None, top_k: float, *options):
        """An example clicked: its photo searched at once, whole (a box drawn on the last photo does not apply)."""
        return recommend(image, top_k, *options, "")

    with demo:  # not cached: cached results would ignore the options, and go stale when the catalogue changes
        demo.examples_handler.load_input_event.then(
            search_example,
            [photo, top_k, *filters.values(), near_duplicates],
            [gallery, results],
            api_visibility="private",
            concurrency_limit=webapp.MAX_BATCH_SIZE,
        )

    def check_upload(image: str | None):
        """A file dropped on the photo that is not a picture is refused at once, with the message the API gives."""
        try:
            if image is not None:
                open_image(image)
        except ImageError as exc:
            gr.Warning(str(exc))
            return None
        return gr.skip()

    def page():
        """A new visitor sees the catalogue served now: its description and filter values (after a swap)."""
        snapshot = recommender.snapshot
        choices = snapshot.filter_choices
        columns = recommender.filter_columns
        return (
            description(snapshot.info),
            *(gr.Dropdown(choices=choices.get(columns[name], [])) for name in filters),
        )

    def name_query(image: str | None):
        """The photo's label: the product's name when the photo is a result clicked for more like it."""
        product = recommender.product_at(image)
        if product is None:
            return gr.Image(label=PHOTO_LABEL)
        name, details = webapp.describe_product(product)
        return gr.Image(label=f"More like this: {name}" + (f" · {details}" if details else ""))

    intro = next(block for block in demo.blocks.values() if isinstance(block, gr.Markdown) and block.value == text)
    with demo:
        demo.load(page, None, [intro, *filters.values()], api_visibility="private", queue=False)
        photo.upload(check_upload, photo, photo, api_visibility="private", concurrency_limit=webapp.MAX_BATCH_SIZE)
        photo.change(name_query, photo, photo, api_visibility="private", queue=False)
        # A new photo (an upload, or a clicked result) is searched whole until a box is drawn on it; the click that
        # ends a drag on the photo copies the box fashion_search/region_box.js keeps into the region input.
        photo.change(None, outputs=region, js="() => ''", api_visibility="private")
        photo.select(
            None,
            outputs=region,
            js="() => document.querySelector('#query').dataset.region || ''",
            api_visibility="private",
        )
    refuse_missing_inputs(demo)
    return demo


def served(matches, snapshot) -> tuple[list, list[dict]]:
    """An answer's gallery (pictures and captions) and JSON listing, naming the revision it came from."""
    return webapp.gallery_items(matches, snapshot.images, image_route.root_url()), webapp.listing(
        matches, snapshot.revision
    )


def add_more_like_this(demo, recommender, photo, gallery, results, top_k, filters: dict) -> None:
    """`/similar` (a product's filename -> the products most like it), and a click on a result doing the same.

    `filters`: the API's name of each filter -> its dropdown."""
    columns = recommender.filter_columns

    def similar(filename: str, top_k: float = DEFAULT_K, *chosen: list[str]) -> tuple[list, list[dict]]:
        # Documented below, with its parameters: one list of chosen values per filter after top_k.
        wanted = {columns[name]: values for name, values in zip(filters, chosen)}
        snapshot = recommender.snapshot
        _, matches = answer(lambda: recommender.similar(filename, int(top_k), wanted, snapshot))
        return served(matches, snapshot)

    api_signature(similar, SIMILAR_DOC, ["filename"], columns, {})

    def clicked(event: gr.SelectData, listing: list[dict], top_k: float, *chosen: list[str]):
        """A click on a result: that product becomes the query, and its neighbours the results."""
        filename = listing[event.index]["filename"]
        wanted = {columns[name]: values for name, values in zip(filters, chosen)}
        snapshot = recommender.snapshot
        try:
            product, matches = answer(lambda: recommender.similar(filename, int(top_k), wanted, snapshot))
        except KeepPage:
            return gr.skip(), gr.skip(), gr.skip()
        pictures, listing = served(matches, snapshot)
        # The new results start with none selected (Gradio would keep the clicked position highlighted).
        return (
            image_route.photo_file(snapshot.images, product.row, photo.GRADIO_CACHE),
            gr.Gallery(pictures, selected_index=None),
            listing,
        )

    with demo:
        product = gr.Textbox(visible=False, label="filename")
        api_only = gr.Button(visible=False)
        api_only.click(
            similar,
            inputs=[product, top_k, *filters.values()],
            outputs=[gallery, results],
            api_name="similar",
            concurrency_limit=webapp.MAX_BATCH_SIZE,
        )
        gallery.select(
            clicked,
            inputs=[results, top_k, *filters.values()],
            outputs=[photo, gallery, results],
            api_visibility="private",
            concurrency_limit=webapp.MAX_BATCH_SIZE,
        )


# Loaded once, at import: Gradio (and a Space) look for this module's `demo`.
settings = config.resolve(sys.argv[1:] if __name__ == "__main__" else [])
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up self-checks are not news
logging.getLogger("mcp").setLevel(logging.WARNING)  # nor the MCP server's start and each request it receives
try:
    recommender = webapp.load_recommender(settings)
except webapp.StartupError as exc:
    if __name__ != "__main__":
        raise
    sys.exit(f"error: {exc}")
# The gallery's pictures are served by the file route of launch_options (fashion_search.image_route), by revision and
# name, not copied into Gradio's cache per answer, and no other file of the bundle (static paths: none).
gr.set_static_paths(recommender.images.static_paths)
demo = build_demo(recommender)


def launch_options() -> dict:
    """What launch() needs besides the address: upload limit, sessions kept, look."""
    return {
        "max_file_size": webapp.MAX_UPLOAD,
        "state_session_capacity": webapp.SESSION_CAPACITY,
        "css": CSS,
        "js": REGION_JS,
        "head": HEAD,
        # The file route of the catalogue's pictures, before Gradio's own routes.
        # The MCP tools' answers and facets (fashion_search.assistant), in place of Gradio's, from the start.
        "app_kwargs": {
            "routes": image_route.routes(recommender.picture, recommender.picture_now),
            "lifespan": assistant.lifespan(recommender),
        },
        # Also an MCP server: the tools recommend, similar and facets at /gradio_api/mcp (the gradio[mcp] extra).
        "mcp_server": True,
        # System fonts: the page asks no third party for anything.
        "theme": gr.themes.Default(primary_hue="neutral", font=["ui-sans-serif", "system-ui", "sans-serif"]),
        # SSR is left to GRADIO_SSR_MODE, as Gradio does: on for Spaces, tested that way in tests/test_browser.py.
    }


# Gradio's start-up advice, which no user of app.py can follow; replaced by what they can do, or dropped on a Space.
SHARE_ADVICE = "* To create a public link, set `share=True` in `launch()`."
OTHER_MACHINES = "* To open it from other machines: --host 0.0.0.0, or deploy it as a Space (see the README)."


def launch(demo: gr.Blocks, **options) -> None:
    """demo.launch(**options) until stopped, its start-up lines printed as Gradio prints them but SHARE_ADVICE."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            demo.launch(**options, prevent_thread_lock=True)
    finally:
        local = getattr(demo, "server_name", None) in ("127.0.0.1", "localhost") and not demo.space_id
        advice = OTHER_MACHINES if local else None
        lines = [advice if line == SHARE_ADVICE else line for line in printed.getvalue().splitlines()]
        # One write: a reader of the log who sees the first line sees the block (the server already answers).
        sys.stdout.write("".join(f"{line}\n" for line in lines if line is not None))
        sys.stdout.flush()
    demo.block_thread()


if __name__ == "__main__":
    address = {"server_name": settings.server_name, "server_port": settings.server_port}
    # Unset flags are left out, so Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT apply (as on a Space).
    launch(demo, **{key: value for key, value in address.items() if value is not None}, **launch_options())
