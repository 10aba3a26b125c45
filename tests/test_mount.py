"""A catalogue's Hub repo mounted as a folder (fashion_search.live.MountSource): served where its files are, followed
like a branch, a new revision's files arriving late, in any order, with removed files deleted among them, taken only
once complete; a piece that stays wrong refused while the old revision serves."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_live import DIM, MODEL, StubEmbedder, brute_force, names, product_vector, publish

from fashion_search import live, pieces, webapp
from fashion_search.files import sha256_file
from fashion_search.hub import push_bundle
from fashion_search.snapshot import open_snapshot
from fashion_search.vectors import list_vector_files

REPO = "shop/catalogue"


@pytest.fixture
def small_pieces(monkeypatch):
    """Pieces of at most 8 rows (small: under 3 live rows; at most 2 small), so 40 products make several."""
    monkeypatch.setattr(pieces, "PIECE_ROWS", 8)
    monkeypatch.setattr(pieces, "SMALL_ROWS", 3)
    monkeypatch.setattr(pieces, "SMALL_PIECES", 2)


def pushed_trees(hub, tmp_path: Path, catalogues: list[list[str]]) -> list[dict[str, bytes]]:
    """Each catalogue pushed in turn: the repo's files at each commit, as a mount of it would show them."""
    trees = []
    for number, products in enumerate(catalogues):
        sha = push_bundle(publish(tmp_path / "bundle", products), REPO, endpoint=hub.url).commit_sha
        trees.append({path: data for path, data in hub.files(REPO, sha).items() if path != ".gitattributes"})
        assert pieces.parse_head(trees[-1][pieces.HEAD], "test").count == len(products), number
    return trees


def mount(folder: Path, tree: dict[str, bytes]) -> Path:
    for path, data in tree.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def following(folder: Path, cache: Path, arrival: float) -> tuple[live.MountSource, webapp.Recommender, live.Follower]:
    source = live.MountSource(folder, cache, arrival=arrival)
    revision, bundle, images = source.first()
    recommender = webapp.Recommender(open_snapshot(StubEmbedder(), bundle, images, revision=revision))
    return source, recommender, live.Follower(recommender, source, every=3600, grace=0)


def test_a_mounted_repo_is_served_where_its_files_are(hub, tmp_path, small_pieces):
    (tree,) = pushed_trees(hub, tmp_path, [names(1000, 20)])
    folder = mount(tmp_path / "mount", tree)
    source, recommender, _ = following(folder, tmp_path / "cache", arrival=60)

    snapshot = recommender.snapshot
    assert sorted(snapshot.rows) == names(1000, 20)
    # No copy: the vectors and rows the revision reads are the mount's own files, and its pictures come from there.
    listed = list_vector_files(source.folders / snapshot.revision)
    assert len(listed) == 3 and all(Path(entry["path"]).is_relative_to(folder.resolve()) for entry in listed)
    assert snapshot.images.read(snapshot.row_of("1007.jpg")) == b"picture of 1007.jpg"
    product, found = recommender.similar("1007.jpg", 5)
    assert [m.filename for m in found] == brute_force(snapshot.bundle, product_vector("1007.jpg"), 6)[1:]


