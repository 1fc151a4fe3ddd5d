"""``slmops fleet simulate``: N simulated device agents (asyncio tasks, not processes) against the real controller
code, its HTTP API and artifact server (with a global egress cap), plus ``--real K`` real devices.

Simulated agents run the same ``Agent`` as a real device, with a simulated runtime (hardware profile: memory,
load time, TTFT, tokens/s) and a link bandwidth; they reach the controller's app through httpx's ASGI transport
(the same FastAPI app, no sockets). Without real devices the event loop runs on a **virtual clock**: time jumps to
the next timer whenever every task waits, so hours of rollout take seconds and the same seed gives the same event
log. With real devices (real server processes, real sockets) the clock is the wall clock scaled by ``--scale``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import resource
import selectors
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from infra import process
from infra.fleet.agent import Agent, enroll
from infra.fleet.controller import TARGETS, Controller
from infra.fleet.models import DeviceSpec, GoldenPrompt, Release, RolloutPolicy, Variant, VariantPolicy
from infra.fleet.runtimes import LocalServerRuntime, Profile, SimRuntime, hardware_class, pack_served_folder
from infra.fleet.server import Egress, create_fleet_app
from tasks.errors import ConfigError

SCENARIOS = ("healthy", "bad-quality", "oom", "offline", "slow", "flaky-download")
FAULTY_CLASS = "arm64"  # the class bad-quality, oom and slow hit
FAULTY_SHARE = 0.7  # bad-quality and slow: the share of that class the fault shows on (oom: those short of memory)
MB = 1024 * 1024
# kind → (bytes of the stand-in artifact, memory MB to load it): artifacts are small stand-ins so a thousand
# devices can download them on one machine; memory is what a 135M-parameter model of that kind needs
KINDS = {"onnx-int4": (48_000, 220), "onnx-int8": (80_000, 380), "gguf-q4_k_m": (44_000, 200),
         "gguf-q8_0": (76_000, 360), "foundry": (52_000, 240)}
CLASS_MIX = [("cpu-avx2", 0.35), ("cpu-avx512", 0.20), ("arm64", 0.25), ("gpu", 0.10), ("npu", 0.10)]
PROFILES = {  # memory MB range, TTFT ms, tokens/s, load s
    "cpu-avx2": ((4096, 16384), 120.0, 40.0, 6.0), "cpu-avx512": ((8192, 32768), 90.0, 60.0, 5.0),
    "arm64": ((768, 2048), 220.0, 18.0, 9.0), "gpu": ((8192, 32768), 25.0, 180.0, 4.0),
    "npu": ((4096, 8192), 60.0, 70.0, 7.0)}


def default_policy(devices: int) -> RolloutPolicy:
    """The simulator's rollout policy: canary 2 per class, waves 10/30/60/100 %, budget devices/20 (at least 5)."""
    return RolloutPolicy(canary=2, waves=[10, 30, 60, 100], max_concurrent=max(5, devices // 20), poll_s=60,
                         offline_after_s=180, wave_timeout_s=1800, halt_failures=3, min_devices=5, halt_percent=20,
                         retries=1)


class VirtualSelector(selectors.DefaultSelector):
    """A selector that never blocks: when nothing is ready it moves virtual time to the next timer."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("simulation stalled: no task is waiting on a timer")
        self.now += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see ``VirtualSelector``)."""

    def __init__(self) -> None:
        self._virtual = VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


class LoopClock:
    """The running loop's clock (virtual in a VirtualLoop), in seconds from the start of the simulation."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Wall time × ``scale`` (with real devices, whose processes and sockets run in real time)."""

    def __init__(self, scale: float):
        self.scale, self.t0 = scale, time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.t0) * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.scale)


@dataclass
class SimDevice:
    id: str
    spec: dict[str, Any]
    profile: Profile
    link: float
    real: bool = False
    selected: bool = True
    offline_until: float | None = None  # None: online; inf: off until the rollout ends
    agent: Agent | None = None
    runtime: Any = None
    returned: bool = False
    changes: list[float] = field(default_factory=list)


