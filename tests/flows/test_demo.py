"""`slmops demo` end to end on a tiny config: pipeline → registered champion → deployed → one openai-client chat."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import yaml

from flows.cli import main
from tests.fixtures.ports import stable_port


def test_demo_runs_the_pipeline_deploys_the_champion_and_chats(prefect_harness, tiny_assets: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    d = tiny_assets / "data"
    config = tmp_path / "tiny-demo.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny-demo",
        "data": {"train": str(d / "train.jsonl"), "validation": str(d / "validation.jsonl"),
                 "test": str(d / "test.jsonl"), "max_length": 96},
        # the tiny teacher fine-tuned with LoRA: a random tiny student would answer the golden prompt with nothing
        "distill": {"enabled": False, "teacher": str(tiny_assets / "teacher"), "student": str(tiny_assets / "teacher")},
        "finetune": {"r": 4, "alpha": 8, "steps": 5, "batch_size": 16},
        "quantize": {"onnx": ["int4"], "int4_block_size": 16},
        "evaluate": {"limit": 8, "latency_requests": 2, "latency_new_tokens": 8},
        "gate": {"min": {}, "max_degradation": {}, "vs_champion": []}}))
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    port = stable_port()
    try:
        # when the demo runs on that config
        assert main(["demo", "--config", str(config), "--port", str(port)]) == 0
        out = capsys.readouterr().out
        # then it registered version 1 as champion, deployed it on the port, and printed the openai client's answer
        assert "registered tiny-demo version 1 (aliases: challenger, champion)" in out
        assert f"tiny-demo@champion (version 1) serves at http://127.0.0.1:{port}/v1" in out
        assert re.search(r"openai client → 'Reverse: d e c a f': '.*'", out)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["version"] == "1"
    finally:
        assert main(["undeploy", "tiny-demo", "--target", "local"]) == 0
