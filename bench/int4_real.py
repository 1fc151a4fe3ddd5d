"""Int4 builds of a real SLM side by side: exact match, answer perplexity and size against the fp32 parent.

The parent is a merged Hugging Face folder (e.g. SmolLM2-135M-Instruct after ``slmops train --config
configs/smollm2.yaml``). Every variant is built through the pipeline's own ``build_onnx`` / Olive path and scored
on the same prepared test split by the pipeline's own scorer pieces: greedy answers through the serving engine
(int8 steps off), answer perplexity by ``OnnxRunner.nll``, perplexity on a real English text (``--real-text``,
default Debian's GPL-3, in the pipeline's windows of 256 tokens), size on disk.

    python bench/int4_real.py --parent .slmops/models/merged/<key> --test .slmops/data/<...>/test.jsonl
        [--out .slmops/bench/int4-real] [--only TEXT ...] [--limit N] [--threads N] [--real-text FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

VARIANTS = {  # label: QuantizeConfig fields (olive: the Olive GPTQ path)
    "k_quant b32 sym (old default)": {},
    "rtn b32": {"int4_algorithm": "rtn"},
    "k_quant b32 acc1": {"int4_accuracy_level": 1},
    "k_quant_last b32, int4 embeddings": {"int4_algorithm": "k_quant_last", "int4_embeddings": True},
    "k_quant b16": {"int4_block_size": 16},
    "GPTQ b32": {"olive": True},
    "GPTQ b32, 256 rows": {"olive": True, "olive_calibration_samples": 256},
    "GPTQ b32, 256 rows, int8 lm_head": {"olive": True, "olive_calibration_samples": 256,
                                         "int4_algorithm": "k_quant_last"},
    "GPTQ b32, 256 rows, damp 0.1": {"olive": True, "olive_calibration_samples": 256, "olive_damp_percent": 0.1},
    "GPTQ b16, 256 rows": {"olive": True, "olive_calibration_samples": 256, "int4_block_size": 16},
    "GPTQ b32, 256 rows, accuracy_level 1": {"olive": True, "olive_calibration_samples": 256,
                                             "int4_accuracy_level": 1},
    "GPTQ b32, 128 task + 128 python-docs rows, int8 lm_head": {
        "olive": True, "olive_calibration_samples": 256, "int4_algorithm": "k_quant_last",
        "olive_calibration_text": "python-docs"},
    "GPTQ b32, 128 task + 128 python-docs rows, int8 lm_head, int8 down_proj (k_quant_down)": {
        "olive": True, "olive_calibration_samples": 256, "int4_algorithm": "k_quant_last",
        "olive_calibration_text": "python-docs", "olive_mixed_precision": "k_quant_down"},
    "GPTQ b32, 128 task + 128 python-docs rows, int8 lm_head, int8 qkv/down_proj (k_quant_mixed)": {
        "olive": True, "olive_calibration_samples": 256, "int4_algorithm": "k_quant_last",
        "olive_calibration_text": "python-docs", "olive_mixed_precision": "k_quant_mixed"},
    "GPTQ b32, 192 task + 64 python-docs rows, int8 lm_head, int8 down_proj (k_quant_down)": {
        "olive": True, "olive_calibration_samples": 256, "int4_algorithm": "k_quant_last",
        "olive_calibration_text": "python-docs", "olive_calibration_text_share": 0.25,
        "olive_mixed_precision": "k_quant_down"},
    "GPTQ b32, 384 task + 128 python-docs rows, int8 lm_head, int8 down_proj (k_quant_down)": {
        "olive": True, "olive_calibration_samples": 512, "int4_algorithm": "k_quant_last",
        "olive_calibration_text": "python-docs", "olive_calibration_text_share": 0.25,
        "olive_mixed_precision": "k_quant_down"},
}


def main() -> None:
    from tasks.config import EvalConfig, QuantizeConfig
    from tasks.data.chat import encode_chat, prompt_ids
    from tasks.data.prepare import read_prepared
    from tasks.evaluate.batched import engine_answers, hf_answers
    from tasks.evaluate.metrics import exact_match_rate, perplexity
    from tasks.evaluate.runners import HfRunner, OnnxRunner
    from tasks.evaluate.score import text_windows
    from tasks.inputs import describe_model
    from tasks.modeling import load_tokenizer
    from tasks.quantize.olive import build_olive_gptq
    from tasks.quantize.onnx import build_onnx
    from tasks.quantize.tools import disk_size

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parent", required=True, type=Path, help="Merged Hugging Face folder (fp32 parent).")
    parser.add_argument("--test", required=True, help="Prepared test split (JSONL).")
    parser.add_argument("--train", help="Prepared train split (Olive GPTQ calibration).")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench/int4-real"), help="Working folder.")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT", help="Variants whose label "
                        "contains TEXT (repeatable).")
    parser.add_argument("--folder", action="append", default=[], metavar="LABEL=DIR", help="Also score a built "
                        "ONNX folder (repeatable).")
    parser.add_argument("--limit", type=int, help="Score the first N test rows only.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--real-text", default="/usr/share/common-licenses/GPL-3", help="Real English text scored "
                        "in windows of 256 tokens (default: Debian's GPL-3).")
    args = parser.parse_args()
    variants = {k: v for k, v in VARIANTS.items() if not args.only or any(t.lower() in k.lower() for t in args.only)}
    conversations = read_prepared(args.test)[: args.limit]
    refs = [c[-1]["content"] for c in conversations]
    parent = describe_model(str(args.parent))
    tok = load_tokenizer(str(args.parent))
    examples = [encode_chat(tok, c, args.max_length) for c in conversations]
    hf = HfRunner(str(args.parent))
    base_em = exact_match_rate(hf_answers(hf.model, tok, conversations, 24, "fp32 parent"), refs)
    base_ppl = perplexity(hf, examples)
    windows = text_windows(tok, EvalConfig(real_text=args.real_text))
    base_text = perplexity(hf, windows)
    del hf
    rows = [("fp32 parent (transformers)", base_em, base_ppl, base_text, disk_size(args.parent) / 2**20, 0.0)]
    print(f"fp32 parent: exact match {base_em:.1%}, perplexity {base_ppl:.4f}, text {base_text:.2f}", flush=True)
    if args.folder:
        variants = {k: v for k, v in variants.items() if args.only}
        variants |= {label: {"folder": d} for label, _, d in (f.partition("=") for f in args.folder)}
    for label, fields in variants.items():
        out = Path(fields.pop("folder", args.out / label.replace(" ", "_").replace(",", "")))
        start = time.perf_counter()
        olive = fields.pop("olive", False)
        cfg = QuantizeConfig(onnx=["int4"], **fields)
        if not (out / "genai_config.json").is_file() and not any(out.rglob("genai_config.json")):
            if olive:
                build_olive_gptq(parent, args.train, cfg, args.max_length, out)
            else:
                build_onnx(parent, "int4", cfg, out)
        folder = next(out.rglob("genai_config.json")).parent
        built_s = time.perf_counter() - start
        runner = OnnxRunner(str(folder), args.threads)
        prompts = [prompt_ids(tok, c) for c in conversations]
        em = exact_match_rate(engine_answers(runner.engine, prompts, 24, label), refs)
        ppl = perplexity(runner, examples)
        text = perplexity(runner, windows)
        size = disk_size(folder) / 2**20
        rows.append((label, em, ppl, text, size, built_s))
        print(f"{label}: exact match {em:.1%} ({em - base_em:+.1%}), perplexity {ppl:.4f} "
              f"({ppl / base_ppl - 1:+.1%}), text {text:.2f} ({text / base_text - 1:+.1%}), {size:.1f} MB, "
              f"built in {built_s:.0f} s", flush=True)
    print(f"\n| variant | exact match | Δ points | answer perplexity | Δ | {Path(args.real_text).name} perplexity | Δ "
          "| size MB |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, em, ppl, text, size, _ in rows:
        print(f"| {label} | {em:.1%} | {100 * (em - base_em):+.1f} | {ppl:.4f} | {ppl / base_ppl - 1:+.1%} | "
              f"{text:.2f} | {text / base_text - 1:+.1%} | {size:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