def test_a_new_revision_arriving_file_by_file_in_any_order_is_taken_once_complete_and_no_request_fails(
    hub, tmp_path, small_pieces
):
    old, changed, latest = names(1000, 40), names(1000, 30) + names(2000, 6), names(1000, 12) + names(2000, 8)
    trees = pushed_trees(hub, tmp_path, [old, changed, latest])
    folder = mount(tmp_path / "mount", trees[1])
    source, recommender, follower = following(folder, tmp_path / "cache", arrival=3600)
    served = {recommender.snapshot.revision: set(changed)}
    # The mount brings the newest commit one file at a time: its head first (the hardest case: every look until the
    # end finds pieces missing), then the rest in a random order, dropping the files that commit deletes among them.
    arriving = [path for path, data in trees[2].items() if trees[1].get(path) != data and path != pieces.HEAD]
    deleted = sorted(set(trees[1]) - set(trees[2]))
    assert deleted and len(arriving) >= 3  # (compaction dropped pieces: their files go)
    steps = [("add", path) for path in arriving] + [("delete", path) for path in deleted]
    steps = [("add", pieces.HEAD)] + [steps[i] for i in np.random.default_rng(3).permutation(len(steps))]

    stop, failures, answers = threading.Event(), [], []

    def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            snapshot = recommender.snapshot  # once per request, as app.py's handlers read it
            try:
                name = sorted(snapshot.rows)[int(rng.integers(len(snapshot.rows)))]
                product, found = recommender.similar(name, 5, snapshot=snapshot)
                picture = snapshot.images.read(found[0].row)
                answers.append((snapshot.revision, name, [m.filename for m in found], picture))
            except BaseException as exc:  # noqa: B036 (every failure is the test's business)
                failures.append(exc)

    clients = [threading.Thread(target=client, args=(seed,)) for seed in range(3)]
    for thread in clients:
        thread.start()
    taken_at = None
    try:
        for number, (what, path) in enumerate(steps):
            if what == "add":
                mount(folder, {path: trees[2][path]})
            else:
                (folder / path).unlink()
            if follower.check():
                taken_at = number
                served[recommender.snapshot.revision] = set(latest)
            count = len(answers)
            while len(answers) < count + 3 and not failures:
                time.sleep(0.005)
    finally:
        stop.set()
        for thread in clients:
            thread.join()

    assert not failures, failures[:3]
    named = {pieces.HEAD, *pieces.parse_head(trees[2][pieces.HEAD], "test").files()}
    complete = max(number for number, (what, path) in enumerate(steps) if what == "add" and path in named)
    assert 0 < complete and taken_at == complete  # at the look after its last file arrived, not one before
    assert sorted(recommender.snapshot.rows) == sorted(latest) and len(served) == 2
    for revision, name, found, picture in answers:  # each answer wholly from one revision: the one it names
        rows = sorted(served[revision])
        vectors = np.stack([product_vector(product) for product in rows])
        nearest = np.argsort(np.linalg.norm(vectors - product_vector(name), axis=1), kind="stable")[1:6]
        assert found == [rows[row] for row in nearest]
        assert picture == f"picture of {found[0]}".encode()


def test_a_piece_that_stays_wrong_is_refused_and_the_old_revision_keeps_serving(hub, tmp_path, small_pieces, caplog):
    trees = pushed_trees(hub, tmp_path, [names(1000, 20), names(1000, 20) + names(3000, 5)])
    folder = mount(tmp_path / "mount", trees[0])
    source, recommender, follower = following(folder, tmp_path / "cache", arrival=0.5)
    before = recommender.snapshot
    head = pieces.parse_head(trees[1][pieces.HEAD], "test")
    (new,) = [piece for piece in head.pieces if piece.path(pieces.VECTORS) not in trees[0]]
    damaged = dict(trees[1])
    vectors = bytearray(damaged[new.path(pieces.VECTORS)])
    vectors[-3] ^= 1  # the same size, another float
    damaged[new.path(pieces.VECTORS)] = bytes(vectors)
    mount(folder, damaged)

    with caplog.at_level(logging.INFO, logger="fashion_search.live"):
        assert not follower.check()  # within the arrival time: "not yet", looked at again
        assert not follower.refused
        time.sleep(0.6)
        assert not follower.check()  # past it: refused, once
        assert not follower.check()
    assert list(follower.refused) == [source.head()] and "vectors.npy" in follower.refused[source.head()]
    assert recommender.snapshot is before
    assert recommender.similar("1003.jpg", 3)[0].filename == "1003.jpg"
    refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(refusals) == 1 and "refused, still serving" in refusals[0]


def test_a_start_waits_for_the_pieces_its_head_names(hub, tmp_path, small_pieces):
    (tree,) = pushed_trees(hub, tmp_path, [names(1000, 12)])
    folder = mount(tmp_path / "mount", {path: data for path, data in tree.items() if not path.endswith(".tar")})
    late = {path: data for path, data in tree.items() if path.endswith(".tar")}
    threading.Timer(0.5, mount, (folder, late)).start()
    source = live.MountSource(folder, tmp_path / "cache", arrival=30)
    revision, bundle, _ = source.first(wait=0.2)
    assert sorted(bundle.filenames) == names(1000, 12)

    (folder / next(iter(late))).unlink()  # a piece that never comes: refused once the arrival time is over
    (folder / pieces.HEAD).write_bytes(tree[pieces.HEAD] + b" ")
    with pytest.raises(webapp.BundleError, match="images.tar"):
        live.MountSource(folder, tmp_path / "cache2", arrival=0.3).first(wait=0.1)


