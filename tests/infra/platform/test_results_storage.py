"""``slmops up --results s3://…``: every flow run persists its Prefect result to S3 through the platform's
``slmops-s3-results`` block, and a process on another "worker" (none of the first one's disk) reads it back.

AWS cannot exist here: S3 is a moto server on 127.0.0.1 (``aws_endpoint``), reached through ``AWS_ENDPOINT_URL``.
The Prefect server is the real one, started from the very spec ``slmops up`` starts it from.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra import process
from infra.platform.database import sqlite_databases
from infra.platform.results import RESULTS_BLOCK_SLUG, parse_results_uri
from infra.platform.services import UpOptions, _spawn, _wait, save_results_block, service_specs
from tasks.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
FLOW = """
from prefect import flow

@flow(name="answer")
def answer() -> dict:
    return {"answer": 42}

state = answer(return_state=True)
print(state.state_details.flow_run_id)
"""
READ = """
import sys
from prefect.client.orchestration import get_client

with get_client(sync_client=True) as client:
    run = client.read_flow_run(sys.argv[1])
print(run.state.result())
"""


def test_results_land_in_s3_and_another_process_reads_them(aws_endpoint: str, s3_bucket, tmp_path: Path) -> None:
    home = tmp_path / "platform-home"
    opts = UpOptions(home=home, repo=REPO, bindings=tmp_path / "bindings.yaml", results="s3://batch/prefect")
    ports = {n: process.free_port() for n in ("prefect", "mlflow", "receiver", "fleet")}
    specs = service_specs(opts, sqlite_databases(home), ports)
    worker_env = specs["worker"].env
    assert worker_env["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == RESULTS_BLOCK_SLUG
    assert RESULTS_BLOCK_SLUG == "slmops-s3-results/slmops-results"
    prefect = _spawn("prefect", specs["prefect"], home / "platform" / "logs")
    try:
        _wait(prefect)
        api = f"{specs['prefect'].url}/api"
        save_results_block(api, opts.results)  # configure's results step (the rest is tested with the platform)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "worker-a"),
                **{k: v for k, v in worker_env.items() if k.startswith("PREFECT_RESULTS")}}
        ran = subprocess.run([sys.executable, "-c", FLOW], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=180, check=True)
        run_id = ran.stdout.strip().splitlines()[-1]
        keys = [o["Key"] for o in s3_bucket.list_objects_v2(Bucket="batch", Prefix="prefect/").get("Contents", [])]
        assert keys, "no result object under s3://batch/prefect/"
        other = {k: v for k, v in env.items() if not k.startswith("PREFECT_RESULTS")}
        other["PREFECT_HOME"] = str(tmp_path / "worker-b")  # another pod: none of worker-a's disk
        read = subprocess.run([sys.executable, "-c", READ, run_id], env=other, cwd=tmp_path, capture_output=True,
                              text=True, timeout=180, check=True)
        assert read.stdout.strip().splitlines()[-1] == "{'answer': 42}"
    finally:
        process.stop_group(prefect.process)


def test_results_uri_must_be_s3() -> None:
    assert parse_results_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    with pytest.raises(ConfigError, match="s3://bucket/prefix"):
        parse_results_uri("/tmp/results")
