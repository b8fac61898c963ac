"""The API's schema: generated from the method table, committed, and kept true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from modeld.daemon.apischema import api_schema_text
from modeld.daemon.methods import API

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_api_schema_matches_the_method_table() -> None:
    """docs/api.schema.json is what `modeld api-schema` prints from the table today."""
    assert (ROOT / "docs" / "api.schema.json").read_text() == api_schema_text()


def test_modeld_prints_the_api_schema() -> None:
    """`modeld api-schema` prints it, for tools that generate clients."""
    printed = subprocess.run(
        [sys.executable, "-m", "modeld", "api-schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert printed.stdout == api_schema_text()


def test_every_documented_method_is_in_the_table_and_back() -> None:
    """docs/api.md documents each method of the table, and no other."""
    documented = (ROOT / "docs" / "api.md").read_text()
    for method in API:
        assert f"`{method.name}`" in documented, method.name
