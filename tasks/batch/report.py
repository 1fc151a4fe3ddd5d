"""The end of a batch run: output checks, the manifest, and the report as Prefect artifacts."""

from __future__ import annotations

import json
import logging
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.batch.config import OutputChecks
from tasks.batch.drift import DriftReport
from tasks.batch.job import BatchJob, RunStats
from tasks.batch.parts import ERRORS, MANIFEST, BatchError, PartSummary, now, summarise_parts
from tasks.batch.store import open_store

log = logging.getLogger(__name__)


class CheckResult(BaseModel):
    """Checks on the generated answers."""

    rows: int
    empty: int = Field(description="Answers that are empty or whitespace.")
    truncated: int = Field(description="Answers cut by the length limit (finish_reason 'length').")
    prompt_tokens: int
    completion_tokens: int
    warnings: list[str] = Field(default_factory=list)


class BatchReport(BaseModel):
    """Everything about one finished batch run; the manifest is its JSON form."""

    model_ref: str
    model_name: str
    model_version: str
    input_uri: str
    input_sha256: str
    input_rows: int
    output_uri: str
    output_sha256: str
    records: int
    errors: int
    errors_file: str
    parts: list[PartSummary]
    settings: dict[str, Any]
    checks: CheckResult
    drift: DriftReport | None
    timings: dict[str, Any]
    mlflow_run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        """Numbers for the MLflow run."""
        c = self.checks
        out = {"records": self.records, "errors": self.errors, "empty": c.empty, "truncated": c.truncated,
               "empty_share": c.empty / max(c.rows, 1), "truncated_share": c.truncated / max(c.rows, 1),
               "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
        for key in ("records_per_s", "executor_instance_hours", "executor_cost_usd"):
            if self.timings.get(key) is not None:
                out[key] = self.timings[key]
        for f in self.drift.features if self.drift else []:
            out[f"drift_psi/{f.feature}"] = f.psi
        return {k: float(v) for k, v in out.items()}


class BatchResult(BaseModel):
    """What ``batch_transform`` returns: the report, where its manifest is, and whether this run did any work."""

    report: BatchReport
    manifest: str
    already_complete: bool = Field(False, description="The output was complete before this run: nothing done.")

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> BatchResult:
        """The result of a run finished earlier, from its manifest."""
        report = BatchReport.model_validate({k: v for k, v in manifest.items() if k != "status"})
        return cls(report=report, manifest=open_store(report.output_uri).location(MANIFEST), already_complete=True)


def check_outputs(rows: list[dict[str, Any]], cfg: OutputChecks) -> CheckResult:
    """Count empty and length-cut answers and token totals; warn over the configured shares."""
    empty = sum(1 for r in rows if not r["text"].strip())
    truncated = sum(1 for r in rows if r["finish_reason"] == "length")
    result = CheckResult(rows=len(rows), empty=empty, truncated=truncated,
                         prompt_tokens=sum(r["prompt_tokens"] for r in rows),
                         completion_tokens=sum(r["completion_tokens"] for r in rows))
    for count, limit, what in ((empty, cfg.warn_empty_share, "empty answers"),
                               (truncated, cfg.warn_truncated_share, "answers cut by generation.max_new_tokens or "
                                                                     "the context window")):
        if count / max(len(rows), 1) > limit:
            result.warnings.append(f"{count} of {len(rows)} {what} (over {limit:.0%})")
    return result


def finish_job(job: BatchJob, stats: RunStats, drift: DriftReport | None, cfg: OutputChecks,
               model_ref: str) -> BatchReport:
    """Read back every committed part, check that it holds each planned id exactly once, and report."""
    store = open_store(job.output)
    parts, rows, digest = summarise_parts(store, len(job.parts))
    got, want = [r["id"] for r in rows], [r.id for r in job.records]
    if got != want:
        raise BatchError(f"{store.uri} holds {len(got)} rows ({len(set(got))} distinct ids) for {len(want)} "
                         "records; remove the output and run again")
    finished = now()
    generated = stats.records_generated
    rate = round(generated / stats.generate_s, 2) if generated and stats.generate_s else None
    timings = {"first_started_at": job.plan.created_at, "started_at": stats.started_at, "finished_at": finished,
               "generate_s": stats.generate_s, "records_generated": stats.records_generated,
               "records_per_s": rate, "parts_generated": stats.parts_generated, "parts_resumed": stats.parts_kept,
               **{f"executor_{k}": v for k, v in stats.usage.items()}}
    checks = check_outputs(rows, cfg)
    for warning in checks.warnings:
        log.warning("%s: %s", store.uri, warning)
    return BatchReport(model_ref=model_ref, model_name=job.release.name, model_version=job.release.version,
                       input_uri=job.input.uri, input_sha256=job.input.digest, input_rows=job.input.rows,
                       output_uri=store.uri, output_sha256=digest, records=len(rows), errors=len(job.errors),
                       errors_file=store.location(ERRORS), parts=parts, settings=job.plan.settings, checks=checks,
                       drift=drift, timings=timings)


def write_manifest(report: BatchReport) -> str:
    """Write ``manifest.json`` last: from now on the output is complete. Returns its location."""
    store = open_store(report.output_uri)
    store.write(MANIFEST, json.dumps({"status": "complete", **report.model_dump(mode="json")}, indent=2).encode())
    return store.location(MANIFEST)


def markdown(report: BatchReport) -> str:
    """The report for people."""
    c, t = report.checks, report.timings
    lines = [f"# Batch transform: {report.model_name} version {report.model_version}",
             f"- model: `{report.model_ref}` → version {report.model_version}",
             f"- input: `{report.input_uri}` ({report.input_rows} rows, sha256 `{report.input_sha256[:12]}`)",
             f"- output: `{report.output_uri}` ({report.records} records in {len(report.parts)} parts, sha256 "
             f"`{report.output_sha256[:12]}`)",
             f"- errors: {report.errors} (`{report.errors_file}`)",
             f"- generated now: {t['records_generated']} records in {t['generate_s']} s "
             f"({t['records_per_s'] or '-'} records/s); parts kept from an earlier attempt: {t['parts_resumed']}",
             f"- answers: {c.empty} empty, {c.truncated} cut by the length limit; tokens {c.prompt_tokens} prompt, "
             f"{c.completion_tokens} completion", *[f"- **warning**: {w}" for w in c.warnings], ""]
    if report.drift:
        d = report.drift
        lines += [f"## Drift: {d.status} ({d.rows} rows vs {d.reference_rows} training prompts)", d.note, "",
                  "| feature | PSI | status | reference mean | input mean |", "|---|---:|---|---:|---:|"]
        lines += [f"| {f.feature} | {f.psi:.4f} | {f.status} | {f.reference.get('mean', float('nan')):.4g} | "
                  f"{f.current.get('mean', float('nan')):.4g} |" for f in d.features]
    else:
        lines.append("## Drift: not checked (the version has no reference profile, or drift.enabled is false)")
    return "\n".join(lines)


def publish_report(report: BatchReport) -> None:
    """The markdown report as a Prefect artifact (inside a run)."""
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown(report), key="batch-report", description="Batch transform")
    except Exception as exc:  # outside a Prefect run there is nowhere to publish
        log.debug("no Prefect artifact: %s", exc)


finish_job_task = task(finish_job, name="check-outputs", cache_policy=NO_CACHE)
write_manifest_task = task(write_manifest, name="write-manifest", cache_policy=NO_CACHE)
publish_report_task = task(publish_report, name="publish-batch-report", cache_policy=NO_CACHE)
