"""Served decode speed against in-process runtimes, TTFT under load, and memory-bandwidth share, in one run.

The model is bench/decode.py's SmolLM-135M-shaped Llama (random init): its int4 ONNX build is served by our
runtime (``python -m infra.serving``) on 127.0.0.1 and also decoded in-process by the same engine; its GGUF
Q4_0 build is decoded in-process by llama.cpp (llama-cpp-python); transformers fp32 is the baseline. Every path
uses the same ``--threads`` (server ``--threads``, the in-process engine's threads, llama.cpp ``n_threads`` and
``n_threads_batch``, ``torch.set_num_threads``).

    python bench/serve.py [--new-tokens 64] [--repeats 5] [--requests 4] [--probes 20] [--max-batch-size N]
                          [--scheduler continuous|batches] [--int8-steps auto|on|off]
                          [--threads N (default: available cores)]
                          [--int4-algorithm k_quant|rtn|k_quant_last|rtn_last|gptq] [--int4-block-size 32]
                          [--out .slmops/bench]

Tables printed:

1. Single-stream decode tokens/s and TTFT of each path, with ratios to transformers fp32 and llama.cpp Q4_0
   (median of ``--repeats`` rounds; each round runs every path once, in turn, so drift slows all alike).
2. Server aggregate completion tokens/s with 1, 4 and 16 concurrent clients, each sending ``--requests``
   fixed-length requests, and p50/p95 TTFT under each of those loads; then the unloaded TTFT and how much the
   p95 under 16 clients exceeds it.
3. Memory-bandwidth share: decode tokens/s × weight bytes per token ÷ the machine's read bandwidth, for the
   served int4 path and llama.cpp Q4_0.

How TTFT is measured over HTTP. The first generated token must be visible on the wire, and with this random
model it is not: its tokens decode to empty text (ids beyond the small tokenizer's vocabulary), the server emits
a stream chunk only when the text grows, and it holds back a token's logprobs until there is text to send with
them (or the request finishes), so neither the first non-empty ``delta.content`` nor ``logprobs: true`` marks
the first token of a long request. Asking for logprobs would also make the engine fetch the logits of the whole
batch at every step, slowing the load the probe measures. So TTFT is measured with probes: streamed requests
for exactly one token (``max_tokens = min_tokens = 1``), timed from sending to the first SSE chunk that carries
content or a ``finish_reason``. A one-token request finishes in the engine step that produced its token, so
that chunk leaves the server right after the first token; the usage chunk confirms one token was generated. The
time covers HTTP, chat templating, queueing, prefill and that first step. Under load, ``--probes`` probes run
one after another while the clients keep fixed-length requests in flight (a separate phase from the throughput
measurement, which the probes would otherwise disturb); unloaded TTFT is the same probe with no other client.
In-process TTFTs are each runner's own (prompt prefill plus the first token), without HTTP or templating.

Memory bandwidth is the best of 3 timed sums over a 512 MB float32 array split across ``--threads`` threads.
Weight bytes read per token are the sizes of the int4 model's ``model.onnx`` + ``model.onnx.data`` (less an
embedding table that only a Gather reads: the Olive GPTQ build keeps one apart from lm_head, in fp32) and of the
GGUF file. The builder's int4 and the GGUF tie the embedding table to the output projection, which reads all of
it every token, so the file size is a close estimate; the KV cache and activations are not counted. (llama.cpp's
Q4_0 keeps that tied table in Q8_0 here: 576 columns do not divide into Q6_K's blocks of 256.)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import importlib.util
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

if TYPE_CHECKING:
    from tasks.evaluate.runners import Runner

PROMPT = "Reverse: a b c d e"
CLIENT_LOADS = (1, 4, 16)


@dataclass
class PathSpeed:
    """Single-stream speed of one decoding path."""

    label: str
    decode_tokens_per_s: float
    ttft_s: float


@dataclass
class LoadResult:
    """The server under ``clients`` concurrent callers: aggregate throughput and probe TTFTs."""

    clients: int
    tokens_per_s: float
    ttfts_s: list[float]

    def ttft_percentile(self, q: float) -> float:
        """The ``q``-th percentile of the probe TTFTs, in seconds."""
        return float(np.percentile(self.ttfts_s, q))


# --- HTTP -------------------------------------------------------------------------------------------------------


def chat_body(new_tokens: int, stream: bool = False) -> dict:
    """A greedy chat request for exactly ``new_tokens`` tokens (end-of-sequence suppressed until then)."""
    body: dict = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": new_tokens,
                  "min_tokens": new_tokens}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def completion(http: httpx.Client, url: str, new_tokens: int) -> tuple[int, float]:
    """Completion tokens and seconds of one non-streamed fixed-length request."""
    start = time.perf_counter()
    reply = http.post(f"{url}/v1/chat/completions", json=chat_body(new_tokens))
    reply.raise_for_status()
    return reply.json()["usage"]["completion_tokens"], time.perf_counter() - start


def probe_ttft(http: httpx.Client, url: str) -> float:
    """Seconds from sending a streamed one-token request to the first SSE chunk carrying its token.

    That chunk is the first with non-empty ``delta.content`` or a ``finish_reason`` (see the module docstring);
    the stream is read to its end so the connection can be reused, and its usage must count one token.
    """
    start = time.perf_counter()
    ttft = tokens = None
    with http.stream("POST", f"{url}/v1/chat/completions", json=chat_body(1, stream=True)) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            choice = chunk["choices"][0] if chunk["choices"] else {}
            if ttft is None and (choice.get("delta", {}).get("content") or choice.get("finish_reason")):
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    if ttft is None or tokens != 1:
        raise RuntimeError(f"TTFT probe: expected one generated token and its chunk, got {tokens} tokens")
    return ttft


def served_run(http: httpx.Client, url: str, new_tokens: int) -> tuple[float, float]:
    """Decode tokens/s and TTFT of one client: a TTFT probe, then a ``new_tokens`` request.

    Decode rate: the tokens after the first over the fixed-length request's time minus the probe's TTFT.
    """
    ttft = probe_ttft(http, url)
    tokens, total = completion(http, url, new_tokens)
    return (tokens - 1) / (total - ttft), ttft


def warm_server(http: httpx.Client, url: str) -> None:
    """One probe and one short request, so no timed run pays for first-use costs."""
    probe_ttft(http, url)
    completion(http, url, 4)


SERVED = "served over HTTP (one client), int4"


def throughput(url: str, new_tokens: int, clients: int, requests: int) -> float:
    """Completion tokens per second across ``clients`` concurrent callers sending ``requests`` each."""
    def caller(_: int) -> int:
        with httpx.Client(timeout=600) as http:
            return sum(completion(http, url, new_tokens)[0] for _ in range(requests))

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(caller, range(clients)))
    return tokens / (time.perf_counter() - start)


def wait_for_load(http: httpx.Client, url: str, clients: int, timeout_s: float = 60.0) -> None:
    """Block until the server holds ``clients`` requests (running or queued), as its /health reports."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = http.get(f"{url}/health").json()
        if health["active_rows"] + health["queue_depth"] >= clients:
            return
        time.sleep(0.01)
    raise TimeoutError(f"the server never held {clients} requests")


