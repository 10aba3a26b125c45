"""The app as programs see it: launched in this process on 127.0.0.1, called with gradio_client as the README shows."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_runner import launch_app, printed_endpoints
from conftest import draw_product, embed_files, reference_top_k, similar_reference
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from fashion_search import webapp
from fashion_search.bundle import load_bundle
from fashion_search.imaging import ImageError, open_image

pytestmark = pytest.mark.slow  # starts the app


@pytest.fixture(scope="module")
def app_url(bundle_dir, weights_file) -> str:
    return launch_app(bundle_dir, weights_file)[1]


@pytest.fixture(scope="module")
def client(app_url) -> Client:
    return Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def queries(tmp_path_factory) -> list[Path]:
    """Product pictures that are not in the catalogue."""
    folder = tmp_path_factory.mktemp("queries")
    rng = np.random.default_rng(99)
    paths = []
    for i in range(4):
        path = folder / f"query{i}.jpg"
        draw_product(rng, size=(90, 120)).save(path, quality=92)
        paths.append(path)
    return paths


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def listing_of(matches) -> list[dict]:
    return [match.listing() for match in matches]


def revision_of(bundle_dir: Path) -> str:
    """The revision the app names in its answers for a bundle folder: its manifest's digest."""
    return hashlib.sha256((bundle_dir / "manifest.json").read_bytes()).hexdigest()[:16]


def assert_same_results(listing: list[dict], reference: list[dict]) -> None:
    """Same products in the same order with the same metadata; distances equal to float32 noise. Each product names
    the revision it came from, the same for all (the reference, made in this process, has no such field)."""
    assert len({row["revision"] for row in listing}) == 1
    assert [row["filename"] for row in listing] == [row["filename"] for row in reference]
    assert [row["rank"] for row in listing] == list(range(1, len(reference) + 1))
    for got, want in zip(listing, reference):
        assert got["distance"] == pytest.approx(want["distance"], abs=1e-5)
        left_out = ("distance", "revision")
        assert {k: v for k, v in got.items() if k not in left_out} == {
            k: v for k, v in want.items() if k not in left_out
        }


def test_readme_call_returns_five_catalogue_images_with_a_matching_listing(client, recommender, bundle_dir, queries):
    gallery, listing = client.predict(handle_file(str(queries[0])), api_name="/recommend")

    assert len(gallery) == 5 and len(listing) == 5
    assert {row["revision"] for row in listing} == {revision_of(bundle_dir)}
    assert_same_results(listing, listing_of(recommender.recommend(queries[0])))
    for item, row in zip(gallery, listing):
        # The gallery shows the bundle's own image files, byte for byte, in the listing's order.
        assert Path(item["image"]).read_bytes() == (bundle_dir / "images" / row["filename"]).read_bytes()
        details = " · ".join(row[c] for c in ("articleType", "baseColour", "gender"))
        assert item["caption"] == f"{row['productDisplayName']}\n{details}\ndistance {row['distance']:.3f}"
    distances = [row["distance"] for row in listing]
    assert distances == sorted(distances)


def test_a_catalogue_image_re_encoded_as_jpeg_finds_itself_first(client, catalogue, tmp_path):
    for name in ("1003.png", "1010.jpg"):
        original = Image.open(catalogue / "images" / name).convert("RGB")
        buffer = io.BytesIO()
        original.resize((original.width * 2, original.height * 2)).save(buffer, format="JPEG", quality=75)
        near_duplicate = write(tmp_path, f"copy-of-{Path(name).stem}.jpg", buffer.getvalue())

        _, listing = client.predict(handle_file(str(near_duplicate)), api_name="/recommend")

        assert listing[0]["filename"] == name
        assert listing[0]["distance"] < listing[1]["distance"]


