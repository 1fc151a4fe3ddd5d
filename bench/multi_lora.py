"""Multi-LoRA serving: memory and tokens/s of one int4 base serving 1 vs 8 LoRA adapters, in one run.

The model is bench/decode.py's SmolLM-135M-shaped Llama (random init). Eight random LoRA adapters (rank
``--rank`` on ``--targets``, default q/k/v/o/gate/up/down; tasks/demo.py ``make_lora_adapter``) are built
into one multi-LoRA folder (tasks/quantize/adapters.py). Three servers (``python -m infra.serving``, same
``--threads``) run one after another on 127.0.0.1:

- ``plain``: the ordinary int4 build, no LoRA branch (what a merged fine-tune serves);
- ``1 adapter``: the multi-LoRA base with one adapter file;
- ``8 adapters``: the same base with all eight.

For each: resident memory (VmRSS) after a warm-up request per served model; single-stream decode tokens/s
(``--new-tokens`` fixed-length greedy requests, median of ``--repeats``) of the base and of an adapter; and
aggregate tokens/s of 8 concurrent clients that all use one adapter vs each its own (one adapter per decoding
step, so the second steps up to 8 adapters' rows in turn). Serving 8 merged fine-tunes
instead would take 8 servers: 8 × the plain server's memory.

    python bench/multi_lora.py [--rank 16] [--targets q_proj,v_proj,…] [--new-tokens 64] [--repeats 3] [--requests 2]
                               [--threads N (default: available cores)] [--out .slmops/bench]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

ADAPTERS = [f"task{i}" for i in range(8)]
ALL_LINEAR = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
PROMPT = "Reverse: a b c d e"


def build(out: Path, rank: int, targets: list[str]) -> tuple[Path, Path, dict[str, float]]:
    """The plain int4 build and the 8-adapter multi-LoRA folder (built once), and how long each build took."""
    from decode import make_model, onnx_model

    from tasks.config import QuantizeConfig
    from tasks.demo import make_lora_adapter
    from tasks.inputs import describe_model
    from tasks.quantize.adapters import add_adapter, build_multi_lora

    model = make_model(out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    plain = onnx_model(out, model, "int4")
    seconds["plain int4 build (if not cached)"] = time.perf_counter() - start
    tag = f"r{rank}-{'-'.join(t.removesuffix('_proj') for t in targets)}"
    multi = out / f"onnx-int4-lora-{tag}"
    if not (multi / "adapters" / f"{ADAPTERS[-1]}.onnx_adapter").is_file():
        adapters = {name: describe_model(str(make_lora_adapter(model, out / "lora" / f"{name}-{tag}", targets, rank,
                                                               seed=i)))
                    for i, name in enumerate(ADAPTERS)}
        start = time.perf_counter()
        build_multi_lora(describe_model(str(model)), adapters, "int4",
                         QuantizeConfig(int4_block_size=32, int4_algorithm="k_quant"), multi)
        seconds["multi-LoRA build, base + 8 adapters"] = time.perf_counter() - start
    start = time.perf_counter()  # one more adapter, read from its peft file (tasks/quantize/adapters.py)
    add_adapter(multi, describe_model(str(model)), "timed", describe_model(str(out / "lora" / f"task7-{tag}")),
                "int4", QuantizeConfig(int4_block_size=32))
    seconds["adding one adapter to the built base"] = time.perf_counter() - start
    (multi / "adapters" / "timed.onnx_adapter").unlink()
    return plain, multi, seconds


def variant(multi: Path, adapters: list[str], out: Path) -> Path:
    """A folder serving the multi-LoRA base with only ``adapters`` (symlinks, no copies)."""
    out.mkdir(parents=True, exist_ok=True)
    for file in multi.iterdir():
        if file.is_file() and not (out / file.name).exists():
            (out / file.name).symlink_to(file.resolve())
    (out / "adapters").mkdir(exist_ok=True)
    for name in adapters:
        link = out / "adapters" / f"{name}.onnx_adapter"
        if not link.exists():
            link.symlink_to((multi / "adapters" / f"{name}.onnx_adapter").resolve())
    return out


def ask(http: httpx.Client, url: str, model: str, new_tokens: int) -> tuple[int, float]:
    """Completion tokens and seconds of one greedy fixed-length request to ``model``."""
    start = time.perf_counter()
    reply = http.post(f"{url}/v1/chat/completions", json={
        "model": model, "max_tokens": new_tokens, "min_tokens": new_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": PROMPT}]})
    reply.raise_for_status()
    return reply.json()["usage"]["completion_tokens"], time.perf_counter() - start


def single_stream(url: str, model: str, new_tokens: int, repeats: int) -> float:
    """Median tokens/s of one client's fixed-length requests to ``model``."""
    with httpx.Client(timeout=600) as http:
        ask(http, url, model, 4)
        return statistics.median(t / s for t, s in (ask(http, url, model, new_tokens) for _ in range(repeats)))


