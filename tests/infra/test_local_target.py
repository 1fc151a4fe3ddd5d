"""Local target: blue/green behind a stable port, zero failed requests during swaps, failed deploys change nothing."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from infra import process
from infra.targets.base import DeployError
from infra.targets.config import LocalTargetConfig
from infra.targets.local import LocalTarget
from tasks.records import ModelRelease


class ContinuousClient:
    """Calls the stable port in a loop (bounded in time) and counts outcomes and served versions."""

    def __init__(self, url: str):
        self.url, self.codes, self.versions = url, Counter(), Counter()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 300
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    r = http.post(f"{self.url}/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": "Reverse: a b c"}], "max_tokens": 4})
                    self.codes[r.status_code] += 1
                    self.versions[httpx.get(f"{self.url}/health").json()["version"]] += 1
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))

    def __enter__(self) -> ContinuousClient:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


@pytest.fixture
def target(tmp_path: Path):
    t = LocalTarget(LocalTargetConfig(port=process.free_port(), startup_timeout_s=60), tmp_path)
    yield t
    for record in t.store.all():  # stop only what this test started, by PID
        for part in ("backend", "proxy"):
            process.stop(record.details[part]["pid"])


def release(folder: Path, version: str) -> ModelRelease:
    return ModelRelease(name="tiny-slm", version=version, onnx_dir=str(folder))


def test_blue_green_swap_rollback_and_undeploy(target: LocalTarget, tiny_onnx: Path, tmp_path: Path) -> None:
    first = target.deploy(release(tiny_onnx, "1"))
    url = first.endpoint.removesuffix("/v1")
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["version"] == "1"
    with ContinuousClient(url) as client:
        time.sleep(1)
        second = target.deploy(release(tiny_onnx, "2"))
        time.sleep(1)
    assert client.errors == [] and set(client.codes) == {200} and client.codes[200] > 5
    assert set(client.versions) == {"1", "2"}
    assert second.previous.version == "1" and second.endpoint == first.endpoint
    assert not process.alive(first.details["backend"]["pid"]), "the old version was stopped after draining"

    # a new version that cannot start leaves version 2 serving, even for a client calling throughout
    broken = tmp_path / "broken"
    shutil.copytree(tiny_onnx, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    refused = "new version tiny-slm/3 failed its checks; nothing was switched"
    with ContinuousClient(url) as client, pytest.raises(DeployError, match=refused):
        target.deploy(release(broken, "3"))
    assert client.errors == [] and set(client.codes) == {200} and set(client.versions) == {"2"}
    assert target.status("tiny-slm").release.version == "2"

    # a version that starts but fails the golden check is refused the same way
    strict = LocalTarget(target.cfg.model_copy(update={"golden_expect": "an answer this model never gives"}),
                         target.root)
    with pytest.raises(DeployError, match="expected it to contain"):
        strict.deploy(release(tiny_onnx, "4"))
    assert httpx.get(f"{url}/health").json()["version"] == "2"

    back = target.rollback("tiny-slm")
    assert back.release.version == "1" and httpx.get(f"{url}/health").json()["version"] == "1"
    status = target.status("tiny-slm")
    assert status.details["healthy"] and status.previous.version == "2"
    record = json.loads(target.store.path("tiny-slm").read_text())
    assert record["release"]["version"] == "1"

    pids = [status.details["backend"]["pid"], status.details["proxy"]["pid"]]
    target.undeploy("tiny-slm")
    assert not any(process.alive(p) for p in pids)
    assert target.status("tiny-slm") is None
    with pytest.raises(DeployError, match="no local deployment 'tiny-slm'; deployed: none"):
        target.undeploy("tiny-slm")
