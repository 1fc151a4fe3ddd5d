"""Test session: all state in a temporary SLMOPS_HOME, tiny demo assets, a Prefect test harness."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports prefect: point every piece of state at a throwaway home.
_HOME = Path(tempfile.mkdtemp(prefix="slmops-test-"))
os.environ["SLMOPS_HOME"] = str(_HOME)
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("SLMOPS_THREADS", "2")

from tasks.settings import configure_environment  # noqa: E402

configure_environment()

import pytest  # noqa: E402

from tasks.data.demo import TINY_SPEC, ensure_demo_assets  # noqa: E402


@pytest.fixture(scope="session")
def home() -> Path:
    """The session's SLMOPS_HOME."""
    return _HOME


@pytest.fixture(scope="session")
def tiny_assets(home: Path) -> Path:
    """Folder of tiny demo assets (tokenizers, data splits, trained teacher, students), made once."""
    return ensure_demo_assets(home, TINY_SPEC)


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for tests that run flows."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_onnx(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny teacher as an onnxruntime-genai int4 folder (what the pipeline serves)."""
    from tasks.config import QuantizeConfig
    from tasks.inputs import describe_model
    from tasks.quantize.onnx import build_onnx

    out = tmp_path_factory.mktemp("served") / "onnx-int4"
    build_onnx(describe_model(str(tiny_assets / "teacher")), "int4", QuantizeConfig(int4_block_size=16), out)
    return out


@pytest.fixture
def ollama_server(tmp_path: Path):
    """A server speaking Ollama's REST API on 127.0.0.1, generating with llama.cpp (see tests/fixtures)."""
    if not os.environ.get("CI"):  # CI installs the gguf extra: there a missing llama_cpp must fail
        pytest.importorskip("llama_cpp")
    from tests.fixtures.ollama_server import OllamaServer

    with OllamaServer(tmp_path / "ollama") as server:
        yield server


@pytest.fixture
def aws_endpoint(monkeypatch: pytest.MonkeyPatch):
    """A moto server on 127.0.0.1 (AWS cannot exist here); boto3 reaches it via AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(aws_endpoint: str):
    """An S3 client on the moto server with an empty bucket ``batch``."""
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket="batch")
    return client
