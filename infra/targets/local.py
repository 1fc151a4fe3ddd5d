"""local: our serving runtime, blue/green behind a stable-port proxy.

deploy: start the new version on a fresh port → it must serve the requested version and pass the golden
prompt → point the proxy at it (or, for a new deployment or a new ``port``, start a proxy there) → verify through
the stable port → wait until the old version has no request in flight → record → stop the old version (and the
old proxy when the port moved). Any failure before the record is written stops what this deploy started and
says what serves now.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path

import httpx
from pydantic import BaseModel, ValidationError

from infra import process
from infra.process import Liveness, ProcessRef
from infra.targets.base import DeployError, Deployment, DeploymentStatus, RecordedTarget, check_answer, now
from infra.targets.config import DEFAULT_PORT, LocalTargetConfig
from infra.targets.proxy_admin import ProxyAdmin
from infra.targets.tracing import trace_argv
from tasks.engine.settings import engine_argv
from tasks.errors import SlmopsError
from tasks.records import ModelRelease

log = logging.getLogger(__name__)


class Backend(BaseModel):
    """One serving-runtime process serving one version on its own port."""

    process: ProcessRef
    url: str
    version: str
    log: str


class LocalDetails(BaseModel):
    """A local deployment's processes: the backend that serves and the proxy on the stable port."""

    backend: Backend
    proxy: ProxyAdmin
    api_key_env: str | None = None


def headers(api_key_env: str | None) -> dict[str, str]:
    """Bearer header from the named environment variable (the key itself is never stored)."""
    key = os.environ.get(api_key_env) if api_key_env else None
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_version(url: str, api_key_env: str | None) -> tuple[str | None, str | None]:
    """(version ``url`` serves, None) from ``/v1/models`` (``/health`` when the key is not at hand), or
    (None, why not)."""
    try:
        health = httpx.get(f"{url}/health", timeout=5)
        if health.status_code != 200:
            return None, f"{url}/health answered HTTP {health.status_code}"
        models = httpx.get(f"{url}/v1/models", headers=headers(api_key_env), timeout=5)
        if models.status_code not in (200, 401):
            return None, f"{url}/v1/models answered HTTP {models.status_code}"
        answer = models.json()["data"][0] if models.status_code == 200 else health.json()
        return str(answer["version"]), None
    except httpx.HTTPError as exc:
        return None, f"{url} does not answer ({type(exc).__name__})"
    except (ValueError, KeyError, IndexError, TypeError):
        return None, f"{url} answered something that is not our serving runtime"


