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

from tasks.demo import TINY_SPEC, ensure_demo_assets  # noqa: E402


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


@pytest.fixture(scope="session")
def multi_lora(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An untrained tiny Llama, three random LoRA adapters for it and a multi-LoRA int4 folder serving two of
    them: ``alpha`` (r=8 on q/v/o/down, which decides the base's LoRA branches) and ``beta`` (r=4 on q/v only);
    ``wide`` adapts gate_proj, which the base has no branch for. Keys: base, alpha, beta, wide, served."""
    from tasks.config import QuantizeConfig
    from tasks.demo import ModelShape, make_lora_adapter, make_model
    from tasks.inputs import describe_model
    from tasks.quantize.adapters import build_multi_lora

    root = tmp_path_factory.mktemp("multi-lora")
    shape = ModelShape(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, max_positions=128)
    base = make_model(shape, tiny_assets / "tokenizer", root / "base", seed=1)
    paths = {"base": base,
             "alpha": make_lora_adapter(base, root / "alpha", ["q_proj", "v_proj", "o_proj", "down_proj"], 8, 1),
             "beta": make_lora_adapter(base, root / "beta", ["q_proj", "v_proj"], 4, 2),
             "wide": make_lora_adapter(base, root / "wide", ["gate_proj"], 4, 3)}
    built = build_multi_lora(describe_model(str(base)), {n: describe_model(str(paths[n])) for n in ("alpha", "beta")},
                             "int4", QuantizeConfig(int4_block_size=16), root / "served")
    return {**paths, "served": Path(built.path)}


def _random_onnx(tiny_assets: Path, folder: Path, shape) -> Path:
    from tasks.config import QuantizeConfig
    from tasks.demo import make_model
    from tasks.inputs import describe_model
    from tasks.quantize.onnx import build_onnx

    make_model(shape, tiny_assets / "tokenizer", folder / "hf", seed=0)
    # k_quant needs an even number of blocks per input dimension: 16 suits hidden sizes of 32
    cfg = QuantizeConfig(int4_block_size=16)
    return Path(build_onnx(describe_model(str(folder / "hf")), "int4", cfg, folder / "onnx").path)


@pytest.fixture(scope="session")
def random_onnx(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model with a 128-token window: it rarely ends early, so rows run to their budgets."""
    from tasks.demo import ModelShape

    shape = ModelShape(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64, max_positions=128)
    return _random_onnx(tiny_assets, tmp_path_factory.mktemp("random"), shape)


@pytest.fixture(scope="session")
def slow_onnx(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wider untrained model with a 1024-token window: one request can keep the engine busy for a while."""
    from tasks.demo import ModelShape

    shape = ModelShape(hidden_size=256, layers=4, heads=4, kv_heads=2, intermediate_size=1024, max_positions=1024)
    return _random_onnx(tiny_assets, tmp_path_factory.mktemp("slow"), shape)


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
