"""``slmops batch`` in process: every record answered once, naming the version; errors, budget, drift, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from registry.history import move_alias
from tests.flows.batch.helpers import input_ids, output_rows, split_rows, write_jsonl


def _batch(model_ref: str, source: Path | str, out: Path | str, *options: str) -> int:
    args = ["batch", model_ref, "--input", str(source), "--output", str(out)]
    for option in ("generation.max_new_tokens=12", "part_size=40", *options):
        args += ["--set", option]
    return main(args)


def test_every_record_once_with_its_version_then_a_rerun_does_nothing(
        prefect_harness, batch_model: str, tiny_assets: Path, tmp_path: Path, home: Path,
        capsys: pytest.CaptureFixture) -> None:
    # given the test split, a prompt-style row and a row as data capture writes it
    rows = [*split_rows(tiny_assets), {"id": "plain", "prompt": "Reverse: a b c"},
            {"id": "captured", "messages": [{"role": "user", "content": "Uppercase: a b"}],
             "response": {"text": "A B"}, "captured_at": "2026-11-22T01:00:00Z"}]
    source, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out"
    # when the batch runs over the champion
    assert _batch(f"{batch_model}@champion", source, out) == 0
    printed = capsys.readouterr().out
    # then every input id is answered exactly once, in input order, each row naming the model version
    answered = output_rows(out)
    assert [r["id"] for r in answered] == input_ids(source) and len(answered) == 236
    assert {(r["model"], r["version"]) for r in answered} == {(batch_model, "1")}
    assert {r["finish_reason"] for r in answered} <= {"stop", "length"}
    assert all(r["completion_tokens"] <= 12 and r["prompt_tokens"] > 0 for r in answered)
    assert any(r["text"].strip() for r in answered)
    # and the manifest records counts, digests, the version and timings
    manifest = json.loads((out / "manifest.json").read_text())
    parts = sorted((out / "parts").glob("part-*.jsonl"))
    assert manifest["status"] == "complete" and manifest["records"] == 236 and manifest["errors"] == 0
    assert (manifest["model_ref"], manifest["model_version"]) == (f"{batch_model}@champion", "1")
    assert manifest["input_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert manifest["output_sha256"] == hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    assert [p["rows"] for p in manifest["parts"]] == [40] * 5 + [36]
    assert manifest["timings"]["records_generated"] == 236 and manifest["timings"]["records_per_s"] > 0
    assert manifest["drift"]["status"] == "ok"
    assert f"{batch_model} version 1: 236 records in 6 parts" in printed
    # and the run is an MLflow run tagged with the model version, and Prefect artifacts
    client = MlflowClient()
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.data.tags["slmops.model_name"] == batch_model and run.data.tags["slmops.model_version"] == "1"
    assert run.data.metrics["records"] == 236 and "drift_psi/prompt_tokens" in run.data.metrics
    from prefect.artifacts import Artifact

    report = Artifact.get("batch-report")
    assert report is not None and "version 1" in str(report.data)
    assert Artifact.get("batch-drift").type == "table"
    progress = Artifact.get("batch-progress")
    assert progress.type == "progress" and float(progress.data) == 100.0

    # when the same command runs again, nothing is generated and it says so
    before = (out / "manifest.json").read_bytes()
    runs_before = len(client.search_runs([run.info.experiment_id], "tags.`slmops.stage` = 'batch'"))
    assert _batch(f"{batch_model}@champion", source, out) == 0
    assert "is complete already (236 records by tiny-batch version 1): nothing to do" in capsys.readouterr().out
    assert (out / "manifest.json").read_bytes() == before
    assert len(client.search_runs([run.info.experiment_id], "tags.`slmops.stage` = 'batch'")) == runs_before


def test_malformed_rows_go_to_the_errors_file_and_the_rest_is_answered(
        prefect_harness, batch_model: str, tiny_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = split_rows(tiny_assets, 100)
    rows[30], rows[61] = "{broken", {"id": "bad-role", "messages": [{"role": "robot", "content": "hi"}]}
    rows[70] = {"id": "too-long", "prompt": " ".join(["a b c d"] * 100)}
    source, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out"
    assert _batch(f"{batch_model}/1", source, out) == 0
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [(e["where"], e["id"]) for e in errors] == [(f"{source}:31", None), (f"{source}:62", "bad-role"),
                                                       (f"{source}:71", "too-long")]
    assert "context window of 128" in errors[2]["error"]
    answered = [r["id"] for r in output_rows(out)]
    assert len(answered) == 97 and "too-long" not in answered
    assert answered == [i for i in input_ids(source) if i != "too-long"]
    assert json.loads((out / "manifest.json").read_text())["errors"] == 3
    assert "errors: 3" in capsys.readouterr().out


def test_over_the_error_budget_fails_before_generating(
        prefect_harness, batch_model: str, tiny_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = split_rows(tiny_assets, 60)
    for i in range(10, 16):
        rows[i] = "not json"
    source, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out"
    assert _batch(f"{batch_model}/1", source, out) == 2
    err = capsys.readouterr().err
    assert "error: 6 of 60 rows (10.0%) of" in err and "over max_error_rate 5.0%; nothing was generated" in err
    assert f"{source}:11: invalid JSON" in err and "Traceback" not in err
    assert len((out / "errors.jsonl").read_text().splitlines()) == 6 and not (out / "parts").exists()
    # a larger budget lets the same input through
    assert _batch(f"{batch_model}/1", source, out, "max_error_rate=0.2") == 0
    # duplicate ids are an error naming both lines
    write_jsonl(source, [{"id": "x", "prompt": "a"}, {"id": "y", "prompt": "b"}, {"id": "x", "prompt": "c"}])
    assert _batch(f"{batch_model}/1", source, tmp_path / "dup") == 2
    assert f"{source}:3: duplicate id 'x' (first at line 1)" in capsys.readouterr().err


def test_a_drifted_input_fails_before_generating_unless_only_warned(
        prefect_harness, batch_model: str, tiny_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # given prompts four times longer than the training prompts (still within the context window)
    rows = [{"id": f"r{i}", "prompt": " ".join([r["messages"][-2]["content"]] * 4)}
            for i, r in enumerate(split_rows(tiny_assets, 120))]
    source, out = write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out"
    assert _batch(f"{batch_model}/1", source, out) == 2
    err = capsys.readouterr().err
    assert "drifted from the model version's training prompts: prompt_tokens PSI" in err
    assert not (out / "parts").exists(), "nothing was generated"
    assert _batch(f"{batch_model}/1", source, out, "drift.fail=null") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["drift"]["status"] == "warn" and manifest["records"] == 120
    assert "drift: warn (largest PSI" in capsys.readouterr().out


def test_the_alias_is_resolved_when_a_run_starts_and_kept_by_its_resume(
        prefect_harness, batch_model: str, tiny_assets: Path, tmp_path: Path, tiny_onnx: Path,
        capsys: pytest.CaptureFixture) -> None:
    import mlflow

    source = write_jsonl(tmp_path / "in.jsonl", split_rows(tiny_assets, 80))
    # given an output started with version 1 and left with only its first part committed (as if killed)
    started = tmp_path / "started"
    assert _batch(f"{batch_model}@champion", source, started) == 0
    (started / "manifest.json").unlink()
    for part in sorted((started / "parts").iterdir())[1:]:
        part.unlink()
    # and a version 2 that becomes champion
    client = MlflowClient()
    with mlflow.start_run(run_name="batch-test-v2") as run:
        mlflow.log_artifacts(str(tiny_onnx), "served")
    client.create_model_version(batch_model, source=f"runs:/{run.info.run_id}/served", run_id=run.info.run_id)
    move_alias(client, batch_model, "champion", "2", reason="test")
    other = tmp_path / "other.jsonl"
    shutil.copy(source, other)
    with other.open("a") as fh:
        fh.write(json.dumps({"id": "extra", "prompt": "Reverse: a b"}) + "\n")
    try:
        capsys.readouterr()
        # another input cannot resume the started output, and leaves it untouched
        errors_before = (started / "errors.jsonl").read_bytes()
        assert _batch(f"{batch_model}@champion", other, started) == 2
        assert "was started with another input (sha256)" in capsys.readouterr().err
        assert (started / "errors.jsonl").read_bytes() == errors_before and len(output_rows(started)) == 40
        # when a new run starts, @champion means version 2; the resumed one keeps version 1 to the end
        assert _batch(f"{batch_model}@champion", source, tmp_path / "new") == 0
        assert {r["version"] for r in output_rows(tmp_path / "new")} == {"2"}
        assert _batch(f"{batch_model}@champion", source, started) == 0
        assert {r["version"] for r in output_rows(started)} == {"1"}
        assert [r["id"] for r in output_rows(started)] == input_ids(source)
        assert "parts kept from an earlier attempt: 1" in capsys.readouterr().out
        # another input into a finished output is refused, not reported as done
        assert _batch(f"{batch_model}@champion", other, started) == 2
        assert "records a finished run of another input" in capsys.readouterr().err
    finally:
        move_alias(client, batch_model, "champion", "1", reason="test")


def test_s3_input_and_output(prefect_harness, batch_model: str, tiny_assets: Path, s3_bucket,
                             capsys: pytest.CaptureFixture) -> None:
    body = "".join(json.dumps(r) + "\n" for r in split_rows(tiny_assets, 50))
    s3_bucket.put_object(Bucket="batch", Key="in/requests.jsonl", Body=body.encode())
    args = (f"{batch_model}/1", "s3://batch/in/requests.jsonl", "s3://batch/out/run1")
    assert _batch(*args) == 0
    keys = sorted(o["Key"] for o in s3_bucket.list_objects_v2(Bucket="batch", Prefix="out/run1/")["Contents"])
    assert keys == ["out/run1/errors.jsonl", "out/run1/manifest.json", "out/run1/parts/part-00000.jsonl",
                    "out/run1/parts/part-00001.jsonl", "out/run1/plan.json"]
    rows = [json.loads(line) for key in keys if "/parts/" in key
            for line in s3_bucket.get_object(Bucket="batch", Key=key)["Body"].read().decode().splitlines()]
    assert len(rows) == 50 and len({r["id"] for r in rows}) == 50
    manifest = json.loads(s3_bucket.get_object(Bucket="batch", Key="out/run1/manifest.json")["Body"].read())
    assert manifest["output_uri"] == "s3://batch/out/run1" and manifest["records"] == 50
    capsys.readouterr()
    assert _batch(*args) == 0
    assert "s3://batch/out/run1 is complete already" in capsys.readouterr().out
