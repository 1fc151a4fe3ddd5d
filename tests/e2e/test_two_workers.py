"""Two workers act as one: one `slmops up` platform on the machine's PostgreSQL (127.0.0.1:5432) and a second
Prefect worker (with its own flow-run starter) whose SLMOPS_HOME is a separate folder, as a second pod would have.

Concurrent promotes end with the last move serving and no deploy that changes nothing; a reconcile on either
worker redeploys nothing; `slmops status --json` from an empty SLMOPS_HOME, knowing only the platform's URLs, lists
what the workers deployed; a worker killed mid-deploy leaves the old or the new version serving, and reconcile
finishes the job. Real servers and processes on 127.0.0.1 throughout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy

from infra import process
from infra.process import ProcessRef
from tests.e2e.platform_harness import REPO, Platform, none_running, served_version, stable_port, wait_for
from tests.fixtures.postgres import POSTGRES, drop_databases, require_postgres

MODEL = "tw-model"


def start_second_worker(plat: Platform, home: Path) -> list[ProcessRef]:
    """A flow-run starter and a Prefect worker on the platform's pool, with their own SLMOPS_HOME."""
    state = plat.state
    socket_path = home / "starter.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
    env |= {"PREFECT_API_URL": state.prefect_api_url, "MLFLOW_TRACKING_URI": state.mlflow_uri,
            "SLMOPS_STATE_DATABASE": state.state_database, "SLMOPS_HOME": str(home), "SLMOPS_REPO": state.repo,
            "SLMOPS_BINDINGS": state.bindings, "SLMOPS_STARTER_SOCKET": str(socket_path), "SLMOPS_THREADS": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    home.mkdir(parents=True, exist_ok=True)
    starter = process.start(["-m", "infra.platform.starter", "--socket", str(socket_path)], home / "starter.log",
                            env, inherit_env=False)
    wait_for(socket_path.exists, 120, "the second worker's flow-run starter")
    worker = process.start(["-m", "prefect", "worker", "start", "--pool", "slmops-process", "--type", "process",
                            "--name", "second-worker"], home / "worker.log", env, inherit_env=False)
    return [starter, worker]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory,
                tiny_onnx: Path) -> Iterator[tuple[Platform, int, list[ProcessRef]]]:
    require_postgres()
    name, port = f"slmops_tw_{uuid.uuid4().hex[:8]}", stable_port()
    plat = Platform(tmp_path_factory.mktemp("tw-platform"),
                    [{"model": MODEL, "alias": "champion", "target": {"target": "local", "port": port}}],
                    database=f"{POSTGRES}/{name}")
    state = plat.up()
    second: list[ProcessRef] = []
    try:
        second = start_second_worker(plat, tmp_path_factory.mktemp("tw-second-home"))
        plat.register(MODEL, tiny_onnx, versions=3)
        wait_for(lambda: len(online_workers(plat)) == 2, 120, "both workers online in the pool")
        yield plat, port, second
    finally:
        for ref in reversed(second):
            process.stop_group(ref)
        plat.down()
        assert none_running(state)
        drop_databases(f"{name}_prefect", f"{name}_mlflow", f"{name}_slmops")


def online_workers(plat: Platform) -> list[str]:
    answer = plat.prefect("POST", "/work_pools/slmops-process/workers/filter", json={})
    return [w["name"] for w in answer.json() if w.get("status") == "ONLINE"]


def deploys(plat: Platform) -> int:
    """How many times the local deployment's record was written: one per deploy that changed what serves."""
    engine = sqlalchemy.create_engine(plat.state.state_database)
    try:
        with engine.connect() as conn:
            return conn.execute(sqlalchemy.text("SELECT revision FROM deployments WHERE target = 'local' AND "
                                                "name = :n"), {"n": MODEL}).scalar() or 0
    finally:
        engine.dispose()


def unfinished(plat: Platform, flow_name: str) -> list[dict]:
    return [r for r in plat.flow_runs(flow_name) if r["state_type"] in ("SCHEDULED", "PENDING", "RUNNING")]


def run_deployment(plat: Platform, name: str) -> str:
    """Start a run of deployment ``name``; its id."""
    deployment = next(d for d in plat.prefect("POST", "/deployments/filter", json={}).json() if d["name"] == name)
    return plat.prefect("POST", f"/deployments/{deployment['id']}/create_flow_run", json={}).json()["id"]


def run_state(plat: Platform, run_id: str) -> str:
    return plat.prefect("GET", f"/flow_runs/{run_id}").json()["state_type"]