class LocalTarget(RecordedTarget):
    """Deploy to this machine (127.0.0.1)."""

    kind = "local"

    def __init__(self, cfg: LocalTargetConfig, root: Path):
        super().__init__(cfg, root)

    def _logs(self, name: str) -> Path:
        return self.root / "deployments" / "local" / "logs" / name

    def details(self, record: Deployment) -> LocalDetails:
        """The typed processes of a local record."""
        try:
            return LocalDetails.model_validate(record.details)
        except ValidationError:
            raise DeployError(f"local deployment {record.name!r}: its record in {self.store.where()} has no "
                              f"process identities (written by an older slmops); stop its processes by hand "
                              f"({record.details}) and delete the record") from None

    def verify(self, base_url: str, release: ModelRelease) -> str:
        """The server at ``base_url`` serves ``release`` and answers the golden prompt; return the answer."""
        auth = headers(self.cfg.api_key_env)
        try:
            models = httpx.get(f"{base_url}/v1/models", headers=auth, timeout=10).json()["data"]
            if models[0].get("version") != release.version:
                raise DeployError(f"{base_url} serves version {models[0].get('version')!r}, not {release.version}")
            reply = httpx.post(f"{base_url}/v1/chat/completions", headers=auth, timeout=60, json={
                "model": release.name, "max_tokens": self.cfg.golden_max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": self.cfg.golden_prompt}]})
            if reply.status_code != 200:
                raise DeployError(f"{base_url}: golden prompt answered HTTP {reply.status_code}: {reply.text[:300]}")
            answer = reply.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise DeployError(f"{base_url}: smoke request failed: {exc!r}") from None
        check_answer(answer, self.cfg.golden_expect, base_url)
        return answer

    def _start_backend(self, release: ModelRelease, name: str) -> Backend:
        port = process.free_port()
        log_file = self._logs(name) / f"v{release.version}-{port}.log"
        args = ["-m", "infra.serving", release.onnx_dir, "--name", release.name, "--version", release.version,
                "--port", str(port), *engine_argv(self.cfg.engine),
                "--api-key-env", self.cfg.api_key_env or "SLMOPS_API_KEY",
                "--capture-percent", str(self.cfg.capture_percent), "--capture-destination",
                self.cfg.capture_destination, *trace_argv(self.cfg.trace_sample, release.model_id)]
        env = {} if self.cfg.api_key_env else {"SLMOPS_API_KEY": ""}
        backend = Backend(process=self._started(name, process.start(args, log_file, env)),
                          url=f"http://127.0.0.1:{port}", version=release.version, log=str(log_file))
        try:
            process.wait_healthy(f"{backend.url}/ping", backend.process, log_file, self.cfg.startup_timeout_s)
            self.verify(backend.url, release)
        except BaseException as exc:  # Ctrl-C too: nothing this deploy started outlives it
            process.stop(backend.process)
            if isinstance(exc, SlmopsError):
                raise DeployError(f"new version {release.ref} failed its checks; nothing was switched: {exc}") \
                    from None
            raise
        return backend

    def _start_proxy(self, port: int, upstream: str, name: str) -> ProxyAdmin:
        token = secrets.token_urlsafe(24)
        log_file = self._logs(name) / f"proxy-{port}.log"
        ref = self._started(name, process.start(["-m", "infra.serving.proxy", "--port", str(port), "--upstream",
                                                 upstream], log_file, {"SLMOPS_PROXY_TOKEN": token}))
        proxy = ProxyAdmin(process=ref, port=port, url=f"http://127.0.0.1:{port}", token=token, log=str(log_file))
        try:
            process.wait_healthy(f"{proxy.url}/ping", ref, log_file, self.cfg.startup_timeout_s)
            if proxy.upstream() != upstream:  # only our proxy knows the token: it is ours that answers
                raise DeployError(f"the proxy on port {port} routes elsewhere")
        except BaseException as exc:
            process.stop(ref)
            if isinstance(exc, SlmopsError):
                raise DeployError(f"could not start the proxy on port {port}: {exc}") from None
            raise
        return proxy

    def _deploy(self, release: ModelRelease, name: str, current: Deployment | None) -> Deployment:
        """Blue/green: the old version serves until the new one has passed every check."""
        old = self.details(current) if current else None
        port = self.cfg.port or (old.proxy.port if old else DEFAULT_PORT)
        reuse = old is not None and old.proxy.port == port and old.proxy.process.alive()
        if not reuse and not process.port_free(port):
            raise DeployError(f"port {port} is taken by another program; {self._serving(old)}")
        backend = self._start_backend(release, name)
        started = None
        try:
            if reuse:
                proxy = old.proxy
                proxy.switch(backend.url)
            else:
                proxy = started = self._start_proxy(port, backend.url, name)
            self.verify(proxy.url, release)
            if reuse:
                proxy.drain(old.backend.url, self.cfg.drain_timeout_s)
        except BaseException as exc:  # Ctrl-C too
            self._undo(old if reuse else None, started, backend)
            self.store.forget_starts(name)
            if isinstance(exc, SlmopsError):
                raise DeployError(f"deploying {release.ref} failed: {exc}; {self._serving(old)}") from None
            raise
        deployment = Deployment(name=name, target="local", release=release, endpoint=f"{proxy.url}/v1",
                                since=now(), previous=current.release if current else None,
                                details=LocalDetails(backend=backend, proxy=proxy,
                                                     api_key_env=self.cfg.api_key_env).model_dump())
        self.store.save(deployment)
        self.store.forget_starts(name)
        if old is not None:
            self._retire(old, keep_proxy=reuse)
        return deployment

    def _started(self, name: str, ref: ProcessRef) -> ProcessRef:
        """Note ``ref`` in the state database before waiting on it: if this deploy is killed, the next one stops
        it (``_reap``)."""
        self.store.note_start(name, ref.pid, ref.model_dump_json())
        return ref

    def _reap(self, name: str, record: Deployment | None) -> None:
        """Stop what a deploy killed midway started and never recorded (each only if it still is that process)."""
        notes = self.store.starts(name)
        if not notes:
            return
        recorded = set()
        if record is not None:
            with contextlib.suppress(DeployError):
                parts = self.details(record)
                recorded = {parts.proxy.process.pid, parts.backend.process.pid}
        for note in notes:
            ref = ProcessRef.model_validate_json(note)
            if ref.pid not in recorded and process.stop(ref) is Liveness.RUNNING:
                log.warning("stopped pid %s, left running by a deploy of %r that did not finish", ref.pid, name)
        self.store.forget_starts(name)

    def _undo(self, switched: LocalDetails | None, started: ProxyAdmin | None, backend: Backend) -> None:
        """Route the old proxy back to the old version, then stop what this deploy started."""
        if switched is not None:
            try:
                switched.proxy.switch(switched.backend.url)
            except DeployError as exc:
                log.warning("could not switch the proxy back to the old version: %s", exc)
        for ref in (started.process if started else None, backend.process):
            if ref is not None:
                process.stop(ref)

    def _retire(self, old: LocalDetails, keep_proxy: bool) -> None:
        """Stop the old backend, and the old proxy too when the deployment moved to another one."""
        if not keep_proxy and old.proxy.process.alive():
            try:
                old.proxy.drain(old.backend.url, self.cfg.drain_timeout_s)
            except DeployError as exc:
                log.warning("old proxy on port %s: %s; stopping it anyway", old.proxy.port, exc)
            process.stop(old.proxy.process)
        process.stop(old.backend.process)

    def _serving(self, old: LocalDetails | None) -> str:
        """What serves now, after a refused deploy (checked, not assumed)."""
        if old is None:
            return "nothing was deployed under this name before, and nothing of this deploy is left running"
        served, problem = served_version(old.proxy.url, old.api_key_env)
        if served == old.backend.version:
            return f"the previous version {served} still serves at {old.proxy.url}"
        return f"version {old.backend.version} at {old.proxy.url} does not serve now ({problem or served}); " \
               f"see slmops status"

    def probe(self, record: Deployment) -> DeploymentStatus:
        """Proxy and backend are still our processes, and the stable port serves the recorded version."""
        try:
            parts = self.details(record)
        except DeployError as exc:
            return DeploymentStatus.probed(record, None, str(exc))
        problems = [f"{part} pid {ref.pid} " + ("exited" if found is Liveness.GONE else "is another program now")
                    for part, ref in (("proxy", parts.proxy.process), ("backend", parts.backend.process))
                    if (found := ref.liveness()) is not Liveness.RUNNING]
        served, problem = served_version(parts.proxy.url, parts.api_key_env)
        return DeploymentStatus.probed(record, served, "; ".join([*problems, *filter(None, [problem])]) or None,
                                       parts.backend.log)

    def _teardown(self, record: Deployment) -> None:
        """Stop the proxy and the backend — each only if it still is the process we started."""
        try:
            parts = self.details(record)
        except DeployError as exc:
            log.warning("%s; forgetting it", exc)
            return
        for ref in (parts.proxy.process, parts.backend.process):
            process.stop(ref)
