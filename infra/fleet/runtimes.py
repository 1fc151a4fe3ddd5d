"""Device runtimes the agent drives: our local serving runtime (a real ``python -m infra.serving`` process per
loaded version) and the simulator's stand-in, which answers and times itself from a hardware profile."""

from __future__ import annotations

import asyncio
import json
import platform
import random
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from infra import process
from infra.fleet.agent import Clock, Probe
from infra.fleet.models import Release, Variant

MB = 1024 * 1024


def free_memory_mb() -> int:
    """MemAvailable of this machine."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def hardware_class() -> str:
    """This machine's hardware class (cpu-avx512, cpu-avx2 or arm64)."""
    if platform.machine() in ("aarch64", "arm64"):
        return "arm64"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "cpu-avx512" if " avx512f" in flags else "cpu-avx2"


def pack_served_folder(folder: Path, out: Path, version: str) -> Path:
    """A served (onnxruntime-genai) folder as one artifact: a tar with the folder's files under ``model/`` and
    ``release.json`` naming the version."""
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = out.with_suffix(".release.json")
    meta.write_text(json.dumps({"version": version}))
    with tarfile.open(out, "w") as tar:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                info = tar.gettarinfo(str(path), arcname=f"model/{path.relative_to(folder)}")
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
        info = tar.gettarinfo(str(meta), arcname="release.json")
        info.mtime = 0
        with meta.open("rb") as fh:
            tar.addfile(info, fh)
    meta.unlink()
    return out


@dataclass
class LocalLoaded:
    release: Release
    variant: Variant
    ref: process.ProcessRef
    url: str