def test_a_start_reads_no_picture_and_a_damaged_one_fails_only_its_own_request(hub, tmp_path, small_pieces, caplog):
    """The pictures are checked as they are read (rows.json says where each lies and its digest): a start does not
    read them, and a damaged one is refused when asked for, while the others and the searches are served."""
    (tree,) = pushed_trees(hub, tmp_path, [names(1000, 20)])
    head = pieces.parse_head(tree[pieces.HEAD], "test")
    piece = head.pieces[1]
    listing = json.loads(tree[piece.path(pieces.ROWS)])
    victim, (offset, size) = listing["filenames"][2], listing["image_spans"][2]
    tar = bytearray(tree[piece.path(pieces.TAR)])
    assert bytes(tar[offset : offset + size]) == f"picture of {victim}".encode()
    tar[offset] ^= 1  # the same size: only reading it tells
    folder = mount(tmp_path / "mount", {**tree, piece.path(pieces.TAR): bytes(tar)})

    source, recommender, _ = following(folder, tmp_path / "cache", arrival=60)  # the start: nothing of it read
    snapshot = recommender.snapshot
    with caplog.at_level(logging.ERROR, logger="fashion_search.images"):
        with pytest.raises(OSError, match="does not match its digest"):  # (the file route: "not found")
            recommender.picture(snapshot.revision, victim)
    assert len(caplog.records) == 1 and victim in caplog.records[0].getMessage()
    for name in names(1000, 20):
        if name != victim:
            assert recommender.picture(snapshot.revision, name)[0] == f"picture of {name}".encode()
    product, found = recommender.similar(victim, 5)  # its vector and metadata are sound: it is still searched
    assert [m.filename for m in found] == brute_force(snapshot.bundle, product_vector(victim), 6)[1:]


def indexed_mount(tmp_path: Path, count: int, lists: int, dims: int) -> tuple[Path, list[str], np.ndarray]:
    """A catalogue of `count` products with random DIM-d vectors and the approximate index, as a mounted repo of
    its push shows it; (the mount, the products, their vectors)."""
    from big_catalogue import styles_row, tiny_jpeg
    from mounted import write_mount

    from fashion_search import approximate
    from fashion_search.bundle import IMAGES, write_bundle
    from fashion_search.imaging import PREPROCESSING_ID

    bundle = tmp_path / "bundle"
    (bundle / IMAGES).mkdir(parents=True)
    pictures = []
    for number in range(16):  # every product's picture a hard link to one of 16 tiny JPEGs
        pictures.append(tmp_path / f"picture-{number}.jpg")
        pictures[-1].write_bytes(tiny_jpeg(number))
    products = [f"{10_000 + number}.jpg" for number in range(count)]
    for number, name in enumerate(products):
        os.link(pictures[number % 16], bundle / IMAGES / name)
    vectors = np.random.default_rng(0).standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    data = approximate.train(vectors, lists=lists, dims=dims)
    write_bundle(
        bundle,
        embeddings=vectors,
        filenames=products,
        model=MODEL,
        preprocessing=PREPROCESSING_ID,
        metadata=[styles_row(10_000 + number) for number in range(count)],
        sources=["0" * 64] * count,
        index_files=approximate.write(bundle, data),
    )
    return write_mount(bundle, tmp_path / "mount", log=lambda _: None), products, vectors


def test_a_mounted_index_answers_from_the_pieces_files_then_from_its_codes_put_together(tmp_path, small_pieces):
    """The approximate index of a mounted revision is read where its pieces' files lie: its first answer does not
    wait for the codes to be read whole; once it has answered, they are put together in list order in the
    background, every file checked, and the answers stay the same (and the brute force's: all lists probed)."""
    from fashion_search import approximate, codes

    folder, products, vectors = indexed_mount(tmp_path, 300, lists=16, dims=8)
    source, recommender, _ = following(folder, tmp_path / "cache", arrival=0)
    snapshot = recommender.snapshot
    index = snapshot.searcher.index
    assert isinstance(index, approximate.ApproximateIndex) and index.in_place
    assert len(snapshot.bundle.embeddings.parts) == len(pieces.read_head(folder / pieces.HEAD, "").pieces) > 30

    def answers() -> list[list[tuple[str, float]]]:
        return [
            [(m.filename, round(m.distance, 6)) for m in recommender.similar(name, 5)[1]] for name in products[::37]
        ]

    before = answers()  # (each a search from the pieces' files: the first also starts the putting together)
    index.settle().join(60)
    assert not index.in_place and (source.folders / snapshot.revision / f"{codes.ASSEMBLED}.npy").is_file()
    assert answers() == before
    for number, name in enumerate(products[::37]):
        assert [f for f, _ in before[number]] == brute_force(snapshot.bundle, vectors[products.index(name)], 6)[1:]


