"""``batch_transform``: resolve the model when the run starts → prepare → drift → generate parts → report."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from infra.sagemaker.transform import open_executor as open_sagemaker_executor
from registry.batch import record_batch_run_task, reference_profile_task
from registry.releases import resolve_release_task
from tasks.batch.config import BatchConfig
from tasks.batch.drift import check_drift_task
from tasks.batch.job import (
    completed_run_task,
    prepare_job_task,
    resolve_input_task,
    resume_ref_task,
    run_parts_task,
)
from tasks.batch.opening import register_executor
from tasks.batch.report import BatchResult, finish_job_task, publish_report_task, write_manifest_task
from tasks.batch.store import output_location
from tasks.settings import get_settings

register_executor("sagemaker", open_sagemaker_executor)


@flow(name="batch_transform")
def batch_transform(model_ref: str, input: str, output: str, config: BatchConfig | None = None) -> BatchResult:
    """Answer every record of ``input`` with ``model_ref`` (resolved now) into committed parts under ``output``.

    ``output`` may hold ``{date}`` and ``{time}``: when the run was scheduled (UTC). Started again on an unfinished
    output, the run resumes with the version it began with; on a finished one it does nothing.
    """
    config, root, logger = config or BatchConfig(), get_settings().root, get_run_logger()
    output = output_location(output, flow_run.get_scheduled_start_time() or datetime.now(UTC))
    source = resolve_input_task(input, root)
    if (finished := completed_run_task(source, output, model_ref, config)) is not None:
        result = BatchResult.from_manifest(finished)
        logger.info("%s is complete already (%s version %s, %d records): nothing to do", output,
                    result.report.model_name, result.report.model_version, result.report.records)
        return result
    release = resolve_release_task(root, resume_ref_task(model_ref, output))
    job = prepare_job_task(source, output, release, config)
    drift = check_drift_task(job, reference_profile_task(root, release), config.drift)
    stats = run_parts_task(job, config)
    report = finish_job_task(job, stats, drift, config.checks, model_ref)
    report.mlflow_run_id = record_batch_run_task(root, report)
    publish_report_task(report)
    result = BatchResult(report=report, manifest=write_manifest_task(report))
    logger.info("%s version %s answered %d records into %s", release.name, release.version, report.records, output)
    return result