def concurrent(url: str, models: list[str], new_tokens: int, requests: int) -> float:
    """Aggregate tokens/s of one client per entry of ``models``, each sending ``requests`` requests."""
    def client(model: str) -> int:
        with httpx.Client(timeout=600) as http:
            return sum(ask(http, url, model, new_tokens)[0] for _ in range(requests))

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(len(models)) as pool:
        tokens = sum(pool.map(client, models))
    return tokens / (time.perf_counter() - start)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def measure(folder: Path, adapters: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Start a server on ``folder``; its memory and speeds (see the module docstring)."""
    from infra import process

    port = process.free_port()
    log = args.out / f"multi-lora-{folder.name}.log"
    pid = process.start(["-m", "infra.serving", str(folder), "--name", "base", "--port", str(port),
                         "--threads", str(args.threads), "--max-batch-size", "8", "--max-running-batches", "8"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_healthy(f"{url}/ping", pid, log, 300)
        with httpx.Client(timeout=600) as http:
            for model in ["base", *adapters]:
                ask(http, url, model, 8)
        found: dict[str, float] = {"rss_mb": rss_mb(pid.pid),
                                   "base_tps": single_stream(url, "base", args.new_tokens, args.repeats)}
        if adapters:
            found["adapter_tps"] = single_stream(url, adapters[0], args.new_tokens, args.repeats)
            found["8_clients_one_adapter_tps"] = concurrent(url, [adapters[0]] * 8, args.new_tokens, args.requests)
            found["8_clients_own_adapters_tps"] = concurrent(url, [adapters[i % len(adapters)] for i in range(8)],
                                                             args.new_tokens, args.requests)
        else:
            found["8_clients_one_adapter_tps"] = concurrent(url, ["base"] * 8, args.new_tokens, args.requests)
        found["rss_after_mb"] = rss_mb(pid.pid)
    finally:
        process.stop(pid)
    return found


def main() -> None:
    from tasks.engine.settings import available_cores
    from tasks.quantize.tools import disk_size

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of every adapter (default 16).")
    parser.add_argument("--targets", default=ALL_LINEAR, help=f"Adapted projections (default {ALL_LINEAR}).")
    parser.add_argument("--new-tokens", type=int, default=64, help="Tokens per timed request (default 64).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed single-stream requests (default 3).")
    parser.add_argument("--requests", type=int, default=2, help="Requests per concurrent client (default 2).")
    parser.add_argument("--threads", type=int, default=available_cores(), help="Server threads (default: all).")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"), help="Build and log folder.")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    targets = args.targets.split(",")
    plain, multi, seconds = build(args.out, args.rank, targets)
    runs = {"plain int4 (no LoRA branch)": (plain, []),
            "multi-LoRA base, 1 adapter": (variant(multi, ADAPTERS[:1], multi.parent / f"{multi.name}-serve1"),
                                           ADAPTERS[:1]),
            "multi-LoRA base, 8 adapters": (variant(multi, ADAPTERS, multi.parent / f"{multi.name}-serve8"), ADAPTERS)}
    results = {label: measure(folder, adapters, args) for label, (folder, adapters) in runs.items()}

    weights = {"plain": disk_size(plain), "multi base": sum(disk_size(p) for p in multi.glob("model.onnx*")),
               "one adapter file": disk_size(multi / "adapters" / f"{ADAPTERS[0]}.onnx_adapter")}
    print(f"\nSmolLM-135M shape, int4 k_quant/32, LoRA r={args.rank} on {'/'.join(targets)}, {args.threads} threads, "
          f"{args.new_tokens}-token greedy requests")
    for what, value in seconds.items():
        print(f"  {what}: {value:.1f} s")
    print("  on disk: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in weights.items()))
    print("\n| server | RSS after warm-up | RSS at end | base tok/s | adapter tok/s | 8 clients, one adapter "
          "| 8 clients, own adapters |\n|---|---:|---:|---:|---:|---:|---:|")
    keys = ("base_tps", "adapter_tps", "8_clients_one_adapter_tps", "8_clients_own_adapters_tps")
    for label, r in results.items():
        cells = " | ".join(f"{r[k]:.1f}" if k in r else "—" for k in keys)
        print(f"| {label} | {r['rss_mb']:.0f} MB | {r['rss_after_mb']:.0f} MB | {cells} |")
    plain = results["plain int4 (no LoRA branch)"]
    one, eight = results["multi-LoRA base, 1 adapter"], results["multi-LoRA base, 8 adapters"]
    print(f"\n8 adapters cost {eight['rss_mb'] - one['rss_mb']:.0f} MB more than 1; 8 merged fine-tunes would need "
          f"8 servers ≈ {8 * plain['rss_mb']:.0f} MB vs {eight['rss_mb']:.0f} MB here "
          f"({8 * plain['rss_mb'] / eight['rss_mb']:.1f}× less memory).")
    print(f"adapter vs plain base, single stream: {one['adapter_tps'] / plain['base_tps']:.2f}×; 8 clients on 8 "
          f"adapters vs on one: {eight['8_clients_own_adapters_tps'] / eight['8_clients_one_adapter_tps']:.2f}×")

if __name__ == "__main__":
    main()
