"""Plugin descriptions: read from source without importing, equal to the imported plugin; README's plugin table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robench import describe, registry

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("kind", ["defenses", "attacks"])
def test_attributes_read_from_source_equal_the_imported_classes(kind):
    for name in registry.names(kind):
        static = describe.summary(kind, name).attributes
        loaded = registry.load(kind, name)
        assert static == {key: getattr(loaded, key) for key in describe.ATTRIBUTES[kind] if hasattr(loaded, key)}, name


@pytest.mark.parametrize("kind", list(registry.GROUPS))
def test_every_plugin_has_a_description(kind):
    for name in registry.names(kind):
        assert len(describe.summary(kind, name).description) > 10, f"{kind} {name} has no docstring"


def test_first_sentence_keeps_abbreviations_and_whole_words():
    text = "PGD (Madry et al. 2018), e.g. with restarts.\n    More text. And more."
    assert describe.first_sentence(text) == "PGD (Madry et al. 2018), e.g. with restarts"


def test_option_docs_come_from_the_args_sections_along_the_hierarchy():
    table = " ".join(describe.options_table(registry.load("attacks", "restored-pgd")).split())
    assert "steps int 20 iterations" in table and "targeted bool false descend the cross-entropy" in table


def _readme_plugin_table() -> dict[str, str]:
    section = README.read_text().split("## What is registered", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {kind.strip(): names for kind, names in rows[1:]}


def test_the_readme_plugin_table_lists_exactly_the_registered_plugins():
    table = _readme_plugin_table()
    assert set(table) == set(registry.GROUPS)
    for kind, cell in table.items():
        quoted = re.findall(r"`([^`]+)`", cell)
        named = {q.split(":")[0] for q in quoted if re.fullmatch(r"[a-z][a-z0-9-]*(:.*)?", q)}
        registered = set(registry.names(kind))
        assert registered - named == set(), f"README's {kind} row omits {sorted(registered - named)}"
        assert named - registered == set(), f"README's {kind} row names unregistered {sorted(named - registered)}"
