"""What a structured output costs: answers under a JSON schema against plain answers, through the serving engine.

The grammar mask (tasks/engine/structured.py) is computed on the CPU for every token of a constrained row, beside
the decoding step. This serves one int4 folder with the engine, answers the same prompts three ways — plain text,
``json_object`` and a ``json_schema`` — one request at a time and 8 at once, and reports decode time per token; it
also times the mask alone (llguidance's bitmask plus applying it to the logits) per token.

    .venv/bin/python bench/structured.py --model $SLMOPS_HOME/imports/gguf-<digest> --threads 2

``--model`` is a Hugging Face folder (built once to int4 ONNX under ``--out``) or ``--served`` an ONNX folder.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                           "country": {"type": "string", "maxLength": 40},
                                           "population_millions": {"type": "integer", "minimum": 0, "maximum": 100}},
          "required": ["city", "country", "population_millions"], "additionalProperties": False}
QUESTIONS = ["What is the capital of France?", "Name a large city in Japan.", "Which city hosts the Colosseum?",
             "Where is the Brandenburg Gate?", "Name the capital of Canada.", "Which city is called the Big Apple?",
             "What is the largest city in Australia?", "Name the capital of Spain."]
FORMATS = {"text": {"type": "text"}, "json_object": {"type": "json_object"},
           "json_schema": {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA}}}


def served_folder(args: argparse.Namespace) -> Path:
    if args.served:
        return args.served
    from tasks.config import QuantizeConfig
    from tasks.inputs import describe_model
    from tasks.quantize.onnx import build_onnx

    out = args.out / "onnx-int4"
    if not (out / "genai_config.json").is_file():
        build_onnx(describe_model(str(args.model)), "int4", QuantizeConfig(int4_algorithm="rtn"), out)
    return out


def run(engine, prompts: list[list[int]], fmt: dict, concurrent: int, max_tokens: int) -> tuple[float, int, int, float]:
    """Wall seconds, completion tokens, finished-by-stop answers and the sum of times to first token, for every
    prompt, ``concurrent`` at a time."""
    from tasks.engine.protocol import Done, GenerationRequest, Sampling
    from tasks.engine.structured import format_grammar

    grammar = format_grammar(fmt)
    done: list[Done] = []
    lock, slots = threading.Lock(), threading.Semaphore(concurrent)
    finished = threading.Semaphore(0)

    def emit(event) -> None:
        if isinstance(event, Done):
            with lock:
                done.append(event)
            slots.release()
            finished.release()

    start = time.perf_counter()
    for prompt in prompts:
        slots.acquire()
        constraint = engine.constraints.matcher(grammar) if grammar else None
        engine.submit(GenerationRequest(list(prompt), max_tokens, Sampling(), constraint=constraint, emit=emit))
    for _ in prompts:
        finished.acquire()
    return time.perf_counter() - start, sum(d.completion_tokens for d in done), \
        sum(d.finish_reason == "stop" for d in done), sum(d.ttft_s for d in done)


def mask_cost(engine, rounds: int) -> float:
    """Microseconds per token of computing and applying the json_schema mask, over a greedy walk of the grammar."""
    import numpy as np

    from tasks.engine.structured import format_grammar

    grammar, vocab = format_grammar(FORMATS["json_schema"]), engine.folder.vocab_size
    rng, times = np.random.default_rng(0), []
    for _ in range(rounds):
        row = engine.constraints.matcher(grammar)
        for _ in range(64):
            scores = rng.standard_normal(vocab).astype(np.float32)
            t = time.perf_counter()
            masked = row.mask(scores)
            times.append(time.perf_counter() - t)
            token = int(np.argmax(masked))
            if token in engine.folder.eos_ids:
                break
            row.accept(token)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", type=Path, help="Hugging Face folder to build into int4 ONNX.")
    where.add_argument("--served", type=Path, help="onnxruntime-genai folder to serve as it is.")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench/structured"), help="Working folder.")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: every core).")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2, help="Rounds per measurement (median taken).")
    args = parser.parse_args()

    from tasks.data.chat import render_ids
    from tasks.engine.engine import Engine
    from tasks.engine.settings import EngineConfig

    engine = Engine(served_folder(args), EngineConfig(threads=args.threads, int8_steps="off"))
    try:
        prompts = [render_ids(engine.tokenizer, [{"role": "user", "content": q}], True) for q in QUESTIONS]
        run(engine, prompts[:2], FORMATS["json_schema"], 2, 8)  # warm-up (and llguidance's tokenizer)
        print(f"mask alone: {mask_cost(engine, args.repeats):.0f} µs per token (vocabulary "
              f"{engine.folder.vocab_size})")
        print("One client: decode ms per token after the first (the prefill excluded); 8 clients: tokens/s.\n")
        print("| format | clients | decode | tokens | answers complete |\n|---|---:|---:|---:|---:|")
        base = {}
        for concurrent in (1, 8):
            for name, fmt in FORMATS.items():
                runs = [run(engine, prompts, fmt, concurrent, args.max_tokens) for _ in range(args.repeats)]
                if concurrent == 1:  # one request at a time: the wall time is the sum of the requests' times
                    value = statistics.median((r[0] - r[3]) / max(r[1] - len(prompts), 1) * 1e3 for r in runs)
                    shown = f"{value:.2f} ms/token"
                else:
                    value = statistics.median(r[1] / r[0] for r in runs)
                    shown = f"{value:.1f} tokens/s"
                base.setdefault(concurrent, value)
                print(f"| {name} | {concurrent} | {shown} ({value / base[concurrent]:.2f}×) | {runs[-1][1]} | "
                      f"{runs[-1][2]}/{len(prompts)} |")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
