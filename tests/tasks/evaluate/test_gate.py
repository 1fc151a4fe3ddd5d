"""Gate rules on hand-made reports: floors, ceilings, degradation, champion comparison."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.config import GateConfig
from tasks.evaluate.gate import decide
from tasks.evaluate.score import ArtifactScore, EvalReport


def report(candidate: dict[str, float], champion: dict[str, float] | None = None) -> EvalReport:
    scores = [ArtifactScore(name="onnx-int4", kind="onnx", path="x", metrics=candidate)]
    if champion:
        scores.append(ArtifactScore(name="champion", kind="onnx", path="y", metrics=champion))
    return EvalReport(data_digest="d", scores=scores)


BASE = {"exact_match": 0.6, "perplexity": 2.0, "perplexity_increase": 0.02, "exact_match_drop": 0.01}


def test_passes_when_every_rule_holds() -> None:
    cfg = GateConfig(min={"exact_match": 0.5}, max={"perplexity": 3.0})
    decision = decide(report(BASE, champion=BASE | {"exact_match": 0.61}), cfg, "onnx-int4")
    assert decision.passed
    assert len(decision.checks) == 5


@pytest.mark.parametrize(("cfg", "candidate", "champion", "failed"), [
    (GateConfig(min={"exact_match": 0.7}), BASE, None, "FAILED: min exact_match = 0.6 (threshold 0.7)"),
    (GateConfig(max={"perplexity": 1.5}), BASE, None, "FAILED: max perplexity = 2 (threshold 1.5)"),
    (GateConfig(max_degradation={"perplexity_increase": 0.01}), BASE, None,
     "FAILED: max_degradation perplexity_increase = 0.02 (threshold 0.01)"),
    (GateConfig(champion_tolerance=0.02), BASE, BASE | {"exact_match": 0.7},
     "FAILED: vs_champion >= exact_match = 0.6 (threshold 0.68)"),
    (GateConfig(vs_champion=["perplexity"], champion_tolerance=0.0), BASE, BASE | {"perplexity": 1.9},
     "FAILED: vs_champion <= perplexity = 2 (threshold 1.9)"),
])
def test_each_rule_can_fail(cfg, candidate, champion, failed) -> None:
    decision = decide(report(candidate, champion), cfg, "onnx-int4")
    assert not decision.passed
    assert decision.reasons[0] == failed


def test_unknown_metric_names_the_known_ones() -> None:
    # refused when the config is validated, before any work (since 47a249b)
    with pytest.raises(ValidationError, match=r"unknown metric\(s\) \['accuracy'\]; known: .*exact_match"):
        GateConfig(min={"accuracy": 0.5})
