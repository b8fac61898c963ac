"""Sizes of models in the local Hugging Face cache (the seed's `downloaded_size`)."""

from __future__ import annotations

import os
from pathlib import Path


def hf_cache_dir(configured: Path | None) -> Path:
    """The hub cache: the configured path, else HF_HUB_CACHE, HF_HOME/hub, ~/.cache/..."""
    if configured is not None:
        return configured
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def downloaded_bytes(cache: Path, hf_path: str) -> int | None:
    """Bytes of `org/name` in the cache (blobs, counted once), or None if not downloaded.

    Walks the disk: call it off the event loop.
    """
    blobs = cache / f"models--{hf_path.replace('/', '--')}" / "blobs"
    if not blobs.is_dir():
        return None
    total = 0
    for entry in os.scandir(blobs):
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    return total


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
