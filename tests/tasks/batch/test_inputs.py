"""Batch input rows: accepted shapes, deterministic ids, bad rows named by file:line, duplicate ids fatal."""

from __future__ import annotations

import json

import pytest

from tasks.batch.inputs import IGNORED_KEYS, parse_input
from tasks.errors import DatasetError


def _jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def test_rows_of_every_accepted_shape_become_records() -> None:
    text = _jsonl(
        {"id": "a", "messages": [{"role": "user", "content": "Reverse: a b"}]},
        {"id": 7, "prompt": "Uppercase: c d"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: b a"},
                      {"role": "assistant", "content": "a b"}]},
        "",
        {"id": "cap", "prompt": "Reverse: x y", "response": {"text": "y x"}, "captured_at": "2026-11-22T01:00:00Z"},
    )
    data = parse_input("in.jsonl", text)
    assert data.errors == [] and data.rows == 4
    assert [r.id for r in data.records][:2] == ["a", "7"]
    assert data.records[1].as_messages() == [{"role": "user", "content": "Uppercase: c d"}]
    # a final assistant answer (a test split, a captured exchange) is not part of the prompt
    assert data.records[2].as_messages() == [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Sort: b a"}]
    assert data.records[2].id.startswith("line-3-") and len(data.records[2].id) == len("line-3-") + 12
    assert data.records[3].id == "cap" and data.records[3].line == 5
    assert "response" in IGNORED_KEYS and "captured_at" in IGNORED_KEYS


def test_generated_ids_depend_on_line_and_content_only() -> None:
    row = {"prompt": "Reverse: a b"}
    first = parse_input("a.jsonl", _jsonl(row, row)).records
    again = parse_input("b.jsonl", _jsonl(row, row)).records
    other = parse_input("a.jsonl", _jsonl({"prompt": "Reverse: a c"}, row)).records
    assert [r.id for r in first] == [r.id for r in again]
    assert first[0].id != first[1].id, "the same prompt on two lines gets two ids"
    assert first[0].id != other[0].id and first[1].id == other[1].id


def test_bad_rows_are_listed_with_file_and_line_and_the_rest_kept() -> None:
    text = _jsonl({"id": "ok-1", "prompt": "p"}, "{not json", {"id": "x", "messages": []},
                  {"id": "y", "prompt": "p", "colour": "blue"}, {"id": "z", "prompt": "  "},
                  {"messages": [{"role": "robot", "content": "hi"}]}, {"id": True, "prompt": "p"},
                  {"id": "w", "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                           {"role": "assistant", "content": "c"}]},
                  {"id": "ok-2", "prompt": "q"})
    data = parse_input("in.jsonl", text)
    assert [r.id for r in data.records] == ["ok-1", "ok-2"]
    assert [(e.where, e.id) for e in data.errors] == [("in.jsonl:2", None), ("in.jsonl:3", "x"), ("in.jsonl:4", "y"),
                                                      ("in.jsonl:5", "z"), ("in.jsonl:6", None),
                                                      ("in.jsonl:7", "True"), ("in.jsonl:8", "w")]
    messages = [e.error for e in data.errors]
    assert messages[0].startswith("invalid JSON")
    assert "unknown key(s) ['colour']" in messages[2] and "'response'" in messages[2]
    assert "'prompt' must be a non-empty string" in messages[3]
    assert "must end with a user turn" in messages[6]
    assert data.rows == 9


def test_duplicate_ids_are_fatal_and_name_both_lines() -> None:
    text = _jsonl({"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"}, {"id": "a", "prompt": "r"},
                  {"id": 5, "prompt": "s"}, {"id": "5", "prompt": "t"})
    with pytest.raises(DatasetError, match="2 duplicate id") as caught:
        parse_input("in.jsonl", text)
    assert "in.jsonl:3: duplicate id 'a' (first at line 1)" in str(caught.value)
    assert "in.jsonl:5: duplicate id '5' (first at line 4)" in str(caught.value)
