"""fashion_search.shards: stable WebDataset shards of a bundle's images, and their safe unpacking."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from conftest import make_bundle

from fashion_search import shards
from fashion_search.bundle import (
    BundleFormatError,
    BundleHashMismatch,
    BundleMissingFile,
    BundleUnsafePath,
    load_bundle,
)
from fashion_search.shards import filename_of_member, index_shards, member_name, plan_shards, write_shard


def catalogue(count: int, first: int = 10000, changed: int | None = None) -> dict[str, bytes]:
    return {f"{i}.jpg": b"jpeg %d%s" % (i, b" new" if i == changed else b"") for i in range(first, first + count)}


@pytest.mark.parametrize(
    "name, member",
    [
        ("1163.jpg", "1163.jpg"),
        ("shoes/9.png", "shoes/9.png"),
        ("a.b.jpg", "a%2Eb.jpg"),
        ("50%.c.JPG", "50%25%2Ec.JPG"),
        ("v1.2/x.webp", "v1.2/x.webp"),
    ],
)
def test_member_names_keep_one_dot_per_product_and_map_back(name, member):
    assert member_name(name) == member
    assert filename_of_member(member) == name
    assert filename_of_member(member.rsplit(".", 1)[0] + ".json") is None  # the product's JSON


@pytest.mark.parametrize("name", ["README", ".jpg", "x.json", "dir/noext"])
def test_a_name_without_an_image_extension_cannot_be_packed(name):
    with pytest.raises(BundleFormatError, match="needs an image extension"):
        member_name(name)


@pytest.mark.slow  # a 44k-product catalogue
def test_shards_cover_the_catalogue_in_name_order_within_their_bounds(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", catalogue(6000)))
    plan = plan_shards(bundle)

    assert [name for shard in plan for name in shard.filenames] == sorted(bundle.filenames)
    assert len(plan) >= 2
    assert all(shards.SHARD_MIN_FILES <= len(s.filenames) <= shards.SHARD_MAX_FILES for s in plan[:-1])
    assert all(shards.SHARD_NAME.fullmatch(s.path) for s in plan) and len({s.path for s in plan}) == len(plan)
    assert plan_shards(load_bundle(bundle.root)) == plan


@pytest.mark.slow  # a 44k-product catalogue
def test_a_change_touches_only_the_shard_it_falls_in(tmp_path):
    before = {s.path for s in plan_shards(load_bundle(make_bundle(tmp_path / "a", catalogue(6000))))}
    grown = {s.path for s in plan_shards(load_bundle(make_bundle(tmp_path / "b", catalogue(6100))))}
    edited = {s.path for s in plan_shards(load_bundle(make_bundle(tmp_path / "c", catalogue(6000, changed=12345))))}

    assert len(grown - before) == 1 and len(before - grown) == 1  # the last shard, which the new names join
    assert len(edited - before) == 1 and len(before - edited) == 1


def test_a_shard_is_the_same_bytes_every_time_and_its_index_finds_each_image_where_it_lies(tmp_path):
    images = {"1163.jpg": b"a" * 700, "shoes/9.png": b"b" * 10, "a.b.jpg": b"c"}
    bundle = load_bundle(make_bundle(tmp_path / "b", images))
    (shard,) = plan_shards(bundle)
    first, second = (
        write_shard(shard, bundle.images_dir, tmp_path / "1.tar"),
        write_shard(shard, bundle.images_dir, tmp_path / "2.tar"),
    )
    assert first.read_bytes() == second.read_bytes()
    before = sorted(tmp_path.rglob("*"))

    spans = index_shards([first], bundle.manifest["files"], bundle.filenames)

    assert spans.dtype == shards.SPAN_DTYPE and len(spans) == len(bundle.filenames)
    content = first.read_bytes()
    for name, (number, offset, size) in zip(bundle.filenames, spans.tolist()):
        assert number == 0 and content[offset : offset + size] == images[name]
    assert sorted(tmp_path.rglob("*")) == before  # nothing unpacked, nothing written


def test_the_index_counts_shards_in_the_order_given(tmp_path):
    bundle = load_bundle(make_bundle(tmp_path / "b", catalogue(3)))
    names = bundle.filenames
    tars = [
        write_tar(tmp_path / f"{n}.tar", (name, (bundle.images_dir / name).read_bytes()))
        for n, name in enumerate(names)
    ]
    spans = index_shards(list(reversed(tars)), bundle.manifest["files"], names)
    assert spans["shard"].tolist() == [2, 1, 0]


# ---------------------------------------------------------------- hostile shards


def add_members(tar: tarfile.TarFile, *members: tarfile.TarInfo | tuple[str, bytes]) -> None:
    """Each member: a TarInfo as it is (a link, a device, a sparse PAX header with its map), or (name, content)."""
    for member in members:
        if isinstance(member, tarfile.TarInfo):
            data = b"1\n0\n512\n".ljust(512, b"\0") + b"A".ljust(512, b"\0") if member.pax_headers else b""
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
        else:
            info = tarfile.TarInfo(member[0])
            info.size = len(member[1])
            tar.addfile(info, io.BytesIO(member[1]))


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


def sparse_gnu(name: str, stored: bytes, declared: int) -> bytes:
    """A GNU sparse member (type S) of `stored` bytes on disk that declares `declared` bytes once expanded: how a
    tar bomb of 512 stored bytes declares 3 GB. tarfile cannot write one, so the header is made by hand."""
    info = tarfile.TarInfo(name)
    info.size = len(stored)
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    header[156:157] = tarfile.GNUTYPE_SPARSE
    header[386:398] = b"%011o\0" % 0  # one sparse map entry: offset 0 ...
    header[398:410] = b"%011o\0" % len(stored)  # ... of the stored bytes
    header[483:495] = b"%011o\0" % declared  # the size it expands to
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header[:512])
    padding = b"\0" * (-len(stored) % 512)
    return bytes(header) + stored + padding


def sparse_pax(name: str, declared: int) -> tarfile.TarInfo:
    """A PAX 1.0 sparse member (a regular type with GNU.sparse.* headers), as GNU tar writes with --sparse."""
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(declared),
    }
    return info


def write_tar(path: Path, *members: tarfile.TarInfo | tuple[str, bytes], raw: bytes = b"") -> Path:
    """A tar of `members`, then `raw` bytes (a hand-made member), then the end-of-archive blocks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_members(tar, *members)
        body = buffer.getvalue()[: tar.offset]
    path.write_bytes(body + raw + b"\0" * 1024)
    return path


