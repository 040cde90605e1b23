"""The tour from the deck to the code names files, symbols and tests that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOUR = (ROOT / "docs" / "TOUR.md").read_text(encoding="utf-8")
DECK_ORDER = ["Token embedding", "Positional encoding", "Multi-head attention", "Causal masking",
              "Feed-forward network", "GELU", "Residual connections", "Layer normalisation",
              "Complete transformer block", "decoder-only", "MiniTransformer",
              "Key hyperparameters", "Temperature control", "Interactive demo", "generation loop"]


def references() -> list[tuple[str, str]]:
    """(file, name) for every `path::name` in the tour; a bare `::name` continues the last file."""
    found, last = [], None
    for path, name in re.findall(r"`((?:tests|minigpt)/[\w/]+\.py|app\.py)?::(\w+)", TOUR):
        last = path or last
        found.append((last, name))
    return found


def test_every_named_test_and_symbol_exists():
    refs = references()
    assert len(refs) > 30
    for path, name in refs:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^\s*(def|class) {name}\b", source, re.M), f"{path}::{name} is gone"


def test_every_file_the_tour_names_exists():
    for path in set(re.findall(r"`((?:minigpt|tests|docs|configs)/[\w/.]+\.(?:py|toml|md))", TOUR)):
        assert (ROOT / path).is_file(), path


def test_the_tour_follows_the_decks_order():
    headings = "\n".join(line for line in TOUR.splitlines() if line.startswith("## "))
    positions = [headings.lower().find(concept.lower()) for concept in DECK_ORDER]
    assert -1 not in positions, [c for c, p in zip(DECK_ORDER, positions) if p == -1]
    assert positions == sorted(positions)
