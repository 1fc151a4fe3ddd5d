"""Serving-runtime fixtures: model folders of different shapes and servers as real processes on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import process

NAME = "tiny-slm"


def start_server(model: Path, log: Path, *extra: str, api_key: str | None = None) -> tuple[str, int]:
    """Start ``python -m infra.serving`` on a free port; return its URL and PID (stop it with process.stop)."""
    port = process.free_port()
    env = {"SLMOPS_TEST_KEY": api_key or ""}
    pid = process.start(["-m", "infra.serving", str(model), "--name", NAME, "--version", "7", "--port", str(port),
                         "--api-key-env", "SLMOPS_TEST_KEY", "--default-max-tokens", "16", *extra], log, env)
    process.wait_healthy(f"http://127.0.0.1:{port}/ping", pid, log, 120)
    return f"http://127.0.0.1:{port}", pid


@pytest.fixture(scope="module")
def server(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The trained tiny teacher served with default limits."""
    url, pid = start_server(tiny_onnx, tmp_path_factory.mktemp("srv") / "server.log", "--max-queue", "512")
    yield url
    process.stop(pid)


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


def chat_body(**kw) -> dict:
    """A small chat request; keywords override or add fields."""
    return {"model": NAME, "messages": [{"role": "user", "content": "Reverse: a b c"}], "max_tokens": 6} | kw


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$" if wanted else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
