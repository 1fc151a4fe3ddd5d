"""Decode speed and perplexity of one model in every format, side by side in one run.

A 135M-parameter model of SmolLM-135M's shape (random initialisation, no hub) is exported to ONNX int4/int8/fp32
with the onnxruntime-genai builder and, when llama-cpp-python is installed, to GGUF Q4_0/Q8_0. Each format
decodes the same prompt for a fixed number of new tokens (greedy, EOS suppressed) and scores perplexity on the
same text. Ratios are against transformers fp32 ``generate`` measured in the same run.

    python bench/decode.py [--new-tokens 64] [--repeats 3] [--threads 2] [--out .slmops/bench]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOLLM_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                   num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                   rms_norm_eps=1e-5, rope_theta=10000.0)


def make_model(out: Path) -> Path:
    """SmolLM-135M-shaped Llama with a locally trained tokenizer (ids stay below its small vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tasks.demo import make_dataset, make_tokenizer
    from tasks.modeling import load_tokenizer

    if (out / "model" / "config.json").is_file():
        return out / "model"
    data = make_dataset(out / "data", seed=0)
    make_tokenizer(data["train"], out / "tokenizer", vocab_size=400)
    tok = load_tokenizer(str(out / "tokenizer"))
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM_135M, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model"


def onnx_model(out: Path, model_dir: Path, precision: str, algorithm: str = "k_quant", block_size: int = 32) -> Path:
    """``out/onnx-<precision>``: the model's onnxruntime-genai build, built once.

    int4 defaults to k_quant in blocks of 32; another ``algorithm`` or ``block_size`` gets its own folder
    (``onnx-int4-<algorithm>-<block_size>``). ``algorithm="gptq"`` is the pipeline's Olive path
    (``quantize.olive_gptq``): GPTQ calibrated on 64 rows of the demo train split, then the builder's int4.
    """
    from tasks.config import QuantizeConfig
    from tasks.quantize.olive import build_olive_gptq
    from tasks.quantize.onnx import build_onnx
    from tasks.records import ModelDir

    default = (algorithm, block_size) == ("k_quant", 32)
    folder = out / (f"onnx-{precision}" if precision != "int4" or default
                    else f"onnx-int4-{algorithm}-{block_size}")
    built = sorted(folder.rglob("genai_config.json")) if folder.is_dir() else []
    if built:
        return built[0].parent
    model = ModelDir(path=str(model_dir), digest="bench")
    if algorithm == "gptq":
        return Path(build_olive_gptq(model, str(out / "data" / "train.jsonl"),
                                     QuantizeConfig(int4_block_size=block_size, olive_gptq=True), 96, folder).path)
    build_onnx(model, precision, QuantizeConfig(int4_block_size=block_size, int4_algorithm=algorithm), folder)
    return folder


def gguf_models(out: Path, model_dir: Path, types: list[str]) -> dict[str, Path]:
    """``out/gguf/model-<type>.gguf`` for each GGUF type (llama.cpp's converter and quantizer), built once."""
    from tasks.quantize.gguf import build_gguf
    from tasks.records import ModelDir

    paths = {t: out / "gguf" / f"model-{t}.gguf" for t in types}
    wanted = [t for t, path in paths.items() if not path.is_file()]
    if wanted:
        build_gguf(ModelDir(path=str(model_dir), digest="bench"), wanted, out / "gguf")
    return paths


def measure(runner, prompt: list[int], texts: list[list[int]], new_tokens: int, repeats: int) -> dict[str, float]:
    """Median decode tokens/s over ``repeats`` runs, time to first token, and perplexity over ``texts``."""
    runner.generate(prompt, 4, 4)  # warm-up
    runs = [runner.generate(prompt, new_tokens, new_tokens) for _ in range(repeats)]
    decode = statistics.median((len(r.tokens) - 1) / (r.total_s - r.ttft_s) for r in runs)
    return {"decode_tokens_per_s": decode, "ttft_ms": 1000 * statistics.median(r.ttft_s for r in runs),
            "perplexity": perplexity(runner, texts)}


def perplexity(runner, texts: list[list[int]]) -> float:
    """Perplexity of ``runner`` over ``texts`` (every token scored)."""
    nll = count = 0
    for ids in texts:
        a, b = runner.nll(ids, ids)
        nll, count = nll + a, count + b
    return math.exp(nll / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64, help="Tokens generated per run (default 64).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per format (default 3).")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime.")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"), help="Working folder.")
    args = parser.parse_args()

    import torch

    from tasks.evaluate.runners import GgufRunner, HfRunner, OnnxRunner
    from tasks.modeling import load_tokenizer
    from tasks.quantize.tools import disk_size

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = make_model(args.out)
    tok = load_tokenizer(str(model_dir))
    texts = [tok(tok.apply_chat_template(m, tokenize=False), add_special_tokens=False)["input_ids"]
             for m in (json.loads(line)["messages"]
                       for line in (args.out / "data" / "test.jsonl").read_text().splitlines()[:16])]
    prompt = tok.apply_chat_template([{"role": "user", "content": "Reverse: a b c d e"}], tokenize=False,
                                     add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]

    formats: list[tuple[str, object, Path]] = [("transformers fp32", HfRunner(str(model_dir)), model_dir)]
    for precision in ("int4", "int8", "fp32"):
        folder = onnx_model(args.out, model_dir, precision)
        formats.append((f"slmops engine {precision}", OnnxRunner(str(folder), args.threads), folder))
    if importlib.util.find_spec("llama_cpp"):
        paths = gguf_models(args.out, model_dir, ["Q4_0", "q8_0"])
        for t, label in (("Q4_0", "llama.cpp Q4_0"), ("q8_0", "llama.cpp Q8_0")):
            formats.append((label, GgufRunner(str(paths[t]), args.threads), paths[t]))
    else:
        print("llama-cpp-python not installed: skipping GGUF rows (pip install -e '.[gguf]')", file=sys.stderr)

    results = []
    for label, runner, path in formats:
        start = time.perf_counter()
        row = measure(runner, prompt_ids, texts, args.new_tokens, args.repeats)
        row.update(format=label, size_mb=disk_size(path) / 2**20 if label != "transformers fp32" else
                   sum(p.stat().st_size for p in Path(path).glob("*.safetensors")) / 2**20)
        results.append(row)
        print(f"measured {label} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    base = results[0]["decode_tokens_per_s"]
    print(f"\nSmolLM-135M shape (random init), {args.new_tokens} new tokens, median of {args.repeats}, "
          f"threads={args.threads or 'default'}\n")
    print("| format | decode tokens/s | vs transformers fp32 | TTFT ms | perplexity | size MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['format']} | {r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s'] / base:.2f}x | "
              f"{r['ttft_ms']:.1f} | {r['perplexity']:.1f} | {r['size_mb']:.1f} |")


if __name__ == "__main__":
    main()
