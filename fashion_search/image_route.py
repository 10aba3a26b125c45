"""The app's side of fashion_search.images: the file route for images without a file of their own, and the URLs,
paths and photo files the gallery and the query photo show.

    gr.set_static_paths(images.static_paths)                 # [] but for FolderImages made without a revision
    demo.launch(app_kwargs={"routes": routes(recommender.picture, recommender.picture_now)})  # ROUTE: by revision
    webapp.gallery_items(matches, images, root_url())         # in an event: file paths, or the route's full URLs
    photo_file(images, row, cache_dir)                        # a file for the query photo (an image input)

A gr.Gallery shows a file path through Gradio's own file route, and an http(s) URL as it is, fetched by the browser
(and by gradio_client); a URL must be absolute, so it is made from the root URL Gradio computes for the event being
answered (proxies and GRADIO_ROOT_PATH included), the way Gradio makes its own file URLs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from fashion_search.images import ROUTE, CatalogueImages

Picture = Callable[[str, str], "tuple[bytes, str] | None"]  # (revision, file name) -> (bytes, media type) or None
PictureNow = Callable[[str], "str | None"]  # file name -> the route's path of its picture in the revision served now

API_PREFIX = "/gradio_api"  # where Gradio's routes are (gradio.route_utils.API_PREFIX)


def routes(picture: Picture, now: PictureNow | None = None) -> list[Route]:
    """The file route of the catalogue's images (a Hub revision's, a bundle folder's): `picture(revision, name)` finds
    one in a revision still being served (Recommender.picture).

    It answers only the catalogue's images, each at its one path (revision and file name), with the image's own
    bytes; anything else is a 404. gradio_client asks for a gallery's URL through Gradio's file route
    (`/gradio_api/file=<the URL>`), which fetches outside URLs itself: those of this route are answered here instead,
    without any fetch. Given `now` (Recommender.picture_now), the path of a revision no longer served redirects to the
    product's picture in the revision served now, so that a URL given out (an MCP answer's) outlives its revision."""

    def serve(request: Request) -> Response:
        params = request.path_params
        name = params["name"]
        if "origin" in params:  # gradio_client's form: the URL, quoted once more
            if not params["origin"].startswith(("http://", "https://")):
                return _not_found()
            name = unquote(name)
        try:
            found = picture(params["revision"], name)
        except OSError:
            found = None
        if found is None:
            moved = now(name) if now is not None and "origin" not in params else None
            if moved is None or moved.removeprefix(ROUTE + "/").split("/")[0] == params["revision"]:
                return _not_found()
            # Relative to this path, whatever the app's root: up past the name's folders and the revision.
            location = "../" * (name.count("/") + 1) + moved.removeprefix(ROUTE + "/")
            return RedirectResponse(location, status_code=307, headers={"Cache-Control": "no-cache"})
        data, media_type = found
        disposition = "attachment" if media_type == "application/octet-stream" else "inline"
        headers = {
            "Cache-Control": "public, max-age=31536000, immutable",  # the path names the revision: it never changes
            "X-Content-Type-Options": "nosniff",
            "Content-Disposition": disposition,
        }
        return Response(data, media_type=media_type, headers=headers)

    path = ROUTE + "/{revision}/{name:path}"
    return [
        Route(path, serve, methods=["GET", "HEAD"]),
        Route(API_PREFIX + "/file={origin:path}" + path, serve, methods=["GET", "HEAD"]),
    ]


def _not_found() -> Response:
    return Response("Not an image of this catalogue.\n", status_code=404, media_type="text/plain")


def root_url() -> str:
    """The app's root URL for the event being answered, as Gradio computes it for its own file URLs; "" outside one."""
    from gradio import route_utils
    from gradio.context import LocalContext

    event = LocalContext.request.get(None)
    request = getattr(event, "request", None)
    if request is None:
        return ""
    try:
        route = route_utils.get_api_call_path(request)
    except ValueError:  # not a queued event or an API call (e.g. an MCP tool call): the request's own path
        route = request.url.path
    return route_utils.get_root_url(request, route, getattr(request.app, "root_path", None))


def photo_file(images: CatalogueImages, row: int, cache_dir: str | Path) -> str:
    """A file holding exactly the image of `row`, for the query photo (an image input sends its file back): the
    image's own file (Gradio serves it in place), or its bytes written once into Gradio's cache folder `cache_dir`
    (as an upload would be), in the folder Gradio would copy it to, so it is not copied again."""
    if not images.served_by_route:
        return str(images.file(row))
    from gradio import processing_utils

    data = images.read(row)
    name = Path(images.filenames[row]).name
    path = processing_utils.save_bytes_to_cache(data, name, str(cache_dir))
    images.remember_file(path, row)  # so that the photo is known as this product's (Recommender.product_at)
    return path
