"""The device agent: poll the controller (with jitter), and apply what it wants.

Applying a release: refuse a variant that does not fit free memory or disk (before any download), download it
resumably and check its digest, load it beside what serves, run the golden prompts and a latency probe against
the device's previous figures, switch, keep the previous version on disk for an instant rollback, report.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from infra.fleet.models import Desired, FailureKind, Heartbeat, Release, Report, Running, Variant

log = logging.getLogger(__name__)
MB = 1024 * 1024


class Clock(Protocol):
    def now(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    """Wall-clock time."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass
class Probe:
    """What a golden-prompt run and latency probe measured."""

    answers: list[str]
    ttft_ms: float
    tokens_per_s: float


class Runtime(Protocol):
    """What serves on the device (our local server, Ollama, Foundry Local, or a simulated one)."""

    def free_memory_mb(self) -> int: ...
    async def load(self, release: Release, variant: Variant, path: Path) -> Any: ...
    async def probe(self, loaded: Any, prompts: list[str]) -> Probe: ...
    async def switch(self, loaded: Any) -> None: ...
    async def unload(self, loaded: Any) -> None: ...


class ApplyFailed(Exception):
    def __init__(self, failure: FailureKind, reason: str, loaded_new: bool = False):
        super().__init__(reason)
        self.failure, self.reason, self.loaded_new = failure, reason, loaded_new


@dataclass
class AgentStats:
    """What an agent did (the simulator sums these)."""

    downloads: int = 0
    verified: list[str] = field(default_factory=list)
    resumed: int = 0
    digest_mismatches: int = 0
    applies: int = 0
    polls: int = 0
    events: list[tuple[float, str]] = field(default_factory=list)


