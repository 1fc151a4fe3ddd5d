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


def chat_body(**kw) -> dict:
    """A small chat request; keywords override or add fields."""
    return {"model": NAME, "messages": [{"role": "user", "content": "Reverse: a b c"}], "max_tokens": 6} | kw


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$" if wanted else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
