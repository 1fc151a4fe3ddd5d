"""Build-time levers of the int4 ONNX build, side by side: block size, k_quant vs rtn, int8 lm_head.

Each variant of bench/decode.py's SmolLM-135M-shaped Llama (random init) is built with the onnxruntime-genai
builder through ``tasks.quantize.onnx.build_onnx`` (which reads back the block size and bits it asked for), or
with the pipeline's Olive GPTQ path (``quantize.olive_gptq``, calibrated on 64 demo train rows), and decoded
in-process by the serving engine (``OnnxRunner``, same ``--threads``): decode tokens/s (median of ``--repeats``
runs, which alternate between the variants), perplexity over 16 demo test conversations against the fp32 ONNX
build's, and size. The builder's ``accuracy_level`` is read from the built model too (it is 4 on CPU by default:
int8 activations).

    python bench/int4_levers.py [--new-tokens 64] [--repeats 5] [--threads N] [--out .slmops/bench]
        [--only TEXT ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

VARIANTS = {  # label: (block size, algorithm); k_quant needs an even block count per input (576 = 18 × 32)
    "k_quant, block 32 (default)": (32, "k_quant"),
    "k_quant, block 16": (16, "k_quant"),
    "rtn, block 32": (32, "rtn"),
    "rtn, block 64": (64, "rtn"),
    "rtn, block 128": (128, "rtn"),
    "k_quant, block 32, int8 lm_head": (32, "k_quant_last"),
    "Olive GPTQ, block 32": (32, "gptq"),
    "Olive GPTQ, block 64": (64, "gptq"),  # Olive's GPTQ needs blocks that divide 576: no 128
}


def main() -> None:
    from decode import make_model, measure, onnx_model, perplexity

    from tasks.engine.settings import available_cores
    from tasks.evaluate.runners import OnnxRunner
    from tasks.modeling import load_tokenizer
    from tasks.quantize.onnx import quantized_matmuls
    from tasks.quantize.tools import disk_size

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64, help="Tokens generated per run (default 64).")
    parser.add_argument("--repeats", type=int, default=5, help="Timed runs per variant (default 5).")
    parser.add_argument("--threads", type=int, default=available_cores(), help="Threads (default: all cores).")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"), help="Working folder.")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="Measure only the variants whose label contains TEXT, in any case (repeatable); the "
                             "default variant is always measured, as the baseline.")
    args = parser.parse_args()
    unknown = [text for text in args.only if not any(text.lower() in label.lower() for label in VARIANTS)]
    if unknown:
        parser.error(f"--only {unknown[0]!r} matches no variant; the variants: {'; '.join(VARIANTS)}")
    variants = {label: v for i, (label, v) in enumerate(VARIANTS.items())
                if i == 0 or not args.only or any(text.lower() in label.lower() for text in args.only)}

    model_dir = make_model(args.out)
    tok = load_tokenizer(str(model_dir))
    texts = [tok(tok.apply_chat_template(m, tokenize=False), add_special_tokens=False)["input_ids"]
             for m in (json.loads(line)["messages"]
                       for line in (args.out / "data" / "test.jsonl").read_text().splitlines()[:16])]
    prompt_ids = tok(tok.apply_chat_template([{"role": "user", "content": "Reverse: a b c d e"}], tokenize=False,
                                             add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    fp32 = measure(OnnxRunner(str(onnx_model(args.out, model_dir, "fp32")), args.threads), prompt_ids, texts,
                   args.new_tokens, args.repeats)
    runners, rows = {}, []
    for label, (block, algorithm) in variants.items():
        folder = onnx_model(args.out, model_dir, "int4", algorithm, block)  # gptq: the pipeline's Olive path
        matmuls = quantized_matmuls(folder)
        runners[label] = OnnxRunner(str(folder), args.threads)
        runners[label].generate(prompt_ids, 4, 4)  # warm-up
        rows.append((label, disk_size(folder), dict(Counter(m["bits"] for m in matmuls)),
                     sorted({m["accuracy_level"] for m in matmuls})))
    # runs alternate between the variants, so a machine whose speed drifts between minutes slows all alike
    speeds: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(args.repeats):
        for label, runner in runners.items():
            run = runner.generate(prompt_ids, args.new_tokens, args.new_tokens)
            speeds[label].append((len(run.tokens) - 1) / (run.total_s - run.ttft_s))
    found = {label: {"decode_tokens_per_s": statistics.median(speeds[label]),
                     "perplexity": perplexity(runner, texts)} for label, runner in runners.items()}
    rows = [(label, found[label], size, bits, levels) for label, size, bits, levels in rows]

    print(f"\nSmolLM-135M shape (random init), {args.new_tokens} new tokens, median of {args.repeats}, "
          f"{args.threads} threads; fp32 ONNX: {fp32['decode_tokens_per_s']:.1f} tok/s, perplexity "
          f"{fp32['perplexity']:.2f}\n")
    print("| int4 variant | decode tok/s | vs default | perplexity vs fp32 | size MB | MatMulNBits bits | "
          "accuracy_level |\n|---|---:|---:|---:|---:|---|---|")
    default = rows[0][1]["decode_tokens_per_s"]
    for label, found, size, bits, levels in rows:
        print(f"| {label} | {found['decode_tokens_per_s']:.1f} | {found['decode_tokens_per_s'] / default:.2f}× | "
              f"{100 * (found['perplexity'] / fp32['perplexity'] - 1):+.2f}% | {size / 2**20:.1f} | "
              f"{', '.join(f'{n}× int{b}' for b, n in sorted(bits.items()))} | {levels} |")


if __name__ == "__main__":
    main()
