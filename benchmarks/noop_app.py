"""A no-op Gradio app with app.py's input and output components: the cost of Gradio itself, for figure 3.

    python benchmarks/noop_app.py --catalog BUNDLE_DIR --port 7861

Same interface as app.py (an image input handed over as a file path, the results slider and one multiselect
dropdown per filter column, a gallery and a JSON output, api_name="recommend", the same concurrency limit and
launch options), and it answers with five of the bundle's products at once: no decoding, no model, no search.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gradio as gr

FILTER_COLUMNS = ("gender", "masterCategory", "articleType", "baseColour")
MAX_K = 20
CONCURRENCY_LIMIT = 8  # as app.py's concurrency_limit (webapp.MAX_BATCH_SIZE)


class QueryImage(gr.Image):
    """As app.py's: the uploaded file goes to the function untouched, as a path."""

    is_template = True

    def preprocess(self, payload):
        if payload is None or not (payload.url or "").startswith("data:"):
            return None if payload is None else payload.path
        return super().preprocess(payload)


def build(catalogue: Path) -> gr.Interface:
    filenames = json.loads((catalogue / "filenames.json").read_text())
    metadata_path = catalogue / "metadata.jsonl"
    metadata = [json.loads(line) for line in metadata_path.open()] if metadata_path.exists() else [{}] * len(filenames)
    choices = {c: sorted({str(m[c]) for m in metadata if m.get(c)}) for c in FILTER_COLUMNS}
    choices = {c: v for c, v in choices.items() if v}
    images = catalogue / "images"
    gallery = [
        (str(images / filenames[i]), f"{metadata[i].get('productDisplayName', filenames[i])} · distance 0.000")
        for i in range(5)
    ]
    listing = [{"rank": i + 1, "filename": filenames[i], "distance": 0.0, **metadata[i]} for i in range(5)]

    def recommend(image, top_k=5, *filters):
        return gallery, listing

    return gr.Interface(
        fn=recommend,
        inputs=QueryImage(
            type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label="Your photo"
        ),
        outputs=[gr.Gallery(label="Similar products", columns=5), gr.JSON(label="Results")],
        additional_inputs=[
            gr.Slider(1, MAX_K, value=5, step=1, precision=0, label="Number of results"),
            *[gr.Dropdown(values, value=[], multiselect=True, label=c) for c, values in choices.items()],
        ],
        api_name="recommend",
        flagging_mode="never",
        concurrency_limit=CONCURRENCY_LIMIT,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", required=True, type=Path)
    parser.add_argument("--port", type=int, default=7861)
    args = parser.parse_args()
    gr.set_static_paths([args.catalog / "images"])  # the gallery's files served in place, as app.py does
    build(args.catalog).launch(server_name="127.0.0.1", server_port=args.port, max_file_size="20mb", ssr_mode=False)