class Agent:
    """One device's agent. ``disk_mb`` is the disk it may fill with models (free space is what is left)."""

    def __init__(self, client: httpx.AsyncClient, token: str, runtime: Runtime, home: Path, disk_mb: int,
                 clock: Clock | None = None, rng: random.Random | None = None, link_bytes_per_s: float | None = None,
                 on_apply: Callable[[str, bool, bool], None] | None = None):
        self.client, self.token, self.runtime, self.home = client, token, runtime, Path(home)
        self.disk_mb, self.clock, self.rng = disk_mb, clock or RealClock(), rng or random.Random()
        self.link = link_bytes_per_s
        self.on_apply = on_apply
        self.stats = AgentStats()
        self.online = True
        (self.home / "versions").mkdir(parents=True, exist_ok=True)
        self.state = self._read_state()

    # -- local state ----------------------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        path = self.home / "agent.json"
        return json.loads(path.read_text()) if path.is_file() else {"running": {}, "previous": None,
                                                                      "figures": {}}

    def _write_state(self) -> None:
        tmp = self.home / "agent.json.tmp"
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.home / "agent.json")

    @property
    def running(self) -> Running:
        return Running.model_validate(self.state["running"])

    def on_disk(self) -> list[str]:
        return sorted(p.name for p in (self.home / "versions").iterdir() if p.is_file())

    def used_mb(self) -> float:
        return sum(p.stat().st_size for p in (self.home / "versions").iterdir() if p.is_file()) / MB

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(running=self.running, free_memory_mb=self.runtime.free_memory_mb(),
                         free_disk_mb=max(0, int(self.disk_mb - self.used_mb())), on_disk=self.on_disk())

    def event(self, what: str) -> None:
        self.stats.events.append((round(self.clock.now(), 3), what))

    # -- the loop -------------------------------------------------------------------------------------------
    async def restore(self) -> None:
        """After a restart: serve again what the device ran, from its disk, unless its runtime still serves it."""
        saved = self.state.get("release")
        serving = getattr(self.runtime, "serving", None)
        if not saved or serving is None or (serving() and serving().digest == self.running.digest):
            return
        release, variant = Release.model_validate(saved["release"]), Variant.model_validate(saved["variant"])
        path = self.home / "versions" / variant.digest
        if path.is_file():
            await self.runtime.switch(await self.runtime.load(release, variant, path))
            self.event(f"serves {release.version} {variant.kind} again after a restart")

    async def run(self, stop: Callable[[], bool], online: Callable[[], bool] = lambda: True) -> None:
        """Poll until ``stop()``; while ``online()`` is false the device is off (no requests)."""
        await self.restore()
        await self.clock.sleep(self.rng.uniform(0, 5))
        while not stop():
            if not online():
                self.online = False
                await self.clock.sleep(5)
                continue
            self.online = True
            try:
                wait = await self.poll_once()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("poll failed: %s", exc)
                wait = 30.0
            await self.clock.sleep(wait * self.rng.uniform(0.5, 1.5))

    async def _post(self, path: str, body: Any) -> Desired:
        answer = await self.client.post(path, content=body.model_dump_json(), headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        answer.raise_for_status()
        return Desired.model_validate_json(answer.content)

    async def poll_once(self) -> float:
        """One poll, and the apply it asks for; the seconds until the next poll."""
        self.stats.polls += 1
        desired = await self._post("/v1/poll", self.heartbeat())
        for _ in range(3):  # a report may answer with another change (e.g. roll back at once)
            if desired.release is None or desired.variant is None or desired.variant.digest == self.running.digest:
                break
            report = await self.apply(desired)
            desired = await self._post("/v1/report", report)
        return desired.next_poll_s

    # -- applying a release ---------------------------------------------------------------------------------
    async def apply(self, desired: Desired) -> Report:
        """Make the device run ``desired``; the report for the controller."""
        release, variant = desired.release, desired.variant
        assert release is not None and variant is not None
        self.stats.applies += 1
        back = desired.rollback and variant.digest in self.on_disk()
        if self.on_apply:
            self.on_apply(release.version, back, True)
        try:
            if back:
                await self._switch_back(release, variant)
                self.event(f"rolled back to {release.version} {variant.kind}")
                return Report(rollout_id=desired.rollout_id, outcome="rolled-back", running=self.running)
            try:
                figures = await asyncio.wait_for(self._install(release, variant, desired), desired.apply_timeout_s)
            except TimeoutError:
                raise ApplyFailed("agent", f"the update took over {desired.apply_timeout_s:.0f}s") from None
            self.event(f"runs {release.version} {variant.kind}")
            return Report(rollout_id=desired.rollout_id, outcome="ok", running=self.running, loaded_new=True,
                          **figures)
        except ApplyFailed as exc:
            self.event(f"failed {release.version} {variant.kind}: {exc.failure}")
            return Report(rollout_id=desired.rollout_id, outcome="failed", failure=exc.failure,
                          reason=exc.reason, running=self.running, loaded_new=exc.loaded_new)
        except Exception as exc:  # the agent itself broke: report it, keep serving the current version
            log.exception("apply failed")
            return Report(rollout_id=desired.rollout_id, outcome="failed", failure="agent",
                          reason=f"{type(exc).__name__}: {exc}", running=self.running)
        finally:
            if self.on_apply:
                self.on_apply(release.version, back, False)

    def fits(self, variant: Variant) -> str | None:
        """Why ``variant`` does not fit (None: it fits): the new one loads beside the current one."""
        free_disk = self.disk_mb - self.used_mb()
        if variant.digest not in self.on_disk() and variant.size_bytes / MB > free_disk:
            return f"needs {variant.size_bytes / MB:.1f} MB of disk, {free_disk:.1f} MB free"
        if variant.memory_bytes / MB > self.runtime.free_memory_mb():
            return f"needs {variant.memory_bytes / MB:.0f} MB of memory, {self.runtime.free_memory_mb()} MB free"
        return None

    async def _install(self, release: Release, variant: Variant, desired: Desired) -> dict[str, float]:
        if (why := self.fits(variant)) is not None:
            raise ApplyFailed("unfit", f"{variant.kind} of {release.model} {release.version} does not fit: {why}")
        path = await self.download(variant)
        try:
            loaded = await self.runtime.load(release, variant, path)
        except Exception as exc:
            raise ApplyFailed("load", f"loading {variant.kind} failed: {exc}") from None
        try:
            prompts = [g.prompt for g in release.golden]
            if hasattr(self.runtime, "probe_pair"):  # measured beside what serves, under the same load
                probe, measured = await self.runtime.probe_pair(loaded, prompts)
            else:
                probe, measured = await self.runtime.probe(loaded, prompts), None
            for golden, answer in zip(release.golden, probe.answers, strict=True):
                if not answer.strip() or (golden.expect is not None and golden.expect not in answer):
                    raise ApplyFailed("golden", f"golden prompt {golden.prompt!r} answered {answer[:80]!r}"
                                      + (f", expected {golden.expect!r}" if golden.expect else ""), True)
            before = ({"ttft_ms": measured.ttft_ms, "tokens_per_s": measured.tokens_per_s} if measured else
                      self.state["figures"].get(self.running.digest or ""))
            if before:
                ttft_up = 100 * (probe.ttft_ms / before["ttft_ms"] - 1)
                tps_down = 100 * (1 - probe.tokens_per_s / before["tokens_per_s"])
                slower_ms = probe.ttft_ms - before["ttft_ms"]
                per_token_ms = 1000 / max(probe.tokens_per_s, 1e-9) - 1000 / before["tokens_per_s"]
                if (ttft_up > desired.max_ttft_regression and slower_ms > desired.latency_slack_ms) or \
                        (tps_down > desired.max_tps_regression and per_token_ms > desired.latency_slack_ms / 10):
                    raise ApplyFailed("latency", f"TTFT {probe.ttft_ms:.0f} ms ({ttft_up:+.0f}%), "
                                      f"{probe.tokens_per_s:.1f} tokens/s ({-tps_down:+.0f}%) against this "
                                      f"device's previous version", True)
        except ApplyFailed:
            await self.runtime.unload(loaded)
            raise
        await self.runtime.switch(loaded)
        self.state["previous"] = self.state["running"] or None
        self.state["running"] = Running(model=release.model, version=release.version, kind=variant.kind,
                                        digest=variant.digest).model_dump()
        self.state["release"] = {"release": release.model_dump(), "variant": variant.model_dump()}
        self.state["figures"][variant.digest] = {"ttft_ms": probe.ttft_ms, "tokens_per_s": probe.tokens_per_s}
        self._write_state()
        self._prune()
        return {"ttft_ms": probe.ttft_ms, "tokens_per_s": probe.tokens_per_s}

    async def _switch_back(self, release: Release, variant: Variant) -> None:
        loaded = await self.runtime.load(release, variant, self.home / "versions" / variant.digest)
        await self.runtime.switch(loaded)
        self.state["previous"], self.state["running"] = self.state["running"], Running(
            model=release.model, version=release.version, kind=variant.kind, digest=variant.digest).model_dump()
        self.state["release"] = {"release": release.model_dump(), "variant": variant.model_dump()}
        self._write_state()

    def _prune(self) -> None:
        """Keep what runs and the previous version; drop older artifacts."""
        keep = {self.state["running"].get("digest"), (self.state.get("previous") or {}).get("digest")}
        for p in (self.home / "versions").iterdir():
            if p.is_file() and p.name not in keep:
                p.unlink()

    async def download(self, variant: Variant, tries: int = 6) -> Path:
        """The verified artifact on disk: resumed with ``Range`` after a cut, fetched anew after a digest
        mismatch (the bytes cannot be trusted), already there when a verified copy is kept."""
        final = self.home / "versions" / variant.digest
        if final.is_file():
            return final
        part = self.home / f"{variant.digest}.part"
        mismatches = 0
        for attempt in range(tries):
            have = part.stat().st_size if part.is_file() else 0
            if have:
                self.stats.resumed += 1
            try:
                await self._fetch(variant, part, have)
            except httpx.HTTPError as exc:
                log.info("download of %s cut at %s bytes (%s); resuming", variant.digest[:12],
                         part.stat().st_size if part.is_file() else 0, type(exc).__name__)
            size = part.stat().st_size if part.is_file() else 0
            if size < variant.size_bytes:
                await self.clock.sleep(min(30.0, 2.0 ** attempt))
                continue
            if size == variant.size_bytes and sha256(part) == variant.digest:
                part.replace(final)
                self.stats.downloads += 1
                self.stats.verified.append(variant.digest)
                return final
            mismatches += 1
            self.stats.digest_mismatches += 1
            part.unlink()
            if mismatches >= 3:
                break
        part.unlink(missing_ok=True)
        raise ApplyFailed("download", f"{variant.kind} {variant.digest[:12]}: no intact download after "
                          f"{attempt + 1} tries ({mismatches} digest mismatches)")

    async def _fetch(self, variant: Variant, part: Path, have: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}", **({"Range": f"bytes={have}-"} if have else {})}
        async with self.client.stream("GET", variant.url, headers=headers) as answer:
            if answer.status_code not in (200, 206):
                await answer.aread()
                raise httpx.HTTPStatusError(f"HTTP {answer.status_code}", request=answer.request, response=answer)
            with part.open("ab" if answer.status_code == 206 else "wb") as fh:
                async for chunk in answer.aiter_raw():
                    fh.write(chunk)
                    if self.link:
                        await self.clock.sleep(len(chunk) / self.link)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


async def enroll(client: httpx.AsyncClient, token: str, spec: Any, device_id: str | None = None) -> tuple[str, str]:
    """Enroll with an enrollment token; (device id, device token)."""
    answer = await client.post("/v1/enroll", json={"token": token, "spec": spec.model_dump(),
                                                   "device_id": device_id})
    if answer.status_code != 200:
        raise RuntimeError(f"enrollment refused: HTTP {answer.status_code} {answer.text[:200]}")
    body = answer.json()
    return body["device_id"], body["device_token"]

