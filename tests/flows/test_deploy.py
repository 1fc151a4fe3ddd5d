"""deploy_model flow: a registry reference resolved through MLflow and served by the local target."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from infra import process
from infra.targets.base import DeploymentStore
from infra.targets.config import LocalTargetConfig
from registry.errors import RegistryError
from registry.history import move_alias
from registry.resolve import parse_ref, resolve_release
from registry.tracking import setup_tracking


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

    port = process.free_port()
    deployment = deploy_model(f"{registered}@champion", LocalTargetConfig(port=port))
    try:
        assert deployment.endpoint == f"http://127.0.0.1:{port}/v1"
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["version"] == "1"
        assert main(["status", "--target", "local"]) == 0
        assert f"tiny-deploy: version 1 at http://127.0.0.1:{port}/v1" in capsys.readouterr().out
        assert main(["deploy", "tiny-deploy@nope", "--target", "local", "--port", str(port)]) == 2
        assert "has no alias 'nope'" in capsys.readouterr().err
        assert main(["deploy", "tiny-deploy@champion", "--target", "local", "--set", "colour=blue"]) == 2
        assert "colour: unknown key" in capsys.readouterr().err
    finally:
        assert main(["undeploy", "tiny-deploy", "--target", "local"]) == 0
    assert DeploymentStore(home, "local").load("tiny-deploy") is None
    assert not process.alive(deployment.details["proxy"]["pid"])