def test_a_damaged_index_file_on_the_mount_fails_requests_once_found_not_the_server(tmp_path, small_pieces, caplog):
    """A piece's codes file changed on the mount (the same size): the start does not read it whole, so it is found
    when the index is put together after the first answer; from then on every search fails with the clear message,
    and the server stays up."""
    folder, products, _ = indexed_mount(tmp_path, 300, lists=16, dims=8)
    head = pieces.read_head(folder / pieces.HEAD, "test")
    codes = folder / head.pieces[2].index_files[1]
    damaged = bytearray(codes.read_bytes())
    damaged[-3] ^= 1
    codes.write_bytes(bytes(damaged))
    source, recommender, _ = following(folder, tmp_path / "cache", arrival=0)
    index = recommender.snapshot.searcher.index

    with caplog.at_level(logging.ERROR):
        assert len(recommender.similar(products[0], 5)[1]) == 5  # answered: its distances are the vectors'
        index.settle().join(60)
        for name in products[:2]:
            with pytest.raises(webapp.QueryError) as raised:
                recommender.similar(name, 5)
            assert str(raised.value) == webapp.DAMAGED and str(folder) not in str(raised.value)
    said = {
        name: [r.getMessage() for r in caplog.records if r.name == f"fashion_search.{name}"]
        for name in ("approximate", "webapp")
    }
    assert len(said["approximate"]) == 1 and f"{codes.name} does not match its sha256" in said["approximate"][0]
    assert len(said["webapp"]) == 2  # one line for each request refused
    assert index.in_place  # nothing was put together from it


def publish_indexed(folder: Path, products: list[str], previous: Path | None = None) -> Path:
    """Build a bundle of `products` with the approximate index beside `folder` and swap it in, as precompute.py
    does: trained anew, or carried over from the `previous` bundle's (its rows keep their lists)."""
    from fashion_search import approximate
    from fashion_search.bundle import load_bundle

    publish(folder, products)
    bundle = load_bundle(folder)
    if previous is None:
        data = approximate.train(np.asarray(bundle.embeddings), lists=16, dims=8)
    else:
        before = load_bundle(previous)
        old = approximate.load(before.root, before.embeddings).data
        at = {name: row for row, name in enumerate(before.filenames)}
        old_rows = np.array([at.get(name, -1) for name in bundle.filenames])
        data = approximate.update(old, np.asarray(bundle.embeddings), old_rows)
    manifest = json.loads((folder / "manifest.json").read_text())
    names = approximate.write(folder, data)
    for name in names:
        manifest["files"][name] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def pushed_indexed(hub, tmp_path: Path, catalogues: list[list[str]]) -> list[dict[str, bytes]]:
    """Each catalogue built with the approximate index (carried over from the one before) and pushed in turn: the
    repo's files at each commit, as a mount of it would show them."""
    trees = []
    for products in catalogues:
        previous = tmp_path / f"copy-{len(trees)}" if trees else None  # the bundle before, for the index carried over
        publish_indexed(tmp_path / "bundle", products, previous)
        shutil.copytree(tmp_path / "bundle", tmp_path / f"copy-{len(trees) + 1}")
        sha = push_bundle(tmp_path / "bundle", REPO, endpoint=hub.url).commit_sha
        trees.append({path: data for path, data in hub.files(REPO, sha).items() if path != ".gitattributes"})
    return trees