class LocalServerRuntime:
    """Our serving runtime on this device: each loaded version is its own server process on a free port; the
    switch stops the previous process (its artifact stays on disk for a rollback)."""

    def __init__(self, home: Path, threads: int = 1):
        self.home, self.threads = Path(home), threads
        self.current: LocalLoaded | None = None
        self._adopt()

    def _adopt(self) -> None:
        """The server a previous agent process left serving (it outlives the agent), if it still runs."""
        path = self.home / "serving.json"
        if not path.is_file():
            return
        saved = json.loads(path.read_text())
        ref = process.ProcessRef.model_validate(saved["process"])
        if ref.liveness() is process.Liveness.RUNNING:
            self.current = LocalLoaded(release=Release.model_validate(saved["release"]),
                                       variant=Variant.model_validate(saved["variant"]), ref=ref, url=saved["url"])

    def serving(self) -> Variant | None:
        """The variant whose server runs now."""
        return self.current.variant if self.current else None

    def free_memory_mb(self) -> int:
        return free_memory_mb()

    async def load(self, release: Release, variant: Variant, path: Path) -> LocalLoaded:
        if not variant.kind.startswith("onnx-"):
            raise ValueError(f"the local runtime loads onnx variants, not {variant.kind}")
        folder = self.home / "unpacked" / variant.digest
        if not (folder / "model").is_dir():
            with tarfile.open(path) as tar:
                tar.extractall(folder, filter="data")
        port = process.free_port()
        log_file = self.home / "logs" / f"{release.version}-{port}.log"
        ref = process.start(["-m", "infra.serving", str(folder / "model"), "--name", release.model, "--version",
                             release.version, "--port", str(port), "--threads", str(self.threads)],
                            log_file, {"SLMOPS_API_KEY": ""})
        url = f"http://127.0.0.1:{port}"
        try:
            await asyncio.to_thread(process.wait_healthy, f"{url}/ping", ref, log_file, 120.0)
        except BaseException:
            process.stop(ref)
            raise
        return LocalLoaded(release=release, variant=variant, ref=ref, url=url)

    async def probe(self, loaded: LocalLoaded, prompts: list[str]) -> Probe:
        return (await self.probe_pair(loaded, prompts))[0]

    async def probe_pair(self, loaded: LocalLoaded, prompts: list[str]) -> tuple[Probe, Probe | None]:
        """The golden prompts on ``loaded``, then the latency probe on it and on what serves now, interleaved
        (median of 3 each), so that both are measured under the same load."""
        async with httpx.AsyncClient(timeout=120) as client:
            answers = [(await self._ask(client, loaded, p))[0] for p in prompts]
            await self._ask(client, loaded, prompts[0])  # warm-up
            new, old = [], []
            for _ in range(3):
                new.append(await self._ask(client, loaded, prompts[0]))
                if self.current is not None:
                    old.append(await self._ask(client, self.current, prompts[0]))

        def median(samples: list[tuple[str, float, float]]) -> Probe:
            return Probe(answers=answers, ttft_ms=sorted(s[1] for s in samples)[len(samples) // 2],
                         tokens_per_s=sorted(s[2] for s in samples)[len(samples) // 2])
        return median(new), median(old) if old else None

    async def _ask(self, client: httpx.AsyncClient, loaded: LocalLoaded, prompt: str) -> tuple[str, float, float]:
        """(answer, TTFT ms, tokens/s) of one streamed greedy answer of up to 32 tokens."""
        began = time.perf_counter()
        first, pieces = None, []
        async with client.stream("POST", f"{loaded.url}/v1/chat/completions", json={
                "model": loaded.release.model, "max_tokens": 32, "temperature": 0, "stream": True,
                "messages": [{"role": "user", "content": prompt}]}) as answer:
            answer.raise_for_status()
            async for line in answer.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
                if delta:
                    first = first or time.perf_counter()
                    pieces.append(delta)
        end = time.perf_counter()
        if first is None:
            return "", 1000 * (end - began), 0.0
        return "".join(pieces), 1000 * (first - began), len(pieces) / max(end - first, 1e-3)

    async def switch(self, loaded: LocalLoaded) -> None:
        old, self.current = self.current, loaded
        tmp = self.home / "serving.json.tmp"
        tmp.write_text(json.dumps({"process": loaded.ref.model_dump(), "url": loaded.url,
                                   "release": loaded.release.model_dump(), "variant": loaded.variant.model_dump()}))
        tmp.replace(self.home / "serving.json")
        if old is not None:
            await asyncio.to_thread(process.stop, old.ref)

    async def unload(self, loaded: LocalLoaded) -> None:
        await asyncio.to_thread(process.stop, loaded.ref)

    def close(self) -> None:
        """Stop serving (the simulator's real devices; a device agent leaves its server running)."""
        if self.current is not None:
            process.stop(self.current.ref)
            self.current = None
            (self.home / "serving.json").unlink(missing_ok=True)


@dataclass
class Profile:
    """A simulated device's hardware."""

    hw_class: str
    memory_mb: int
    ttft_ms: float
    tokens_per_s: float
    load_s: float


class SimRuntime:
    """A simulated runtime: loading takes time and memory, answers and latency follow the profile, and the
    scenario's fault (``bad``: wrong answers, ``slow``: 3× TTFT) hits the new version on one hardware class."""

    def __init__(self, profile: Profile, clock: Clock, rng: random.Random, faulty_version: str | None = None,
                 fault: str | None = None):
        self.profile, self.clock, self.rng = profile, clock, rng
        self.faulty_version, self.fault = faulty_version, fault
        self.current: tuple[Release, Variant] | None = None
        self.loading: list[tuple[Release, Variant]] = []

    def free_memory_mb(self) -> int:
        used = sum(v.memory_bytes for _, v in [*([self.current] if self.current else []), *self.loading])
        return max(0, int(self.profile.memory_mb - used / MB))

    async def load(self, release: Release, variant: Variant, path: Path) -> Any:
        if variant.memory_bytes / MB > self.free_memory_mb():
            raise MemoryError("out of memory while loading")
        loaded = (release, variant)
        self.loading.append(loaded)
        await self.clock.sleep(self.profile.load_s * self.rng.uniform(0.8, 1.2))
        return loaded

    async def probe(self, loaded: Any, prompts: list[str]) -> Probe:
        release, _ = loaded
        faulty = release.version == self.faulty_version
        ttft = self.profile.ttft_ms * self.rng.uniform(0.9, 1.1) * (3.0 if faulty and self.fault == "slow" else 1)
        tps = self.profile.tokens_per_s * self.rng.uniform(0.9, 1.1)
        await self.clock.sleep(len(prompts) * (ttft / 1000 + 16 / tps))
        answers = [("I cannot help with that." if faulty and self.fault == "bad" else "Paris is the capital.")
                   for _ in prompts]
        return Probe(answers=answers, ttft_ms=ttft, tokens_per_s=tps)

    async def switch(self, loaded: Any) -> None:
        if loaded in self.loading:
            self.loading.remove(loaded)
        self.current = loaded

    async def unload(self, loaded: Any) -> None:
        if loaded in self.loading:
            self.loading.remove(loaded)
