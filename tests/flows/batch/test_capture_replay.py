"""Production traffic replayed: what the serving runtime's data capture wrote is a valid `slmops batch` input,
drift-checked against the version's training profile."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from flows.cli import main
from infra import process
from tasks.data.prepare import read_prepared
from tests.flows.batch.helpers import output_rows


def test_captured_traffic_replays_through_slmops_batch(prefect_harness, batch_model: str, tiny_onnx: Path,
                                                        tiny_assets: Path, tmp_path: Path) -> None:
    # given a server capturing every request, answering the test split's prompts (chat) and one plain prompt
    captured = tmp_path / "captured"
    port = process.free_port()
    log = tmp_path / "server.log"
    ref = process.start(["-m", "infra.serving", str(tiny_onnx), "--name", batch_model, "--version", "1", "--port",
                         str(port), "--capture-percent", "100", "--capture-destination", str(captured)], log)
    conversations = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:60]
    try:
        process.wait_healthy(f"http://127.0.0.1:{port}/ping", ref, log, 120)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            for conv in conversations:
                assert http.post("/v1/chat/completions", json={"messages": conv[:-1], "max_tokens": 8}).is_success
            assert http.post("/v1/completions", json={"prompt": "Reverse: a b", "max_tokens": 4}).is_success
    finally:
        process.stop(ref)
    files = sorted(captured.glob("capture-*.jsonl"))
    ids = [json.loads(line)["id"] for f in files for line in f.read_text().splitlines()]
    assert len(ids) == len(conversations) + 1
    # when yesterday's traffic is replayed over the champion
    out = tmp_path / "replay"
    assert main(["batch", f"{batch_model}@champion", "--input", str(files[0]), "--output", str(out),
                 "--set", "generation.max_new_tokens=8"]) == 0
    # then every captured request is answered once, and the input was drift-checked against the training profile
    assert [r["id"] for r in output_rows(out)] == ids
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records"] == len(ids) and manifest["errors"] == 0
    assert manifest["drift"]["status"] in ("ok", "warn") and manifest["drift"]["features"]
