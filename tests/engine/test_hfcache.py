"""Download state from Hugging Face cache trees built on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path

from modeld.adapters.hfcache import download_state, human_size
from tests.support import EngineFactory, make_config


def cached_model(
    cache: Path,
    hf_path: str,
    files: dict[str, bytes],
    incomplete: bool = False,
    index_names: list[str] | None = None,
) -> Path:
    """A cache entry laid out as huggingface_hub does: blobs, and a snapshot of symlinks."""
    repo = cache / f"models--{hf_path.replace('/', '--')}"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for index, (name, content) in enumerate(files.items()):
        blob = blobs / f"sha{index}"
        blob.write_bytes(content)
        os.symlink(blob, snapshot / name)
    if index_names is not None:
        weight_map = {f"layer{i}": name for i, name in enumerate(index_names)}
        (snapshot / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": weight_map})
        )
    if incomplete:
        (blobs / "shaX.incomplete").write_bytes(b"x" * 10)
    return repo


def test_complete_download_with_all_shards(tmp_path: Path) -> None:
    """Every shard the index names is there: complete, with its size."""
    cached_model(
        tmp_path,
        "org/m",
        {"a.safetensors": b"1" * 1000, "b.safetensors": b"2" * 24},
        index_names=["a.safetensors", "b.safetensors"],
    )
    state = download_state(tmp_path, "org/m")
    assert state is not None
    assert (state.bytes, state.complete) == (1024, True)
    assert human_size(state.bytes) == "1.0KB"


def test_missing_shard_or_partial_blob_is_incomplete(tmp_path: Path) -> None:
    """A shard named in the index but absent, or a blob still downloading: incomplete."""
    cached_model(
        tmp_path,
        "org/shard",
        {"a.safetensors": b"1"},
        index_names=["a.safetensors", "b.safetensors"],
    )
    missing = download_state(tmp_path, "org/shard")
    assert missing is not None and not missing.complete
    assert missing.reason == "missing b.safetensors"
    cached_model(tmp_path, "org/partial", {"a.safetensors": b"1"}, incomplete=True)
    partial = download_state(tmp_path, "org/partial")
    assert partial is not None and not partial.complete
    assert download_state(tmp_path, "org/absent") is None


async def test_status_follows_the_cache(engines: EngineFactory, tmp_path: Path) -> None:
    """status reports the download off the request path, and notices when it completes."""
    config = make_config(
        {"alpha": {"gpu_memory_gb": 10, "hf_path": "org/alpha"}}, [60], hf_cache_dir=str(tmp_path)
    )
    repo = cached_model(tmp_path, "org/alpha", {"w.safetensors": b"1" * 2048}, incomplete=True)
    engine, _, _ = await engines(config)
    view = engine.view.status().models["alpha"]
    assert view.downloaded_size == "2.0KB"
    assert view.download is not None and view.download.complete is False
    (repo / "blobs" / "shaX.incomplete").rename(repo / "blobs" / "shaY")
    os.utime(repo / "blobs", (1, 1))  # a distinct mtime, however fast the test runs
    await engine.poll_once()
    view = engine.view.status().models["alpha"]
    assert view.download is not None and view.download.complete is True
    assert view.download.bytes == 2048 + 10
