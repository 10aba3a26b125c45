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
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path

import gradio as gr

from fashion_search import config, webapp
from fashion_search import demo as demo_assets
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
.random-weights {background: #fff4e5; border: 1px solid #f0a020; border-radius: 8px; padding: .6rem .9rem;
                 color: #7a4100; font-weight: 600;}
"""


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
    if info.precision != "float32":
        text += f" The model runs in {info.precision}: faster, with results close to float32's but not always the same."
    if info.random_weights:
        text = (
            '<p class="random-weights">⚠ This app runs with random model weights (FASHION_WEIGHTS=random): '
            "the results are not meaningful.</p>" + text
        )
    return text


def article(info: webapp.CatalogueInfo) -> str:
    return (
        "Distance: between the pictures' ResNet50 embeddings (unit vectors), from 0 for the same picture up to 2. "
        'Also an API: `Client(url).predict(handle_file("photo.jpg"), api_name="/recommend")` returns the gallery '
        "and a JSON listing."
        + (" Demo catalogue and examples: Fashion-MNIST, © Zalando SE, MIT licence." if info.source == "demo" else "")
    )


def answer(call):
    """`call()`'s result; a QueryError becomes the message the page and the API show (no traceback in the log)."""
    try:
        return call()
    except webapp.QueryError as exc:
        raise gr.Error(str(exc), print_exception=False) from None


def build_demo(recommender: webapp.Recommender) -> gr.Interface:
    """The page and the `/recommend` endpoint: a photo, then the options (number of results, one filter per column)."""
    filter_columns = list(recommender.filter_choices)

    def recommend(image: str | None, top_k: float = DEFAULT_K, *options) -> tuple[list, list[dict]]:
        """One request: the uploaded file -> (gallery of (image, caption), listing of {rank, filename, ...}).

        `options`: one list of chosen values per filter column, then the near-duplicate distance (0: off), then the
        region of the photo to search ("left, top, right, bottom" in pixels; empty: the whole photo)."""
        filters, extra = options[: len(filter_columns)], options[len(filter_columns) :]
        gap, region = (*extra, *(0.0, "")[len(extra) :])
        chosen = dict(zip(filter_columns, filters))
        matches = answer(lambda: recommender.recommend(image, int(top_k), chosen, float(gap or 0), region))
        return webapp.gallery_items(matches), webapp.listing(matches)

    # Gradio names the API's parameters from inspect.signature, which reads __signature__: image, top_k, one keyword
    # per filter column, near_duplicate_distance, region (tests/test_app.py calls them by name).
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    recommend.__signature__ = inspect.signature(recommend).replace(
        parameters=[
            *list(inspect.signature(recommend).parameters.values())[:2],
            *[inspect.Parameter(column, keyword, default=[]) for column in filter_columns],
            inspect.Parameter("near_duplicate_distance", keyword, default=0.0),
            inspect.Parameter("region", keyword, default=""),
        ]
    )
    photo = UploadedImage(
        type="filepath",
        image_mode=None,
        format="png",  # a base64 data URL from an API client is written losslessly (Gradio's default is WebP)
        sources=["upload", "webcam", "clipboard"],
        label="Your photo (drag a box to search part of it)",
        height=340,
        elem_id="query",
    )
    filters = [
        gr.Dropdown(
            values,
            value=[],
            multiselect=True,
            label=FILTER_LABELS.get(column, column),
            info="any of these; empty = all",
        )
        for column, values in recommender.filter_choices.items()
    ]
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
    demo = gr.Interface(
        fn=recommend,
        inputs=photo,
        outputs=[gallery, results],
        additional_inputs=[top_k, *filters, near_duplicates, region],
        additional_inputs_accordion=gr.Accordion("Options: number of results, filters, region", open=False),
        examples=[[str(path)] for path in demo_assets.example_images()],
        cache_examples=False,  # a query costs well under a second; cached results would ignore the options
        title="Fashion visual search",
        description=description(recommender.info),
        article=article(recommender.info),
        api_name="recommend",
        flagging_mode="never",
        concurrency_limit=webapp.MAX_BATCH_SIZE,  # concurrent requests share forward passes and searches
    )
    add_more_like_this(demo, recommender, photo, gallery, results, top_k, dict(zip(filter_columns, filters)))
    with demo:
        # A new photo (an upload, or a clicked result) is searched whole until a box is drawn on it; the click that
        # ends a drag on the photo copies the box fashion_search/region_box.js keeps into the region input.
        photo.change(None, outputs=region, js="() => ''", api_visibility="private")
        photo.select(
            None,
            outputs=region,
            js="() => document.querySelector('#query').dataset.region || ''",
            api_visibility="private",
        )
    return demo


def add_more_like_this(demo, recommender, photo, gallery, results, top_k, filters: dict) -> None:
    """`/similar` (a product's filename -> the products most like it), and a click on a result doing the same."""

    def similar(filename: str, top_k: float = DEFAULT_K, **chosen: list[str]) -> tuple[list, list[dict]]:
        """A catalogue product -> (gallery, listing) of the products most like it, itself left out."""
        _, matches = answer(lambda: recommender.similar(filename, int(top_k), chosen))
        return webapp.gallery_items(matches), webapp.listing(matches)

    def clicked(event: gr.SelectData, listing: list[dict], top_k: float, *chosen: list[str]):
        """A click on a result: that product becomes the query, and its neighbours the results."""
        filename = listing[event.index]["filename"]
        product, matches = answer(lambda: recommender.similar(filename, int(top_k), dict(zip(filters, chosen))))
        # The new results start with none selected (Gradio would keep the clicked position highlighted).
        return (
            str(product.image_path),
            gr.Gallery(webapp.gallery_items(matches), selected_index=None),
            webapp.listing(matches),
        )

    with demo:
        product = gr.Textbox(visible=False, label="filename")
        api_only = gr.Button(visible=False)
        api_only.click(
            similar,
            inputs=[product, top_k],
            inputs_kwargs=filters,
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
try:
    recommender = webapp.load_recommender(settings)
except webapp.StartupError as exc:
    if __name__ != "__main__":
        raise
    sys.exit(f"error: {exc}")
# The gallery's files are served in place (not copied into Gradio's cache per answer), and no other file of the bundle.
gr.set_static_paths([recommender.bundle.images_dir])
demo = build_demo(recommender)


def launch_options() -> dict:
    """What launch() needs besides the address: upload limit, sessions kept, look."""
    return {
        "max_file_size": webapp.MAX_UPLOAD,
        "state_session_capacity": webapp.SESSION_CAPACITY,
        "css": CSS,
        "js": REGION_JS,
        # System fonts: the page asks no third party for anything.
        "theme": gr.themes.Default(primary_hue="neutral", font=["ui-sans-serif", "system-ui", "sans-serif"]),
        # SSR is left to GRADIO_SSR_MODE, as Gradio does: on for Spaces, tested that way in tests/test_browser.py.
    }


if __name__ == "__main__":
    address = {"server_name": settings.server_name, "server_port": settings.server_port}
    # Unset flags are left out, so Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT apply (as on a Space).
    demo.launch(**{key: value for key, value in address.items() if value is not None}, **launch_options())
