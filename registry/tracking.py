"""MLflow tracking: where runs go, and logging a training run (params, per-step losses, inputs, outputs)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

EXPERIMENT = "slmops"
REMOTE = ("http://", "https://", "databricks", "arn:")  # tracking servers that choose their own artifact store
_ours: set[str] = set()  # URIs we set: mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI


def tracking_uri(root: Path) -> str:
    """The user's ``MLFLOW_TRACKING_URI`` when set, else the embedded sqlite store under ``root``."""
    user = os.environ.get("MLFLOW_TRACKING_URI")
    if user and user not in _ours:
        return user
    embedded = f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"
    _ours.add(embedded)
    return embedded


def is_remote(uri: str) -> bool:
    """True for a tracking server (http, https, ``databricks``, a SageMaker MLflow ARN), which decides where
    artifacts go; False for a database or folder this process writes itself (sqlite, postgresql, ``file:``)."""
    return uri.startswith(REMOTE)


def setup_tracking(root: Path, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and make sure the experiment exists; only a store this process writes itself
    gets an artifact location, an absolute folder under ``root`` (a tracking server keeps its own, such as
    ``mlflow server --artifacts-destination s3://…``)."""
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = None if is_remote(uri) else (Path(root).resolve() / "mlartifacts").as_uri()
        exp_id = client.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def on_run(run_id: str) -> contextlib.AbstractContextManager:
    """A context in which fluent MLflow calls log to run ``run_id``: that run when it is the active one already,
    else it resumed (nested under the active run, if any)."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        return contextlib.nullcontext(active)
    return mlflow.start_run(run_id=run_id, nested=active is not None)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}`` for MLflow params (values cut to MLflow's 6000 chars)."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def log_params(run_id: str, params: dict[str, str]) -> None:
    """Log many params in batches of 100 (MLflow's limit per call)."""
    client = MlflowClient()
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i: i + 100])


def log_series(run_id: str, key: str, points: Iterable[tuple[int, float]]) -> None:
    """Log a metric history (step, value) in batches of 1000."""
    client = MlflowClient()
    metrics = [Metric(key, float(v), 0, int(s)) for s, v in points]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i: i + 1000])


def log_dataset(name: str, source: str, digest: str, context: str) -> None:
    """Record a dataset input (name, source URI, content digest) on the active run."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    dataset = MetaDataset(source=resolve_dataset_source(source), name=name, digest=digest[:36])
    mlflow.log_input(dataset, context=context)


def registry_client(root: Path) -> MlflowClient:
    """An MlflowClient on the configured store (the platform's server, the user's, or the embedded sqlite)."""
    setup_tracking(root)
    return MlflowClient()


def prefect_run_tags() -> dict[str, str]:
    """Tags naming the Prefect flow run this code runs in (id, name and UI link); none outside a flow run."""
    from prefect.runtime import flow_run

    if not flow_run.id:
        return {}
    tags = {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}
    if flow_run.ui_url:
        tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags


def publish_run_link(run_id: str) -> None:
    """Inside a Prefect flow run: a link artifact to MLflow run ``run_id`` (its page on an http tracking server,
    else its ``runs:/`` URI), so the flow run's page leads to what it logged."""
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    uri, run = mlflow.get_tracking_uri(), MlflowClient().get_run(run_id)
    link = (f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}" if uri.startswith("http")
            else f"runs:/{run_id}")
    create_link_artifact(link, link_text=f"MLflow run {run.info.run_name or run_id}",
                         description=f"What this flow run logged to MLflow ({uri.split('://')[0]} store).")

