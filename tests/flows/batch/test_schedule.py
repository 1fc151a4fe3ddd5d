"""The ``nightly-batch`` deployment of prefect.yaml on a real Prefect server and process worker: a schedule fires a
batch run that completes with its output; a run started while it runs is cancelled (CANCEL_NEW), not doubled.

Everything runs on 127.0.0.1 with its own Prefect home and sqlite database; every process is stopped by PID.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import process
from infra.process import ProcessRef
from tests.flows.batch.helpers import output_rows, split_rows, write_jsonl

REPO = Path(__file__).resolve().parents[3]
DEPLOYMENT = "batch_transform/nightly-batch"


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def _stop_tree(ref: ProcessRef) -> None:
    """Stop a process we started and then whatever it started that outlived it (each by PID and identity)."""
    children = [c for c in (ProcessRef.of(pid) for pid in _descendants(ref.pid)) if c is not None]
    process.stop(ref, grace_s=15)
    for child in children:
        process.stop(child, grace_s=5)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``prefect server start`` on a free port with its own home and database; yields its API URL and the
    environment clients need."""
    home = tmp_path / "prefect"
    port = process.free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
           "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1"}
    log = tmp_path / "server.log"
    ref = process.start(["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], log, env)
    try:
        process.wait_healthy(f"{api}/health", ref, log, timeout_s=120)
        yield api, {**env, "PREFECT_API_URL": api}
    finally:
        _stop_tree(ref)


def _runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _final(client, run_id):
    run = client.read_flow_run(run_id)
    return run if run.state.is_final() else None


def _wait(what: str, check, timeout_s: float, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (found := check()) is not None:
            return found
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}; worker log tail:\n{tail}")


def test_scheduled_batch_completes_and_a_run_started_meanwhile_is_cancelled(
        prefect_server, batch_model: str, tiny_assets: Path, tmp_path: Path, home: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    api, env = prefect_server
    # long enough (about 10 s of answering) that the second run is proposed while the first runs, however slow
    # the worker is to pick it up; ids come from line numbers: all distinct
    rows = split_rows(tiny_assets) * 40
    source = write_jsonl(tmp_path / "requests.jsonl", [{k: v for k, v in r.items() if k != "id"} for r in rows])
    params = {"model_ref": f"{batch_model}@champion", "input": str(source), "output": str(tmp_path / "nightly/{date}")}
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        # given the process pool and the nightly-batch deployment exactly as prefect.yaml declares it
        client.create_work_pool(WorkPoolCreate(name="slmops-process", type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()))
        deploy = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "nightly-batch",
                                 "--params", json.dumps(params)], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, **env, "SLMOPS_REPO": str(REPO)}, timeout=120)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.parameters["config"]["executor"]["type"] == "local"
        # and a schedule that fires within the test
        anchor = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
        client.create_deployment_schedules(deployment.id, [(IntervalSchedule(interval=dt.timedelta(hours=1),
                                                                             anchor_date=anchor), True)])
        log = tmp_path / "worker.log"
        worker = process.start(["-m", "prefect", "worker", "start", "--pool", "slmops-process", "--type", "process"],
                               log, {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "2",
                                     "SLMOPS_THREADS": "1"})
        try:
            # when the scheduled run is running, a second run of the deployment is started
            first = _wait("the scheduled run to start", lambda: next(
                (r for r in _runs(client, deployment.id) if r.state.name == "Running"), None), 120, log)
            assert abs((first.expected_start_time - anchor).total_seconds()) < 1, "the schedule fired it"
            from prefect.deployments import run_deployment

            second = run_deployment(DEPLOYMENT, timeout=0)
            # then the second is cancelled, not run beside it, and the scheduled one completes
            second = _wait("the second run to end", lambda: _final(client, second.id), 90, log)
            assert second.state.name == "Cancelled", second.state
            assert "concurrency limit" in second.state.message
            first = _wait("the scheduled run to end", lambda: _final(client, first.id), 120, log)
            assert first.state.name == "Completed", (first.state.message, log.read_text()[-3000:])
            ran = [r.id for r in _runs(client, deployment.id)
                   if "Running" in {st.name for st in client.read_flow_run_states(r.id)}]
            assert ran == [first.id], "exactly one run of the deployment ever ran"
        finally:
            _stop_tree(worker)
    # and its output is complete: the day it was scheduled for, every record once, the champion's version
    out = tmp_path / "nightly" / anchor.strftime("%Y-%m-%d")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["records"] == len(rows) and manifest["model_version"] == "1"
    answered = output_rows(out)
    assert len(answered) == len({r["id"] for r in answered}) == len(rows)
    assert {r["version"] for r in answered} == {"1"}

