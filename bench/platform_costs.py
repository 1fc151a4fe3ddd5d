"""The platform's costs, measured on this machine in one run.

``promotion``: `slmops up` in a fresh home; a tiny model with two versions bound to a local stable port; the alias
is set with a plain MlflowClient ``--promotions`` times, alternating versions, and each time we measure how long
until the stable port answers with the new version (MLflow webhook → receiver → Prefect event → trigger → worker
→ redeploy flow → blue/green). Then the resident memory of each platform process group.

``overhead``: the pipeline's steps on the tiny demo config, called as plain functions (no Prefect, no MLflow)
versus the ``slm_pipeline`` flow (Prefect tasks, MLflow logging), each in a fresh home so nothing is cached.

    python bench/platform_costs.py promotion [--promotions 6] [--database postgresql://…/NAME]
    python bench/platform_costs.py overhead [--config configs/demo.yaml]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]


def cli(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], env={**env, "SLMOPS_HOME": str(home)},
                          cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"slmops {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in group ``pgid`` (MB)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[2]) == pgid:  # field 5: process group
                total += int(stat[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: rss pages
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def served(port: int) -> str | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).json().get("version")
    except (httpx.HTTPError, ValueError):
        return None


def promotion_stages(api: str, set_at: list[float]) -> dict[str, list[float]]:
    """Per promotion: alias set → redeploy run created (webhook, receiver, event, automation), → run Running
    (worker poll, process start, flow load), → serve-binding task started, → task finished (blue/green)."""
    def ts(value: str) -> float:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC", "flow_runs": {
        "state": {"type": {"any_": ["COMPLETED"]}}}, "deployments": {"name": {"any_": ["redeploy"]}}}).json()
    stages: dict[str, list[float]] = {"alias set → redeploy run created": [], "created → running": [],
                                      "running → serve-binding started": [], "serve-binding (blue/green)": []}
    for began in set_at:
        run = min((r for r in runs if ts(r["created"]) > began), key=lambda r: ts(r["created"]), default=None)
        tasks = httpx.post(f"{api}/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}} if run else {},
                                                            "task_runs": {"name": {"like_": "serve-binding"}}}).json()
        if run is None or not tasks or not tasks[0].get("end_time"):
            continue
        stages["alias set → redeploy run created"].append(ts(run["created"]) - began)
        stages["created → running"].append(ts(run["start_time"]) - ts(run["created"]))
        stages["running → serve-binding started"].append(ts(tasks[0]["start_time"]) - ts(run["start_time"]))
        stages["serve-binding (blue/green)"].append(ts(tasks[0]["end_time"]) - ts(tasks[0]["start_time"]))
    return stages


def promotion(promotions: int, database: str | None = None) -> None:
    from mlflow.tracking import MlflowClient

    from infra.platform.state import load_state
    from tasks.config import QuantizeConfig
    from tasks.demo import TINY_SPEC, ensure_demo_assets
    from tasks.inputs import describe_model
    from tasks.quantize.onnx import build_onnx
    from tests.fixtures.ports import stable_port

    home = Path(tempfile.mkdtemp(prefix="slmops-bench-platform-"))
    teacher = ensure_demo_assets(home, TINY_SPEC) / "teacher"
    onnx = build_onnx(describe_model(str(teacher)), "int4", QuantizeConfig(int4_block_size=16), home / "onnx").path
    port = stable_port()
    bindings = home / "bindings.yaml"
    bindings.write_text(f"bindings:\n- {{model: bench, alias: champion, target: {{target: local, port: {port}}}}}\n")
    start = time.perf_counter()
    cli(home, "up", "--bindings", str(bindings), *(["--database", database] if database else []))
    up_s = time.perf_counter() - start
    state = load_state(home)
    try:
        client = MlflowClient(state.mlflow_uri)
        exp = client.create_experiment("slmops")
        client.create_registered_model("bench")
        for _ in range(2):
            run = client.create_run(exp)
            client.log_artifacts(run.info.run_id, onnx, "served")
            client.create_model_version("bench", source=f"runs:/{run.info.run_id}/served", run_id=run.info.run_id)
        latencies, set_at = [], []
        for i in range(promotions + 1):
            version = str(1 + i % 2)
            began = time.perf_counter()
            set_at.append(time.time())
            client.set_registered_model_alias("bench", "champion", version)
            while served(port) != version:
                if time.perf_counter() - began > 300:
                    raise SystemExit(f"version {version} never served")
                time.sleep(0.05)
            if i:  # the first one starts the proxy too; it is not a promotion of a serving deployment
                latencies.append(time.perf_counter() - began)
            time.sleep(2)
        rss = {name: group_rss_mb(s.process.pid) for name, s in state.services.items()}
        stages = promotion_stages(state.prefect_api_url, set_at[1:])
    finally:
        cli(home, "undeploy", "bench", "--target", "local")
        cli(home, "down")
    in_order = list(latencies)
    latencies.sort()
    p95 = latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))]
    print(f"slmops up (fresh home, {'PostgreSQL' if database else 'sqlite'}): {up_s:.1f} s")
    print(f"\nalias set → new version serving on the stable port, {len(latencies)} promotions")
    print("| p50 s | p95 s | min s | max s |\n|---:|---:|---:|---:|")
    print(f"| {statistics.median(latencies):.2f} | {p95:.2f} | {latencies[0]:.2f} | {latencies[-1]:.2f} |")
    print("\nwhere the time goes, per promotion (from the Prefect API's timestamps; the serve-binding task also "
          "drains and stops the old version after the switch)")
    print("| " + " | ".join(["served s", *stages]) + " |\n|" + "---:|" * (len(stages) + 1))
    for i, total in enumerate(in_order):
        print("| " + " | ".join([f"{total:.2f}", *(f"{v[i]:.2f}" if i < len(v) else "?" for v in stages.values())])
              + " |")
    print("\nresident memory of each platform process group (after the promotions)")
    print("| service | RSS MB |\n|---|---:|")
    for name, mb in rss.items():
        print(f"| {name} | {mb:.0f} |")


def overhead(config: Path) -> None:
    seconds: dict[str, float] = {}
    for mode in ("bare", "flow"):
        home = Path(tempfile.mkdtemp(prefix=f"slmops-bench-{mode}-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k != "MLFLOW_TRACKING_URI"}
        env.update(SLMOPS_HOME=str(home), SLMOPS_DEMO_SIZE="tiny")
        # assets first, outside the timing (both modes make the same ones)
        subprocess.run([sys.executable, "-c", "from tasks.demo import ensure_demo_assets as e; "
                        "from tasks.settings import get_settings as g; e(g().root)"], env=env, cwd=REPO, check=True)
        out = subprocess.run([sys.executable, str(Path(__file__)), f"_{mode}", str(config)], env=env, cwd=REPO,
                             check=True, capture_output=True, text=True).stdout
        seconds[mode] = float(out.strip().splitlines()[-1])
    print(f"pipeline steps on {config.name} with SLMOPS_DEMO_SIZE=tiny, each in a fresh home (nothing cached)")
    print("| run | seconds | vs bare |\n|---|---:|---:|")
    for mode, label in (("bare", "functions called bare"), ("flow", "slm_pipeline flow (Prefect + MLflow)")):
        print(f"| {label} | {seconds[mode]:.1f} | {seconds[mode] / seconds['bare']:.3f}x |")


def _bare(config: Path) -> None:
    """The pipeline's functions called directly, in the flow's order, without Prefect or MLflow."""
    from tasks.caching import stage_dir
    from tasks.config import load_config
    from tasks.data.prepare import prepare_data
    from tasks.evaluate.gate import decide
    from tasks.evaluate.generation import score_exact_match
    from tasks.evaluate.score import evaluate
    from tasks.inputs import describe_model, resolve_inputs
    from tasks.preflight import preflight
    from tasks.quantize.build import quantize
    from tasks.settings import get_settings
    from tasks.train.distill import distill
    from tasks.train.finetune import finetune, merge

    root = get_settings().root
    began = time.perf_counter()
    cfg = resolve_inputs(load_config(config), root)
    data = prepare_data(cfg.data, root / "data")
    preflight(cfg, data)
    teacher, student = describe_model(cfg.distill.teacher), describe_model(cfg.distill.student)
    distilled = distill(teacher, student, data, cfg.distill, cfg.data.max_length, cfg.runtime,
                        stage_dir(root, "distill", teacher, student, data, cfg.distill, cfg.runtime)).model
    adapter = finetune(distilled, data, cfg.finetune, cfg.data.max_length, cfg.runtime,
                       stage_dir(root, "lora", distilled, data, cfg.finetune, cfg.runtime)).model
    merged = merge(distilled, adapter, stage_dir(root, "merged", distilled, adapter))
    for model in (teacher, student, distilled, merged):
        score_exact_match(model, data.test, cfg.runtime)
    artifacts = quantize(merged, cfg.quantize, data.train, cfg.data.max_length,
                         stage_dir(root, "quantized", merged, cfg.quantize))
    report = evaluate(merged, artifacts, data, cfg.evaluate, cfg.data.max_length)
    decide(report, cfg.gate, cfg.quantize.served)
    print(time.perf_counter() - began)


def _flow(config: Path) -> None:
    from flows.pipeline import slm_pipeline
    from tasks.config import load_config
    from tasks.settings import configure_environment

    configure_environment()
    from prefect import flow

    flow(lambda: None, name="warm-up")()  # the ephemeral Prefect server starts once per process: not per run
    began = time.perf_counter()
    slm_pipeline(load_config(config), return_state=True)
    print(time.perf_counter() - began)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["promotion", "overhead", "_bare", "_flow"])
    parser.add_argument("config", nargs="?", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--promotions", type=int, default=6)
    parser.add_argument("--database", help="postgresql://… to put Prefect and MLflow on PostgreSQL (default sqlite).")
    args = parser.parse_args()
    if args.what == "promotion":
        promotion(args.promotions, args.database)
    elif args.what == "overhead":
        overhead(Path(args.config))
    else:
        {"_bare": _bare, "_flow": _flow}[args.what](Path(args.config))