def test_two_workers_act_as_one(two_workers, tmp_path: Path) -> None:
    plat, port, second = two_workers
    client = plat.mlflow()
    client.set_registered_model_alias(MODEL, "champion", "1")
    wait_for(lambda: served_version(port) == "1", 240, "version 1 through the webhook")
    wait_for(lambda: not unfinished(plat, "redeploy"), 240, "the first redeploy to finish")
    before, runs_before = deploys(plat), len(plat.flow_runs("redeploy"))

    # six promotes fired at once, on whichever worker picks each redeploy up
    moves = ["2", "3", "2", "3", "2", "3"]  # whichever lands last, it is not the version serving now
    started = time.monotonic()
    with ThreadPoolExecutor(len(moves)) as pool:
        list(pool.map(lambda v: client.set_registered_model_alias(MODEL, "champion", v), moves))
    final = client.get_model_version_by_alias(MODEL, "champion").version
    wait_for(lambda: served_version(port) == str(final), 600, "the last move serving")
    serving = time.monotonic() - started
    wait_for(lambda: len(plat.flow_runs("redeploy")) >= runs_before + len(moves) and
             not unfinished(plat, "redeploy"), 600, "a finished redeploy run per alias move")
    settled = time.monotonic() - started
    assert served_version(port) == str(final), "the target serves the alias's last move"
    made = deploys(plat) - before
    assert 1 <= made <= len(moves), f"{made} deploys for {len(moves)} moves"
    runs = plat.flow_runs("redeploy")
    assert len(runs) == runs_before + len(moves), "exactly one redeploy run per alias move"
    assert [r["state_type"] for r in runs[: len(moves)]] == ["COMPLETED"] * len(moves)
    print(f"\n[two workers] {len(moves)} alias moves: {made} deploys; version {final} served {serving:.1f}s and "
          f"every redeploy run finished {settled:.1f}s after the moves began")

    # a reconcile on either worker redeploys nothing that already serves the bound version
    for _ in range(2):
        run = run_deployment(plat, "reconcile")
        wait_for(lambda run=run: run_state(plat, run) in ("COMPLETED", "FAILED", "CRASHED"), 300, "reconcile")
        assert run_state(plat, run) == "COMPLETED"
    assert deploys(plat) - before == made, "reconcile deployed nothing"

    # status from an empty SLMOPS_HOME, knowing only the platform's URLs, lists what the workers deployed
    empty = tmp_path / "empty-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SLMOPS_")) and
           k != "MLFLOW_TRACKING_URI"}
    env |= {"SLMOPS_HOME": str(empty), "PREFECT_API_URL": plat.state.prefect_api_url,
            "MLFLOW_TRACKING_URI": plat.state.mlflow_uri}
    status = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--json"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    listed = {(d["name"], d["target"]): d for d in json.loads(status.stdout)}
    assert listed[(MODEL, "local")]["recorded_version"] == listed[(MODEL, "local")]["served_version"] == str(final)

    # a worker killed mid-deploy: the old or the new version serves, and the next reconcile finishes the job
    old = str(final)
    new = "1" if old != "1" else "2"
    runs_before = len(plat.flow_runs("redeploy"))
    client.set_registered_model_alias(MODEL, "champion", new)
    wait_for(lambda: len(plat.flow_runs("redeploy")) > runs_before and
             plat.flow_runs("redeploy")[0]["state_type"] == "RUNNING", 240, "the redeploy to start")
    time.sleep(1.0)  # into the deploy: the new backend is starting
    starters = [plat.state.services["starter"].process.pid, second[0].pid]
    killed = [pid for parent in starters for pid in children(parent)]
    assert killed, "no flow-run process to kill"
    for pid in killed:  # every flow-run process the starters forked dies at once, as a pod would
        os.kill(pid, 9)
    try:
        assert served_version(port) in (old, new)
        run = run_deployment(plat, "reconcile")
        wait_for(lambda: run_state(plat, run) in ("COMPLETED", "FAILED", "CRASHED"), 300, "reconcile after the kill")
        assert run_state(plat, run) == "COMPLETED" and served_version(port) == new
        assert orphans(plat) == [], "the killed deploy's backend outlived the reconcile"
    finally:
        for pid in orphans(plat):
            os.kill(pid, 15)


def children(parent: int) -> list[int]:
    """PIDs whose parent is ``parent``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


def orphans(plat: Platform) -> list[int]:
    """Servers of this test's model that no record holds (found by their command line)."""
    engine = sqlalchemy.create_engine(plat.state.state_database)
    with engine.connect() as conn:
        record = json.loads(conn.execute(sqlalchemy.text(
            "SELECT record FROM deployments WHERE target = 'local' AND name = :n"), {"n": MODEL}).scalar())
    engine.dispose()
    kept = {part["process"]["pid"] for part in (record["details"].get("backend"), record["details"].get("proxy"))
            if part}
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        pid = int(cmdline.parent.name)
        if b"infra.serving" in argv and MODEL.encode() in argv and pid not in kept:
            found.append(pid)
    return found
