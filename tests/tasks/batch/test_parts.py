"""Committed parts: atomic writes, what a restarted run keeps, and refusing an output of another run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.batch.executors import part_name
from tasks.batch.parts import (
    BatchError,
    BatchPlan,
    check_plan,
    committed_parts,
    encode_rows,
    pinned_ref,
    split_parts,
    summarise_parts,
)
from tasks.batch.store import BatchLocked, LocalStore, S3Store, output_location


def _plan(**changes) -> BatchPlan:
    base = dict(input_uri="in.jsonl", input_sha256="a" * 64, model_name="m", model_version="3",
                settings={"generation": {"max_new_tokens": 8}, "part_size": 2}, records=5, parts=3)
    return BatchPlan(**(base | changes))


def test_writes_are_atomic_and_readable_by_others(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "out")
    store.write("parts/part-00000.jsonl", b'{"id": "a"}\n')
    store.write("parts/part-00000.jsonl", b'{"id": "b"}\n')
    path = tmp_path / "out" / "parts" / "part-00000.jsonl"
    assert path.read_bytes() == b'{"id": "b"}\n' and oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in path.parent.iterdir()) == ["part-00000.jsonl"], "no temp file left behind"


def test_a_torn_temp_file_from_a_killed_writer_is_never_a_part(tmp_path: Path) -> None:
    # given a killed writer's half-written temp file beside one committed part
    store = LocalStore(tmp_path)
    store.write(part_name(0), encode_rows([{"id": "a"}, {"id": "b"}]))
    (tmp_path / "parts" / ".tmp-abc123").write_bytes(b'{"id": "c"}\n{"id": "d')
    # then only the committed part counts, and the temp file is removed before writing again
    assert store.names("parts/") == [part_name(0)]
    assert committed_parts(store, [["a", "b"], ["c", "d"], ["e"]]) == {0}
    assert store.remove_temp_files() == 1 and store.names("parts/") == [part_name(0)]


def test_a_part_with_other_ids_than_planned_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write(part_name(1), encode_rows([{"id": "c"}, {"id": "x"}]))
    with pytest.raises(BatchError, match="not the 2 planned for it"):
        committed_parts(store, [["a", "b"], ["c", "d"]])
    store.write(part_name(1), encode_rows([{"id": "c"}, {"id": "d"}]))
    store.write(part_name(7), encode_rows([{"id": "z"}]))
    with pytest.raises(BatchError, match="parts that no plan of this run names"):
        committed_parts(store, [["a", "b"], ["c", "d"]])


def test_parts_cut_the_input_in_order() -> None:
    assert split_parts(list("abcde"), 2) == [range(0, 2), range(2, 4), range(4, 5)]


def test_a_restart_must_match_the_plan_and_keeps_its_version() -> None:
    check_plan(_plan(), _plan(created_at="later"), "out")
    with pytest.raises(BatchError, match=r"another input \(sha256\)"):
        check_plan(_plan(), _plan(input_sha256="b" * 64), "out")
    with pytest.raises(BatchError, match="another settings"):
        check_plan(_plan(), _plan(settings={"generation": {"max_new_tokens": 9}, "part_size": 2}), "out")
    assert pinned_ref("m@champion", None) == "m@champion"
    assert pinned_ref("m@champion", _plan()) == "m/3", "a resumed run keeps the version it started with"
    assert pinned_ref("m/3", _plan()) == "m/3"
    with pytest.raises(BatchError, match="started with m/3, not m/4"):
        pinned_ref("m/4", _plan())
    with pytest.raises(BatchError, match="started with m/3, not other@champion"):
        pinned_ref("other@champion", _plan())


def test_summary_digests_the_parts_in_order(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.write(part_name(0), b'{"id": "a"}\n')
    store.write(part_name(1), b'{"id": "b"}\n')
    parts, rows, digest = summarise_parts(store, 2)
    import hashlib

    assert [r["id"] for r in rows] == ["a", "b"] and [p.rows for p in parts] == [1, 1]
    assert digest == hashlib.sha256(b'{"id": "a"}\n{"id": "b"}\n').hexdigest()
    with pytest.raises(BatchError, match="part-00002.jsonl is missing"):
        summarise_parts(store, 3)


def test_one_writer_per_output_folder(tmp_path: Path) -> None:
    first, second = LocalStore(tmp_path), LocalStore(tmp_path)
    first.lock()
    try:
        with pytest.raises(BatchLocked, match=f"another batch run \\(pid {os.getpid()}\\)"):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    second.unlock()


def test_output_location_takes_the_runs_day() -> None:
    from datetime import UTC, datetime

    when = datetime(2026, 11, 23, 1, 2, tzinfo=UTC)
    assert output_location("out/{date}/x", when) == "out/2026-11-23/x"
    assert output_location("s3://b/{date}/{time}", when) == "s3://b/2026-11-23/0102"


def test_s3_parts_and_listing(s3_bucket) -> None:
    store = S3Store("s3://batch/runs/one/")
    assert store.read("plan.json") is None and store.names("parts/") == []
    store.write(part_name(0), b'{"id": "a"}\n')
    store.write(part_name(1), b'{"id": "b"}\n')
    assert store.names("parts/") == [part_name(0), part_name(1)]
    assert store.location("manifest.json") == "s3://batch/runs/one/manifest.json"
    assert committed_parts(store, [["a"], ["b"], ["c"]]) == {0, 1}
