"""The real-vLLM tier: vLLM for CPU from its own virtualenv (made by `.ci/vllm-venv`,
kept outside the repository) serving a tiny random Llama written on the spot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.realvllm import venv_path, write_tiny_llama
from tests.support.realvllm import vllm_python as find_vllm_python


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM virtualenv's Python; skip without one (fail where MODELD_REQUIRE_VLLM=1)."""
    python = find_vllm_python()
    if python is None:
        problem = f"no real-vLLM virtualenv at {venv_path()} (make it with .ci/vllm-venv)"
        if os.environ.get("MODELD_REQUIRE_VLLM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    return python


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its tokenizer in a fresh directory (nothing downloaded)."""
    return write_tiny_llama(vllm_python, tmp_path_factory.mktemp("tiny-llama"))
