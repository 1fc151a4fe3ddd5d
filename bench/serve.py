"""Served decode speed: HTTP (one stream) vs in-process onnxruntime-genai vs transformers fp32, all on the same
model in one run; then aggregate throughput of the server with 1, 4 and 16 concurrent clients.

The model is bench/decode.py's SmolLM-135M-shaped Llama (random init), served as its int4 ONNX build by our
runtime (``python -m infra.serving``) on 127.0.0.1.

    python bench/serve.py [--new-tokens 64] [--repeats 3] [--requests 4] [--max-batch-size 16]
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


def request_once(url: str, prompt: str, new_tokens: int) -> tuple[int, float, float]:
    """(tokens, time to first token, total seconds) for one client over HTTP.

    TTFT is the latency of a 1-token request; the fixed-length request's usage gives the token count (the
    random bench model emits ids its small tokenizer decodes to nothing, so streamed text cannot be counted).
    """
    def call(n: int) -> tuple[int, float]:
        body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": n, "min_tokens": n}
        start = time.perf_counter()
        reply = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).json()
        return reply["usage"]["completion_tokens"], time.perf_counter() - start

    _, ttft = call(1)
    tokens, total = call(new_tokens)
    return tokens, ttft, total


def throughput(url: str, prompt: str, new_tokens: int, clients: int, requests: int) -> float:
    """Completion tokens per second across ``clients`` concurrent callers sending ``requests`` each."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": new_tokens, "min_tokens": new_tokens}

    def caller(_: int) -> int:
        with httpx.Client(timeout=600) as http:
            return sum(http.post(f"{url}/v1/chat/completions", json=body).json()["usage"]["completion_tokens"]
                       for _ in range(requests))

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as pool:
        tokens = sum(pool.map(caller, range(clients)))
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="Timed single-stream runs per path.")
    parser.add_argument("--requests", type=int, default=4, help="Requests per client in the throughput runs.")
    parser.add_argument("--max-batch-size", type=int, default=16, help="Server batch size.")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"))
    args = parser.parse_args()

    from decode import make_model

    from infra import process
    from tasks.config import QuantizeConfig
    from tasks.evaluate.runners import HfRunner, OnnxRunner
    from tasks.quantize.onnx import build_onnx
    from tasks.records import ModelDir

    model_dir = make_model(args.out)
    onnx = args.out / "onnx-int4"
    if not (onnx / "genai_config.json").is_file():
        build_onnx(ModelDir(path=str(model_dir), digest="bench"), "int4", QuantizeConfig(int4_block_size=32), onnx)
    prompt = "Reverse: a b c d e"

    port = process.free_port()
    log = args.out / "serve-bench.log"
    pid = process.start(["-m", "infra.serving", str(onnx), "--name", "bench", "--port", str(port),
                         "--max-batch-size", str(args.max_batch_size), "--max-queue", "256"], log)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_healthy(f"{url}/ping", pid, log, 300)
        request_once(url, prompt, 4)  # warm-up
        http_runs = [request_once(url, prompt, args.new_tokens) for _ in range(args.repeats)]
        rows = [("served over HTTP (one client), int4",
                 statistics.median((n - 1) / (total - ttft) for n, ttft, total in http_runs),
                 statistics.median(t for _, t, _ in http_runs))]
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        ids = tok(tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                          add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for label, runner in (("in-process onnxruntime-genai, int4", OnnxRunner(str(onnx))),
                              ("in-process transformers fp32", HfRunner(str(model_dir)))):
            runner.generate(ids, 4, 4)
            runs = [runner.generate(ids, args.new_tokens, args.new_tokens) for _ in range(args.repeats)]
            rows.append((label, statistics.median((len(r.tokens) - 1) / (r.total_s - r.ttft_s) for r in runs),
                         statistics.median(r.ttft_s for r in runs)))
        aggregate = {c: throughput(url, prompt, args.new_tokens, c, args.requests) for c in (1, 4, 16)}
    finally:
        process.stop(pid)

    print(f"\nSmolLM-135M shape (random init), {args.new_tokens} new tokens, median of {args.repeats}\n")
    print("| path | decode tokens/s | vs transformers fp32 | TTFT ms |")
    print("|---|---:|---:|---:|")
    base = rows[-1][1]
    for label, tps, ttft in rows:
        print(f"| {label} | {tps:.1f} | {tps / base:.2f}x | {1000 * ttft:.1f} |")
    print(f"\nServer aggregate throughput (int4, max batch {args.max_batch_size}, {args.requests} requests per client, "
          f"{args.new_tokens} tokens each)\n")
    print("| concurrent clients | completion tokens/s | vs 1 client |")
    print("|---:|---:|---:|")
    for c, tps in aggregate.items():
        print(f"| {c} | {tps:.1f} | {tps / aggregate[1]:.2f}x |")


if __name__ == "__main__":
    main()