MANIFEST = {"images/a.jpg": hashlib.sha256(b"A").hexdigest(), "images/d/b.jpg": hashlib.sha256(b"B").hexdigest()}
ORDER = ["a.jpg", "d/b.jpg"]
GOOD_B = ("d/b.jpg", b"B")


@pytest.mark.parametrize(
    "members, error, message",
    [
        ([link("a.jpg", "/etc/passwd", tarfile.SYMTYPE), GOOD_B], BundleUnsafePath, "is a link, not a plain file"),
        ([link("a.jpg", "../../x", tarfile.LNKTYPE), GOOD_B], BundleUnsafePath, "is a link, not a plain file"),
        ([device("a.jpg"), GOOD_B], BundleUnsafePath, "is a device or special file, not a plain file"),
        ([sparse_pax("a.jpg", 3 << 30), GOOD_B], BundleUnsafePath, "a sparse file .declaring 3,221,225,472 bytes"),
        ([("../a.jpg", b"A"), GOOD_B], BundleUnsafePath, "not an image of the bundle's manifest"),
        ([("/tmp/a.jpg", b"A"), GOOD_B], BundleUnsafePath, "not an image of the bundle's manifest"),
        ([("d/../../a.jpg", b"A"), GOOD_B], BundleUnsafePath, "not an image of the bundle's manifest"),
        ([("other.jpg", b"A"), GOOD_B], BundleUnsafePath, "not an image of the bundle's manifest"),
        ([("a.jpg", b"A"), ("../../a.json", b"{}"), GOOD_B], BundleUnsafePath, "not a product's JSON after its image"),
        ([("a.json", b"{}"), ("a.jpg", b"A"), GOOD_B], BundleUnsafePath, "not a product's JSON after its image"),
        ([("a.jpg", b"A"), ("a.jpg", b"A"), GOOD_B], BundleFormatError, "comes twice"),
        ([("a.jpg", b"not A"), GOOD_B], BundleHashMismatch, "does not match the manifest"),
        ([("a.jpg", b"A")], BundleMissingFile, "lack 1 images of the manifest, e.g. images/d/b.jpg"),
    ],
)
def test_an_unsafe_or_wrong_shard_is_refused_and_nothing_is_written(tmp_path, members, error, message):
    tar = write_tar(tmp_path / "x.tar", *members)
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(error, match=message):
        index_shards([tar], MANIFEST, ORDER)

    assert sorted(tmp_path.rglob("*")) == before


