"""Batch transform throughput: the local executor (the serving engine, continuously batched, records sorted by
prompt length) against a naive per-record transformers ``generate`` loop and a per-record onnxruntime-genai loop.

Same model (random initialisation, no hub: SmolLM-135M's shape, or the 1.7M-parameter demo teacher's; ONNX int4
built from it), same records (the demo test split's prompts through the chat template), greedy, the same new-token
budget. Records/s counts whole records; tokens/s shows the work was the same.

    python bench/batch.py [--shape smollm-135m|demo-teacher] [--records 48] [--new-tokens 32]
                          [--batch-sizes 8 16 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def demo_teacher(out: Path) -> Path:
    """The demo teacher's shape, randomly initialised, with the demo tokenizer (made under ``out`` once)."""
    from tasks.demo import DemoSpec, make_dataset, make_model, make_tokenizer

    folder = out / "demo-teacher"
    if not (folder / "config.json").is_file():
        data = make_dataset(out / "data", seed=0)
        make_tokenizer(data["train"], out / "tokenizer", vocab_size=400)
        make_model(DemoSpec().teacher, out / "tokenizer", folder, seed=0)
    return folder


def timed(fn) -> tuple[float, int]:
    """Seconds ``fn()`` took and the tokens it returned."""
    start = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["smollm-135m", "demo-teacher"], default="smollm-135m",
                        help="Model shape (default smollm-135m).")
    parser.add_argument("--records", type=int, default=48, help="Records every path answers (default 48).")
    parser.add_argument("--new-tokens", type=int, default=32, help="New-token budget per record (default 32).")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32], help="Executor batch sizes.")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime.")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"), help="Working folder.")
    args = parser.parse_args()

    import torch
    from decode import make_model

    from tasks.batch.config import GenerationSettings, LocalExecutorConfig
    from tasks.batch.executors import Part
    from tasks.batch.inputs import parse_input
    from tasks.batch.local import LocalExecutor
    from tasks.config import QuantizeConfig
    from tasks.data.chat import render_ids
    from tasks.engine.static_batch import OgModel, decode_batch
    from tasks.modeling import load_model, load_tokenizer
    from tasks.quantize.onnx import build_onnx
    from tasks.records import ModelDir, ModelRelease

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = make_model(args.out) if args.shape == "smollm-135m" else demo_teacher(args.out)
    onnx_dir = args.out / ("onnx-int4" if args.shape == "smollm-135m" else "demo-teacher-onnx-int4")
    if not (onnx_dir / "genai_config.json").is_file():
        build_onnx(ModelDir(path=str(model_dir), digest="bench"), "int4", QuantizeConfig(int4_block_size=32), onnx_dir)
    tok = load_tokenizer(str(model_dir))
    lines = (args.out / "data" / "test.jsonl").read_text().splitlines()[: args.records]
    records = parse_input("bench", "".join(json.dumps({"messages": json.loads(x)["messages"]}) + "\n"
                                           for x in lines)).records
    prompts = [render_ids(tok, r.as_messages(), add_generation_prompt=True) for r in records]
    n = args.new_tokens
    results: list[tuple[str, str, float, int]] = []

    hf = load_model(str(model_dir)).eval()

    @torch.no_grad()
    def naive(rows: list[list[int]]) -> int:
        out = 0
        for p in rows:
            ids = hf.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
            out += ids.shape[1] - len(p)
        return out

    naive(prompts[:2])  # warm-up
    print("measuring transformers per record …", file=sys.stderr)
    results.append(("transformers fp32, one record at a time", "1", *timed(lambda: naive(prompts))))

    og_model = OgModel(onnx_dir, args.threads)

    def per_record(rows: list[list[int]]) -> int:
        return sum(len(decode_batch(og_model, [p], [n])[0].tokens) for p in rows)

    per_record(prompts[:2])
    print("measuring onnxruntime-genai per record …", file=sys.stderr)
    results.append(("onnxruntime-genai int4, one record at a time", "1", *timed(lambda: per_record(prompts))))

    release = ModelRelease(name="bench", version="0", onnx_dir=str(onnx_dir))
    part = Part(0, records, prompts)
    for size in args.batch_sizes:
        executor = LocalExecutor(release, LocalExecutorConfig(batch_size=size, threads=args.threads),
                                 GenerationSettings(max_new_tokens=n))
        executor.run(Part(0, records[:size], prompts[:size]), lambda _: None)  # warm-up
        print(f"measuring the local executor, batch {size} …", file=sys.stderr)
        results.append(("local executor (int4, the engine)", str(size),
                        *timed(lambda e=executor: sum(a.completion_tokens for a in e.run(part, lambda _: None)))))

    naive_rate = len(records) / results[0][2]
    og_rate = len(records) / results[1][2]
    label = "SmolLM-135M shape" if args.shape == "smollm-135m" else "demo teacher shape (1.7M parameters)"
    print(f"\n{label} (random init), {len(records)} records (demo test split prompts, "
          f"{min(map(len, prompts))}–{max(map(len, prompts))} tokens), up to {n} new tokens, greedy, "
          f"threads={args.threads or 'default'}\n")
    print("| path | batch | records/s | tokens/s | vs naive transformers | vs per-record ORT GenAI |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, batch, seconds, tokens in results:
        rate = len(records) / seconds
        print(f"| {label} | {batch} | {rate:.2f} | {tokens / seconds:.0f} | {rate / naive_rate:.1f}x | "
              f"{rate / og_rate:.1f}x |")


if __name__ == "__main__":
    main()
