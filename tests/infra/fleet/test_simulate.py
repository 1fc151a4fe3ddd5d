"""The simulator drives the real controller, API, artifact server and agent code with 50 simulated devices per
scenario, and its JSON says what happened; the rollout's promises hold in every scenario. One case adds two real
devices: real serving processes loading a real int4 model, driven by the same agent code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infra.fleet.simulate import FAULTY_CLASS, SCENARIOS, Simulation
from tests.infra.test_local_target import processes

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    return {s: Simulation(50, 7, s).run() for s in SCENARIOS}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_keeps_the_rollouts_promises(runs: dict[str, dict], scenario: str) -> None:
    r = runs[scenario]
    assert r["devices"] == 50 and r["state"] == "done"
    assert r["outside_selector_touched"] == r["wrong_variant"] == r["downloads_without_fit"] == 0
    assert r["duplicate_downloads"] == 0
    assert 0 < r["max_concurrent"] <= r["budget"]
    assert r["halted_class_still_new"] == 0  # every updated device of a halted class rolled back
    if scenario in ("bad-quality", "oom", "slow"):
        assert r["halted_classes"] == [FAULTY_CLASS], r["halt_reasons"]
        assert r["blast_radius"] <= r["canary"] + r["budget"]
        for name, c in r["classes"].items():  # the bad class alone stays on the old version
            assert c["updated"] == (0 if name == FAULTY_CLASS else c["selected"]), (name, c)
    else:
        assert r["halted_classes"] == [] and r["updated"] == r["selected"] and r["failed"] == 0
    if scenario == "offline":
        assert r["returned_offline"] >= 5 and r["returned_offline_on_current"] == r["returned_offline"]
    if scenario == "flaky-download":
        assert r["resumed_downloads"] > 0 and r["digest_mismatches"] > 0


def test_the_same_seed_gives_the_same_event_log(runs: dict[str, dict]) -> None:
    again = Simulation(50, 7, "bad-quality").run()
    assert again["event_log_sha256"] == runs["bad-quality"]["event_log_sha256"]
    assert again["_log"] == runs["bad-quality"]["_log"]
    assert Simulation(50, 8, "bad-quality").run()["event_log_sha256"] != again["event_log_sha256"]


def test_two_real_devices_update_beside_simulated_ones(tiny_onnx: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "flows.cli", "fleet", "simulate", "--devices", "50", "--real", "2",
                           "--real-model", str(tiny_onnx), "--seed", "3", "--json"], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    assert r["real"] == 2 and r["clock"].startswith("scaled")
    assert [d["id"] for d in r["real_devices"]] == ["real-0", "real-1"]
    assert all(d["version"] == "2" and d["kind"] == "onnx-int4" for d in r["real_devices"]), r["real_devices"]
    assert r["updated"] == r["selected"] and r["max_concurrent"] <= r["budget"]
    assert processes("infra.serving", "sim-slm") == []  # the real devices' servers stopped with the run