def synthetic_release(version: str, seed: int, out: Path, memory_factor: float = 1.0,
                      real: dict[str, Path] | None = None) -> Release:
    """A release with every variant kind as stand-in bytes (``real``: kind → artifact file to use instead)."""
    variants = []
    for kind, (size, memory_mb) in KINDS.items():
        if real is not None and kind.startswith("onnx-") and kind not in real:
            continue  # with real devices, onnx variants are real artifacts only
        if real and kind in real:
            data = real[kind].read_bytes()
        else:
            data = random.Random(f"{seed}:{version}:{kind}").randbytes(size)
        sha = hashlib.sha256(data).hexdigest()
        (out / sha).write_bytes(data)
        variants.append(Variant(kind=kind, digest=sha, size_bytes=len(data),
                                memory_bytes=int(memory_mb * memory_factor * MB), url=f"/v1/artifacts/{sha}"))
    golden = [GoldenPrompt(prompt="What is the capital of France?", expect=None if real else "Paris")]
    return Release(model="sim-slm", version=version, variants=variants, golden=golden)


def make_devices(n: int, seed: int) -> list[SimDevice]:
    rng = random.Random(f"{seed}:devices")
    devices = []
    for i in range(n):
        hw_class = rng.choices([c for c, _ in CLASS_MIX], [w for _, w in CLASS_MIX])[0]
        if hw_class == "arm64":
            runtime = "ollama" if rng.random() < 0.7 else "local"
        elif hw_class == "npu":
            runtime = "foundry"
        elif hw_class == "gpu":
            runtime = "local"
        else:
            runtime = "ollama" if rng.random() < 0.2 else "local"
        (lo, hi), ttft, tps, load_s = PROFILES[hw_class]
        memory = rng.randrange(lo, hi + 1, 256)
        ring = "lab" if rng.random() < 0.05 else "prod"
        spec = {"labels": {"ring": ring, "site": f"site-{i % 7}"}, "hw_class": hw_class, "runtime": runtime,
                "memory_mb": memory, "disk_mb": rng.choice([64, 256, 1024])}
        devices.append(SimDevice(id=f"sim-{i:05d}", spec=spec, link=rng.uniform(50e3, 500e3),
                                 profile=Profile(hw_class, memory, ttft, tps, load_s), selected=ring == "prod"))
    return devices


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


