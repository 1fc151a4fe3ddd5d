"""Local target: blue/green behind a stable port, zero failed requests during swaps, failed deploys change nothing
and leave nothing running, one deploy at a time, port moves, and only our own processes are ever stopped."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from infra import process
from infra.process import ProcessRef
from infra.targets.base import DeployError, Deployment
from infra.targets.config import LocalTargetConfig
from infra.targets.local import Backend, LocalDetails, LocalTarget
from infra.targets.proxy_admin import ProxyAdmin
from tasks.records import ModelRelease
from tests.fixtures.clients import ContinuousClient
from tests.fixtures.ports import stable_port


def processes(*markers: str) -> list[int]:
    """PIDs of running processes whose command line contains every marker."""
    found = []
    for entry in Path("/proc").iterdir():
        ref = ProcessRef.of(int(entry.name)) if entry.name.isdigit() else None
        if ref is not None and all(m in " ".join(ref.cmdline) for m in markers):
            found.append(ref.pid)
    return found


class Harness:
    """Targets sharing one home and one private copy of the model, whose path marks every backend of the test."""

    def __init__(self, tmp_path: Path, tiny_onnx: Path):
        self.root, self.model = tmp_path, tmp_path / "model"
        shutil.copytree(tiny_onnx, self.model)
        self.port = stable_port()
        self.ports = [self.port]

    def target(self, cls: type[LocalTarget] = LocalTarget, **cfg: object) -> LocalTarget:
        self.ports.append(cfg.get("port") or self.port)
        return cls(LocalTargetConfig(port=self.port, startup_timeout_s=60).model_copy(update=cfg), self.root)

    def release(self, version: str, folder: Path | None = None) -> ModelRelease:
        return ModelRelease(name="tiny-slm", version=version, onnx_dir=str(folder or self.model))

    def stop_all(self) -> None:
        """Stop what this test started, by PID: recorded processes, then any leftover (a failing test's)."""
        target = LocalTarget(LocalTargetConfig(), self.root)
        for record in target.store.all():
            parts = target.details(record)
            for ref in (parts.proxy.process, parts.backend.process):
                process.stop(ref)
        leftovers = processes(str(self.model)) + [p for port in set(self.ports)
                                                  for p in processes("infra.serving.proxy", f"--port {port} ")]
        for pid in leftovers:
            if (ref := ProcessRef.of(pid)) is not None:
                process.stop(ref)


@pytest.fixture
def harness(tmp_path: Path, tiny_onnx: Path):
    h = Harness(tmp_path, tiny_onnx)
    yield h
    h.stop_all()


def test_blue_green_swap_rollback_and_undeploy(harness: Harness, tmp_path: Path) -> None:
    target = harness.target()
    first = target.deploy(harness.release("1"))
    url = first.endpoint.removesuffix("/v1")
    assert httpx.get(f"{url}/v1/models").json()["data"][0]["version"] == "1"
    with ContinuousClient(url) as client:
        time.sleep(1)
        second = target.deploy(harness.release("2"))
        time.sleep(1)
    assert client.errors == [] and set(client.codes) == {200} and client.codes[200] > 5
    assert set(client.versions) == {"1", "2"}
    assert second.previous.version == "1" and second.endpoint == first.endpoint
    assert not target.details(first).backend.process.alive(), "the old version was stopped after draining"

    # a new version that cannot start leaves version 2 serving, even for a client calling throughout
    broken = tmp_path / "broken"
    shutil.copytree(harness.model, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    refused = "new version tiny-slm/3 failed its checks; nothing was switched"
    with ContinuousClient(url) as client, pytest.raises(DeployError, match=refused):
        target.deploy(harness.release("3", broken))
    assert client.errors == [] and set(client.codes) == {200} and set(client.versions) == {"2"}
    assert target.status("tiny-slm").served_version == "2"

    # a version that starts but fails the golden check is refused the same way
    strict = harness.target(golden_expect="an answer this model never gives")
    with pytest.raises(DeployError, match="expected it to contain"):
        strict.deploy(harness.release("4"))
    assert httpx.get(f"{url}/health").json()["version"] == "2"

    back = target.rollback("tiny-slm")
    assert back.release.version == "1" and httpx.get(f"{url}/health").json()["version"] == "1"
    status = target.status("tiny-slm")
    assert (status.state, status.recorded_version, status.served_version, status.previous_version) == \
        ("up", "1", "1", "2")
    assert target.store.load("tiny-slm").release.version == "1"

    parts = target.details(back)
    target.undeploy("tiny-slm")
    assert not parts.backend.process.alive() and not parts.proxy.process.alive()
    assert process.port_free(harness.port)
    assert target.status("tiny-slm") is None
    with pytest.raises(DeployError, match="no local deployment 'tiny-slm'; deployed: none"):
        target.undeploy("tiny-slm")


def test_concurrent_deploys_end_with_one_version_serving(harness: Harness) -> None:
    results: dict[str, Deployment | BaseException] = {}

    def deploy(version: str) -> None:  # separate target objects, as two CLI invocations would have
        try:
            results[version] = harness.target().deploy(harness.release(version))
        except BaseException as exc:  # asserted below
            results[version] = exc

    threads = [threading.Thread(target=deploy, args=(v,)) for v in ("1", "2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Deployment) for r in results.values()), results  # one after the other
    target = harness.target()
    record = target.store.load("tiny-slm")
    assert {record.release.version, record.previous.version} == {"1", "2"}
    assert httpx.get(f"http://127.0.0.1:{harness.port}/health").json()["version"] == record.release.version
    parts = target.details(record)
    assert processes(str(harness.model)) == [parts.backend.process.pid], "no orphaned backend"
    assert processes("infra.serving.proxy", f"--port {harness.port} ") == [parts.proxy.process.pid]


class FailsThroughTheProxy(LocalTarget):
    """Our target, except that the check through the stable port fails (as if the proxy misrouted)."""

    def verify(self, base_url: str, release: ModelRelease) -> str:
        if base_url.endswith(f":{self.cfg.port}"):
            raise DeployError(f"{base_url}: smoke request failed (test)")
        return super().verify(base_url, release)


def test_a_first_deploy_failing_through_the_proxy_stops_the_proxy(harness: Harness) -> None:
    target = harness.target(FailsThroughTheProxy)
    with pytest.raises(DeployError, match="deploying tiny-slm/1 failed: .*nothing of this deploy is left running"):
        target.deploy(harness.release("1"))
    assert processes("infra.serving.proxy", f"--port {harness.port} ") == [], "the proxy it started was stopped"
    assert processes(str(harness.model)) == [] and process.port_free(harness.port)
    assert target.store.load("tiny-slm") is None


def test_a_proxy_that_cannot_be_reached_is_a_deploy_error_and_the_old_version_serves(harness: Harness) -> None:
    target = harness.target()
    target.deploy(harness.release("1"))
    record = target.store.load("tiny-slm")
    record.details["proxy"]["url"] = f"http://127.0.0.1:{process.free_port()}"  # the admin API is unreachable
    target.store.save(record)
    with pytest.raises(DeployError, match=r"deploying tiny-slm/2 failed: proxy .* unreachable for PUT"):
        target.deploy(harness.release("2"))
    assert httpx.get(f"http://127.0.0.1:{harness.port}/health").json()["version"] == "1"
    assert processes(str(harness.model), "--version 2 ") == [], "the new backend was stopped"
    assert target.store.load("tiny-slm").release.version == "1"


def test_proxy_admin_answers_that_are_not_its_json_are_deploy_errors() -> None:
    class NotAProxy(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = b"<html>a login page</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = _answer

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotAProxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    admin = ProxyAdmin(process=ProcessRef.of(os.getpid()), port=server.server_address[1], url=url, token="t",
                       log="-")
    try:
        for call in (lambda: admin.switch("http://b"), lambda: admin.drain("http://b", 5), admin.upstream):
            with pytest.raises(DeployError, match="answered .* with '<html>a login page</html>', not the proxy's"):
                call()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(DeployError, match="unreachable for PUT"):
        admin.switch("http://b")


def test_a_new_port_moves_the_deployment_and_a_taken_port_is_refused(harness: Harness) -> None:
    first = harness.target().deploy(harness.release("1"))
    new_port = stable_port()
    moved = harness.target(port=new_port).deploy(harness.release("2"))
    assert moved.endpoint == f"http://127.0.0.1:{new_port}/v1"
    assert httpx.get(f"http://127.0.0.1:{new_port}/health").json()["version"] == "2"
    old = harness.target().details(first)
    assert not old.proxy.process.alive() and not old.backend.process.alive()
    assert process.port_free(harness.port), "the old stable port was released"

    # a redeploy without a port stays where the deployment is
    again = harness.target(port=None).deploy(harness.release("3"))
    assert again.endpoint == moved.endpoint

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(DeployError, match=rf"port {taken} is taken by another program; the previous version 3 "
                                              rf"still serves at http://127.0.0.1:{new_port}"):
            harness.target(port=taken).deploy(harness.release("4"))
    assert processes(str(harness.model), "--version 4 ") == []
    status = harness.target().status("tiny-slm")
    assert (status.state, status.served_version, status.endpoint) == ("up", "3", moved.endpoint)


def test_undeploy_leaves_processes_that_reused_recorded_pids_alone(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    strangers = [subprocess.Popen(["sleep", "300"]) for _ in range(2)]
    try:
        exited = process.start(["-c", "import time; time.sleep(0.3)"], tmp_path / "exited.log")
        while exited.alive():
            time.sleep(0.05)
        backend, proxy = (exited.model_copy(update={"pid": s.pid}) for s in strangers)  # PIDs handed on
        details = LocalDetails(backend=Backend(process=backend, url="http://127.0.0.1:1", version="1", log="b.log"),
                               proxy=ProxyAdmin(process=proxy, port=1, url="http://127.0.0.1:1", token="t", log="p"))
        target = LocalTarget(LocalTargetConfig(), tmp_path)
        target.store.save(Deployment(name="tiny-slm", target="local", endpoint="http://127.0.0.1:1/v1", since="then",
                                     release=ModelRelease(name="tiny-slm", version="1", onnx_dir="/m"),
                                     details=details.model_dump()))
        status = target.status("tiny-slm")
        assert status.state == "down" and f"backend pid {backend.pid} is another program now" in status.problem
        with caplog.at_level(logging.WARNING):
            target.undeploy("tiny-slm")
        assert [s.poll() for s in strangers] == [None, None], "nobody else's process was signalled"
        assert caplog.text.count("stale process record") == 2
        assert target.store.load("tiny-slm") is None, "the stale record is forgotten"
    finally:
        for s in strangers:
            s.kill()
            s.wait()


def test_a_deploy_killed_midway_leaves_no_process_the_next_deploy_does_not_stop(harness: Harness) -> None:
    """A worker killed (SIGKILL) while its new backend starts leaves that backend running and unrecorded; the next
    deploy of the name stops it, from the note the killed deploy wrote in the state database."""
    script = ("import sys; from pathlib import Path; from infra.targets.config import LocalTargetConfig; "
              "from infra.targets.local import LocalTarget; from tasks.records import ModelRelease; "
              "LocalTarget(LocalTargetConfig(port=int(sys.argv[1]), startup_timeout_s=60), Path(sys.argv[2]))"
              ".deploy(ModelRelease(name='tiny-slm', version='1', onnx_dir=sys.argv[3]))")
    worker = subprocess.Popen([os.sys.executable, "-c", script, str(harness.port), str(harness.root),
                               str(harness.model)], cwd=Path(__file__).resolve().parents[2])
    store = harness.target().store
    deadline = time.monotonic() + 60
    while not store.starts("tiny-slm") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.starts("tiny-slm"), "the deploy never noted its backend"
    worker.kill()
    worker.wait()
    orphan = ProcessRef.model_validate_json(store.starts("tiny-slm")[0])
    assert orphan.liveness() is process.Liveness.RUNNING and store.load("tiny-slm") is None

    record = harness.target().deploy(harness.release("2"))
    assert orphan.liveness() is process.Liveness.GONE
    assert processes(str(harness.model)) == [harness.target().details(record).backend.process.pid]
    assert store.starts("tiny-slm") == []
