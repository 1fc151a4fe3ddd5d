"""deploy_model flow: a registry reference resolved through MLflow and served by the local target."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from infra.targets.config import LocalTargetConfig
from infra.targets.local import LocalDetails
from infra.targets.store import DeploymentStore
from registry.errors import RegistryError
from registry.history import move_alias
from registry.releases import resolve_release
from registry.resolve import parse_ref
from registry.tracking import setup_tracking
from tests.fixtures.ports import stable_port


@pytest.fixture(scope="module")
def registered(home: Path, tiny_onnx: Path) -> str:
    """A registered model whose version 1 serves the tiny int4 folder, with alias champion."""
    import mlflow

    setup_tracking(home)
    client = MlflowClient()
    with mlflow.start_run(run_name="deploy-test") as run:
        mlflow.log_artifacts(str(tiny_onnx), "served")
    client.create_registered_model("tiny-deploy")
    client.create_model_version("tiny-deploy", source=f"runs:/{run.info.run_id}/served", run_id=run.info.run_id)
    move_alias(client, "tiny-deploy", "champion", "1", reason="test")
    return "tiny-deploy"


def test_refs_resolve_or_list_what_exists(registered: str, home: Path) -> None:
    release = resolve_release(home, f"{registered}@champion")
    assert release.version == "1" and (Path(release.onnx_dir) / "genai_config.json").is_file()
    assert resolve_release(home, f"{registered}/1").onnx_dir == release.onnx_dir
    with pytest.raises(RegistryError, match="has no alias 'staging'; aliases: champion→1"):
        resolve_release(home, f"{registered}@staging")
    with pytest.raises(RegistryError, match="has no version '4'; versions: 1"):
        resolve_release(home, f"{registered}/4")
    with pytest.raises(RegistryError, match="neither NAME@ALIAS"):
        parse_ref("tiny-deploy:latest")


def test_deploy_model_flow_and_cli(prefect_harness, registered: str, home: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    from flows.deploy import deploy_model

    port = stable_port()
    deployment = deploy_model(f"{registered}@champion", LocalTargetConfig(port=port))
    backend = LocalDetails.model_validate(deployment.details).backend
    try:
        assert deployment.endpoint == f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["version"] == "1"
        assert main(["status", "--target", "local"]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"^local +tiny-deploy +up +1 +1 +http://127.0.0.1:{port}/v1 ", out, re.M), out
        assert f"log: {backend.log}" in out
        assert main(["deploy", "tiny-deploy@nope", "--target", "local", "--port", str(port)]) == 2
        assert "has no alias 'nope'" in capsys.readouterr().err
        assert main(["deploy", "tiny-deploy@champion", "--target", "local", "--set", "colour=blue"]) == 2
        assert "colour: unknown key" in capsys.readouterr().err

        # the backend dies: status says so, and exits 1
        os.kill(backend.process.pid, signal.SIGKILL)
        while backend.process.alive():
            time.sleep(0.05)
        assert main(["status"]) == 1
        out = capsys.readouterr().out
        assert re.search(r"^local +tiny-deploy +down +1 +- ", out, re.M), out
        assert f"backend pid {backend.process.pid} exited" in out
        assert main(["status", "--json"]) == 1
        rows = json.loads(capsys.readouterr().out)
        assert [(r["name"], r["target"], r["state"], r["recorded_version"], r["served_version"], r["log"])
                for r in rows] == [("tiny-deploy", "local", "down", "1", None, backend.log)]
        assert "token" not in json.dumps(rows), "the proxy's admin token is never printed"
    finally:
        assert main(["undeploy", "tiny-deploy", "--target", "local"]) == 0
    assert DeploymentStore(home, "local").load("tiny-deploy") is None
    assert not LocalDetails.model_validate(deployment.details).proxy.process.alive()
    assert capsys.readouterr().out == "undeployed tiny-deploy from local\n"
    assert main(["status"]) == 0 and capsys.readouterr().out == "nothing deployed\n"


def test_cli_deploy_rollback_serves_the_previous_version(prefect_harness, registered: str, home: Path,
                                                         tiny_onnx: Path, capsys: pytest.CaptureFixture) -> None:
    import mlflow

    # given version 2 of the model, deployed after version 1 on one stable port
    client = MlflowClient()
    with mlflow.start_run(run_name="deploy-test-v2") as run:
        mlflow.log_artifacts(str(tiny_onnx), "served")
    client.create_model_version(registered, source=f"runs:/{run.info.run_id}/served", run_id=run.info.run_id)
    port = stable_port()
    try:
        assert main(["deploy", f"{registered}/1", "--target", "local", "--port", str(port)]) == 0
        assert main(["deploy", f"{registered}/2", "--target", "local"]) == 0
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["version"] == "2"
        capsys.readouterr()
        # when the deployment is rolled back from the CLI
        assert main(["deploy-rollback", registered, "--target", "local"]) == 0
        # then version 1 serves again on the same port, and the record says version 2 came before it
        assert f"{registered} on local serves version 1 again at http://127.0.0.1:{port}/v1" in capsys.readouterr().out
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["version"] == "1"
        assert DeploymentStore(home, "local").load(registered).previous.version == "2"
        # a deployment that does not exist is named, with what exists
        assert main(["deploy-rollback", "ghost", "--target", "local"]) == 2
        assert "no local deployment 'ghost'; deployed: ['tiny-deploy']" in capsys.readouterr().err
    finally:
        assert main(["undeploy", registered, "--target", "local"]) == 0
