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

import gradio as gr

from fashion_search import config, webapp
from fashion_search import demo as demo_assets
from fashion_search.search import MAX_K


def pass_upload_through(image: gr.Image):
    """Make `image` hand the uploaded file to our decoder untouched: Gradio's own preprocessing opens it with PIL
    first and fails with a bare exception on a file that is not a picture. (An instance attribute rather than a
    subclass: Gradio writes a .pyi file next to the module of every component class.)"""
    gradio_preprocess = image.preprocess

    def preprocess(payload):
        if payload is None or not (payload.url or "").startswith("data:"):
            return None if payload is None else payload.path
        try:
            return gradio_preprocess(payload)  # a base64 data URL from an API client: Gradio writes it to a file
        except Exception as exc:
            raise gr.Error("The image could not be decoded. Please upload a JPEG, PNG or WebP photo.") from exc

    image.preprocess = preprocess
    return image


# The page: title, a short description, and the products as cards.
CSS = """
.gradio-container {max-width: 1200px !important; margin: auto;}
#products .grid-container {grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)) !important;}
#products .thumbnail-item.thumbnail-lg {aspect-ratio: auto; height: auto; display: flex; flex-direction: column;
                                        background: #fff;}
#products .thumbnail-lg > img {aspect-ratio: 1; height: auto; object-fit: contain; padding: 10px;}
#products .caption-label {position: static; max-width: none; white-space: pre-line; text-align: left; border: none;
                          border-top: 1px solid var(--border-color-primary); border-radius: 0; font-size: .8rem;
                          line-height: 1.3; padding: 6px 10px;}
.random-weights {background: #fff4e5; border: 1px solid #f0a020; border-radius: 8px; padding: .6rem .9rem;
                 color: #7a4100; font-weight: 600;}
"""


def recommend(image: str | None, top_k: float = 5, *filters: list[str]) -> tuple[list, list[dict]]:
    """One request: the uploaded file -> (gallery of (image, caption), listing of {rank, filename, distance, ...})."""
    chosen = dict(zip(FILTER_COLUMNS, filters))
    try:
        matches = recommender.recommend(image, int(top_k), chosen)
    except webapp.QueryError as exc:
        raise gr.Error(str(exc), print_exception=False) from None
    return webapp.gallery_items(matches), webapp.listing(matches)


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


settings = config.resolve(sys.argv[1:] if __name__ == "__main__" else [])
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's start-up self-checks are not news
try:
    recommender = webapp.load_recommender(settings)  # the model and the catalogue, once, warmed up
except webapp.StartupError as exc:
    sys.exit(f"error: {exc}")
FILTER_COLUMNS = list(recommender.filter_choices)
FILTER_LABELS = {
    "gender": "Gender",
    "masterCategory": "Category",
    "articleType": "Article type",
    "baseColour": "Colour",
}
# The API names its parameters after the handler's: image, top_k, then one per filter column the catalogue has.
recommend.__signature__ = inspect.signature(recommend).replace(
    parameters=[
        *list(inspect.signature(recommend).parameters.values())[:2],
        *[inspect.Parameter(c, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=[]) for c in FILTER_COLUMNS],
    ]
)
# The gallery's files are served where they are, and no other file of the bundle is. Static paths rather than
# launch(allowed_paths=...): Gradio then neither hashes nor copies each answer's images into its cache (8 concurrent
# clients, side by side: the app's CPU per query 127 -> 123 ms), and its cache does not grow with every product shown.
gr.set_static_paths([recommender.bundle.images_dir])
ARTICLE = (
    "Distance: between the pictures' ResNet50 embeddings (unit vectors), from 0 for the same picture up to 2. "
    'Also an API: `Client(url).predict(handle_file("photo.jpg"), api_name="/recommend")` returns the gallery '
    "and a JSON listing."
    + (" Demo catalogue and examples: Fashion-MNIST, © Zalando SE, MIT licence." if settings.catalog is None else "")
)

demo = gr.Interface(
    fn=recommend,
    inputs=pass_upload_through(
        gr.Image(
            type="filepath",
            image_mode=None,
            sources=["upload", "webcam", "clipboard"],
            label="Your photo",
            height=340,
            elem_id="query",
        )
    ),
    outputs=[
        gr.Gallery(label="Similar products", columns=3, object_fit="contain", height="auto", elem_id="products"),
        gr.JSON(label="Results", max_height=260),
    ],
    additional_inputs=[
        gr.Slider(1, MAX_K, value=5, step=1, precision=0, label="Number of results"),
        *[
            gr.Dropdown(
                values,
                value=[],
                multiselect=True,
                label=FILTER_LABELS.get(column, column),
                info="any of these; empty = all",
            )
            for column, values in recommender.filter_choices.items()
        ],
    ],
    additional_inputs_accordion=gr.Accordion("Options: number of results and filters", open=False),
    examples=[[str(path)] for path in demo_assets.example_images()],
    cache_examples=False,  # a query costs well under a second; cached results would ignore the options
    title="Fashion visual search",
    description=description(recommender.info),
    article=ARTICLE,
    api_name="recommend",
    flagging_mode="never",
    concurrency_limit=webapp.MAX_BATCH_SIZE,  # concurrent requests share forward passes and searches (webapp.Batcher)
)


def launch_options() -> dict:
    """What launch() needs besides the address: upload limit, sessions kept, look."""
    return {
        "max_file_size": webapp.MAX_UPLOAD,
        "state_session_capacity": webapp.SESSION_CAPACITY,
        "css": CSS,
        # System fonts: the page asks no third party for anything.
        "theme": gr.themes.Default(primary_hue="neutral", font=["ui-sans-serif", "system-ui", "sans-serif"]),
        # SSR is left to GRADIO_SSR_MODE, as Gradio does: on for Spaces, tested that way in tests/test_browser.py.
    }


if __name__ == "__main__":
    address = {"server_name": settings.server_name, "server_port": settings.server_port}
    # Unset flags are left out, so Gradio's own GRADIO_SERVER_NAME / GRADIO_SERVER_PORT apply (as on a Space).
    demo.launch(**{key: value for key, value in address.items() if value is not None}, **launch_options())