def test_api_parameters_are_the_image_top_k_one_filter_per_metadata_column_the_near_duplicate_gap_and_region(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    columns = ["gender", "master_category", "article_type", "base_colour"]  # snake_case: gradio_client prints lower
    recommend_extra = {"near_duplicate_distance": 0, "region": ""}
    for endpoint, first, extra in [("/recommend", "image", recommend_extra), ("/similar", "filename", {})]:
        parameters = endpoints[endpoint]["parameters"]
        assert [parameter["parameter_name"] for parameter in parameters] == [first, "top_k", *columns, *extra]
        defaults = {p["parameter_name"]: p["parameter_default"] for p in parameters if p["parameter_has_default"]}
        assert defaults == {"top_k": 5, **{column: [] for column in columns}, **extra}


def test_a_region_of_the_photo_through_the_api_equals_searching_the_cropped_file(
    client, embedder, bundle_dir, tmp_path
):
    """A phone photo stored on its side, with a product in one corner: the box is in the upright picture's pixels."""
    bundle = load_bundle(bundle_dir)
    product = Image.open(bundle.image_path(bundle.filenames.index("1002.jpg"))).convert("RGB")
    scene = Image.new("RGB", (product.width * 3, product.height * 2), (200, 180, 150))
    scene.paste(product, (product.width, product.height))
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera stored it turned: a viewer (and the server) rotates it upright
    photo = tmp_path / "street.jpg"
    scene.transpose(Image.Transpose.ROTATE_90).save(photo, exif=exif, quality=95)
    box = (product.width, product.height, product.width * 2, product.height * 2)
    cropped = tmp_path / "cropped.png"
    open_image(photo).crop(box).save(cropped)

    _, got = client.predict(handle_file(str(photo)), region=", ".join(map(str, box)), api_name="/recommend")
    _, want = client.predict(handle_file(str(cropped)), api_name="/recommend")
    assert_same_results(got, want)
    assert [row["filename"] for row in want] == reference_top_k(embedder, bundle, cropped)[0]
    assert client.predict(handle_file(str(photo)), region=list(box), api_name="/recommend")[1] == got
    _, whole = client.predict(handle_file(str(photo)), region="", api_name="/recommend")
    assert [row["filename"] for row in whole] != [row["filename"] for row in got]


@pytest.mark.parametrize(
    "region,message",
    [
        ("10, 20", "The region must be four numbers: left, top, right, bottom, in the picture's pixels"),
        ("30, 20, 10, 40", "The region (30, 20, 10, 40) is empty"),
        (
            "0, 0, 500, 50",
            "The region (0, 0, 500, 50) is outside the picture, which is 90x120 pixels: give four numbers: left, top, "
            "right, bottom, in the picture's pixels, within 0, 0, 90, 120 (e.g. 22, 30, 68, 90).",
        ),
    ],
)
def test_a_bad_region_gets_its_message_and_the_app_keeps_serving(client, queries, region, message):
    with pytest.raises(AppError) as error:
        client.predict(handle_file(str(queries[0])), region=region, api_name="/recommend")
    assert message in str(error.value)
    assert len(client.predict(handle_file(str(queries[0])), api_name="/recommend")[1]) == 5


def test_every_parameter_view_api_prints_is_accepted_by_name_on_both_endpoints(client, recommender, queries, capsys):
    """gradio_client prints names lower-cased: each is called as printed, with the same filter names for both."""
    endpoints = printed_endpoints(client, capsys)
    filters = ["gender", "master_category", "article_type", "base_colour"]
    assert endpoints == {
        "/recommend": ["image", "top_k", *filters, "near_duplicate_distance", "region"],
        "/similar": ["filename", "top_k", *filters],
    }
    bundle = recommender.bundle
    product = bundle.metadata[0]  # its look-alikes by every filter: the products of the same gender, type and colour
    columns = {"gender": "gender", "master_category": "masterCategory", "article_type": "articleType"}
    chosen = {name: [product[column]] for name, column in {**columns, "base_colour": "baseColour"}.items()}
    values = {
        "image": handle_file(str(queries[0])),
        "filename": bundle.filenames[0],
        "top_k": 2,
        **chosen,
        "near_duplicate_distance": 0.0,
        "region": "0, 0, 90, 120",
    }
    filters_by_column = {column: chosen[name] for name, column in {**columns, "base_colour": "baseColour"}.items()}
    expected = {
        "/recommend": listing_of(recommender.recommend(queries[0], k=2, filters=filters_by_column)),
        "/similar": listing_of(recommender.similar(bundle.filenames[0], k=2, filters=filters_by_column)[1]),
    }
    for endpoint, names in endpoints.items():
        _, listing = client.predict(**{name: values[name] for name in names}, api_name=endpoint)
        assert_same_results(listing, expected[endpoint])
        assert all(row[column] == product[column] for row in listing for column in filters_by_column)


def test_gradios_own_refusals_of_an_option_name_the_parameter(client, queries):
    photo = handle_file(str(queries[0]))
    refused = [
        ({"top_k": "ten"}, "top_k must be a number from 1 to 20; got 'ten'."),
        ({"top_k": 2.5}, "top_k must be a whole number from 1 to 20; got 2.5."),  # not silently 2
        ({"near_duplicate_distance": 0.9}, "near_duplicate_distance must be a number from 0 to 0.5; got 0.9."),
        (
            {"article_type": ["Tshirts", "Dress"]},
            "'Dress' is not a value of article_type: give a list of values among 'Casual Shoes', 'Tshirts', 'Watches'.",
        ),
        ({"gender": "Girls"}, "'Girls' is not a value of gender: give a list of values among 'Men', 'Women'."),
    ]
    for options, message in refused:
        with pytest.raises(AppError) as caught:
            client.predict(photo, **options, api_name="/recommend")
        assert str(caught.value) == message
    with pytest.raises(AppError) as caught:
        client.predict("1000.jpg", 0, api_name="/similar")
    assert str(caught.value) == "top_k must be a number from 1 to 20; got 0."
    # A single value where a list is expected is a list of one.
    one = client.predict(photo, top_k=20, gender="Women", api_name="/recommend")[1]
    assert one == client.predict(photo, top_k=20, gender=["Women"], api_name="/recommend")[1]
    assert {row["gender"] for row in one} == {"Women"}
    # A whole number sent as a float is that number: 5.0 is 5.
    assert client.predict(photo, top_k=5.0, api_name="/recommend")[1] == client.predict(photo, api_name="/recommend")[1]


@pytest.mark.parametrize("k", [1, 12, 20])
def test_top_k_through_the_api(client, recommender, queries, k):
    _, listing = client.predict(handle_file(str(queries[1])), k, api_name="/recommend")
    assert len(listing) == k
    assert_same_results(listing, listing_of(recommender.recommend(queries[1], k=k)))


def test_filters_through_the_api_give_the_nearest_matching_products(client, recommender, queries):
    filters = {"gender": ["Men"], "articleType": ["Tshirts", "Watches"]}
    gallery, listing = client.predict(
        handle_file(str(queries[2])),
        top_k=20,
        gender=["Men"],
        article_type=["Tshirts", "Watches"],
        api_name="/recommend",
    )
    eligible = [
        row
        for row in recommender.bundle.metadata
        if row["gender"] == "Men" and row["articleType"] in ("Tshirts", "Watches")
    ]
    assert 0 < len(listing) == len(eligible) < len(recommender.bundle.filenames)
    assert all(row["gender"] == "Men" and row["articleType"] in ("Tshirts", "Watches") for row in listing)
    assert len(gallery) == len(listing)
    assert_same_results(listing, listing_of(recommender.recommend(queries[2], k=20, filters=filters)))

    _, top3 = client.predict(
        handle_file(str(queries[2])), 3, ["Men"], [], ["Tshirts", "Watches"], api_name="/recommend"
    )
    assert top3 == listing[:3]


def expected_image_error(data: bytes) -> str:
    with pytest.raises(ImageError) as caught:
        open_image(data)
    return str(caught.value)


def test_bad_uploads_get_their_message_and_the_app_keeps_serving(client, recommender, queries, tmp_path):
    not_an_image = b"name,price\nshirt,12\n"
    jpeg = queries[0].read_bytes()
    truncated = jpeg[: len(jpeg) // 2]
    for name, data in [("photo.png", not_an_image), ("photo.jpg", truncated), ("empty.jpg", b"")]:
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(str(write(tmp_path, name, data))), api_name="/recommend")
        assert str(caught.value) == expected_image_error(data)

    with pytest.raises(AppError) as caught:
        client.predict(None, api_name="/recommend")
    assert str(caught.value) == webapp.NO_IMAGE

    with pytest.raises(webapp.QueryError) as reference:
        recommender.recommend(queries[0], filters={"masterCategory": ["Footwear"], "articleType": ["Tshirts"]})
    with pytest.raises(AppError) as caught:
        client.predict(
            handle_file(str(queries[0])), master_category=["Footwear"], article_type=["Tshirts"], api_name="/recommend"
        )
    assert str(caught.value) == str(reference.value)

    for k in (0, 21):
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(str(queries[0])), k, api_name="/recommend")
        assert str(caught.value) == f"top_k must be a number from 1 to 20; got {k}."

    _, listing = client.predict(handle_file(str(queries[0])), api_name="/recommend")
    assert_same_results(listing, listing_of(recommender.recommend(queries[0])))


