"""docs/recipes.md's configurations are ones modeld accepts, sized as the text says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from modeld.core.config import parse_config
from modeld.core.config_checks import never_fits
from modeld.core.memory import model_need

ROOT = Path(__file__).resolve().parents[2]


def toml_blocks() -> list[str]:
    """The ```toml blocks of docs/recipes.md."""
    text = (ROOT / "docs" / "recipes.md").read_text()
    return re.findall(r"```toml\n(.*?)```", text, re.S)


def test_the_docker_recipe_is_valid_and_sized_as_written() -> None:
    """The three containers parse; each listens on a socket modeld chose, with
    `{socket}` filled; on an 80 GB GPU each fits alone, any two together, not three."""
    config = parse_config(tomllib.loads(toml_blocks()[0]), "docs/recipes.md")
    assert len(config.models) == 3
    for name, model in config.models.items():
        assert model.endpoint == f"unix:/run/modeld/backends/{name}.sock"
        assert f"/run/modeld/backends/{name}.sock" in (model.command or [])
        assert model.vllm_cache_dir == Path(f"/var/cache/modeld/vllm/{name}")
    totals = {0: 80.0}
    assert never_fits(config.models, totals) == []
    needs = sorted(model_need(m, totals).total_gb for m in config.models.values())
    assert needs[-1] + needs[-2] <= 80 < sum(needs)
    assert config.canonical("coder") == "qwen-coder-14b"


def test_the_process_recipe_is_valid() -> None:
    """The process-runtime model parses with its socket filled in."""
    config = parse_config(tomllib.loads(toml_blocks()[1]), "docs/recipes.md")
    model = config.models["qwen-7b"]
    assert model.runtime == "process"
    assert "/run/modeld/backends/qwen-7b.sock" in (model.command or [])


def test_the_shipped_config_is_the_docker_recipe() -> None:
    """etc/modeld/modeld.toml, what install.md installs, runs the recipe's three models in
    containers modeld makes (one config to keep right, not two)."""
    shipped = parse_config(tomllib.loads((ROOT / "etc/modeld/modeld.toml").read_text()))
    recipe = parse_config(tomllib.loads(toml_blocks()[0]), "docs/recipes.md")
    assert set(shipped.models) == set(recipe.models)
    for name, model in shipped.models.items():
        theirs = recipe.models[name]
        assert model.image == theirs.image and model.container is None
        assert model.command == theirs.command
        assert model.volumes == theirs.volumes
        assert model.gpu_memory_utilization == theirs.gpu_memory_utilization
        assert model.aliases == theirs.aliases
        assert model.served_name == name
    assert shipped.daemon.cache_dir == recipe.daemon.cache_dir
