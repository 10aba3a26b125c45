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
from fashion_search.shards import extract_shards, filename_of_member, member_name, plan_shards, write_shard


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


def test_a_shard_is_the_same_bytes_every_time_and_unpacks_to_the_bundles_images(tmp_path):
    images = {"1163.jpg": b"a" * 700, "shoes/9.png": b"b" * 10, "a.b.jpg": b"c"}
    bundle = load_bundle(make_bundle(tmp_path / "b", images))
    (shard,) = plan_shards(bundle)
    first, second = (
        write_shard(shard, bundle.images_dir, tmp_path / "1.tar"),
        write_shard(shard, bundle.images_dir, tmp_path / "2.tar"),
    )
    assert first.read_bytes() == second.read_bytes()

    extract_shards([first], tmp_path / "out", bundle.manifest["files"])

    assert {
        p.relative_to(tmp_path / "out" / "images").as_posix(): p.read_bytes()
        for p in (tmp_path / "out" / "images").rglob("*")
        if p.is_file()
    } == images


# ---------------------------------------------------------------- hostile shards


def hostile_tar(path: Path, *members: tarfile.TarInfo | tuple[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


MANIFEST = {"images/a.jpg": hashlib.sha256(b"A").hexdigest(), "images/d/b.jpg": hashlib.sha256(b"B").hexdigest()}


@pytest.mark.parametrize(
    "members, error, message",
    [
        ([link("a.jpg", "/etc/passwd", tarfile.SYMTYPE)], BundleUnsafePath, "link or a device"),
        ([link("a.jpg", "../../x", tarfile.LNKTYPE)], BundleUnsafePath, "link or a device"),
        ([device("a.jpg")], BundleUnsafePath, "link or a device"),
        ([("../a.jpg", b"A")], BundleUnsafePath, "not an image of the bundle's manifest"),
        ([("/tmp/a.jpg", b"A")], BundleUnsafePath, "not an image of the bundle's manifest"),
        ([("d/../../a.jpg", b"A")], BundleUnsafePath, "not an image of the bundle's manifest"),
        ([("other.jpg", b"A")], BundleUnsafePath, "not an image of the bundle's manifest"),
        ([("a.jpg", b"A"), ("a.jpg", b"A")], BundleFormatError, "comes twice"),
        ([("a.jpg", b"not A")], BundleHashMismatch, "does not match the manifest"),
        ([("a.jpg", b"A")], BundleMissingFile, "lack 1 images of the manifest, e.g. images/d/b.jpg"),
    ],
)
def test_an_unsafe_or_wrong_shard_is_refused_and_nothing_lands_outside(tmp_path, members, error, message):
    tar = hostile_tar(tmp_path / "x.tar", *members)
    root = tmp_path / "sandbox" / "bundle"
    root.mkdir(parents=True)

    with pytest.raises(error, match=message):
        extract_shards([tar], root, MANIFEST)

    outside = [p for p in tmp_path.rglob("*") if p != tar and root not in (p, *p.parents) and p != root.parent]
    assert outside == []
    assert not [p for p in root.rglob("*") if p.is_symlink()]
