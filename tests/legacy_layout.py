"""Revisions in the layouts earlier versions pushed, made as they made them, so that tests can show they still load.

    sha = push_shards_layout(bundle_dir, "OWNER/NAME")   # the bundle's data files, shards.json, shards/<id>.tar

The shards layout (before the catalogue was split into pieces, fashion_search.pieces): the bundle's data files as
they are (manifest.json, embeddings.npy, filenames.json, sources.json, metadata.jsonl, the index's files), the images
in WebDataset shards (fashion_search.shards) and `shards.json` listing them.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi

from fashion_search.bundle import DATA_FILES, MANIFEST, load_bundle
from fashion_search.shards import plan_shards, write_shard


def push_shards_layout(bundle_dir: Path, repo_id: str, endpoint: str | None = None) -> str:
    """Commit the bundle at `bundle_dir` to `repo_id` in the shards layout, as one commit; its sha."""
    bundle = load_bundle(bundle_dir)
    plan = plan_shards(bundle)
    api = HfApi(endpoint=endpoint)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        adds = [
            CommitOperationAdd(shard.path, write_shard(shard, bundle.images_dir, Path(tmp) / f"{n}.tar"))
            for n, shard in enumerate(plan)
        ]
        data = [MANIFEST, *(name for name in DATA_FILES if name in bundle.manifest["files"])]
        adds += [CommitOperationAdd(name, bundle_dir / name) for name in data]
        listing = {"format_version": 1, "shards": [{"path": s.path, "count": len(s.filenames)} for s in plan]}
        adds.append(CommitOperationAdd("shards.json", json.dumps(listing, indent=1).encode()))
        return api.create_commit(repo_id, adds, repo_type="dataset", commit_message="shards layout").oid
