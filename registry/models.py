"""Registering a gated candidate as a new model version with lineage, metrics and its model card."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task
from pydantic import BaseModel, Field

from registry.batch import PROFILE_TAG, store_profile
from registry.card import model_card
from registry.errors import RegistryError
from registry.evaluation import log_evaluation
from registry.history import aliases, move_alias, require_model
from registry.pyfunc import log_served_model
from registry.resolve import DIGEST_TAG, download_served
from registry.tracking import setup_tracking
from tasks.batch.profile import Profile
from tasks.config import PipelineConfig
from tasks.evaluate.gate import GateDecision
from tasks.evaluate.score import EvalReport
from tasks.quantize.onnx import onnx_artifact
from tasks.records import Artifact, ModelDir, PreparedData

log = logging.getLogger(__name__)


class RegisteredVersion(BaseModel):
    """A model version and the aliases it was given."""

    name: str
    version: str
    run_id: str
    aliases: list[str]
    reused: bool = Field(False, description="An identical served artifact was already registered as this version.")


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
    """The served artifact of ``name@alias``, downloaded once per version (None when there is no such alias)."""
    setup_tracking(root)
    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    served = download_served(root, name, str(version.version), version.run_id, version.source,
                             version.tags.get(DIGEST_TAG))
    return ChampionRef(version=str(version.version), artifact=onnx_artifact("champion", served))


def record_decision(run_id: str, report: EvalReport, decision: GateDecision, png: Path,
                    served: str | None = None) -> None:
    """Log metrics of every artifact, the gate decision and the report plot on the pipeline's run, and the
    ``served`` artifact's answers as an MLflow evaluation (registry/evaluation.py)."""
    client = MlflowClient()
    for s in report.scores:
        for k, v in s.metrics.items():
            client.log_metric(run_id, f"{s.name}/{k}", v)
    client.set_tag(run_id, "slmops.gate", "passed" if decision.passed else "failed")
    client.log_text(run_id, "\n".join(decision.reasons), "gate_decision.txt")
    client.log_dict(run_id, decision.model_dump(), "gate_decision.json")
    client.log_artifact(run_id, str(png), "evaluation")
    if served is not None:
        log_evaluation(run_id, next(s for s in report.scores if s.name == served))


def find_identical(client: MlflowClient, name: str, served_digest: str) -> str | None:
    """The version of ``name`` whose served artifact has ``served_digest``, if one is registered."""
    found = client.search_model_versions(f"name = '{name}' and tags.`slmops.served_digest` = '{served_digest}'")
    return str(min(int(v.version) for v in found)) if found else None


def _give_aliases(client: MlflowClient, name: str, version: str, auto_promote: bool, reason: str) -> list[str]:
    given = ["challenger", *(["champion"] if auto_promote else [])]
    current = aliases(client, name)
    for alias in given:
        if current.get(alias) != version:  # an alias already there is not moved again (no duplicate history)
            move_alias(client, name, alias, version, reason=reason + (" (auto-promote)" if alias == "champion"
                                                                       else ""))
    return given


def register_version(root: Path, run_id: str, config: PipelineConfig, data: PreparedData, merged: ModelDir,
                     artifacts: list[Artifact], report: EvalReport, decision: GateDecision,
                     lineage: dict[str, str], profile: Profile | None = None) -> RegisteredVersion:
    """Register a passing candidate; set ``challenger`` (and ``champion`` when auto-promote is on).

    A candidate whose served artifact is byte-identical to a registered version (same digest) reuses that
    version instead of registering a duplicate. ``profile`` (of the training prompts) is stored on the version
    as the reference batch inputs are checked for drift against.
    """
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
    existing = find_identical(client, name, served.digest)
    if existing:
        log.info("%s: the served artifact (sha256 %s) is already registered as version %s; reusing it",
                 name, served.digest[:12], existing)
        if profile is not None and PROFILE_TAG not in client.get_model_version(name, existing).tags:
            store_profile(client, name, existing, profile)
        given = _give_aliases(client, name, existing, config.gate.auto_promote, "passed gate (identical rerun)")
        return RegisteredVersion(name=name, version=existing, run_id=run_id, aliases=given, reused=True)
    model = log_served_model(run_id, served.path)  # an MLflow Model: loads with mlflow.pyfunc
    for a in artifacts:
        if a.kind == "gguf":
            client.log_artifact(run_id, a.path, "gguf")
    card = model_card(name, config, data, artifacts, report, decision, lineage)
    client.log_text(run_id, card, "model_card.md")
    tags = {f"slmops.{k}": v for k, v in lineage.items()} | {"slmops.gate": "passed",
                                                             "slmops.served_artifact": served.name,
                                                             DIGEST_TAG: served.digest}
    mv = client.create_model_version(name, source=model.model_uri, run_id=run_id, tags=tags, description=card,
                                     model_id=model.model_id)
    for k, v in report.metrics(served.name).items():
        client.log_metric(run_id, k, v, model_id=model.model_id)  # on the logged model's page, as numbers
        client.set_model_version_tag(name, mv.version, f"metric.{k}", f"{v:.6g}")  # kept for older readers
    if profile is not None:
        store_profile(client, name, str(mv.version), profile)
    given = _give_aliases(client, name, str(mv.version), config.gate.auto_promote, "passed gate")
    return RegisteredVersion(name=name, version=str(mv.version), run_id=run_id, aliases=given)


fetch_champion_task = task(fetch_champion, name="fetch-champion", retries=2, retry_delay_seconds=2)
record_decision_task = task(record_decision, name="record-gate-decision", retries=2, retry_delay_seconds=2)
register_version_task = task(register_version, name="register-version")
