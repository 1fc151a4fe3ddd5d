"""Start and stop the platform's processes: ``prefect server``, ``mlflow server``, the receiver and a worker.

All on 127.0.0.1, all state under ``$SLMOPS_HOME`` (or PostgreSQL), every process recorded with its identity
so ``down`` stops exactly what ``up`` started.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, Field

from infra import process
from infra.platform.database import Databases, postgres_databases, sqlite_databases
from infra.platform.receiver import PATH as RECEIVER_PATH
from infra.platform.results import results_env, save_results_block
from infra.platform.secrets import fernet_key_file, read_secret, webhook_secret_file
from infra.platform.starter import socket_path
from infra.platform.state import SERVICES, PlatformState, Service, load_state, probe
from infra.targets.store import STATE_DB_ENV, STATE_DB_VARIABLE
from tasks.errors import SlmopsError

log = logging.getLogger(__name__)
WORK_POOL = "slmops-process"
STARTUP_TIMEOUT_S = 180.0


class UpOptions(BaseModel):
    """What ``slmops up`` was asked for."""

    home: Path
    repo: Path = Field(description="Checkout holding prefect.yaml and the flows the worker runs.")
    bindings: Path
    database: str | None = Field(None, description="postgresql://… for PostgreSQL; None for sqlite files.")
    artifacts_destination: str | None = Field(
        None, description="Where the MLflow server keeps artifacts (s3://bucket/prefix, or any URI `mlflow server "
        "--artifacts-destination` takes), served to clients through the server itself so no worker needs the "
        "store's credentials or a shared disk; None: mlartifacts/ under SLMOPS_HOME.")
    results: str | None = Field(None, description="s3://bucket/prefix where every flow run persists its Prefect "
                                 "results (the slmops-s3-results block); None: results stay in the run's process.")
    prefect_port: int | None = None
    mlflow_port: int | None = None
    receiver_port: int | None = None
    fleet_port: int | None = None
    apply_deployments: bool = True


def _port(asked: int | None, recorded: int | None = None) -> int:
    for port in (asked, recorded):
        if port:
            if not process.port_free(port):
                if asked:
                    raise SlmopsError(f"port {port} is taken by another program; choose another")
                continue
            return port
    return process.free_port()


class ServiceSpec(BaseModel):
    """How to start one service."""

    args: list[str]
    env: dict[str, str]
    url: str = ""
    health: str = ""


# the caller's endpoints and its active MLflow run/experiment must not leak into long-lived services
CALLER_ONLY = ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without the caller's Prefect/MLflow endpoints and active MLflow run, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT__"))
           and k not in CALLER_ONLY}
    return {**env, **extra}


def service_specs(opts: UpOptions, db: Databases, ports: dict[str, int]) -> dict[str, ServiceSpec]:
    """The command, environment and health URL of every service, in start order."""
    home, platform_dir = opts.home, opts.home / "platform"
    prefect_url, mlflow_url = f"http://127.0.0.1:{ports['prefect']}", f"http://127.0.0.1:{ports['mlflow']}"
    receiver_url = f"http://127.0.0.1:{ports['receiver']}"
    clients = {"PREFECT_API_URL": f"{prefect_url}/api", "MLFLOW_TRACKING_URI": mlflow_url}
    starter_socket = socket_path(home)
    flows_env = {**clients, STATE_DB_ENV: db.state, "SLMOPS_HOME": str(home), "SLMOPS_REPO": str(opts.repo),
                 "SLMOPS_BINDINGS": str(opts.bindings), "SLMOPS_STARTER_SOCKET": str(starter_socket),
                 **results_env(opts.results)}
    return {
        "prefect": ServiceSpec(
            args=["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])],
            env=_clean_env({"PREFECT_HOME": str(platform_dir / "prefect"),
                            "PREFECT_API_DATABASE_CONNECTION_URL": db.prefect,
                            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                            # the UI is a browser app: it must be told where its API is (else 127.0.0.1:4200)
                            "PREFECT_UI_API_URL": f"{prefect_url}/api", "PREFECT_UI_URL": prefect_url}),
            url=prefect_url, health=f"{prefect_url}/api/health"),
        "mlflow": ServiceSpec(
            args=["-m", "mlflow", "server", "--backend-store-uri", db.mlflow, *mlflow_artifact_args(opts),
                  "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1"],
            env=_clean_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                            "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                            "MLFLOW_WEBHOOK_CACHE_TTL": "5",
                            "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": read_secret(fernet_key_file(platform_dir))}),
            url=mlflow_url, health=f"{mlflow_url}/health"),
        "receiver": ServiceSpec(
            args=["-m", "infra.platform.receiver", "--port", str(ports["receiver"]), "--secret-file",
                  str(webhook_secret_file(platform_dir)), "--deliveries", str(platform_dir / "deliveries.db")],
            env=_clean_env(clients), url=receiver_url, health=f"{receiver_url}/health"),
        "fleet": ServiceSpec(
            args=["-m", "infra.platform.fleet_service", "--port", str(ports["fleet"])], env=_clean_env(flows_env),
            url=f"http://127.0.0.1:{ports['fleet']}", health=f"http://127.0.0.1:{ports['fleet']}/health"),
        "starter": ServiceSpec(
            args=["-m", "infra.platform.starter", "--socket", str(starter_socket)],
            env=_clean_env(flows_env), health=f"unix:{starter_socket}"),
        "worker": ServiceSpec(
            args=["-m", "prefect", "worker", "start", "--pool", WORK_POOL, "--type", "process"],
            env=_clean_env({**flows_env, "PREFECT_WORKER_QUERY_SECONDS": "1",
                            "PREFECT_WORKER_PREFETCH_SECONDS": "5"})),
    }


def mlflow_artifact_args(opts: UpOptions) -> list[str]:
    """``mlflow server``'s artifact options: proxied to ``--artifacts-destination`` when one is given (clients
    then log to ``mlflow-artifacts:/`` through the server), else a folder under SLMOPS_HOME written directly."""
    if opts.artifacts_destination:
        return ["--serve-artifacts", "--artifacts-destination", opts.artifacts_destination]
    return ["--default-artifact-root", (opts.home / "mlartifacts").resolve().as_uri()]


def start_platform(opts: UpOptions, keep: dict[str, Service] | None = None) -> PlatformState:
    """Start every service not in ``keep`` (healthy ones of a previous ``up``), apply deployments and the webhook.

    Ports: those asked for, else those of the previous ``up`` when free, else free ones.
    """
    keep = keep or {}
    home, platform_dir = opts.home, opts.home / "platform"
    old = load_state(home)
    recorded = {n: int(s.url.rsplit(":", 1)[1].split("/")[0]) for n, s in (old.services if old else {}).items()
                if s.url}
    db = postgres_databases(opts.database) if opts.database else sqlite_databases(home)
    (home / "mlartifacts").mkdir(parents=True, exist_ok=True)
    ports = {name: recorded[name] if name in keep else _port(getattr(opts, f"{name}_port"), recorded.get(name))
             for name in ("prefect", "mlflow", "receiver", "fleet")}
    specs = service_specs(opts, db, ports)
    started: dict[str, Service] = {}
    try:
        for wave in (("prefect", "mlflow"), ("receiver", "fleet"), ("starter", "worker")):
            for name in wave:
                if name not in keep:
                    started[name] = _spawn(name, specs[name], platform_dir / "logs")
            for name in wave:
                if name in started and name not in ("starter", "worker"):
                    _wait(started[name])
            if wave == ("receiver", "fleet") and set(started) & {"prefect", "mlflow", "receiver"}:
                _configure(opts, specs)
        if "worker" in started:
            api = specs["receiver"].env["PREFECT_API_URL"]
            _wait_until(started["worker"], lambda: worker_online(api), "Prefect worker")
        if "starter" in started:
            _wait_until(started["starter"], lambda: probe(started["starter"]) == "up", "flow-run starter")
    except BaseException:
        for service in reversed(started.values()):
            process.stop_group(service.process)
        raise
    return PlatformState(home=str(home), database=db.shown, database_url=opts.database,
                         artifacts_destination=opts.artifacts_destination, results=opts.results,
                         state_database=db.state,
                         prefect_api_url=f"{specs['prefect'].url}/api", mlflow_uri=specs["mlflow"].url,
                         receiver_url=f"{specs['receiver'].url}{RECEIVER_PATH}", fleet_url=specs["fleet"].url,
                         bindings=str(opts.bindings),
                         repo=str(opts.repo), started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         services={**keep, **started})


def _spawn(name: str, spec: ServiceSpec, logs: Path) -> Service:
    log_file = logs / f"{name}.log"
    ref = process.start(spec.args, log_file, spec.env, inherit_env=False)
    return Service(name=name, url=spec.url, health=spec.health, process=ref, log=str(log_file))


def _configure(opts: UpOptions, specs: dict[str, ServiceSpec]) -> None:
    """Deployments (with schedules and triggers) and the MLflow webhook, once Prefect, MLflow and the receiver run."""
    configure(opts.repo if opts.apply_deployments else None, specs["worker"].env,
              f"{specs['receiver'].url}{RECEIVER_PATH}", read_secret(webhook_secret_file(opts.home / "platform")),
              results=opts.results)


def configure(repo: Path | None, env: dict[str, str], receiver_url: str, secret: str, pool: str = WORK_POOL,
              pool_type: str = "process", job_variables: dict | None = None, results: str | None = None) -> None:
    """Apply ``repo/prefect.yaml`` to the Prefect API in ``env`` and point MLflow's alias webhook at the receiver;
    with ``results`` (s3://bucket/prefix), save the block flow runs persist their results to.

    ``env`` holds ``PREFECT_API_URL`` and ``MLFLOW_TRACKING_URI``; the same step serves ``slmops up`` and a
    platform run elsewhere (compose, Kubernetes: ``slmops platform configure``).
    """
    from mlflow.tracking import MlflowClient

    from registry.webhooks import ensure_alias_webhook

    if results:
        save_results_block(env["PREFECT_API_URL"], results)
    if repo is not None:
        apply_deployments(repo, env, pool, pool_type, job_variables)
    ensure_alias_webhook(MlflowClient(env["MLFLOW_TRACKING_URI"]), receiver_url, secret)
    if env.get(STATE_DB_ENV):
        publish_state_database(env["PREFECT_API_URL"], env[STATE_DB_ENV])


def publish_state_database(prefect_api_url: str, url: str) -> None:
    """Record where slmops' state database is as the Prefect variable ``slmops_state_database`` (its password
    left out), so a command that knows only ``PREFECT_API_URL`` finds the deployments."""
    import sqlalchemy
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.variables import Variable

    with temporary_settings({PREFECT_API_URL: prefect_api_url}):
        Variable.set(STATE_DB_VARIABLE, sqlalchemy.engine.make_url(url).set(password=None).render_as_string(
            hide_password=False), overwrite=True)


def _wait(service: Service) -> None:
    process.wait_healthy(service.health, service.process, Path(service.log), STARTUP_TIMEOUT_S)


def _wait_until(service: Service, ready, what: str) -> None:
    """Poll ``ready()`` until true; fail early if ``service``'s process exits, or after the startup timeout."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not service.process.alive():
            raise SlmopsError(f"the {what} exited at start; log {service.log}")
        if ready():
            return
        time.sleep(0.2)
    raise SlmopsError(f"the {what} was not ready in {STARTUP_TIMEOUT_S:.0f}s; log {service.log}")


