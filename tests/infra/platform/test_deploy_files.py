"""The scale-out files (compose, Kubernetes, the image) say the same as what `slmops up` starts.

No Docker engine or cluster exists here, so the files are parsed and cross-checked against `service_specs`,
prefect.yaml, the CLI parser and pyproject; the PostgreSQL path itself runs for real in tests/e2e.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from flows.cli import build_parser
from infra.platform.database import postgres_urls
from infra.platform.results import results_env
from infra.platform.services import WORK_POOL, UpOptions, service_specs

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "infra" / "platform" / "deploy"


@pytest.fixture(scope="module")
def up_specs(tmp_path_factory: pytest.TempPathFactory):
    """What `slmops up` would start on PostgreSQL (computed, nothing started)."""
    home = tmp_path_factory.mktemp("home")
    opts = UpOptions(home=home, repo=REPO, bindings=REPO / "configs" / "bindings.yaml",
                     database="postgresql://slmops:slmops@postgres:5432/slmops")
    return service_specs(opts, postgres_urls(opts.database),
                         {"prefect": 4200, "mlflow": 5000, "receiver": 8787, "fleet": 8790})


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]


def _flags(args: list[str]) -> set[str]:
    return {a for a in args if a.startswith("--")}


def test_compose_runs_the_services_up_starts_with_the_same_settings(compose: dict, up_specs) -> None:
    assert {"postgres", "prefect-server", "mlflow-server", "receiver", "worker", "configure"} <= set(compose)
    # databases: the names `slmops up --database …/slmops` makes
    urls = postgres_urls("postgresql://slmops:slmops@postgres:5432/slmops")
    assert compose["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"] == urls.prefect
    assert urls.mlflow in compose["mlflow-server"]["command"]
    init = (DEPLOY / "postgres-init.sql").read_text()
    assert {"slmops_prefect", "slmops_mlflow", "slmops_slmops"} <= set(re.findall(r"CREATE DATABASE (\w+)", init))
    # Prefect: same server settings (analytics off, the UI told where its API is)
    prefect_env = compose["prefect-server"]["environment"]
    for key in ("PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_UI_API_URL"):
        assert key in prefect_env and key in up_specs["prefect"].env
    # MLflow: every MLFLOW_* setting up gives its server, webhooks on (the Fernet key loaded from a secret)
    mlflow_keys = {k for k in up_specs["mlflow"].env if k.startswith("MLFLOW_")}
    assert mlflow_keys - {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"} <= set(compose["mlflow-server"]["environment"])
    assert "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY" in " ".join(compose["mlflow-server"]["entrypoint"])
    assert {"--workers", "--backend-store-uri"} <= _flags(compose["mlflow-server"]["command"])
    # receiver: the same module and flags, talking to the same two servers
    assert compose["receiver"]["entrypoint"][-1] == up_specs["receiver"].args[1] == "infra.platform.receiver"
    assert _flags(up_specs["receiver"].args) <= _flags(compose["receiver"]["command"])
    assert set(up_specs["receiver"].env) >= set(compose["receiver"]["environment"]) == {"PREFECT_API_URL",
                                                                                         "MLFLOW_TRACKING_URI"}
    # worker: the pool prefect.yaml's deployments use, and every variable up gives it
    worker = compose["worker"]
    assert worker["command"][worker["command"].index("--pool") + 1] == WORK_POOL
    assert {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "SLMOPS_HOME", "SLMOPS_REPO", "SLMOPS_BINDINGS",
            "SLMOPS_STATE_DATABASE", "PREFECT_WORKER_QUERY_SECONDS"} <= set(worker["environment"]) & set(
        up_specs["worker"].env)
    # deployment records and locks: the state database up makes, given to the worker and published by configure
    assert worker["environment"]["SLMOPS_STATE_DATABASE"] == urls.state == up_specs["worker"].env[
        "SLMOPS_STATE_DATABASE"]
    pools = {d["work_pool"]["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert pools == {WORK_POOL}


def test_the_configure_step_is_a_valid_slmops_command(compose: dict) -> None:
    args = build_parser().parse_args(compose["configure"]["command"])
    assert (args.command, args.platform_command, args.pool) == ("platform", "configure", WORK_POOL)
    assert args.receiver_url.endswith("/webhooks/mlflow") and args.prefect_api.endswith("/api")
    assert args.state_database == postgres_urls("postgresql://slmops:slmops@postgres:5432/slmops").state


def test_kubernetes_files_use_the_same_receiver_mlflow_settings_and_a_kubernetes_pool(up_specs) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all((DEPLOY / "k8s" / "platform.yaml")
                                                                              .read_text())}
    receiver = docs[("Deployment", "receiver")]["spec"]["template"]["spec"]["containers"][0]
    assert receiver["command"][-1] == "infra.platform.receiver"
    assert _flags(up_specs["receiver"].args) <= _flags(receiver["args"])
    mlflow = docs[("Deployment", "mlflow-server")]["spec"]["template"]["spec"]["containers"][0]
    assert {k for k in up_specs["mlflow"].env if k.startswith("MLFLOW_")} <= {e["name"] for e in mlflow["env"]}
    values = yaml.safe_load((DEPLOY / "k8s" / "prefect-worker-values.yaml").read_text())["worker"]
    assert values["config"]["type"] == "kubernetes" and values["apiConfig"] == "selfHostedServer"
    assert values["image"]["prefectTag"].startswith("3.8.8")
    job = json.loads((DEPLOY / "k8s" / "work-pool-job-variables.json").read_text())
    assert {"MLFLOW_TRACKING_URI", "SLMOPS_HOME", "SLMOPS_REPO", "SLMOPS_BINDINGS",
            "SLMOPS_STATE_DATABASE"} <= set(job["env"])
    assert results_env("s3://any/prefix").items() <= job["env"].items()  # flow-run pods persist results to S3
    # no pod keeps artifacts on its own disk: the MLflow server proxies them to the configured store
    assert "--artifacts-destination \"$MLFLOW_ARTIFACTS\"" in mlflow["command"][-1]
    assert "MLFLOW_ARTIFACTS" in {e["name"] for e in mlflow["env"]}


def test_the_image_installs_every_package_with_the_pinned_torch() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert all(f"COPY {p} ./{p}" in dockerfile for p in packages)
    torch = next(d for d in project["project"]["dependencies"] if d.startswith("torch"))
    assert torch in dockerfile
    assert re.search(r"^COPY .*\bprefect\.yaml\b", dockerfile, re.M), "the worker runs flows from prefect.yaml"


def test_the_callers_mlflow_run_and_endpoints_never_leak_into_the_services(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    # a caller inside an MLflow run (or pointed at other servers) starts the platform
    for key, value in {"MLFLOW_RUN_ID": "abc", "MLFLOW_EXPERIMENT_ID": "7", "MLFLOW_TRACKING_URI": "http://x",
                       "PREFECT_API_URL": "http://y/api"}.items():
        monkeypatch.setenv(key, value)
    opts = UpOptions(home=tmp_path, repo=REPO, bindings=REPO / "configs" / "bindings.yaml")
    specs = service_specs(opts, postgres_urls("postgresql://u@h/slmops"),
                          {"prefect": 1, "mlflow": 2, "receiver": 3, "fleet": 4})
    for name, spec in specs.items():
        assert not {"MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"} & set(spec.env), name
        assert spec.env.get("MLFLOW_TRACKING_URI") != "http://x" and spec.env.get("PREFECT_API_URL") != "http://y/api"