def test_an_upload_over_the_size_limit_is_refused_with_a_message(client, app_url, tmp_path):
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as handle:
        handle.truncate(21 * 1024 * 1024)  # a sparse file: over the 20 MB limit in any unit
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), api_name="/recommend")  # gradio_client checks before uploading

    with open(big, "rb") as handle:  # a client that does not check: the server refuses the upload itself
        response = httpx.post(
            f"{app_url}gradio_api/upload", files={"files": ("huge.jpg", handle, "image/jpeg")}, timeout=60
        )
    assert response.status_code == 413
    assert "maximum allowed size" in response.text


def test_concurrent_requests_each_get_their_own_answer_or_their_own_error(client, recommender, queries, tmp_path):
    bad = write(tmp_path, "bad.png", b"\x89PNG\r\n\x1a\n but not really")
    requests = [(queries[i % 4], 1 + i) for i in range(6)] + [(bad, 5), (bad, 3)]
    jobs = [client.submit(handle_file(str(path)), k, api_name="/recommend") for path, k in requests]
    for (path, k), job in zip(requests, jobs):
        if path == bad:
            with pytest.raises(AppError) as caught:
                job.result(timeout=300)
            assert str(caught.value) == expected_image_error(bad.read_bytes())
        else:
            _, listing = job.result(timeout=300)
            assert_same_results(listing, listing_of(recommender.recommend(path, k=k)))