def warm_command() -> str:
    """The process worker's command for deployments tagged ``warm-start`` (see ``infra.platform.starter``)."""
    return shlex.join([sys.executable, "-I", "-S", str(Path(__file__).with_name("starter_client.py"))])


def apply_deployments(repo: Path, env: dict[str, str], pool: str = WORK_POOL, pool_type: str = "process",
                      job_variables: dict | None = None) -> None:
    """Create the work pool and every deployment (with schedules and triggers) of ``repo/prefect.yaml`` in it.

    ``job_variables`` (image, env, …) are set on every deployment, e.g. for a Kubernetes pool's flow-run pods.
    On a process pool, deployments tagged ``warm-start`` get the starter client as their command.
    """
    import yaml

    spec = yaml.safe_load((repo / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        work_pool = deployment.setdefault("work_pool", {})
        work_pool["name"] = pool
        work_pool["job_variables"] = {**work_pool.get("job_variables", {}), **(job_variables or {})}
        if pool_type == "process" and "warm-start" in deployment.get("tags", []):
            work_pool["job_variables"]["command"] = warm_command()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="prefect-", delete=False) as fh:
        yaml.safe_dump(spec, fh, sort_keys=False)
    try:
        for cmd in (["work-pool", "create", pool, "--type", pool_type, "--overwrite"],
                    ["--no-prompt", "deploy", "--all", "--prefect-file", fh.name]):
            proc = subprocess.run([sys.executable, "-m", "prefect", *cmd], cwd=repo, env=env, capture_output=True,
                                  text=True, check=False)
            output = proc.stdout + proc.stderr
            if proc.returncode != 0 or "An exception occurred" in output:
                tail = "\n".join(output.strip().splitlines()[-8:])
                raise SlmopsError(f"prefect {' '.join(cmd[:3])} failed:\n{tail}")
    finally:
        Path(fh.name).unlink(missing_ok=True)


def stop_platform(state: PlatformState) -> dict[str, str]:
    """Stop every recorded service, worker first; return what each was (running / gone / stranger)."""
    outcome = {}
    for name in reversed(SERVICES):
        if name in state.services:
            outcome[name] = str(process.stop_group(state.services[name].process))
    return outcome


def platform_health(state: PlatformState) -> dict[str, str]:
    """``up`` / ``unhealthy`` / ``down`` per service; the worker is up when Prefect lists it online."""
    health = {name: probe(service) for name, service in state.services.items()}
    if health.get("worker") == "up" and health.get("prefect") == "up":
        health["worker"] = "up" if worker_online(state.prefect_api_url) else "unhealthy"
    return health


def worker_online(prefect_api_url: str) -> bool:
    """True when a worker of the platform's pool has a recent heartbeat."""
    import httpx

    try:
        workers = httpx.post(f"{prefect_api_url}/work_pools/{WORK_POOL}/workers/filter", json={}, timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(w.get("status") == "ONLINE" for w in workers if isinstance(w, dict))
