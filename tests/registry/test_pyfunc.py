"""Registered versions are MLflow Models (registry/pyfunc.py): ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")``
answers what the local server answers for the same messages, ``mlflow models serve`` answers ``/invocations``, and
a version registered the old way (a bare served folder on its run) still resolves. On the trained tiny teacher's
int4 build, in the test session's sqlite MLflow store; servers are real processes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from flows.cli import main
from infra import process
from registry.errors import RegistryError
from registry.pyfunc import log_served_model
from registry.releases import resolve_release
from registry.resolve import DIGEST_TAG, download_served
from registry.tracking import setup_tracking, tracking_uri
from tasks.records import digest_dir
from tasks.settings import get_settings
from tests.infra.serving.conftest import NAME, start_server

MESSAGES = [{"role": "user", "content": "Reverse: a b c"}]


@pytest.fixture(scope="module")
def registered(tiny_onnx: Path) -> str:
    """``pyfunc-slm`` version 1 (alias champion): the tiny int4 build logged as an MLflow Model."""
    setup_tracking(get_settings().root)
    client = MlflowClient()
    client.create_registered_model("pyfunc-slm")
    with mlflow.start_run() as run:
        model = log_served_model(run.info.run_id, tiny_onnx)
    mv = client.create_model_version("pyfunc-slm", model.model_uri, run_id=run.info.run_id, model_id=model.model_id)
    client.set_registered_model_alias("pyfunc-slm", "champion", mv.version)
    return "pyfunc-slm"


@pytest.fixture(scope="module")
def server_answer(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    url, pid = start_server(tiny_onnx, tmp_path_factory.mktemp("pyfunc-srv") / "server.log")
    try:
        reply = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, "messages": MESSAGES,
                                                               "max_tokens": 12, "temperature": 0}, timeout=60)
        return reply.json()["choices"][0]["message"]["content"]
    finally:
        process.stop(pid)


def test_pyfunc_loads_the_alias_and_answers_what_the_server_answers(registered: str, server_answer: str) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{registered}@champion")
    assert model.metadata.get_input_schema().input_names()[0] == "messages"
    [reply] = model.predict({"messages": MESSAGES, "max_tokens": 12})
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": server_answer}
    assert reply["choices"][0]["finish_reason"] in {"stop", "length"} and reply["usage"]["completion_tokens"] >= 1
    # several requests at once (a DataFrame of them, as mlflow serve passes) answer each on its own
    import pandas as pd

    many = model.predict(pd.DataFrame([{"messages": MESSAGES, "max_tokens": 12},
                                       {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}]))
    assert many[0]["choices"][0]["message"]["content"] == server_answer
    assert many[1]["usage"]["completion_tokens"] <= 3
    with pytest.raises(mlflow.exceptions.MlflowException, match="messages"):
        model.predict({"messages": []})


def test_mlflow_models_serve_answers_invocations(registered: str, server_answer: str, tmp_path: Path) -> None:
    port = process.free_port()
    pid = process.start(["-m", "mlflow", "models", "serve", "-m", f"models:/{registered}@champion",
                         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], tmp_path / "serve.log",
                        {"MLFLOW_TRACKING_URI": tracking_uri(get_settings().root),  # uvicorn: beside python
                         "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    try:
        process.wait_healthy(f"http://127.0.0.1:{port}/ping", pid, tmp_path / "serve.log", 180)
        reply = httpx.post(f"http://127.0.0.1:{port}/invocations",
                           json={"dataframe_records": [{"messages": MESSAGES, "max_tokens": 12}]}, timeout=60)
        assert reply.status_code == 200, reply.text
        [prediction] = reply.json()["predictions"]
        assert prediction["choices"][0]["message"]["content"] == server_answer
    finally:
        process.stop(pid)


def register_legacy(name: str, served: Path) -> str:
    """Version 1 of ``name`` registered the way slmops did before MLflow Models (a bare folder on its run)."""
    setup_tracking(get_settings().root)
    client = MlflowClient()
    client.create_registered_model(name)
    with mlflow.start_run() as run:
        client.log_artifacts(run.info.run_id, str(served), "served")
    client.create_model_version(name, f"runs:/{run.info.run_id}/served", run_id=run.info.run_id)
    return run.info.run_id


def test_a_version_registered_as_a_bare_folder_still_resolves(tiny_onnx: Path, tmp_path: Path) -> None:
    root = get_settings().root
    register_legacy("legacy-slm", tiny_onnx)
    release = resolve_release(root, "legacy-slm/1")
    assert sorted(p.name for p in Path(release.onnx_dir).iterdir()) == sorted(p.name for p in tiny_onnx.iterdir())


def test_slmops_models_upgrade_makes_a_bare_folder_version_load_in_place(tiny_onnx: Path, server_answer: str,
                                                                          capsys: pytest.CaptureFixture) -> None:
    root, client = get_settings().root, MlflowClient()
    run_id = register_legacy("old-slm", tiny_onnx)
    client.set_registered_model_alias("old-slm", "champion", "1")
    with pytest.raises(mlflow.exceptions.MlflowException, match="MLmodel"):
        mlflow.pyfunc.load_model("models:/old-slm@champion")
    # `slmops models` names the command; the command upgrades version 1 in place, and says so once
    assert main(["models", "old-slm"]) == 0
    assert "versions 1 were registered before slmops logged MLflow Models" in capsys.readouterr().out
    assert main(["models", "old-slm", "--upgrade"]) == 0
    assert "upgraded versions 1" in capsys.readouterr().out
    assert main(["models", "old-slm", "--upgrade"]) == 0
    assert "every version is an MLflow Model already" in capsys.readouterr().out
    reply = mlflow.pyfunc.load_model("models:/old-slm@champion").predict({"messages": MESSAGES, "max_tokens": 12})
    assert reply[0]["choices"][0]["message"]["content"] == server_answer
    assert client.get_model_version("old-slm", "1").source == f"runs:/{run_id}/served"  # the same version
    # and deploy still reads it, from a fresh cache
    shutil.rmtree(root / "cache" / "registry" / "old-slm")
    release = resolve_release(root, "old-slm@champion")
    assert (Path(release.onnx_dir) / "model.onnx").read_bytes() == (tiny_onnx / "model.onnx").read_bytes()


def test_the_version_cache_is_only_a_cache(tiny_onnx: Path, random_onnx: Path, tmp_path: Path) -> None:
    setup_tracking(get_settings().root)
    client = MlflowClient()

    def register(folder: Path):
        client.create_registered_model("cache-slm")
        with mlflow.start_run() as run:
            model = log_served_model(run.info.run_id, folder)
        client.create_model_version("cache-slm", model.model_uri, run_id=run.info.run_id, model_id=model.model_id,
                                    tags={DIGEST_TAG: digest_dir(folder)})
        return client.get_model_version("cache-slm", "1")

    mv = register(tiny_onnx)
    first = download_served(tmp_path, "cache-slm", "1", mv.run_id, mv.source, mv.tags[DIGEST_TAG])
    assert (first / "model.onnx").read_bytes() == (tiny_onnx / "model.onnx").read_bytes()
    # a registry made anew holds other bytes under the same name and version: the cache does not stand in for them
    client.delete_registered_model("cache-slm")
    mv = register(random_onnx)
    again = download_served(tmp_path, "cache-slm", "1", mv.run_id, mv.source, mv.tags[DIGEST_TAG])
    assert again == first and (again / "model.onnx").read_bytes() == (random_onnx / "model.onnx").read_bytes()
    # and a download that does not match the version's digest is refused, not served
    with pytest.raises(RegistryError, match="does not match the version's digest"):
        download_served(tmp_path / "other", "cache-slm", "1", mv.run_id, mv.source, "0" * 64)
    assert not (tmp_path / "other" / "cache" / "registry" / "cache-slm" / "1" / "served").exists()