def test_the_gallery_shows_the_pictures_by_revision_and_name_from_the_followed_folder(app_url, bundle_dir, queries):
    gallery, listing = Client(app_url, verbose=False, download_files=False).predict(
        handle_file(str(queries[1])), api_name="/recommend"
    )
    revision = revision_of(bundle_dir)
    urls = [item["image"]["url"] for item in gallery]
    assert urls == [f"{app_url}gradio_api/catalogue-images/{revision}/{row['filename']}" for row in listing]
    for url, row in zip(urls, listing):
        assert httpx.get(url, timeout=30).content == (bundle_dir / "images" / row["filename"]).read_bytes()


def test_only_the_bundle_images_are_served(app_url, bundle_dir):
    revision = revision_of(bundle_dir)
    served = httpx.get(f"{app_url}gradio_api/catalogue-images/{revision}/1000.jpg", timeout=30)
    assert served.status_code == 200 and served.content == (bundle_dir / "images" / "1000.jpg").read_bytes()
    for name in ["embeddings.npy", "manifest.json", "images/1000.jpg", "../manifest.json"]:
        answer = httpx.get(f"{app_url}gradio_api/catalogue-images/{revision}/{name}", timeout=30, follow_redirects=True)
        assert answer.status_code == 404, name
    # Gradio's own file route serves none of the bundle's files, its pictures included.
    for path in [bundle_dir / "images" / "1000.jpg", bundle_dir / "embeddings.npy", Path(__file__).resolve()]:
        refused = httpx.get(f"{app_url}gradio_api/file={path.resolve()}", timeout=30)
        assert refused.status_code in (403, 404), path


def test_old_sessions_are_dropped_and_a_dropped_session_is_still_answered(
    bundle_dir, weights_file, recommender, queries
):
    app, url = launch_app(bundle_dir, weights_file)
    holder = app.demo.state_holder
    assert holder.capacity == webapp.SESSION_CAPACITY
    first, second, third = (Client(url, verbose=False, download_files=False) for _ in range(3))
    expected = listing_of(recommender.recommend(queries[0]))
    holder.capacity = 2  # so that a third session drops the first, without making a thousand
    try:
        for client_ in (first, second, third):
            assert_same_results(client_.predict(handle_file(str(queries[0])), api_name="/recommend")[1], expected)
        assert first.session_hash not in holder and third.session_hash in holder
        assert len(holder.session_data) <= 2
        assert_same_results(first.predict(handle_file(str(queries[0])), api_name="/recommend")[1], expected)
    finally:
        holder.capacity = webapp.SESSION_CAPACITY