class Simulation:
    """One simulated rollout of version 2 over a fleet running version 1."""

    def __init__(self, devices: int, seed: int, scenario: str, real: int = 0, real_model: Path | None = None,
                 scale: float = 20.0, work: Path | None = None, policy: RolloutPolicy | None = None,
                 egress_bytes_per_s: float = 4e6, max_sim_s: float = 6 * 3600):
        if scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {scenario!r}; scenarios: {', '.join(SCENARIOS)}")
        if real and real_model is None:
            raise ConfigError("--real needs --real-model DIR (a served onnxruntime-genai folder)")
        self.n, self.seed, self.scenario, self.real, self.real_model = devices, seed, scenario, real, real_model
        self.scale, self.egress_rate, self.max_sim_s = scale, egress_bytes_per_s, max_sim_s
        self.own_work = work is None
        self.work = Path(work or tempfile.mkdtemp(prefix="slmops-fleet-sim-"))
        self.policy = policy or default_policy(devices)
        self.clock: Any = ScaledClock(scale) if real else LoopClock()
        self.applying = 0
        self.max_applying = 0
        self.events: list[tuple[float, str, str]] = []
        self.downloads: list[tuple[str, str, int, int]] = []
        self.fault_counts: dict[tuple[str, str], int] = {}

    def run(self) -> dict[str, Any]:
        """Run to the end; the JSON summary."""
        began = time.perf_counter()
        try:
            if self.real:
                result = asyncio.run(self._run())
            else:
                loop = VirtualLoop()
                try:
                    result = loop.run_until_complete(self._run())
                finally:
                    loop.close()
        finally:
            if self.own_work:
                shutil.rmtree(self.work, ignore_errors=True)
        result["wall_s"] = round(time.perf_counter() - began, 2)
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["controller_rps_wall"] = round(result["controller_requests"] / max(result["wall_s"], 1e-9), 1)
        return result

    # -- the pieces -----------------------------------------------------------------------------------------
    def _fault(self, device: str, sha: str, offset: int) -> tuple[str, int] | None:
        if self.scenario != "flaky-download":
            return None
        n = self.fault_counts.get((device, sha), 0)
        self.fault_counts[(device, sha)] = n + 1
        rng = random.Random(f"{self.seed}:{device}:{sha}:{n}")
        size = (self.work / "artifacts" / sha).stat().st_size
        roll = rng.random()
        if roll < 0.25 and size - offset > 2:
            return "cut", rng.randrange(offset + 1, size)
        if roll < 0.35:
            return "corrupt", rng.randrange(offset, size)
        return None

    def _on_download(self, device: str, sha: str, start: int, sent: int) -> None:
        self.downloads.append((device, sha, start, sent))

    def _on_apply(self, device: SimDevice) -> Callable[[str, bool, bool], None]:
        def seen(version: str, back: bool, starting: bool) -> None:
            if version != "2" or back:
                return
            self.applying += 1 if starting else -1
            self.max_applying = max(self.max_applying, self.applying)
        return seen

    async def _run(self) -> dict[str, Any]:
        artifacts = self.work / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        db = self.work / "state.db"
        controller = Controller(f"sqlite:///{db}", clock=self.clock.now)
        sa.event.listen(controller.engine, "connect",
                        lambda conn, _: conn.execute("PRAGMA synchronous=OFF"))  # a simulation's scratch db
        controller.engine.dispose()
        real_files = None
        if self.real:
            real_files = {"onnx-int4": pack_served_folder(self.real_model, self.work / "real" / "v1.tar", "1")}
        v1 = synthetic_release("1", self.seed, artifacts, real=real_files)
        if self.real:
            real_files = {"onnx-int4": pack_served_folder(self.real_model, self.work / "real" / "v2.tar", "2")}
        v2 = synthetic_release("2", self.seed, artifacts, memory_factor=6.0 if self.scenario == "oom" else 1.0,
                               real=real_files)
        egress = Egress(self.egress_rate, self.clock.now, self.clock.sleep)
        app = create_fleet_app(controller, artifacts, egress, self._fault, self._on_download)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fleet", timeout=None)
        devices = make_devices(self.n, self.seed)
        server = None
        if self.real:
            server, real_client = await self._serve(app)
            for i in range(self.real):
                devices.append(SimDevice(
                    id=f"real-{i}", real=True, link=0,
                    spec={"labels": {"ring": "prod", "site": "here"}, "hw_class": hardware_class(),
                          "runtime": "local", "memory_mb": 8192, "disk_mb": 1024},
                    profile=Profile(hardware_class(), 8192, 0, 0, 0)))
        token = controller.create_token({"fleet": "sim"}, uses=len(devices))
        variants = VariantPolicy()
        offline_rng = random.Random(f"{self.seed}:offline")
        try:
            for d in devices:
                spec = DeviceSpec.model_validate(d.spec)
                device_client = real_client if d.real else client
                _, device_token = await enroll(device_client, token, spec, d.id)
                home = self.work / "devices" / d.id
                if d.real:
                    d.runtime = LocalServerRuntime(home)
                else:
                    faulty = {"bad-quality": "bad", "slow": "slow"}.get(self.scenario)
                    rt_rng = random.Random(f"{self.seed}:{d.id}:rt")
                    hit = faulty and d.profile.hw_class == FAULTY_CLASS and rt_rng.random() < FAULTY_SHARE
                    d.runtime = SimRuntime(d.profile, self.clock, rt_rng, "2" if hit else None, faulty)
                d.agent = Agent(device_client, device_token, d.runtime, home, d.spec["disk_mb"], self.clock,
                                random.Random(f"{self.seed}:{d.id}"), None if d.real else d.link, self._on_apply(d))
                await self._preinstall(d, v1, variants)
                if self.scenario == "offline" and d.selected and not d.real and offline_rng.random() < 0.2:
                    d.offline_until = float("inf")
            return await self._rollout(controller, devices, v1, v2, egress)
        finally:
            for d in devices:
                if d.real and d.runtime is not None:
                    d.runtime.close()
            if server is not None:
                await real_client.aclose()
                server.should_exit = True
                await self._serving
            await client.aclose()

    async def _serve(self, app: Any) -> tuple[Any, httpx.AsyncClient]:
        import uvicorn  # only with real devices

        port = process.free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._serving = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        return server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None)

    async def _preinstall(self, d: SimDevice, v1: Release, variants: VariantPolicy) -> None:
        """The device runs version 1 already (as after an earlier rollout)."""
        variant = variants.pick(d.spec["hw_class"], d.spec["runtime"], v1)
        agent = d.agent
        path = agent.home / "versions" / variant.digest
        shutil.copyfile(self.work / "artifacts" / variant.digest, path)
        if d.real:
            loaded = await d.runtime.load(v1, variant, path)
            await d.runtime.switch(loaded)
            probe = await d.runtime.probe(loaded, ["warm-up"])
            figures = {"ttft_ms": probe.ttft_ms, "tokens_per_s": probe.tokens_per_s}
        else:  # set up as it would be, without spending simulated time on it
            d.runtime.current = (v1, variant)
            figures = {"ttft_ms": d.profile.ttft_ms, "tokens_per_s": d.profile.tokens_per_s}
        agent.state = {"running": {"model": v1.model, "version": "1", "kind": variant.kind,
                                   "digest": variant.digest}, "previous": None,
                       "figures": {variant.digest: figures}}
        agent._write_state()

    async def _rollout(self, controller: Controller, devices: list[SimDevice], v1: Release, v2: Release,
                       egress: Egress) -> dict[str, Any]:
        done = False
        stop = lambda: done  # noqa: E731

        def online(d: SimDevice) -> Callable[[], bool]:
            return lambda: d.offline_until is None or self.clock.now() >= d.offline_until

        tasks = [asyncio.ensure_future(d.agent.run(stop, online(d))) for d in devices]
        await self.clock.sleep(30)  # every device has polled once
        start = self.clock.now()
        rid = controller.start_rollout("sim", "sim-slm", "champion", v2, {"ring": "prod"}, self.policy,
                                       previous=v1)
        ended_at = None
        rng = random.Random(f"{self.seed}:return")
        while self.clock.now() - start < self.max_sim_s:
            await self.clock.sleep(10)
            r = controller.step(rid)
            if r.state in ("done", "halted") and ended_at is None:
                ended_at = self.clock.now()
                for d in devices:
                    if d.offline_until == float("inf"):
                        d.offline_until, d.returned = ended_at + rng.uniform(30, 300), True
            if ended_at is not None and self._settled(controller, rid, devices):
                break
        done = True
        end = self.clock.now()
        for t in tasks:  # every device is settled: they are between polls
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self._summary(controller, rid, devices, v1, v2, egress, start, ended_at, end)

    def _final_version(self, r: Any, row: Any, d: SimDevice) -> str:
        if not d.selected:
            return "1"
        if r.state != "done" or d.spec["hw_class"] in r.halted_classes:
            return "1"
        if row is not None and row.state in ("failed", "rolled-back", "rollback"):
            return "1"
        return "2"

    def _rows(self, controller: Controller, rid: int) -> dict[str, Any]:
        with controller.engine.connect() as conn:
            return {t.device_id: t for t in conn.execute(sa.select(TARGETS).where(TARGETS.c.rollout_id == rid))}

    def _settled(self, controller: Controller, rid: int, devices: list[SimDevice]) -> bool:
        r, rows = controller.rollout(rid), self._rows(controller, rid)
        return all(d.agent.running.version == self._final_version(r, rows.get(d.id), d) for d in devices
                   if d.offline_until is None or d.returned)

    def _summary(self, controller: Controller, rid: int, devices: list[SimDevice], v1: Release, v2: Release,
                 egress: Egress, start: float, ended_at: float | None, end: float) -> dict[str, Any]:
        r, rows = controller.rollout(rid), self._rows(controller, rid)
        variants = VariantPolicy()
        by_id = {d.id: d for d in devices}
        halted = sorted(r.halted_classes) if r.state != "halted" else sorted({d.spec["hw_class"] for d in devices})
        wrong = 0
        for d in devices:
            running = d.agent.running
            release = v2 if running.version == "2" else v1
            wrong += running.kind != variants.pick(d.spec["hw_class"], d.spec["runtime"], release).kind
        memory_of = {v.digest: v for v in [*v1.variants, *v2.variants]}
        without_fit = 0
        for device_id, sha, _, _ in self.downloads:
            d, variant = by_id[device_id], memory_of[sha]
            current = variants.pick(d.spec["hw_class"], d.spec["runtime"], v1)
            if (variant.memory_bytes + current.memory_bytes) / MB > d.profile.memory_mb or \
                    variant.size_bytes / MB > d.spec["disk_mb"]:
                without_fit += 1
        duplicates = sum(len(d.agent.stats.verified) - len(set(d.agent.stats.verified)) for d in devices)
        touched = sum(1 for d in devices if not d.selected and (d.agent.stats.applies or
                                                                d.agent.stats.downloads))
        converged = []
        for d in devices:
            times = [t for t, what in d.agent.stats.events if t >= start]
            if times:
                converged.append(max(times) - start)
        returned = [d for d in devices if d.returned]
        classes: dict[str, dict[str, int]] = {}
        for d in devices:
            if d.selected:
                c = classes.setdefault(d.spec["hw_class"], {"selected": 0, "updated": 0, "failed": 0})
                c["selected"] += 1
                c["updated"] += d.agent.running.version == "2"
                c["failed"] += rows[d.id].state == "failed" if d.id in rows else 0
        log = sorted((t, ("real:" if by_id[dev].real else "") + dev, what)
                     for dev in by_id for t, what in by_id[dev].agent.stats.events)
        return {
            "scenario": self.scenario, "seed": self.seed, "devices": len(devices), "real": self.real,
            "selected": sum(d.selected for d in devices),
            "clock": f"scaled x{self.scale:g} (real devices run in real time)" if self.real else
                     "virtual (time jumps to the next timer when every task waits)",
            "state": r.state, "reason": r.reason,
            "updated": sum(d.agent.running.version == "2" for d in devices),
            "halted": r.state == "halted" or bool(r.halted_classes), "halted_classes": halted,
            "halt_reasons": r.halted_classes,
            "blast_radius": sum(1 for t in rows.values() if t.loaded_new and t.hw_class in halted),
            "rolled_back": sum(t.state == "rolled-back" for t in rows.values()),
            "halted_class_still_new": sum(1 for d in devices if d.spec["hw_class"] in halted and
                                          d.agent.running.version == "2"),
            "failed": sum(t.state == "failed" for t in rows.values()),
            "classes": dict(sorted(classes.items())),
            "failures": [{"device": t.device_id, "hw_class": t.hw_class, "failure": t.failure, "reason": t.reason}
                         for t in rows.values() if t.state == "failed"][:20],
            "max_concurrent": self.max_applying, "budget": self.policy.max_concurrent,
            "canary": self.policy.canary,
            "outside_selector_touched": touched, "wrong_variant": wrong, "downloads_without_fit": without_fit,
            "duplicate_downloads": duplicates, "egress_bytes": egress.sent,
            "resumed_downloads": sum(d.agent.stats.resumed for d in devices),
            "digest_mismatches": sum(d.agent.stats.digest_mismatches for d in devices),
            "rollout_s": round((ended_at or self.clock.now()) - start, 1),
            "converged_p50_s": round(statistics.median(converged), 1) if converged else 0.0,
            "converged_p95_s": round(percentile(converged, 95), 1),
            "returned_offline": len(returned),
            "returned_offline_on_current": sum(d.agent.running.version == self._final_version(r, rows.get(d.id), d)
                                               for d in returned),
            "controller_requests": controller.requests,
            "controller_rps_sim": round(controller.requests / max(end, 1e-9), 2),
            "sim_s": round(end, 1),
            "events": len(log),
            "event_log_sha256": hashlib.sha256(json.dumps(log).encode()).hexdigest(),
            "real_devices": [{"id": d.id, "hw_class": d.spec["hw_class"], "version": d.agent.running.version,
                              "kind": d.agent.running.kind} for d in devices if d.real],
            "_log": log,
        }
