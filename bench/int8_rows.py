"""Quality and speed of int8 steps (tasks/engine/int8_rows.py) against the int4 build's own steps.

Quality, on a served build and a chat test split (the demo's: ``slmops demo`` leaves both under $SLMOPS_HOME):
every prompt is answered greedily in steps of ``--rows`` rows (static groups, so every step after the prefill has
that many rows and runs on the int8 path when it is on), and the answers' perplexity is taken the same way
(teacher-forced reference answers, ``--rows`` rows a step). Exact match as the pipeline's evaluate step counts
it. Speed, on bench/decode.py's SmolLM-135M-shaped int4 build: a decoding step of 1/4/8/16/32 rows on each path.

    python bench/int8_rows.py --served $SLMOPS_HOME/cache/registry/demo-slm/1/served \\
        --test $SLMOPS_HOME/demo/<id>/data/test.jsonl [--rows 16] [--max-new-tokens 24] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def groups(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def answers(decoder, prompts: list[list[int]], rows: int, max_new: int, eos: set[int]) -> list[list[int]]:
    """Greedy answers, ``rows`` prompts decoded together (a row that ended keeps stepping, unused)."""
    out: list[list[int]] = []
    for group in groups(prompts, rows):
        cache = decoder.cache(len(group))
        tokens = np.array([int(np.argmax(x)) for x in decoder.prefill(cache, 0, group)])
        got, done = [[int(t)] for t in tokens], [int(t) in eos for t in tokens]
        for _ in range(max_new - 1):
            if all(done):
                break
            tokens = decoder.decode(cache, tokens).argmax(-1)
            for i, t in enumerate(tokens):
                if not done[i]:
                    got[i].append(int(t))
                    done[i] = int(t) in eos
        out += [[t for t in g if t not in eos] for g in got]
    return out


def answer_nll(decoder, examples: list[tuple[list[int], list[int]]], rows: int) -> tuple[float, int]:
    """Summed negative log-likelihood of the reference answers and their token count, ``rows`` a step."""
    total, count = 0.0, 0
    for group in groups(examples, rows):
        cache = decoder.cache(len(group))
        first = decoder.prefill(cache, 0, [p for p, _ in group])
        for i, (_, answer) in enumerate(group):
            total -= float(log_softmax(first[i].astype(np.float64))[answer[0]])
            count += 1
        for k in range(max(len(a) for _, a in group) - 1):
            fed = np.array([a[k] if k < len(a) else a[-1] for _, a in group])
            logits = decoder.decode(cache, fed).astype(np.float64)
            for i, (_, answer) in enumerate(group):
                if k + 1 < len(answer):
                    total -= float(log_softmax(logits[i])[answer[k + 1]])
                    count += 1
    return total, count


def quality(args: argparse.Namespace) -> None:
    from tasks.data.chat import prompt_ids, render_ids
    from tasks.data.prepare import read_prepared
    from tasks.engine.engine import load_tokenizer
    from tasks.engine.slots import SlotDecoder
    from tasks.evaluate.metrics import is_exact_match

    tokenizer = load_tokenizer(args.served)
    conversations = read_prepared(str(args.test))
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    full = [render_ids(tokenizer, c, add_generation_prompt=False) for c in conversations]
    examples = [(p, f[len(p):]) for p, f in zip(prompts, full, strict=True)]
    eos = {tokenizer.eos_token_id} | set(getattr(tokenizer, "additional_special_tokens_ids", []) or [])
    print(f"\n{args.served}: {len(conversations)} test rows, steps of {args.rows} rows, greedy, "
          f"{args.max_new_tokens} new tokens at most\n")
    print("| path | exact match | answer perplexity | greedy answers equal to int4's |")
    print("|---|---:|---:|---:|")
    reference = None
    for label, mode in (("int4 steps (the build's weights)", "off"), ("int8 steps (from 2 rows)", "on")):
        decoder = SlotDecoder(args.served, args.threads, int8=mode)
        got = answers(decoder, prompts, args.rows, args.max_new_tokens, eos)
        hits = sum(is_exact_match(tokenizer.decode(a, skip_special_tokens=True), c[-1]["content"])
                   for a, c in zip(got, conversations, strict=True))
        nll, count = answer_nll(decoder, examples, args.rows)
        reference = reference or got
        same = sum(a == b for a, b in zip(got, reference, strict=True))
        print(f"| {label} | {100 * hits / len(got):.1f}% | {math.exp(nll / count):.4f} | {same}/{len(got)} |",
              flush=True)


def speed(args: argparse.Namespace) -> None:
    from decode import make_model, onnx_model
    from decode_rows import slot_steps

    from tasks.engine.slots import SlotDecoder

    onnx = onnx_model(args.out, make_model(args.out), "int4")
    prompt = list(range(100, 120))
    paths = {"int4": SlotDecoder(onnx, args.threads), "int8": SlotDecoder(onnx, args.threads, int8="on")}
    print(f"\nSmolLM-135M shape (random init), int4 build, threads={args.threads}, median of {args.repeats} "
          "alternating runs of 32 steps\n")
    print("| rows | int4 step ms | int8 step ms | int8 vs int4 | int8 tokens/s vs one int4 row |")
    print("|---:|---:|---:|---:|---:|")
    one = None
    for rows in (1, 4, 8, 16, 32):
        runs = [[slot_steps(d, rows, prompt, 32) for d in paths.values()] for _ in range(args.repeats)]
        int4, int8 = (statistics.median(r[i] for r in runs) for i in (0, 1))
        one = one or int4
        best = min(int4, int8) if rows > 1 else int4
        print(f"| {rows} | {1000 * int4:.1f} | {1000 * int8:.1f} | {int4 / int8:.2f}x | {one * rows / best:.2f}x |",
              flush=True)
    print(f"\nauto at load: {SlotDecoder(onnx, args.threads, int8='auto').int8_note}")


def main() -> None:
    from tasks.engine.settings import available_cores

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--served", type=Path, help="A served onnxruntime-genai int4 folder (quality part).")
    parser.add_argument("--test", type=Path, help="Its chat JSONL test split (quality part).")
    parser.add_argument("--rows", type=int, default=16, help="Rows decoded together in the quality part.")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="Answer budget (the demo evaluates 24).")
    parser.add_argument("--threads", type=int, default=available_cores(), help="onnxruntime intra-op threads.")
    parser.add_argument("--repeats", type=int, default=3, help="Alternating runs per row count (speed part).")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"), help="Working folder (speed part).")
    parser.add_argument("--skip-speed", action="store_true", help="Only the quality part.")
    args = parser.parse_args()
    if args.served and args.test:
        quality(args)
    if not args.skip_speed:
        speed(args)


if __name__ == "__main__":
    main()