def test_the_page_names_the_catalogue_and_shows_no_random_weights_warning(app_url, bundle_dir):
    config = httpx.get(f"{app_url}config", timeout=30).json()
    page = str(config)
    assert f"of the 20 products in the catalogue <b>{bundle_dir.name}</b>" in page
    assert f"Revision <code>{revision_of(bundle_dir)[:12]}</code>, live since " in page  # the folder is followed
    assert "not meaningful" not in page
    assert "The model runs in" not in page  # float32, the default, needs no word
    assert str(bundle_dir.parent) not in page  # the server's folders stay private


def test_the_app_loaded_the_catalogue_and_weights_it_was_given(bundle_dir, weights_file):
    app, _ = launch_app(bundle_dir, weights_file)
    assert app.recommender.info.source == str(bundle_dir) and app.recommender.info.name == bundle_dir.name
    assert app.recommender.snapshot.revision == revision_of(bundle_dir)
    assert app.recommender.bundle.filenames == load_bundle(bundle_dir).filenames
    assert app.recommender.info.weights == load_bundle(bundle_dir).weights
    assert app.recommender.info.weights.startswith("sha256:")


@pytest.mark.parametrize("k", [1, 5, 19])
def test_similar_gives_the_nearest_other_products_from_the_stored_vector(client, recommender, k):
    bundle = recommender.bundle
    for filename in (bundle.filenames[0], bundle.filenames[7]):
        gallery, listing = client.predict(filename, k, api_name="/similar")
        names, distances = similar_reference(bundle, filename, k)
        assert [row["filename"] for row in listing] == names and filename not in names
        assert [row["distance"] for row in listing] == pytest.approx(distances, abs=1e-5)
        assert [row["rank"] for row in listing] == list(range(1, k + 1)) and len(gallery) == k


def test_similar_takes_the_filters_as_recommend_does(client, recommender):
    bundle = recommender.bundle
    women = [row for row, meta in enumerate(bundle.metadata) if meta.get("gender") == "Women"]
    filename = bundle.filenames[women[0]]
    _, listing = client.predict(filename, 20, gender=["Women"], api_name="/similar")
    assert [row["filename"] for row in listing] == similar_reference(bundle, filename, 20, women)[0]
    assert {row["gender"] for row in listing} == {"Women"}


def test_similar_refuses_an_unknown_product_naming_what_it_expects(client, recommender, bundle_dir):
    with pytest.raises(AppError) as caught:
        client.predict("no-such-product.jpg", 5, api_name="/similar")
    assert str(caught.value) == (
        f"No product 'no-such-product.jpg' in this catalogue (revision {revision_of(bundle_dir)[:12]}, 20 products): "
        "it was removed, or the name is not one of its file names. Give a product's filename as a result's listing "
        f"shows it, e.g. {recommender.bundle.filenames[0]!r}."
    )


def test_near_duplicate_hiding_through_the_api(client, recommender, embedder, queries):
    """With a gap just over the closest pair of today's top-5, that pair loses its lower product, and the page is
    filled up to 5 from further down; with 0 (the default), the answer is today's."""
    bundle = recommender.bundle
    _, plain = client.predict(handle_file(str(queries[1])), api_name="/recommend")
    rows = [bundle.filenames.index(row["filename"]) for row in plain]
    pairs = [np.linalg.norm(bundle.embeddings[a] - bundle.embeddings[b]) for i, a in enumerate(rows) for b in rows[:i]]
    gap = float(min(pairs)) + 1e-4
    _, distinct = client.predict(handle_file(str(queries[1])), near_duplicate_distance=gap, api_name="/recommend")

    vector = embed_files(embedder, [queries[1]])[0]
    kept: list[int] = []
    for row in np.argsort(np.linalg.norm(bundle.embeddings - vector, axis=1), kind="stable"):
        if all(np.linalg.norm(bundle.embeddings[row] - bundle.embeddings[other]) >= gap for other in kept):
            kept.append(int(row))
        if len(kept) == 5:
            break
    assert [row["filename"] for row in distinct] == [bundle.filenames[row] for row in kept]
    assert [row["filename"] for row in distinct] != [row["filename"] for row in plain]
    assert [row["rank"] for row in distinct] == [1, 2, 3, 4, 5]
    assert client.predict(handle_file(str(queries[1])), near_duplicate_distance=0, api_name="/recommend")[1] == plain
