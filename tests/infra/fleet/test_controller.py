"""The fleet controller's rules on a real state database (sqlite, and the machine's PostgreSQL): enrollment,
dynamic groups, variants per class and runtime, the concurrency budget granted at poll time, per-class halts with
rollback, penalty box, hold/resume/rollback, and approval between waves."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from infra.fleet.controller import Controller, FleetError
from infra.fleet.models import DeviceSpec, Heartbeat, Release, Report, RolloutPolicy, Running, Variant
from tests.fixtures.postgres import POSTGRES, admin_execute, drop_databases, require_postgres


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def variant(kind: str, n: int) -> Variant:
    return Variant(kind=kind, digest=f"{n:064x}", size_bytes=1000, memory_bytes=10**6, url=f"/v1/artifacts/{n:064x}")


V1 = Release(model="m", version="1", variants=[variant("onnx-int4", 1), variant("gguf-q4_k_m", 2)])
V2 = Release(model="m", version="2", variants=[variant("onnx-int4", 3), variant("gguf-q4_k_m", 4)])
POLICY = RolloutPolicy(canary=1, waves=[50, 100], max_concurrent=2, poll_s=10, offline_after_s=30,
                       halt_failures=2, min_devices=2, halt_percent=50, retries=1, penalty_after=3)


@pytest.fixture
def ctl(tmp_path: Path) -> tuple[Controller, Clock]:
    clock = Clock()
    return Controller(f"sqlite:///{tmp_path / 'state.db'}", clock=clock), clock


def spec(hw_class: str = "cpu-avx2", runtime: str = "local", **labels: str) -> DeviceSpec:
    return DeviceSpec(labels=labels, hw_class=hw_class, runtime=runtime, memory_mb=4096, disk_mb=4096)


def enroll(ctl: Controller, n: int, **kw) -> list[str]:
    token = ctl.create_token({"ring": "prod"}, uses=n)
    return [ctl.enroll(token, spec(**kw))[0] for _ in range(n)]


def beat(version: str = "1", digest: str | None = None) -> Heartbeat:
    return Heartbeat(running=Running(model="m", version=version, digest=digest), free_memory_mb=4096,
                     free_disk_mb=4096)


def ok(ctl: Controller, device: str, rid: int) -> None:
    ctl.report(device, Report(rollout_id=rid, outcome="ok", running=Running(model="m", version="2"),
                              loaded_new=True))


def test_enrollment_tokens_are_counted_expire_and_give_their_labels(ctl) -> None:
    c, clock = ctl
    token = c.create_token({"site": "lyon"}, uses=1, ttl_s=60)
    device, device_token = c.enroll(token, spec(ring="prod"))
    assert c.authenticate(device_token) == device
    assert c.devices()[0]["labels"] == {"ring": "prod", "site": "lyon"}
    with pytest.raises(FleetError, match="used up or expired"):
        c.enroll(token, spec())
    late = c.create_token({}, uses=5, ttl_s=60)
    clock.t += 61
    with pytest.raises(FleetError, match="used up or expired"):
        c.enroll(late, spec())
    with pytest.raises(FleetError, match="unknown device token"):
        c.authenticate("dev_forged")
    with pytest.raises(FleetError, match="labels are"):  # a SlmopsError: `error: …` on the terminal
        c.create_token({"bad key": "x"})


def test_only_the_group_gets_the_release_and_membership_is_dynamic(ctl) -> None:
    c, _ = ctl
    inside = enroll(c, 2)
    outside = c.enroll(c.create_token({"ring": "lab"}), spec())[0]
    c.start_rollout("shops", "m", "champion", V2, {"ring": "prod"}, POLICY.model_copy(
        update={"waves": [100.0], "canary": 5}), previous=V1)
    assert c.poll(outside, beat()).release is None  # no rollout selects it: it is told nothing
    got = [c.poll(d, beat()) for d in inside]
    assert [g.release.version for g in got] == ["2", "2"] and got[0].variant.kind == "onnx-int4"
    late = enroll(c, 1, hw_class="arm64", runtime="ollama")[0]  # enrolled after the start: it joins
    assert c.poll(late, beat()).variant.kind == "gguf-q4_k_m"
    assert c.status("shops")[0]["classes"]["arm64"]["devices"] == 1


def test_the_budget_caps_devices_updating_at_once(ctl) -> None:
    c, _ = ctl
    devices = enroll(c, 6)
    rid = c.start_rollout("shops", "m", "champion", V2, {"ring": "prod"}, POLICY.model_copy(
        update={"waves": [100.0], "canary": 6}), previous=V1)
    answers = [c.poll(d, beat()) for d in devices]
    granted = [d for d, a in zip(devices, answers, strict=True) if a.release.version == "2"]
    assert len(granted) == 2  # max_concurrent
    ok(c, granted[0], rid)
    assert sum(c.poll(d, beat()).release.version == "2" for d in devices if d not in granted) == 1


def test_a_failing_class_halts_alone_and_its_updated_devices_roll_back(ctl) -> None:
    c, _ = ctl
    avx = enroll(c, 3)
    arm = enroll(c, 4, hw_class="arm64", runtime="ollama")
    rid = c.start_rollout("shops", "m", "champion", V2, {"ring": "prod"},
                          POLICY.model_copy(update={"max_concurrent": 10}), previous=V1)
    wave0 = [d for d in avx + arm if c.poll(d, beat()).release.version == "2"]
    assert len(wave0) == 2  # canary 1 per class
    for d in wave0:
        ok(c, d, rid)
    assert c.step(rid).wave == 1
    wave1 = [d for d in arm if d not in wave0 and c.poll(d, beat()).release.version == "2"]
    assert len(wave1) == 1  # 50% of 4 arm64 devices, the canary counted
    failed = Report(rollout_id=rid, outcome="failed", failure="golden", reason="answered nonsense",
                    running=Running(model="m", version="1"), loaded_new=True)
    assert c.report(wave1[0], failed).release.version == "1"
    r = c.step(rid)
    assert "arm64" in r.halted_classes and r.state == "running"  # 1 of 2 arm64 failed: 50%, min_devices 2
    arm_canary = next(d for d in wave0 if d in arm)
    back = c.poll(arm_canary, beat("2", V2.variants[1].digest))
    assert back.release.version == "1" and back.variant.digest == V1.variants[1].digest  # roll back, from disk
    c.report(arm_canary, Report(rollout_id=rid, outcome="rolled-back", running=Running(model="m", version="1")))
    status = c.status("shops")[0]
    assert status["classes"]["arm64"]["rolled_back"] == 1 and status["classes"]["arm64"]["halted"]
    assert status["failures"][0]["reason"] == "answered nonsense"
    assert all(c.poll(d, beat()).release.version == "1" for d in arm)  # the halted class gets nothing new
    assert any(c.poll(d, beat()).release.version == "2" for d in avx if d not in wave0)  # the other goes on


def test_retries_then_the_penalty_box(ctl) -> None:
    c, clock = ctl
    (device,) = enroll(c, 1)
    rid = c.start_rollout("shops", "m", "champion", V2, {"ring": "prod"},
                          POLICY.model_copy(update={"penalty_after": 2, "halt_failures": 5}), previous=V1)
    cut = Report(rollout_id=rid, outcome="failed", failure="download", reason="cut",
                 running=Running(model="m", version="1"))
    assert c.poll(device, beat()).release.version == "2"
    assert c.report(device, cut).release.version == "1"  # retried later…
    assert c.poll(device, beat()).release.version == "1"
    clock.t += POLICY.poll_s
    assert c.poll(device, beat()).release.version == "2"  # …one poll interval later
    c.report(device, cut)
    assert c.devices()[0]["penalty"] and c.poll(device, beat()).release.version == "1"
    assert "penalty box" in c.status("shops")[0]["failures"][0]["reason"]
    c.release_penalty(device)
    assert not c.devices()[0]["penalty"]


def test_hold_resume_rollback_and_approval_between_waves(ctl) -> None:
    c, _ = ctl
    devices = enroll(c, 4)
    rid = c.start_rollout("shops", "m", "champion", V2, {"ring": "prod"},
                          POLICY.model_copy(update={"approval": True, "max_concurrent": 4}), previous=V1)
    first = next(d for d in devices if c.poll(d, beat()).release.version == "2")
    ok(c, first, rid)
    assert c.step(rid).state == "paused"  # wave 0 done: waits for a person
    assert all(c.poll(d, beat()).release.version == "1" for d in devices if d != first)
    assert c.resume("shops").state == "running" and c.current("shops").wave == 1
    assert c.halt("shops").state == "held"
    assert all(c.poll(d, beat()).release.version == "1" for d in devices if d != first)
    with pytest.raises(FleetError, match="is held, not running"):
        c.halt("shops")
    c.resume("shops")
    assert c.rollback("shops").state == "rolled-back"
    assert c.poll(first, beat("2")).release.version == "1"  # the updated device goes back
    with pytest.raises(FleetError, match="fleets with rollouts: \\['shops'\\]"):
        c.current("nope")


def test_a_runtime_with_no_variant_is_a_failure_not_a_download(ctl) -> None:
    c, _ = ctl
    (device,) = enroll(c, 1, hw_class="gpu", runtime="local")
    gguf_only = V2.model_copy(update={"variants": [variant("gguf-q8_0", 5)]})
    c.start_rollout("shops", "m", "champion", gguf_only, {"ring": "prod"}, POLICY, previous=V1)
    assert c.poll(device, beat()).release.version == "1"  # keeps what it runs
    failure = c.status("shops")[0]["failures"][0]
    assert failure["failure"] == "unfit" and "no variant" in failure["reason"]


def test_a_new_rollout_supersedes_the_running_one(ctl) -> None:
    c, _ = ctl
    (device,) = enroll(c, 1)
    first = c.start_rollout("shops", "m", "champion", V2, {"ring": "prod"}, POLICY, previous=V1)
    v3 = V2.model_copy(update={"version": "3"})
    second = c.start_rollout("shops", "m", "champion", v3, {"ring": "prod"}, POLICY)
    assert c.rollout(first).state == "superseded" and c.rollout(second).previous.version == "1"
    assert c.poll(device, beat()).release.version == "3"


def test_the_fleet_lives_in_the_platform_postgresql() -> None:
    require_postgres()
    name = f"slmops_fleet_{uuid.uuid4().hex[:8]}"
    admin_execute(f"CREATE DATABASE {name}")
    try:
        clock = Clock()
        a = Controller(f"{POSTGRES}/{name}", clock=clock)
        (device,) = enroll(a, 1)
        rid = a.start_rollout("shops", "m", "champion", V2, {"ring": "prod"}, POLICY, previous=V1)
        b = Controller(f"{POSTGRES}/{name}?application_name=second", clock=clock)  # another controller process
        assert b.poll(device, beat()).release.version == "2"
        assert a.status("shops")[0]["classes"]["cpu-avx2"]["updating"] == 1 and b.rollout(rid).state == "running"
    finally:
        from infra.targets.store import state_engine

        for url in (f"{POSTGRES}/{name}", f"{POSTGRES}/{name}?application_name=second"):
            state_engine(url).dispose()
        drop_databases(name)


def test_a_device_that_runs_the_release_already_is_done_without_a_slot(ctl) -> None:
    c, _ = ctl
    devices = enroll(c, 2)
    first = c.start_rollout("shops", "m", "champion", V2, {"ring": "prod"}, POLICY.model_copy(
        update={"waves": [100.0], "canary": 2, "max_concurrent": 1}), previous=V1)
    assert c.poll(devices[0], beat()).release.version == "2"
    ok(c, devices[0], first)
    # the alias moved again to the same version: the updated device needs nothing, the other gets the slot
    second = c.start_rollout("shops", "m", "champion", V2, {"ring": "prod"}, POLICY.model_copy(
        update={"waves": [100.0], "canary": 2, "max_concurrent": 1}), previous=V1)
    assert c.poll(devices[0], beat("2", V2.variants[0].digest)).release.version == "2"
    assert c.poll(devices[1], beat()).release.version == "2"  # the one slot was free
    ok(c, devices[1], second)
    assert c.step(second).wave == 1 and c.step(second).state == "done"  # the canary wave, then 100 %
    assert c.status("shops")[0]["classes"]["cpu-avx2"]["updated"] == 2
