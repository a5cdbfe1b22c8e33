"""The shared conformance vectors (../shared/capi/normalization-vectors.json) reproduce exactly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumer.normalize import Normalized, Normalizer, Omission

# The `shared` folder beside the repository is the single source of the vectors; never a copy.
VECTORS_PATH = Path(__file__).resolve().parents[2] / ".." / "shared" / "capi" / "normalization-vectors.json"


def _load() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
    return rows


VECTORS = _load()


def test_the_shared_file_holds_all_77_vectors() -> None:
    assert len(VECTORS) == 77


@pytest.mark.parametrize(
    "row", VECTORS, ids=[f"{i:02d}-{r['field']}-{r['note'] or 'plain'}" for i, r in enumerate(VECTORS)]
)
def test_vector_reproduces_exactly(row: dict[str, Any]) -> None:
    normalizer = Normalizer(default_phone_region=row["default_phone_region"])
    result = normalizer.normalize(row["field"], row["input"], country_hint=row["country_hint"])
    if row["normalized"] is None:
        assert isinstance(result, Omission)
        assert result.field == row["field"]
    else:
        assert isinstance(result, Normalized)
        assert result.normalized == row["normalized"]
        assert result.value == row["sha256"]


# Meta's customer-information page: raw input, normalized value, and the hash's first/last
# characters as quoted in capi-reference §3.3.
META_WORKED_EXAMPLES = [
    ("em", "John_Smith@gmail.com", None, "john_smith@gmail.com", "62a14e44", "0f62f"),
    ("ph", "(650)555-1212", "US", "16505551212", "e323ec62", "3176"),
    ("fn", "Mary", None, "mary", "6915771b", "49f4ec"),
    ("ln", "정", None, "정", "8fa8cd9c", "51db14"),
    ("fn", "Valéry", None, "valéry", "08e1996b", "17149c"),
    ("db", "2/16/1997", None, "19970216", "01acdbf6", "40f0c"),
    ("country", "United States", None, "us", "79adb2a2", "904621"),
]


@pytest.mark.parametrize(("field", "raw", "hint", "normalized", "head", "tail"), META_WORKED_EXAMPLES)
def test_metas_seven_worked_examples(
    field: str, raw: str, hint: str | None, normalized: str, head: str, tail: str
) -> None:
    result = Normalizer().normalize(field, raw, country_hint=hint)
    assert isinstance(result, Normalized)
    assert result.normalized == normalized
    assert result.value.startswith(head)
    assert result.value.endswith(tail)
