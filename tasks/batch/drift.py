"""Drift of a batch input against the model version's reference profile: the PSI of every feature.

PSI (population stability index) = sum over bins of ``(p - q) * ln(p / q)``, with ``p`` the input's and ``q``
the reference's share per bin, each smoothed by half a count so an empty bin stays finite. Usual reading: below
0.1 stable, 0.1–0.25 a moderate shift, above 0.25 a large one (the default warn and fail thresholds).
"""

from __future__ import annotations

import logging
import math
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.batch.config import DriftConfig
from tasks.batch.job import BatchJob, load_tokenizer
from tasks.batch.parts import BatchError
from tasks.batch.profile import Profile, profile_prompts

log = logging.getLogger(__name__)

Status = Literal["ok", "warn", "fail", "not judged"]


class DriftFailed(BatchError):
    """The input drifted past ``drift.fail`` from the version's reference; nothing was generated."""


class FeatureDrift(BaseModel):
    """One feature's PSI and what it means under the configured thresholds."""

    feature: str
    psi: float
    status: Status
    reference: dict[str, float] = Field(default_factory=dict, description="Reference summary (numeric).")
    current: dict[str, float] = Field(default_factory=dict, description="Input summary (numeric).")


class DriftReport(BaseModel):
    """Drift of one input, feature by feature."""

    status: Status
    rows: int
    reference_rows: int
    features: list[FeatureDrift]
    note: str = ""

    def worst(self) -> FeatureDrift:
        """The feature with the largest PSI."""
        return max(self.features, key=lambda f: f.psi)

    def failures(self) -> list[FeatureDrift]:
        """Features at or over the fail threshold."""
        return [f for f in self.features if f.status == "fail"]


def psi(current: list[float], reference: list[float], current_rows: int, reference_rows: int) -> float:
    """PSI between two share vectors over the same bins (each smoothed by half a count)."""
    bins = len(reference)
    p = [(s * current_rows + 0.5) / (current_rows + 0.5 * bins) for s in current]
    q = [(s * reference_rows + 0.5) / (reference_rows + 0.5 * bins) for s in reference]
    return sum((a - b) * math.log(a / b) for a, b in zip(p, q, strict=True))


def _status(value: float, cfg: DriftConfig, judged: bool) -> Status:
    if not judged:
        return "not judged"
    if cfg.fail is not None and value >= cfg.fail:
        return "fail"
    return "warn" if value >= cfg.warn else "ok"


def compare(current: Profile, reference: Profile, cfg: DriftConfig) -> DriftReport:
    """Per-feature PSI of ``current`` (profiled into the reference's bins) against ``reference``."""
    judged = current.rows >= cfg.min_rows
    features = []
    for name, ref in reference.features.items():
        cur = current.features[name]
        value = round(psi(cur.shares, ref.shares, current.rows, reference.rows), 4)
        features.append(FeatureDrift(feature=name, psi=value, status=_status(value, cfg, judged),
                                     reference=ref.summary, current=cur.summary))
    statuses = {f.status for f in features}
    overall = next((s for s in ("fail", "warn", "not judged") if s in statuses), "ok")
    note = "" if judged else f"{current.rows} rows < drift.min_rows {cfg.min_rows}: reported, not judged"
    return DriftReport(status=overall, rows=current.rows, reference_rows=reference.rows, features=features,
                       note=note)


def enforce(report: DriftReport, where: str) -> None:
    """Raise DriftFailed naming every feature over the fail threshold."""
    failed = report.failures()
    if failed:
        listed = ", ".join(f"{f.feature} PSI {f.psi:.3g}" for f in failed)
        raise DriftFailed(f"input {where} drifted from the model version's training prompts: {listed} "
                          "(over drift.fail); nothing was generated. Raise drift.fail, or set drift.fail=null to "
                          "only warn")


def publish_drift(report: DriftReport) -> None:
    """The per-feature PSI as a Prefect table artifact (inside a run)."""
    try:
        from prefect.artifacts import create_table_artifact

        create_table_artifact(table=[f.model_dump(include={"feature", "psi", "status"}) for f in report.features],
                              key="batch-drift", description=f"Input drift: {report.status}")
    except Exception as exc:  # outside a Prefect run there is nowhere to publish
        log.debug("no Prefect artifact: %s", exc)


def check_drift(job: BatchJob, reference: Profile | None, cfg: DriftConfig) -> DriftReport | None:
    """Profile the job's prompts into the reference's bins and compare; raise DriftFailed over ``cfg.fail``."""
    if not cfg.enabled or reference is None:
        log.info("drift not checked: %s", "drift.enabled is false" if not cfg.enabled else
                 f"{job.release.ref} has no reference profile (registered before profiles were stored)")
        return None
    current = profile_prompts(load_tokenizer(job.release.onnx_dir), [r.as_messages() for r in job.records],
                              job.prompt_ids, bins_from=reference)
    report = compare(current, reference, cfg)
    for f in report.features:
        if f.status in ("warn", "fail"):
            log.warning("input drift %s: %s PSI %.3g", f.status, f.feature, f.psi)
    publish_drift(report)
    enforce(report, job.input.uri)
    return report


check_drift_task = task(check_drift, name="check-drift", cache_policy=NO_CACHE)
