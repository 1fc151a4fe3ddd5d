"""A real `slmops up` platform for end-to-end tests: real Prefect and MLflow servers, receiver and worker.

Everything binds 127.0.0.1 on free ports under a temporary SLMOPS_HOME, and `slmops down` (plus `undeploy`
of what the bindings deployed) stops it at the end of the session. CLI calls run as subprocesses so the
platform's endpoints never leak into the test process's environment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import yaml

from infra import process
from infra.platform.state import PlatformState, load_state
from tests.fixtures.ports import stable_port  # noqa: F401 - re-exported for the e2e tests

REPO = Path(__file__).resolve().parents[2]


class Platform:
    """One `slmops up` and helpers to drive it."""

    def __init__(self, home: Path, bindings: list[dict], database: str | None = None,
                 fleets: list[dict] | None = None):
        self.home, self.database = home, database
        self.bindings_file = home / "bindings.yaml"
        home.mkdir(parents=True, exist_ok=True)
        self.bindings_file.write_text(yaml.safe_dump({"bindings": bindings, "fleets": fleets or []}))
        self.state: PlatformState | None = None

    def env(self) -> dict[str, str]:
        """Environment of a CLI process bound to this platform's home (no endpoint of the test process)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
        return {**env, "SLMOPS_HOME": str(self.home), "SLMOPS_THREADS": "1", "SLMOPS_DEMO_SIZE": "tiny"}

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run ``slmops ARGS`` against this platform."""
        proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=self.env(), cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"slmops {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def up(self) -> PlatformState:
        args = ["up", "--bindings", str(self.bindings_file)] + (["--database", self.database] if self.database else [])
        self.cli(*args)
        self.state = load_state(self.home)
        return self.state

    def down(self) -> None:
        for binding in yaml.safe_load(self.bindings_file.read_text())["bindings"]:
            self.cli("undeploy", binding["model"], "--target", binding["target"]["target"], check=False)
        self.cli("down", check=False)

    # -- MLflow -----------------------------------------------------------------------------------------------
    def mlflow(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.state.mlflow_uri)

    def register(self, name: str, model_dir: Path, versions: int) -> None:
        """Register ``versions`` versions of ``name`` whose served artifact is ``model_dir``."""
        client = self.mlflow()
        exp = client.get_experiment_by_name("slmops") or client.get_experiment(client.create_experiment("slmops"))
        client.create_registered_model(name)
        for _ in range(versions):
            run = client.create_run(exp.experiment_id)
            client.log_artifacts(run.info.run_id, str(model_dir), "served")
            client.set_terminated(run.info.run_id)
            client.create_model_version(name, source=f"runs:/{run.info.run_id}/served", run_id=run.info.run_id)

    # -- Prefect ----------------------------------------------------------------------------------------------
    def prefect(self, method: str, path: str, **kw) -> httpx.Response:
        """A call to the platform's Prefect API."""
        return httpx.request(method, f"{self.state.prefect_api_url}{path}", timeout=30, **kw)

    def flow_runs(self, flow_name: str) -> list[dict]:
        """Runs of ``flow_name``, newest first."""
        flows = self.prefect("POST", "/flows/filter", json={"flows": {"name": {"any_": [flow_name]}}}).json()
        if not flows:
            return []
        return self.prefect("POST", "/flow_runs/filter", json={
            "flows": {"id": {"any_": [flows[0]["id"]]}}, "sort": "EXPECTED_START_TIME_DESC"}).json()

    def event_count(self, name: str) -> int:
        """How many events called ``name`` the Prefect server has stored."""
        answer = self.prefect("POST", "/events/filter", json={"filter": {"event": {"name": [name]}}, "limit": 1})
        answer.raise_for_status()
        return answer.json()["total"]

    # -- webhook deliveries -----------------------------------------------------------------------------------
    def secret(self) -> str:
        return (self.home / "platform" / "webhook-secret").read_text().strip()

    def deliver(self, body: dict | str, *, secret: str | None = None, delivery_id: str | None = None,
                timestamp: int | None = None, sign_body: str | None = None, signed: bool = True) -> httpx.Response:
        """POST a (possibly forged) MLflow webhook delivery to the receiver."""
        text = body if isinstance(body, str) else json.dumps(body)
        delivery_id = delivery_id or str(uuid.uuid4())
        stamp = str(timestamp if timestamp is not None else int(time.time()))
        digest = hmac.new((secret or self.secret()).encode(), f"{delivery_id}.{stamp}.{sign_body or text}".encode(),
                          hashlib.sha256).digest()
        headers = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery_id,
                   "X-MLflow-Timestamp": stamp}
        if signed:
            headers["X-MLflow-Signature"] = "v1," + base64.b64encode(digest).decode()
        return httpx.post(self.state.receiver_url, content=text, headers=headers, timeout=30)


def alias_envelope(name: str, alias: str, version: str) -> dict:
    """What MLflow posts for model_version_alias.created."""
    return {"entity": "model_version_alias", "action": "created", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "data": {"name": name, "alias": alias, "version": version}}


def served_version(port: int) -> str | None:
    """Version the local deployment on ``port`` serves, or None."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json().get("version")
    except (httpx.HTTPError, ValueError):
        return None


def wait_for(predicate, timeout_s: float = 180, what: str = "condition") -> None:
    """Poll ``predicate`` until true or fail naming ``what``.

    A poll that gets no answer (``httpx.TransportError``: a timeout or a refused connection) counts as "not yet":
    on two cores busy training, one API call can wait longer than its own timeout while the run is healthy. The
    last such error is named when the overall deadline passes.
    """
    deadline = time.monotonic() + timeout_s
    unanswered: list[str] = []
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.TransportError as exc:
            unanswered.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.25)
    last = f" ({len(unanswered)} polls got no answer, the last: {unanswered[-1]})" if unanswered else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{last}")


def none_running(state: PlatformState) -> bool:
    """True when no process `up` started (nor any of their process groups) remains."""
    return all(not s.process.alive() and not process._group_alive(s.process.pid) for s in state.services.values())
