"""Declarative quality gate: absolute bounds, degradation versus the fp32 parent, comparison with the champion."""

from __future__ import annotations

from prefect import task
from pydantic import BaseModel

from tasks.config import GateConfig
from tasks.evaluate.metrics import HIGHER_IS_BETTER
from tasks.evaluate.score import CHAMPION, EvalReport


class Check(BaseModel):
    """One rule applied to one number."""

    rule: str
    metric: str
    value: float
    threshold: float
    passed: bool

    def reason(self) -> str:
        """Human-readable sentence for the decision record."""
        verdict = "ok" if self.passed else "FAILED"
        return f"{verdict}: {self.rule} {self.metric} = {self.value:.4g} (threshold {self.threshold:.4g})"


class GateDecision(BaseModel):
    """The verdict and every reason behind it."""

    passed: bool
    artifact: str
    checks: list[Check]

    @property
    def reasons(self) -> list[str]:
        """One line per check, failures first."""
        return [c.reason() for c in sorted(self.checks, key=lambda c: c.passed)]


def _metric(metrics: dict[str, float], name: str, where: str) -> float:
    if name not in metrics:
        raise KeyError(f"gate refers to unknown metric {name!r} of {where}; known: {sorted(metrics)}")
    return metrics[name]


def decide(report: EvalReport, cfg: GateConfig, served: str) -> GateDecision:
    """Apply every configured rule to the served artifact's metrics."""
    metrics = report.metrics(served)
    checks = [Check(rule="min", metric=k, value=_metric(metrics, k, served), threshold=v,
                    passed=metrics[k] >= v) for k, v in cfg.min.items()]
    checks += [Check(rule="max", metric=k, value=_metric(metrics, k, served), threshold=v,
                     passed=metrics[k] <= v) for k, v in cfg.max.items()]
    checks += [Check(rule="max_degradation", metric=k, value=_metric(metrics, k, served), threshold=v,
                     passed=metrics[k] <= v) for k, v in cfg.max_degradation.items()]
    if any(s.name == CHAMPION for s in report.scores):
        champion = report.metrics(CHAMPION)
        for k in cfg.vs_champion:
            mine, theirs = _metric(metrics, k, served), _metric(champion, k, CHAMPION)
            tol = cfg.champion_tolerance if k == "exact_match" else abs(theirs) * cfg.champion_tolerance
            if k in HIGHER_IS_BETTER:
                checks.append(Check(rule="vs_champion >=", metric=k, value=mine, threshold=theirs - tol,
                                    passed=mine >= theirs - tol))
            else:
                checks.append(Check(rule="vs_champion <=", metric=k, value=mine, threshold=theirs + tol,
                                    passed=mine <= theirs + tol))
    return GateDecision(passed=all(c.passed for c in checks), artifact=served, checks=checks)


decide_task = task(decide, name="gate")