def test_a_gnu_sparse_member_declaring_3_gb_is_refused_without_expanding_it(tmp_path):
    tar = write_tar(tmp_path / "x.tar", GOOD_B, raw=sparse_gnu("a.jpg", b"A" * 512, 3 << 30))
    with tarfile.open(tar) as check:  # what a plain extraction would have written
        assert [(m.name, m.issparse(), m.size) for m in check] == [("d/b.jpg", False, 1), ("a.jpg", True, 3 << 30)]

    with pytest.raises(BundleUnsafePath, match=r"'a.jpg' is a sparse file \(declaring 3,221,225,472 bytes\)"):
        index_shards([tar], MANIFEST, ORDER)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is not a readable tar"),
        (b"PK\x03\x04 not a tar at all" * 40, "is not a readable tar"),
        (b"<html>503 Service Unavailable</html>", "is not a readable tar"),
    ],
    ids=["empty", "zip-like", "html"],
)
def test_a_shard_that_is_not_a_tar_is_refused_with_a_message(tmp_path, content, message):
    (tmp_path / "x.tar").write_bytes(content)
    with pytest.raises(BundleFormatError, match=rf"Shard x.tar {message} .*Start again"):
        index_shards([tmp_path / "x.tar"], MANIFEST, ORDER)


@pytest.mark.parametrize(
    "cut, message",
    [
        (700, r"member 'a.jpg': the shard ends inside it \(700 bytes\); it is truncated"),
        (1536 + 600, r"member 'd/b.jpg': the shard ends inside it \(2,136 bytes\); it is truncated"),
        (1536 + 200, r"Shard x.tar has no end-of-archive after its last member \(1,536 bytes in\): it is truncated"),
    ],
    ids=["in-data", "in-the-second-data", "in-a-header"],
)
def test_a_truncated_shard_is_refused(tmp_path, cut, message):
    whole = write_tar(tmp_path / "whole.tar", ("a.jpg", b"A" * 1000), ("d/b.jpg", b"B" * 1000)).read_bytes()
    (tmp_path / "x.tar").write_bytes(whole[:cut])
    manifest = {f"images/{name}": hashlib.sha256(data * 1000).hexdigest() for name, data in [("a.jpg", b"A"), GOOD_B]}

    with pytest.raises(BundleFormatError, match=message):
        index_shards([tmp_path / "x.tar"], manifest, ORDER)


def test_a_name_of_filenames_json_that_the_manifest_does_not_list_is_refused(tmp_path):
    tar = write_tar(tmp_path / "x.tar", ("a.jpg", b"A"), GOOD_B)
    with pytest.raises(BundleMissingFile, match="does not list images/c.jpg"):
        index_shards([tar], MANIFEST, [*ORDER, "c.jpg"])
