"""Models in the local Hugging Face cache: size on disk and whether the download looks
complete (the seed's `downloaded_size`, without its per-request disk walk).

Everything here walks the disk: call it off the event loop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Download:
    """A model's files in the cache."""

    bytes: int
    complete: bool
    reason: str | None = None


def hf_cache_dir(configured: Path | None) -> Path:
    """The hub cache: the configured path, else HF_HUB_CACHE, HF_HOME/hub, ~/.cache/..."""
    if configured is not None:
        return configured
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def _repo(cache: Path, hf_path: str) -> Path:
    return cache / f"models--{hf_path.replace('/', '--')}"


def signature(cache: Path, hf_path: str) -> tuple[float, ...] | None:
    """Changes whenever files are added to or removed from the model's cache entry."""
    repo = _repo(cache, hf_path)
    try:
        return tuple(os.stat(repo / part).st_mtime for part in ("blobs", "snapshots"))
    except OSError:
        return None


def download_state(cache: Path, hf_path: str) -> Download | None:
    """Size and completeness of `org/name` in the cache, or None if nothing is there.

    Incomplete: a blob still being written (`*.incomplete`), or a safetensors index that
    names a shard missing from the snapshot.
    """
    repo = _repo(cache, hf_path)
    blobs = repo / "blobs"
    if not blobs.is_dir():
        return None
    total, partial = 0, False
    for entry in os.scandir(blobs):
        if entry.name.endswith(".incomplete"):
            partial = True
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    if partial:
        return Download(total, False, "a file is still downloading")
    snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
    if not snapshots:
        return Download(total, False, "no snapshot")
    snapshot = snapshots[-1]
    for index in snapshot.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return Download(total, False, f"{index.name} is unreadable")
        missing = sorted(s for s in shards if not (snapshot / s).exists())
        if missing:
            return Download(total, False, f"missing {missing[0]}")
    return Download(total, True)


def human_size(size: int | None) -> str | None:
    """Bytes as the seed showed them, e.g. "38.5GB"."""
    if size is None:
        return None
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TB"


def adapter_dir(cache: Path, adapter: str) -> Path | None:
    """Where a LoRA adapter's files are: `adapter` itself when it is a path (absolute, or
    starting with `.`), else the Hugging Face repo id's snapshot in the cache (the one
    `refs/main` names, else the newest); None when the cache has none."""
    if adapter.startswith(("/", ".")):
        return Path(adapter)
    repo = _repo(cache, adapter)
    try:
        revision = (repo / "refs" / "main").read_text().strip()
    except OSError:
        revision = ""
    if revision and (repo / "snapshots" / revision).is_dir():
        return repo / "snapshots" / revision
    try:
        snapshots = sorted((repo / "snapshots").iterdir(), key=lambda p: p.stat().st_mtime)
    except OSError:
        return None
    return snapshots[-1] if snapshots else None


# An adapter's rank and the base model it was trained on, as adapter_config.json says.
AdapterFacts = tuple[int | None, str | None]


def adapter_facts(path: Path) -> AdapterFacts | None:
    """An adapter directory's rank (`r`) and base model (`base_model_name_or_path`) from
    its adapter_config.json; None when there is no readable one."""
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    rank, base = config.get("r"), config.get("base_model_name_or_path")
    return (rank if isinstance(rank, int) else None, base if isinstance(base, str) else None)