def ttfts_under_load(url: str, new_tokens: int, clients: int, probes: int) -> list[float]:
    """TTFTs of ``probes`` sequential probes while ``clients`` callers keep ``new_tokens`` requests in flight."""
    stop = threading.Event()

    def caller() -> None:
        with httpx.Client(timeout=600) as http:
            while not stop.is_set():
                completion(http, url, new_tokens)

    with cf.ThreadPoolExecutor(max(clients, 1)) as pool, httpx.Client(timeout=600) as http:
        callers = [pool.submit(caller) for _ in range(clients)]
        try:
            wait_for_load(http, url, clients)
            ttfts = [probe_ttft(http, url) for _ in range(probes)]
        finally:
            stop.set()
        for c in callers:
            c.result()
    return ttfts


@contextlib.contextmanager
def running_server(onnx: Path, args: argparse.Namespace) -> Iterator[str]:
    """Our server on the int4 build, on a free 127.0.0.1 port, for the ``with`` block; yields its URL."""
    from infra import process

    port = process.free_port()
    log = args.out / "serve-bench.log"
    running = ["--max-running-batches", str(args.max_running_batches)] if args.max_running_batches else []
    running += ["--scheduler", args.scheduler] if args.scheduler else []
    running += ["--int8-steps", args.int8_steps] if args.int8_steps else []
    pid = process.start(["-m", "infra.serving", str(onnx), "--name", "bench", "--port", str(port),
                         *(["--max-batch-size", str(args.max_batch_size)] if args.max_batch_size else []),
                         "--max-queue", "256",
                         "--threads", str(args.threads), *running], log)
    print(f"server log: {log}", file=sys.stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_healthy(f"{url}/ping", pid, log, 300)
        yield url
    finally:
        process.stop(pid)


def measure_loads(url: str, args: argparse.Namespace) -> tuple[list[float], list[LoadResult]]:
    """Unloaded probe TTFTs, then each client load's throughput and probe TTFTs."""
    unloaded = ttfts_under_load(url, args.new_tokens, 0, args.probes)
    return unloaded, [LoadResult(c, throughput(url, args.new_tokens, c, args.requests),
                                 ttfts_under_load(url, args.new_tokens, c, args.probes)) for c in CLIENT_LOADS]


# --- single streams: served and in-process, in alternating rounds ----------------------------------------------


def single_streams(url: str, model_dir: Path, onnx: Path, gguf: Path | None,
                   args: argparse.Namespace) -> list[PathSpeed]:
    """Single-stream decode tokens/s and TTFT of every path: the server at ``url``, then
    the engine on int4, llama.cpp Q4_0 (when ``gguf``) and transformers fp32 in-process (not with
    ``--server-only``).

    Every runner is loaded and warmed first; then each of ``--repeats`` rounds runs every path once, in turn, so
    a machine whose speed drifts between minutes slows all paths alike (medians per path).
    """
    import torch

    from tasks.evaluate.runners import GgufRunner, HfRunner, OnnxRunner
    from tasks.modeling import load_tokenizer

    torch.set_num_threads(args.threads)
    tok = load_tokenizer(str(model_dir))
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    runners: dict[str, Runner] = {}
    if not args.server_only:
        runners["in-process slmops engine, int4"] = OnnxRunner(str(onnx), args.threads)
        if gguf:
            runners["in-process llama.cpp Q4_0"] = GgufRunner(str(gguf), args.threads)
        runners["in-process transformers fp32"] = HfRunner(str(model_dir))
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in [SERVED, *runners]}
    with httpx.Client(timeout=600) as http:
        warm_server(http, url)
        for runner in runners.values():
            runner.generate(ids, 4, 4)
        for _ in range(args.repeats):
            runs[SERVED].append(served_run(http, url, args.new_tokens))
            for label, runner in runners.items():
                r = runner.generate(ids, args.new_tokens, args.new_tokens)
                runs[label].append(((len(r.tokens) - 1) / (r.total_s - r.ttft_s), r.ttft_s))
    return [PathSpeed(label, statistics.median(r[0] for r in found), statistics.median(r[1] for r in found))
            for label, found in runs.items()]