def test_a_base_is_carried_through_a_revision_that_did_not_write_its_own(hub, tmp_path, small_pieces):
    """A small change (2 sold out, 2 new of 120: under REASSEMBLE_SHARE) keeps its base and writes no codes of its
    own; the next revision still finds that base through it (the same file), though the revision that wrote it may be
    gone, and answers as the brute force."""
    from fashion_search import codes

    first = names(1000, 120)
    second = [name for name in first if name not in ("1005.jpg", "1050.jpg")] + names(3000, 2)
    third = [name for name in second if name not in ("1013.jpg", "1090.jpg")] + names(4000, 2)
    trees = pushed_indexed(hub, tmp_path, [first, second, third])
    folder = mount(tmp_path / "mount", trees[0])
    source, recommender, follower = following(folder, tmp_path / "cache", arrival=0)
    recommender.similar(first[0], 5)
    recommender.snapshot.searcher.index.settle().join(60)
    written = os.stat(source.folders / recommender.snapshot.revision / f"{codes.ASSEMBLED}.npy").st_ino

    mount(folder, trees[1])
    assert follower.check()
    index = recommender.snapshot.searcher.index
    assert isinstance(index.codes, codes.OnBase) and index.codes.stale <= codes.REASSEMBLE_SHARE * len(second)
    recommender.similar(second[0], 5)
    index.settle().join(60)
    assert isinstance(index.codes, codes.OnBase)  # (not due: nothing written)
    assert not (source.folders / recommender.snapshot.revision / f"{codes.ASSEMBLED}.npy").exists()

    mount(folder, trees[2])
    assert follower.check()
    snapshot = recommender.snapshot
    assert isinstance(snapshot.searcher.index.codes, codes.OnBase)
    assert os.stat(source.folders / snapshot.revision / f"{codes.BASE}.npy").st_ino == written
    for name in [*third[::11], *names(4000, 2)]:
        found = [m.filename for m in recommender.similar(name, 5)[1]]
        assert found == brute_force(snapshot.bundle, product_vector(name), 6)[1:]
        assert not {"1005.jpg", "1050.jpg", "1013.jpg", "1090.jpg"} & set(found)


def test_a_swap_reads_only_the_new_pieces_codes_the_earlier_revisions_put_together_are_its_base(
    hub, tmp_path, small_pieces
):
    """Issue 30: the codes an earlier revision put together after its first answer are linked as the new revision's
    base (the same file, one set of pages): a swap reads the new pieces' codes and not the unchanged pieces' (their
    files stay out of the page cache), answers as the brute force over the live products, and never returns one
    sold out since."""
    from mounted import drop_cached, resident

    from fashion_search import codes

    first, sold, new = names(1000, 120), names(1000, 120)[5::12], names(3000, 10)
    second = [name for name in first if name not in sold] + new
    trees = pushed_indexed(hub, tmp_path, [first, second])
    folder = mount(tmp_path / "mount", trees[0])
    source, recommender, follower = following(folder, tmp_path / "cache", arrival=0)
    index = recommender.snapshot.searcher.index
    recommender.similar(first[0], 5)  # the first answer: its codes are put together
    index.settle().join(60)
    assert isinstance(index.codes, codes.InList)

    heads = [pieces.parse_head(tree[pieces.HEAD], "test") for tree in trees]
    kept = {piece.index_files[1] for piece in heads[0].pieces} & {piece.index_files[1] for piece in heads[1].pieces}
    fresh = {piece.index_files[1] for piece in heads[1].pieces} - kept
    assert kept and fresh
    mount(folder, trees[1])
    drop_cached([folder / path for path in kept | fresh])
    assert follower.check()

    snapshot = recommender.snapshot
    index = snapshot.searcher.index
    assert isinstance(index.codes, codes.OnBase) and sorted(snapshot.rows) == sorted(second)
    # 10 sold out and 10 new of 120: more than REASSEMBLE_SHARE, so once it has answered they are put together
    # anew, from the base and the new pieces' files (in the background: perhaps during the queries below).
    assert index.codes.stale > codes.REASSEMBLE_SHARE * len(second)
    for name in [*second[::9], *new]:
        product, found = recommender.similar(name, 5)
        assert [m.filename for m in found] == brute_force(snapshot.bundle, product_vector(name), 6)[1:]
        assert not set(sold) & {m.filename for m in found}
    read = resident([folder / path for path in kept | fresh])
    assert sum(read.get(str(folder / path), 0) for path in kept) == 0  # the unchanged pieces' codes: not read
    assert all(read.get(str(folder / path), 0) > 0 for path in fresh)  # the new pieces': read where they lie

    index.settle().join(60)
    assert isinstance(index.codes, codes.InList)
    for name in [*second[::9], *new]:
        assert [m.filename for m in recommender.similar(name, 5)[1]] == brute_force(
            snapshot.bundle, product_vector(name), 6
        )[1:]
    assert sum(resident([folder / path for path in kept]).values()) == 0


