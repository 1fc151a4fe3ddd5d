"""Cold start of the SageMaker image's entry point: ``slmops serve`` from process start to the socket accepting,
the first /ping answer (503 while loading) and the first 200, over an unpacked model.tar.gz.

    python bench/serve_coldstart.py ONNX_DIR [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra.process import free_port  # noqa: E402
from infra.sagemaker.aws import package_model  # noqa: E402


def one_start(model: Path) -> tuple[float, float, float]:
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BIND_TO_PORT": str(port), "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--model-dir", str(model), "--host",
                             "127.0.0.1"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    accepted = first = None
    try:
        while time.perf_counter() - started < 120:
            sent = time.perf_counter() - started
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code
            except httpx.TransportError:
                time.sleep(0.01)
                continue
            accepted = sent if accepted is None else accepted
            first = time.perf_counter() - started if first is None else first
            if status == 200:
                return accepted, first, time.perf_counter() - started
            time.sleep(0.01)
        raise SystemExit("no 200 on /ping within 120 s")
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx_dir", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, _ = package_model(args.onnx_dir)
        (Path(tmp) / "model.tar.gz").write_bytes(data)
        with tarfile.open(Path(tmp) / "model.tar.gz") as tar:
            tar.extractall(Path(tmp) / "model", filter="data")
        runs = [one_start(Path(tmp) / "model") for _ in range(args.runs)]
    print(f"model.tar.gz {len(data) / 1e6:.2f} MB, {args.runs} starts, load average {os.getloadavg()[0]:.1f}")
    print("| measure | median s | min s | max s |\n|---|---:|---:|---:|")
    for i, label in enumerate(("socket accepts", "first /ping answer (503)", "first 200 on /ping")):
        values = [r[i] for r in runs]
        print(f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")


if __name__ == "__main__":
    main()
