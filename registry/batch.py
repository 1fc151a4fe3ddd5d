"""The MLflow side of batch transform: training-prompt profiles on model versions, batch runs as MLflow runs."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task

from registry.errors import RegistryError
from registry.tracking import prefect_run_tags, publish_run_link, setup_tracking
from tasks.batch.profile import Profile
from tasks.batch.report import BatchReport, markdown
from tasks.records import ModelRelease

PROFILE_TAG = "slmops.profile"
PROFILE_ARTIFACT = "profile.json"


def store_profile(client: MlflowClient, name: str, version: str, profile: Profile) -> None:
    """Log ``profile`` as ``profile.json`` on the version's run and point the version's tag at it."""
    run_id = client.get_model_version(name, version).run_id
    client.log_dict(run_id, profile.model_dump(mode="json"), PROFILE_ARTIFACT)
    client.set_model_version_tag(name, version, PROFILE_TAG, PROFILE_ARTIFACT)


def reference_profile(root: Path, release: ModelRelease) -> Profile | None:
    """The training-prompt profile stored on ``release``'s version, or None for a version registered without one."""
    setup_tracking(root)
    client = MlflowClient()
    version = client.get_model_version(release.name, release.version)
    path = version.tags.get(PROFILE_TAG)
    if not path:
        return None
    try:
        raw = mlflow.artifacts.load_text(f"runs:/{version.run_id}/{path}")
    except MlflowException as exc:
        raise RegistryError(f"{release.ref}: cannot read its reference profile {path}: {exc}") from None
    return Profile.model_validate(json.loads(raw))


def record_batch_run(root: Path, report: BatchReport) -> str:
    """An MLflow run for one batch: tagged with the model name and version, its metrics, report and manifest."""
    setup_tracking(root)
    client = MlflowClient()
    with mlflow.start_run(run_name=f"{report.model_name}-batch", tags=prefect_run_tags()) as run:
        run_id = run.info.run_id
        mlflow.set_tags({"slmops.stage": "batch", "slmops.model_name": report.model_name,
                         "slmops.model_version": report.model_version, "slmops.model_ref": report.model_ref,
                         "slmops.batch.input": report.input_uri, "slmops.batch.output": report.output_uri,
                         "slmops.batch.drift": report.drift.status if report.drift else "not checked"})
        mlflow.log_metrics(report.metrics())
        client.log_text(run_id, markdown(report), "batch_report.md")
        client.log_dict(run_id, report.model_dump(mode="json"), "batch_report.json")
    publish_run_link(run_id)
    return run_id


reference_profile_task = task(reference_profile, name="reference-profile", retries=2, retry_delay_seconds=2)
record_batch_run_task = task(record_batch_run, name="record-batch-run", retries=2, retry_delay_seconds=2)
