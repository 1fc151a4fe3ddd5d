"""kill -9 of a real ``python -m flows.cli batch`` process at random points; every resume ends exactly-once.

Each round starts a fresh output, kills the batch process with SIGKILL once a random number of records is
committed (plus a random delay, so the kill lands inside a part's generation or write as often as between
parts), sometimes kills the resumed process too, then resumes to the end and compares the output ids with
the input ids. The seed is printed in every failure message.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.cli import main
from tests.flows.batch.helpers import input_ids, output_rows, split_rows, write_jsonl

REPO = Path(__file__).resolve().parents[3]
OPTIONS = ["--set", "part_size=6", "--set", "executor.batch_size=6", "--set", "generation.max_new_tokens=12"]
MIN_KILLS, MAX_ROUNDS = 10, 14


def _committed(out: Path) -> int:
    parts = out / "parts"
    if not parts.is_dir():
        return 0
    total = 0
    for part in parts.glob("part-*.jsonl"):
        with contextlib.suppress(FileNotFoundError):  # replaced under us
            total += part.read_bytes().count(b"\n")
    return total


def _kill_at(args: list[str], out: Path, target: int, delay: float, env: dict, log: Path) -> bool:
    """Start the batch process, SIGKILL it once ``target`` records are committed (+ ``delay``); True if it was
    still working (no manifest yet) when killed."""
    with log.open("ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        while proc.poll() is None and _committed(out) < target:
            time.sleep(0.005)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"the batch process failed (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
    return proc.returncode == -signal.SIGKILL and not (out / "manifest.json").exists()


def test_kill_9_at_random_points_then_resume_answers_every_id_exactly_once(
        prefect_harness, batch_model: str, tiny_assets: Path, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    seed = int(os.environ.get("SLMOPS_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    source = write_jsonl(tmp_path / "in.jsonl", split_rows(tiny_assets))
    want = input_ids(source)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "SLMOPS_THREADS": "1"}
    kills: list[tuple[int, int, float]] = []  # (round, records committed when killed, delay)
    round_ = 0
    while len(kills) < MIN_KILLS and round_ < MAX_ROUNDS:
        round_ += 1
        out = tmp_path / f"out-{round_}"
        args = ["batch", f"{batch_model}/1", "--input", str(source), "--output", str(out), *OPTIONS]
        for _ in range(2 if round_ % 4 == 0 else 1):  # every fourth round: the resumed process is killed too
            target = rng.randint(min(_committed(out), len(want) - 1), len(want) - 1)
            delay = rng.uniform(0, 0.08)
            if _kill_at(args, out, target, delay, env, tmp_path / "batch.log"):
                kills.append((round_, _committed(out), round(delay, 3)))
            committed = [r["id"] for r in output_rows(out)]
            assert len(committed) == len(set(committed)) and set(committed) <= set(want), f"seed {seed}"
        # when the same command runs again, it resumes and finishes
        assert main(args) == 0, f"seed {seed}, round {round_}"
        got = [r["id"] for r in output_rows(out)]
        assert got == want, f"seed {seed}, round {round_}: {len(got)} rows, {len(set(got))} distinct"
    assert len(kills) >= MIN_KILLS, f"seed {seed}: only {len(kills)} kills landed mid-run: {kills}"
    assert len({k[1] for k in kills}) > 3, f"seed {seed}: kill points did not vary: {kills}"