# --- memory bandwidth -------------------------------------------------------------------------------------------


def read_bandwidth(threads: int, megabytes: int = 512, repeats: int = 3) -> float:
    """Bytes per second read by summing a float32 array split across ``threads`` threads (best of ``repeats``)."""
    data = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    chunks = np.array_split(data, threads)
    best = float("inf")
    with cf.ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, chunks))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def onnx_weight_bytes(folder: Path) -> int:
    """Bytes an onnxruntime-genai build reads per token: model.onnx + model.onnx.data, less untied embedding tables.

    An initializer that only ``Gather`` nodes read is an embedding table of which a token reads one row: the
    builder's k_quant/rtn int4 shares lm_head's weights with the embedding (``GatherBlockQuantized``), the Olive
    GPTQ build keeps a separate fp32 table (113 MB for this model) that must not count as read.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    files = [folder / "model.onnx", folder / "model.onnx.data"]
    total = sum(f.stat().st_size for f in files if f.is_file())
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    for init in graph.initializer:
        if readers.get(init.name) == {"Gather"}:
            external = {e.key: e.value for e in init.external_data}
            total -= int(external["length"]) if uses_external_data(init) else len(init.raw_data)
    return total


# --- report -----------------------------------------------------------------------------------------------------


def ratio(a: float, b: float | None) -> str:
    """``a / b`` as ``1.23x``, or a dash without ``b``."""
    return f"{a / b:.2f}x" if b else "–"


def print_single_stream(rows: list[PathSpeed], args: argparse.Namespace) -> None:
    """Table 1: decode tokens/s and TTFT of every path."""
    base = next(r.decode_tokens_per_s for r in rows if "transformers" in r.label)
    llama = next((r.decode_tokens_per_s for r in rows if "llama.cpp" in r.label), None)
    print(f"\nSmolLM-135M shape (random init), int4 build {args.int4_algorithm}/{args.int4_block_size}, "
          f"{args.new_tokens} new tokens, median of {args.repeats}, threads={args.threads}\n")
    print("| path | decode tokens/s | vs transformers fp32 | vs llama.cpp Q4_0 | TTFT ms |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.label} | {r.decode_tokens_per_s:.1f} | {ratio(r.decode_tokens_per_s, base)} | "
              f"{ratio(r.decode_tokens_per_s, llama)} | {1000 * r.ttft_s:.1f} |")


def print_loads(loads: list[LoadResult], unloaded: list[float], args: argparse.Namespace) -> None:
    """Table 2: aggregate throughput and probe TTFT percentiles per load, then the unloaded TTFT."""
    print(f"\nServer under load (int4, scheduler {args.scheduler or 'default'}, int8 steps "
          f"{args.int8_steps or 'default'}, max batch "
          f"{args.max_batch_size or 'default'}, threads={args.threads}): throughput from "
          f"{args.requests} requests per client of {args.new_tokens} tokens; TTFT from {args.probes} one-token "
          f"probes while the clients keep requests in flight\n")
    print("| concurrent clients | completion tokens/s | vs 1 client | TTFT p50 ms | TTFT p95 ms |")
    print("|---:|---:|---:|---:|---:|")
    for load in loads:
        print(f"| {load.clients} | {load.tokens_per_s:.1f} | {ratio(load.tokens_per_s, loads[0].tokens_per_s)} | "
              f"{1000 * load.ttft_percentile(50):.1f} | {1000 * load.ttft_percentile(95):.1f} |")
    idle = float(np.median(unloaded))
    print(f"\nUnloaded TTFT (median of {len(unloaded)} probes): {1000 * idle:.1f} ms; "
          f"p95 under {loads[-1].clients} clients ÷ unloaded: {loads[-1].ttft_percentile(95) / idle:.1f}x")


def print_bandwidth(rows: list[tuple[str, float, int]], bandwidth: float, threads: int) -> None:
    """Table 3: share of the read bandwidth that decoding uses, for (label, tokens/s, weight bytes) rows."""
    print(f"\nMemory read bandwidth: {bandwidth / 1e9:.1f} GB/s (sum over 512 MB float32, threads={threads}, "
          f"best of 3)\n")
    print("| path | decode tokens/s | weight MB read per token | GB/s read | share of bandwidth |")
    print("|---|---:|---:|---:|---:|")
    for label, tps, size in rows:
        read = tps * size
        print(f"| {label} | {tps:.1f} | {size / 1e6:.1f} | {read / 1e9:.2f} | {100 * read / bandwidth:.0f}% |")


def main() -> None:
    from tasks.engine.settings import available_cores

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64, help="Tokens per timed request (default 64).")
    parser.add_argument("--repeats", type=int, default=5,
                        help="Rounds of timed single-stream runs, every path once per round (default 5).")
    parser.add_argument("--requests", type=int, default=4, help="Requests per client in the throughput runs.")
    parser.add_argument("--probes", type=int, default=20, help="TTFT probes per load level (default 20).")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="Server batch size (default: the server's default).")
    parser.add_argument("--max-running-batches", type=int, default=None,
                        help="Server batches decoded in turn (default: the server's default).")
    parser.add_argument("--scheduler", choices=["continuous", "batches"], default=None,
                        help="Server scheduler (default: the server's default, continuous for these builds).")
    parser.add_argument("--int8-steps", choices=["auto", "on", "off"], default=None,
                        help="Server int8 steps for many rows (default: the server's default, auto).")
    parser.add_argument("--server-only", action="store_true",
                        help="Only the served rows and the load table (no in-process runtimes, no bandwidth).")
    parser.add_argument("--threads", type=int, default=available_cores(),
                        help="CPU threads of every runtime (default: the available cores).")
    parser.add_argument("--int4-algorithm", default="k_quant",
                        choices=["k_quant", "rtn", "k_quant_last", "rtn_last", "gptq"],
                        help="int4 build's quantization (default k_quant; *_last: int8 lm_head, as the pipeline's "
                             "quantize.int4_algorithm; gptq: the pipeline's Olive GPTQ path, quantize.olive_gptq).")
    parser.add_argument("--int4-block-size", type=int, default=32, help="int4 build's block size (default 32).")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"), help="Working folder.")
    args = parser.parse_args()

    from decode import gguf_models, make_model, onnx_model

    model_dir = make_model(args.out)
    onnx = onnx_model(args.out, model_dir, "int4", args.int4_algorithm, args.int4_block_size)
    gguf = gguf_models(args.out, model_dir, ["Q4_0"])["Q4_0"] if importlib.util.find_spec("llama_cpp") else None
    if gguf is None:
        print("llama-cpp-python not installed: no llama.cpp row (pip install -e '.[gguf]')", file=sys.stderr)

    with running_server(onnx, args) as url:
        rows = single_streams(url, model_dir, onnx, gguf, args)
        unloaded, loads = measure_loads(url, args)
    served = rows[0]
    if args.server_only:
        print(f"served single stream: {served.decode_tokens_per_s:.1f} tokens/s, TTFT {1000 * served.ttft_s:.1f} ms")
        print_loads(loads, unloaded, args)
        return
    bandwidth = read_bandwidth(args.threads)

    print_single_stream(rows, args)
    print_loads(loads, unloaded, args)
    weights = [(served.label, served.decode_tokens_per_s, onnx_weight_bytes(onnx))]
    if gguf:
        llama = next(r for r in rows if "llama.cpp" in r.label)
        weights.append((llama.label, llama.decode_tokens_per_s, gguf.stat().st_size))
    print_bandwidth(weights, bandwidth, args.threads)


if __name__ == "__main__":
    main()
