"""Registering a gated candidate as a new model version with lineage, metrics and its model card."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task
from pydantic import BaseModel

from registry.card import model_card
from registry.errors import RegistryError
from registry.history import move_alias, require_model
from registry.tracking import setup_tracking
from tasks.config import PipelineConfig
from tasks.evaluate import EvalReport
from tasks.gate import GateDecision
from tasks.quantize import Artifact
from tasks.records import ModelDir, PreparedData


class RegisteredVersion(BaseModel):
    """A model version and the aliases it was given."""

    name: str
    version: str
    run_id: str
    aliases: list[str]


class ChampionRef(BaseModel):
    """The served artifact of the current champion, downloaded locally for re-scoring."""

    version: str
    artifact: Artifact


def git_commit() -> str:
    """The repository's HEAD commit, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def fetch_champion(root: Path, name: str, alias: str = "champion") -> ChampionRef | None:
    """Download the served artifact of ``name@alias`` (None when there is no such model or alias)."""
    setup_tracking(root)
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    local = mlflow.artifacts.download_artifacts(artifact_uri=version.source,
                                                dst_path=tempfile.mkdtemp(prefix="champion-", dir=root))
    from tasks.quantize import onnx_artifact

    return ChampionRef(version=str(version.version), artifact=onnx_artifact("champion", Path(local)))


def record_decision(run_id: str, report: EvalReport, decision: GateDecision, png: Path) -> None:
    """Log metrics of every artifact, the gate decision and the report plot on the pipeline's run."""
    client = MlflowClient()
    for s in report.scores:
        for k, v in s.metrics.items():
            client.log_metric(run_id, f"{s.name}/{k}", v)
    client.set_tag(run_id, "slmops.gate", "passed" if decision.passed else "failed")
    client.log_text(run_id, "\n".join(decision.reasons), "gate_decision.txt")
    client.log_dict(run_id, decision.model_dump(), "gate_decision.json")
    client.log_artifact(run_id, str(png), "evaluation")


def register_version(root: Path, run_id: str, config: PipelineConfig, data: PreparedData, merged: ModelDir,
                     artifacts: list[Artifact], report: EvalReport, decision: GateDecision,
                     lineage: dict[str, str]) -> RegisteredVersion:
    """Register a passing candidate; set ``challenger`` (and ``champion`` when auto-promote is on)."""
    if not decision.passed:
        raise ValueError("refusing to register a candidate that failed its gate")
    setup_tracking(root)
    client = MlflowClient()
    name = config.name
    try:
        require_model(client, name)
    except RegistryError:
        client.create_registered_model(name, description=f"Small language model trained by slmops ({name}).")
    served = next(a for a in artifacts if a.name == config.quantize.served)
    client.log_artifacts(run_id, served.path, "served")
    for a in artifacts:
        if a.kind == "gguf":
            client.log_artifact(run_id, a.path, "gguf")
    client.log_artifacts(run_id, merged.path, "hf")
    card = model_card(name, config, data, artifacts, report, decision, lineage)
    client.log_text(run_id, card, "model_card.md")
    tags = {f"slmops.{k}": v for k, v in lineage.items()} | {"slmops.gate": "passed",
                                                             "slmops.served_artifact": served.name}
    mv = client.create_model_version(name, source=f"runs:/{run_id}/served", run_id=run_id, tags=tags,
                                     description=card)
    for k, v in report.metrics(served.name).items():
        client.set_model_version_tag(name, mv.version, f"metric.{k}", f"{v:.6g}")
    given = ["challenger"]
    move_alias(client, name, "challenger", str(mv.version), reason="passed gate")
    if config.gate.auto_promote:
        move_alias(client, name, "champion", str(mv.version), reason="passed gate (auto-promote)")
        given.append("champion")
    return RegisteredVersion(name=name, version=str(mv.version), run_id=run_id, aliases=given)


fetch_champion_task = task(fetch_champion, name="fetch-champion", retries=2, retry_delay_seconds=2)
record_decision_task = task(record_decision, name="record-gate-decision", retries=2, retry_delay_seconds=2)
register_version_task = task(register_version, name="register-version")
