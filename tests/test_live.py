"""A living catalogue (fashion_search.live, fashion_search.snapshot): a bundle folder or a Hub branch followed, a new
revision loaded beside the one served and swapped in whole, a damaged one refused while the old one serves."""

from __future__ import annotations

import gc
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashion_search import image_route, live, pieces, webapp
from fashion_search.bundle import IMAGES, write_bundle
from fashion_search.files import backup_path, swap_in
from fashion_search.images import load_catalogue
from fashion_search.imaging import PREPROCESSING_ID, load_input
from fashion_search.snapshot import open_snapshot

DIM = 16
MODEL = {"name": "stub", "weights": "stub:0"}
TYPES = ["Tshirts", "Watches", "Casual Shoes"]


class StubEmbedder:
    """The model's interface without the model: a photo's vector is drawn from a seed made of its pixels."""

    fingerprint = "stub:0"
    precision = "float32"

    def describe(self) -> dict:
        return dict(MODEL)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        rows = [np.random.default_rng(int(image.sum() * 1000) % 2**32).standard_normal(DIM) for image in batch]
        vectors = np.array(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def product_vector(name: str) -> np.ndarray:
    """A product's vector, the same in every revision that has it (as precompute.py reuses unchanged rows)."""
    vector = np.random.default_rng(abs(hash(name)) % 2**32).standard_normal(DIM)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def publish(folder: Path, names: list[str], types: dict[str, str] | None = None) -> Path:
    """Build a bundle of `names` beside `folder` and swap it in, as precompute.py does (the old one kept aside)."""
    staging = folder.with_name(f".{folder.name}.staging")
    (staging / IMAGES).mkdir(parents=True)
    for name in names:
        (staging / IMAGES / name).write_bytes(f"picture of {name}".encode())
    types = types or {}
    write_bundle(
        staging,
        embeddings=np.stack([product_vector(name) for name in names]),
        filenames=names,
        model=MODEL,
        preprocessing=PREPROCESSING_ID,
        metadata=[{"articleType": types.get(name, TYPES[int(name[:4]) % 3])} for name in names],
    )
    swap_in(staging, folder)
    return folder


def serve(source: live.Source, revision: str) -> webapp.Recommender:
    bundle, images = source.load(revision)
    return webapp.Recommender(open_snapshot(StubEmbedder(), bundle, images, revision=revision, source=source.name))


def brute_force(bundle, vector: np.ndarray, k: int) -> list[str]:
    distances = np.linalg.norm(bundle.embeddings - vector, axis=1)
    return [bundle.filenames[row] for row in np.argsort(distances, kind="stable")[:k]]


def names(start: int, count: int) -> list[str]:
    return [f"{n}.jpg" for n in range(start, start + count)]


@pytest.fixture
def followed(tmp_path):
    """(the bundle folder, its source, a recommender serving it, the follower looking at it when told to)."""
    folder = publish(tmp_path / "bundle", names(1000, 30))
    source = live.FolderSource(folder)
    recommender = serve(source, source.head())
    return folder, source, recommender, live.Follower(recommender, source, every=3600, grace=0)


def test_a_followed_folder_takes_a_new_build_at_the_next_look_and_never_returns_a_sold_out_product(followed):
    folder, source, recommender, follower = followed
    before = recommender.snapshot
    assert not follower.check()  # nothing changed: nothing loaded

    sold_out = names(1000, 10)
    publish(folder, names(1010, 20) + names(2000, 5))  # ten sold out, five new
    assert recommender.snapshot is before  # not before the follower looks
    assert follower.check()

    now = recommender.snapshot
    assert now.revision == live.manifest_digest(folder) != before.revision
    assert now.info.count == 25 and sorted(now.rows) == sorted(names(1010, 20) + names(2000, 5))
    for name in now.rows:  # every product's neighbours: the brute-force answer over the new revision only
        product, found = recommender.similar(name, 20)
        nearest = [n for n in brute_force(now.bundle, product_vector(name), 21) if n != name]
        assert [m.filename for m in found] == nearest
        assert not {m.filename for m in found} & set(sold_out)
    for name in sold_out:
        with pytest.raises(webapp.QueryError, match=rf"No product '{name}' in this catalogue \(revision "):
            recommender.similar(name, 5)
    found = [m.filename for m in recommender.recommend(Image.new("RGB", (30, 40), "grey"), 20)]
    assert len(found) == 20 and set(found) <= set(now.rows)


def test_a_request_that_took_the_old_revision_finishes_on_it_and_its_files_go_with_its_last_user(followed, caplog):
    folder, source, recommender, follower = followed
    old = recommender.snapshot  # a request in flight holds the snapshot it read
    publish(folder, names(1010, 25))
    assert follower.check()

    # Its pictures are read from the folder it was loaded from, now set aside by the swap.
    assert recommender.picture(old.revision, "1000.jpg") == (b"picture of 1000.jpg", "image/jpeg")
    assert recommender.picture(recommender.snapshot.revision, "1000.jpg") is None  # sold out in the new one
    product, found = recommender.similar("1000.jpg", 3, snapshot=old)
    assert product.filename == "1000.jpg" and len(found) == 3
    assert {m.filename for m in found} <= set(old.rows)
    handles = set(source._handles)
    assert handles == {old.revision, recommender.snapshot.revision}

    revision = old.revision
    del old, product, found
    gc.collect()
    assert recommender.picture(revision, "1001.jpg") is None
    assert set(source._handles) == {recommender.snapshot.revision}  # its folder handle closed


def test_a_replaced_revision_keeps_serving_its_pictures_for_a_grace_period(followed):
    """The pictures of an answer given just before a swap are fetched after it (by a browser, by gradio_client)."""
    folder, source, recommender, _ = followed
    follower = live.Follower(recommender, source, every=3600, grace=3600)
    revision = recommender.snapshot.revision
    publish(folder, names(1010, 25))
    assert follower.check()
    gc.collect()  # no request holds the old snapshot any more
    assert recommender.picture(revision, "1000.jpg") == (b"picture of 1000.jpg", "image/jpeg")
    follower.grace = 0
    follower._retired = [(0.0, snapshot) for _, snapshot in follower._retired]  # its grace is over
    assert not follower.check()
    gc.collect()
    assert recommender.picture(revision, "1000.jpg") is None


def test_a_picture_url_of_a_revision_no_longer_served_leads_to_the_product_in_the_one_served_now(followed):
    """The file route (fashion_search.image_route) redirects a revision gone to the same product's picture now, so an
    answer's picture URL outlives its revision; a product gone with it is a 404, and a live revision is served as is."""
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    folder, source, recommender, follower = followed
    old = recommender.snapshot.revision
    publish(folder, names(1010, 25))
    assert follower.check()
    gc.collect()
    new = recommender.snapshot.revision
    routes = image_route.routes(recommender.picture, recommender.picture_now)
    client = TestClient(Starlette(routes=[*routes, Mount("/some/root", routes=routes)]))
    for prefix in ("", "/some/root"):  # relative: right whatever the app's root path (behind a proxy)
        moved = client.get(f"{prefix}/gradio_api/catalogue-images/{old}/1020.jpg", follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["cache-control"] == "no-cache"
        assert moved.headers["location"] == f"../{new}/1020.jpg"
    arrived = client.get(f"/gradio_api/catalogue-images/{old}/1020.jpg")
    assert arrived.status_code == 200 and arrived.content == b"picture of 1020.jpg"
    assert (
        client.get(f"/gradio_api/catalogue-images/{old}/1000.jpg", follow_redirects=False).status_code == 404
    )  # sold out
    assert client.get(f"/gradio_api/catalogue-images/{new}/1000.jpg", follow_redirects=False).status_code == 404
    assert client.get(f"/gradio_api/catalogue-images/{new}/1020.jpg", follow_redirects=False).status_code == 200
    # gradio_client's form is served for a live revision only: it asks for the URLs of an answer just given
    origin = f"/gradio_api/file=http%3A//x/gradio_api/catalogue-images/{old}/1020.jpg"
    assert client.get(origin, follow_redirects=False).status_code == 404


def test_a_damaged_new_build_is_refused_with_one_line_while_the_old_serves_and_a_later_one_is_taken(followed, caplog):
    folder, source, recommender, follower = followed
    before = recommender.snapshot
    publish(folder, names(1000, 31))
    damaged = live.manifest_digest(folder)
    embeddings = folder / "embeddings.npy"
    embeddings.write_bytes(embeddings.read_bytes()[:-8] + b"\0" * 8)

    with caplog.at_level(logging.INFO, logger="fashion_search.live"):
        assert not follower.check()
        assert not follower.check()  # a refused revision is not tried again
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(refusals) == 1 and refusals[0].startswith(
        f"Catalogue {folder}: revision {damaged[:12]} refused, still serving {before.revision[:12]}: "
    )
    assert "embeddings.npy" in refusals[0] and "/proc/" not in refusals[0]
    assert recommender.snapshot is before and follower.refused.keys() == {damaged}
    assert recommender.similar("1001.jpg", 3)[0].filename == "1001.jpg"

    publish(folder, names(1000, 32))
    assert follower.check() and recommender.snapshot.info.count == 32


def test_a_folder_between_the_two_renames_of_a_swap_is_looked_at_again_later(followed, caplog):
    folder, source, recommender, follower = followed
    before = recommender.snapshot
    folder.rename(backup_path(folder))
    with caplog.at_level(logging.WARNING, logger="fashion_search.live"):
        assert not follower.check() and not follower.check()
    assert len(caplog.records) == 1 and "cannot look for a new revision" in caplog.records[0].getMessage()
    assert recommender.snapshot is before and not follower.refused


def test_swaps_under_concurrent_queries_fail_none_and_answer_each_from_one_revision(followed):
    folder, source, recommender, follower = followed
    stop = threading.Event()
    answers: list[tuple] = []
    failures: list[BaseException] = []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            snapshot = recommender.snapshot  # as app.py's handlers read it: once per request
            try:
                if rng.random() < 0.5:
                    photo = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
                    found = recommender.recommend(photo, 5, snapshot=snapshot)
                    vector = StubEmbedder().embed(load_input(photo)[None])[0]
                else:
                    name = sorted(snapshot.rows)[int(rng.integers(len(snapshot.rows)))]
                    _, found = recommender.similar(name, 5, snapshot=snapshot)
                    vector = None
                answers.append((snapshot, vector, [m.filename for m in found]))
            except BaseException as exc:  # noqa: B036 (every failure is the test's business)
                failures.append(exc)

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for thread in clients:
        thread.start()
    revisions = [recommender.snapshot.revision]
    for generation in range(3):  # three swaps, each with products sold out and new ones
        publish(folder, names(1000 + 5 * (generation + 1), 30) + names(3000 + 10 * generation, 4))
        while not follower.check():
            pass
        revisions.append(recommender.snapshot.revision)
        count = len(answers)
        while len(answers) < count + 20 and not failures:  # queries answered from the new revision
            threading.Event().wait(0.01)
    stop.set()
    for thread in clients:
        thread.join()

    assert not failures, failures[:3]
    assert len({snapshot.revision for snapshot, _, _ in answers}) == 4 == len(set(revisions))
    for snapshot, vector, found in answers:
        assert set(found) <= set(snapshot.rows)  # nothing from another revision
        if vector is not None:  # an uploaded photo: the brute-force answer over its revision
            assert found == brute_force(snapshot.bundle, vector, 5)


def test_new_filter_values_are_offered_after_a_swap(followed):
    folder, source, recommender, follower = followed
    assert recommender.filter_choices == {"articleType": sorted(TYPES)}
    publish(folder, names(1000, 30), types={"1003.jpg": "Dresses"})
    assert follower.check()
    assert recommender.filter_choices == {"articleType": sorted([*TYPES, "Dresses"])}
    found = recommender.recommend(Image.new("RGB", (8, 8)), 5, {"articleType": ["Dresses"]})
    assert [m.filename for m in found] == ["1003.jpg"]


# ---------------------------------------------------------------- a Hub branch


REPO = "shop/catalogue"


def test_a_followed_hub_branch_takes_a_push_a_pinned_commit_stays_and_a_tampered_head_is_refused(hub, tmp_path, caplog):
    from fashion_search.hub import push_bundle

    local = publish(tmp_path / "bundle", names(1000, 12))
    first = push_bundle(local, REPO, endpoint=hub.url)
    caches = {"cache_dir": tmp_path / "cache", "endpoint": hub.url}
    source = live.HubSource(REPO, **caches)
    assert source.follows and not live.HubSource(first.catalogue_value).follows
    folder, sha = source.first()
    assert sha == first.commit_sha
    recommender = webapp.Recommender(
        open_snapshot(StubEmbedder(), *load_catalogue(folder, sha), revision=sha, source=REPO)
    )
    follower = live.Follower(recommender, source, every=3600, grace=0)
    requests = len(hub.requests)
    assert not follower.check() and len(hub.requests) == requests + 1  # one request when nothing moved

    second = push_bundle(publish(local, names(1004, 10)), REPO, endpoint=hub.url)
    old = recommender.snapshot
    assert follower.check()
    assert recommender.snapshot.revision == second.commit_sha and old.revision == first.commit_sha
    assert sorted(recommender.snapshot.rows) == names(1004, 10)
    picture = recommender.picture(second.commit_sha, "1013.jpg")
    assert picture == (b"picture of 1013.jpg", "image/jpeg")  # from the new revision's new piece
    assert recommender.picture(old.revision, "1000.jpg") == (b"picture of 1000.jpg", "image/jpeg")
    old_folder = old.bundle.root
    del old
    gc.collect()
    assert not old_folder.exists()  # released with its last user

    # A commit that leaves the head file as it is (a push's earlier commit, or one changing a piece under it): the
    # catalogue served is that one, nothing is taken; one that changes the head and names a piece whose images are
    # not a tar: refused. The old revision serves on.
    from huggingface_hub import CommitOperationAdd, HfApi

    head_bytes = hub.read_file(REPO, pieces.HEAD, second.commit_sha)
    shard = pieces.parse_head(head_bytes, REPO).pieces[0].path(pieces.TAR)
    api = HfApi(endpoint=hub.url)
    same = api.create_commit(REPO, [CommitOperationAdd(shard, b"not a tar")], repo_type="dataset", commit_message="x")
    assert not follower.check()
    assert recommender.snapshot.revision == second.commit_sha and same.oid in follower.same
    requests = len(hub.requests)
    assert not follower.check() and len(hub.requests) == requests + 1  # known: only the head is asked for
    changed = head_bytes.replace(b'"created": "', b'"created": "1')
    tampered = api.create_commit(
        REPO, [CommitOperationAdd(pieces.HEAD, changed)], repo_type="dataset", commit_message="y"
    )
    assert not follower.check()
    assert recommender.snapshot.revision == second.commit_sha and tampered.oid in follower.refused
    assert recommender.similar("1005.jpg", 3)[0].filename == "1005.jpg"

    # The Hub away: said once, the revision served stays, and the next look goes on.
    hub.stop()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fashion_search.live"):
        assert not follower.check() and not follower.check()
    (line,) = [record.getMessage() for record in caplog.records if record.name == "fashion_search.live"]
    assert line.startswith(f"Catalogue {REPO}: cannot look for a new revision (Cannot reach the Hub at {hub.url}")
    assert line.endswith(f"still serving {second.commit_sha[:12]}.")
    assert recommender.similar("1005.jpg", 3)[0].filename == "1005.jpg"


# ---------------------------------------------------------------- the app, as its clients see it


@pytest.mark.slow
def test_the_app_takes_a_new_build_live_under_concurrent_clients_with_its_new_filter_values(tmp_path):
    """`python app.py` on a bundle folder, FASHION_REFRESH=1: precompute.py rebuilds the folder (a product sold out,
    two new ones of a new article type) while four gradio_client clients query; none fails, each answer comes from one
    revision, and the new revision's products, filter values and refusals are what clients get after the swap."""
    from app_runner import AppProcess, app_env, free_port
    from conftest import draw_product, write_styles
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from fashion_search.bundle import load_bundle
    from fashion_search.embedder import Embedder
    from fashion_search.pipeline import build_bundle

    photos, folder = tmp_path / "photos", tmp_path / "bundle"
    rng = np.random.default_rng(5)
    photos.mkdir()
    for n in range(8):
        draw_product(rng).save(photos / f"{1000 + n}.jpg")
    embedder = Embedder.load("random")
    write_styles(tmp_path / "styles.csv", [str(1000 + n) for n in range(8)])
    build_bundle(photos, folder, embedder, metadata=tmp_path / "styles.csv", quiet=True)
    first = live.manifest_digest(folder)
    query = tmp_path / "query.jpg"
    draw_product(np.random.default_rng(77), size=(90, 120)).save(query)

    port = free_port()
    env = app_env(tmp_path, FASHION_CATALOG=str(folder), FASHION_WEIGHTS="random", FASHION_REFRESH="1")
    with AppProcess(["--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "app.log") as app:
        url = app.wait_ready(port)
        client = Client(url, verbose=False)
        _, listing = client.predict(handle_file(str(query)), 20, api_name="/recommend")
        assert {row["revision"] for row in listing} == {first} and len(listing) == 8
        with pytest.raises(AppError, match="'Dresses' is not a value of article_type"):
            client.predict(handle_file(str(query)), article_type=["Dresses"], api_name="/recommend")

        stop, failures, answers = threading.Event(), [], []

        def ask(seed: int) -> None:
            own = Client(url, verbose=False)
            while not stop.is_set():
                try:
                    if seed % 2:
                        _, got = own.predict(handle_file(str(query)), 20, api_name="/recommend")
                    else:
                        _, got = own.predict("1001.jpg", 5, api_name="/similar")
                    answers.append(got)
                except Exception as exc:  # every failure is the test's business
                    failures.append(exc)

        clients = [threading.Thread(target=ask, args=(seed,)) for seed in range(4)]
        for thread in clients:
            thread.start()
        while len(answers) < 4 and not failures:  # the clients are answered from the first revision
            threading.Event().wait(0.2)
        (photos / "1000.jpg").unlink()  # sold out
        for n in (8, 9):
            draw_product(rng).save(photos / f"{1000 + n}.jpg")
        styles = write_styles(tmp_path / "styles.csv", [str(1000 + n) for n in range(1, 10)])
        dress = "1008,Women,Apparel,Sub,Dresses,Red,Summer,2012,Casual,Product 1008 Dress"
        rows = [dress if row.startswith("1008,") else row for row in styles.read_text().splitlines()]
        styles.write_text("\n".join(rows) + "\n")
        build_bundle(photos, folder, embedder, metadata=styles, quiet=True)
        second = live.manifest_digest(folder)
        for _ in range(600):  # the app looks every second; bounded, not timed
            if answers and answers[-1][0]["revision"] == second:
                break
            threading.Event().wait(0.2)
        count = len(answers)
        while len(answers) < count + 8 and not failures:
            threading.Event().wait(0.2)
        stop.set()
        for thread in clients:
            thread.join()

        assert not failures, failures[:3]
        revisions = {first: load_bundle(tmp_path / ".bundle.previous").filenames, second: load_bundle(folder).filenames}
        assert {listing[0]["revision"] for listing in answers} == {first, second}
        for got in answers:  # each answer wholly from one revision, and from that revision's products
            (revision,) = {row["revision"] for row in got}
            assert {row["filename"] for row in got} <= set(revisions[revision])
        assert "1000.jpg" not in {row["filename"] for got in answers if got[0]["revision"] == second for row in got}

        _, listing = client.predict(handle_file(str(query)), 20, api_name="/recommend")
        assert {row["revision"] for row in listing} == {second} and len(listing) == 9
        _, dresses = client.predict(handle_file(str(query)), article_type=["Dresses"], api_name="/recommend")
        assert [row["filename"] for row in dresses] == ["1008.jpg"]
        with pytest.raises(AppError, match=r"No product '1000.jpg' in this catalogue \(revision "):
            client.predict("1000.jpg", 5, api_name="/similar")
        log = app.log.read_text()
    assert f"serving revision {second[:12]} (9 products; was {first[:12]}, 8 products)" in log
