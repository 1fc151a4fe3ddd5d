"""Versions registered before slmops logged MLflow Models (source ``runs:/RUN/served``, a bare served folder) made
loadable with ``mlflow.pyfunc`` in place: the MLflow Model files are written into that same source folder, so the
version keeps its number, aliases, history and deployments, and deploy reads it as before."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from registry.adapters import ADAPTER_KIND, BASE_TAG, KIND_TAG
from registry.history import require_model
from registry.pyfunc import save_adapter_model, save_served_model
from registry.resolve import download_served
from registry.tracking import setup_tracking
from tasks.served_folder import ADAPTER_SUFFIX

LEGACY = "runs:/"
UPGRADE_COMMAND = "slmops models {name} --upgrade"


def legacy_versions(client: MlflowClient, name: str) -> list[str]:
    """Versions of ``name`` whose source is a bare served folder that ``mlflow.pyfunc`` cannot load yet."""
    require_model(client, name)
    found = [mv for mv in client.search_model_versions(f"name = '{name}'") if mv.source.startswith(LEGACY)]
    return sorted((str(mv.version) for mv in found if not _has_mlmodel(client, mv.source)), key=int)


def upgrade_versions(root: Path, name: str) -> list[str]:
    """Write the MLflow Model files into the source folder of every legacy version of ``name`` (an adapter-only
    version's names its base version, which it loads over); the versions upgraded."""
    setup_tracking(root)
    client = MlflowClient()
    upgraded = []
    for version in legacy_versions(client, name):
        mv = client.get_model_version(name, version)
        run_id, _, folder = mv.source.removeprefix(LEGACY).partition("/")
        with tempfile.TemporaryDirectory(prefix="slmops-upgrade-") as tmp:
            if mv.tags.get(KIND_TAG) == ADAPTER_KIND:  # over its base version, which it loads (upgraded or not)
                base_name, _, base_version = mv.tags[BASE_TAG].partition("/")
                local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(Path(tmp) / "in"))
                (adapter,) = Path(local).rglob(f"*{ADAPTER_SUFFIX}")
                model = save_adapter_model(Path(tmp) / "model", name, adapter, f"models:/{base_name}/{base_version}")
            else:
                model = save_served_model(Path(tmp) / "model", download_served(root, name, version, mv.run_id,
                                                                               mv.source))
            client.log_artifacts(run_id, str(model), folder)
        upgraded.append(version)
    return upgraded


def _has_mlmodel(client: MlflowClient, source: str) -> bool:
    run_id, _, folder = source.removeprefix(LEGACY).partition("/")
    return any(Path(a.path).name == "MLmodel" for a in client.list_artifacts(run_id, folder))