def test_a_start_on_a_mounted_200k_folder_reads_its_listings_not_its_pictures_nor_its_index_rows_whole(
    tmp_path, monkeypatch
):
    """What a start reads of a mounted 200k revision with the approximate index, until its first answer and that
    answer's pictures: measured as the page cache holds the folder's files afterwards (readahead included), after
    they were all dropped from it. Its pictures are read only for the answer, its vectors and index codes only where
    the index's check and the search read them; the rest is its listings (names, digests, metadata) and lists."""
    from big_catalogue import tiny_jpeg
    from mounted import drop_cached, resident, revision_files

    from fashion_search import approximate

    monkeypatch.setattr(approximate, "DEFAULT_DEPTH", approximate.Depth(2, 128))  # (an index tuned shallow)
    folder, products, vectors = indexed_mount(tmp_path, 200_000, lists=1024, dims=DIM)
    files = revision_files(folder)
    paths = [folder / path for path in files]
    drop_cached(paths)
    assert sum(resident(paths).values()) < 0.01 * sum(files.values())  # (the measure: nothing held before)

    source = live.MountSource(folder, tmp_path / "cache", arrival=0)
    revision, loaded, images = source.first()
    snapshot = open_snapshot(StubEmbedder(), loaded, images, revision=revision)
    (found,) = snapshot.searcher.matches(vectors[123:124], 5)
    assert found[0].filename == products[123]
    assert [images.read(m.row) for m in found] == [tiny_jpeg((int(m.filename[:-4]) - 10_000) % 16) for m in found]

    held = resident(paths)
    read = {kind: 0 for kind in ("pictures", "vectors", "codes", "the rest")}
    for path in files:
        read[_kind(path)] += held.get(str(folder / path), 0)
    total = {kind: sum(size for path, size in files.items() if _kind(path) == kind) for kind in read}
    scanned = snapshot.searcher.index.search_counted(vectors[123:124], 5)[1][0, 0]
    assert read["pictures"] <= 5 * 256 * 1024  # the answer's 5 pictures (and the kernel's readahead around them)
    assert read["vectors"] <= 0.5 * total["vectors"]  # the rows the index's check and the search read (16-d here)
    # The codes: a page for each row the search scanned and the index's check read (64 rows to a page, none across
    # two), and each file's first (its header), at most.
    headers = len(snapshot.bundle.embeddings.parts)
    assert read["codes"] <= 4096 * (scanned + approximate.CHECK_ROWS + headers) < 0.5 * total["codes"], read
    assert read["the rest"] >= 0.9 * total["the rest"]  # listings and lists: read whole, and checked
    assert sum(read.values()) <= 0.5 * sum(files.values()), (read, total)
    print(f"read at start: {read} of {total}, {scanned} rows scanned")

    snapshot.searcher.index.settle().join(120)  # then put together, every codes file read and checked
    assert not snapshot.searcher.index.in_place
    assert [m.filename for m in snapshot.searcher.matches(vectors[123:124], 5)[0]] == [m.filename for m in found]


def _kind(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    kinds = {"images.tar": "pictures", "vectors.npy": "vectors"}
    return "codes" if name.startswith("codes-") else kinds.get(name, "the rest")


def test_a_damaged_vector_in_the_served_revision_fails_requests_with_a_clear_message_not_the_server(
    hub, tmp_path, small_pieces, caplog
):
    (tree,) = pushed_trees(hub, tmp_path, [names(1000, 20)])
    piece = pieces.parse_head(tree[pieces.HEAD], "test").pieces[0]
    vectors = bytearray(tree[piece.path(pieces.VECTORS)])
    vectors[-5] ^= 1  # its last row
    folder = mount(tmp_path / "mount", {**tree, piece.path(pieces.VECTORS): bytes(vectors)})
    source, recommender, _ = following(folder, tmp_path / "cache", arrival=0)  # a start does not read the vectors

    with caplog.at_level(logging.ERROR, logger="fashion_search.webapp"):
        for name in ("1000.jpg", "1015.jpg"):  # the exact search reads, and checks, every row
            with pytest.raises(webapp.QueryError) as raised:
                recommender.similar(name, 5)
            assert str(raised.value) == webapp.DAMAGED and str(folder) not in str(raised.value)
    assert all("vectors.npy: vector row" in record.getMessage() for record in caplog.records)
    assert len(caplog.records) == 2
