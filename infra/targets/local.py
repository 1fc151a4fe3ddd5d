"""local: our serving runtime, blue/green behind a stable-port proxy.

deploy: start the new version on a fresh port → it must serve the requested version and pass the golden
prompt → point the proxy at it → verify through the stable port → wait until the old version has no request
in flight → stop it. A new version that fails any check is stopped and the old one keeps serving.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

import httpx

from infra import process
from infra.targets.base import DeployError, Deployment, RecordedTarget, check_answer, now
from infra.targets.config import LocalTargetConfig
from tasks.errors import SlmopsError
from tasks.records import ModelRelease

log = logging.getLogger(__name__)


class LocalTarget(RecordedTarget):
    """Deploy to this machine (127.0.0.1)."""

    kind = "local"

    def __init__(self, cfg: LocalTargetConfig, root: Path):
        super().__init__(cfg, root)

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.cfg.api_key_env) if self.cfg.api_key_env else None
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _logs(self, name: str) -> Path:
        return self.root / "deployments" / "local" / "logs" / name

    def verify(self, base_url: str, release: ModelRelease) -> str:
        """The server at ``base_url`` serves ``release`` and answers the golden prompt; return the answer."""
        try:
            models = httpx.get(f"{base_url}/v1/models", headers=self._headers(), timeout=10).json()["data"]
            if models[0].get("version") != release.version:
                raise DeployError(f"{base_url} serves version {models[0].get('version')!r}, not {release.version}")
            reply = httpx.post(f"{base_url}/v1/chat/completions", headers=self._headers(), timeout=60, json={
                "model": release.name, "max_tokens": self.cfg.golden_max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": self.cfg.golden_prompt}]})
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise DeployError(f"{base_url}: smoke request failed: {exc}") from None
        if reply.status_code != 200:
            raise DeployError(f"{base_url}: golden prompt answered HTTP {reply.status_code}: {reply.text[:300]}")
        answer = reply.json()["choices"][0]["message"]["content"]
        check_answer(answer, self.cfg.golden_expect, base_url)
        return answer

    def _start_backend(self, release: ModelRelease, name: str) -> dict:
        port = process.free_port()
        log_file = self._logs(name) / f"v{release.version}-{port}.log"
        args = ["-m", "infra.serving", release.onnx_dir, "--name", release.name, "--version", release.version,
                "--port", str(port), "--max-batch-size", str(self.cfg.max_batch_size),
                "--max-queue", str(self.cfg.max_queue), "--api-key-env", self.cfg.api_key_env or "SLMOPS_API_KEY"]
        env = {} if self.cfg.api_key_env else {"SLMOPS_API_KEY": ""}
        pid = process.start(args, log_file, env)
        backend = {"pid": pid, "port": port, "url": f"http://127.0.0.1:{port}", "version": release.version,
                   "log": str(log_file)}
        try:
            process.wait_healthy(f"{backend['url']}/ping", pid, log_file, self.cfg.startup_timeout_s)
            self.verify(backend["url"], release)
        except SlmopsError as exc:
            process.stop(pid)
            raise DeployError(f"new version {release.ref} failed its checks; nothing was switched: {exc}") from None
        return backend

    def _start_proxy(self, upstream: str, name: str) -> dict:
        token = secrets.token_urlsafe(24)
        log_file = self._logs(name) / "proxy.log"
        pid = process.start(["-m", "infra.serving.proxy", "--port", str(self.cfg.port), "--upstream", upstream],
                            log_file, {"SLMOPS_PROXY_TOKEN": token})
        url = f"http://127.0.0.1:{self.cfg.port}"
        process.wait_healthy(f"{url}/ping", pid, log_file, 30)
        return {"pid": pid, "port": self.cfg.port, "url": url, "token": token}

    def _switch(self, proxy: dict, upstream: str) -> None:
        r = httpx.put(f"{proxy['url']}/_slmops/upstream", json={"upstream": upstream},
                      headers={"X-Slmops-Token": proxy["token"]}, timeout=10)
        if r.status_code != 200:
            raise DeployError(f"proxy refused the switch: HTTP {r.status_code}")

    def _drain(self, proxy: dict, upstream: str) -> None:
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while time.monotonic() < deadline:
            state = httpx.get(f"{proxy['url']}/_slmops/upstream", headers={"X-Slmops-Token": proxy["token"]},
                              timeout=10).json()
            if state["inflight"].get(upstream, 0) <= 0:
                return
            time.sleep(0.1)
        log.warning("old version still had requests in flight after %.0fs; stopping it", self.cfg.drain_timeout_s)

    def deploy(self, release: ModelRelease) -> Deployment:
        """Blue/green: the old version serves until the new one has passed every check."""
        name = self.cfg.name or release.name
        current = self.store.load(name)
        backend = self._start_backend(release, name)
        proxy = current.details.get("proxy") if current else None
        try:
            if proxy and process.alive(proxy["pid"]):
                self._switch(proxy, backend["url"])
            else:
                proxy = self._start_proxy(backend["url"], name)
            self.verify(proxy["url"], release)
        except SlmopsError as exc:
            if current and proxy and process.alive(proxy["pid"]):
                self._switch(proxy, current.details["backend"]["url"])
            process.stop(backend["pid"])
            raise DeployError(f"switching to {release.ref} failed; the previous version still serves: {exc}") \
                from None
        if current:
            old = current.details["backend"]
            self._drain(proxy, old["url"])
            process.stop(old["pid"])
        deployment = Deployment(name=name, target="local", release=release, endpoint=f"{proxy['url']}/v1",
                                since=now(), previous=current.release if current else None,
                                details={"backend": backend, "proxy": proxy})
        self.store.save(deployment)
        return deployment

    def status(self, name: str | None = None) -> Deployment | None:
        """The record of ``name`` with ``details.healthy`` checked now."""
        record = self.store.load(name or self.cfg.name or "")
        if record is None:
            return None
        try:
            ok = httpx.get(f"{record.details['proxy']['url']}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        record.details["healthy"] = ok and process.alive(record.details["backend"]["pid"])
        return record

    def _teardown(self, record: Deployment) -> None:
        """Stop the backend and the proxy (by their recorded PIDs)."""
        for part in ("backend", "proxy"):
            process.stop(record.details[part]["pid"])
