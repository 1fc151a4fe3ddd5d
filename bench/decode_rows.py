"""How a decoding step's cost grows with the rows decoded together: the ceiling of concurrent serving.

The model is bench/decode.py's SmolLM-135M-shaped Llama (random init), int4. For 1, 4, 8, 16 and 32 rows (prompts
of ``--prompt-tokens`` tokens, caches already filled) it times ``--steps`` decoding steps of

- the slot decoder the continuous scheduler runs (tasks/engine/slots.py: onnxruntime directly, shared-buffer
  KV cache slots), and
- an onnxruntime-genai static batch of the same rows (what the ``batches`` scheduler runs),

and prints the step time, tokens/s and the speed-up over one row. Aggregate tokens/s with N concurrent clients
cannot exceed the N-row figure (the server adds prefill, HTTP and sampling on the same cores).

    python bench/decode_rows.py [--threads N] [--steps 32] [--repeats 5] [--prompt-tokens 20] [--out .slmops/bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

ROWS = (1, 4, 8, 16, 32)


def slot_steps(decoder, rows: int, prompt: list[int], steps: int) -> float:
    """Seconds per decoding step of ``rows`` rows in the slot decoder (one run, after a warm-up step)."""
    cache = decoder.cache(rows)
    decoder.prefill(cache, 0, [prompt] * rows)
    tokens = np.full(rows, 5)
    decoder.decode(cache, tokens)
    start = time.perf_counter()
    for _ in range(steps):
        decoder.decode(cache, tokens)
    return (time.perf_counter() - start) / steps


def genai_steps(model, rows: int, prompt: list[int], steps: int) -> float:
    """Seconds per decoding step of an onnxruntime-genai static batch of ``rows`` rows (one run)."""
    from tasks.engine.sampling import Sampling
    from tasks.engine.static_batch import start_batch

    generator = start_batch(model, [prompt] * rows, steps + 3, Sampling(min_tokens=steps + 3))
    generator.generate_next_token()  # the prefill
    generator.generate_next_token()
    start = time.perf_counter()
    for _ in range(steps):
        generator.generate_next_token()
        generator.get_next_tokens()
    return (time.perf_counter() - start) / steps


def main() -> None:
    from tasks.engine.settings import available_cores
    from tasks.engine.static_batch import OgModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=available_cores(), help="onnxruntime intra-op threads.")
    parser.add_argument("--steps", type=int, default=32, help="Timed decoding steps per run (default 32).")
    parser.add_argument("--repeats", type=int, default=5, help="Alternating runs per row count (default 5).")
    parser.add_argument("--prompt-tokens", type=int, default=20, help="Tokens in each row's prompt (default 20).")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"), help="Working folder.")
    args = parser.parse_args()

    from decode import make_model, onnx_model

    from tasks.engine.slots import SlotDecoder

    onnx = onnx_model(args.out, make_model(args.out), "int4")
    prompt = list(range(100, 100 + args.prompt_tokens))
    decoder, model = SlotDecoder(onnx, args.threads), OgModel(onnx, args.threads)
    results = {}
    for rows in ROWS:  # the two runtimes alternate, so a noisy moment costs both alike
        runs = [(slot_steps(decoder, rows, prompt, args.steps), genai_steps(model, rows, prompt, args.steps))
                for _ in range(args.repeats)]
        results[rows] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
    one_slot, one_genai = results[1]
    print(f"\nSmolLM-135M shape (random init), int4, threads={args.threads}, prompts of {args.prompt_tokens} "
          f"tokens, median of {args.repeats} alternating runs of {args.steps} steps\n")
    print("| rows | slot decoder step ms | tokens/s | vs 1 row | onnxruntime-genai batch step ms | tokens/s "
          "| vs 1 row |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for rows, (slot, genai) in results.items():
        print(f"| {rows} | {1000 * slot:.1f} | {rows / slot:.0f} | {one_slot * rows / slot:.2f}x | "
              f"{1000 * genai:.1f} | {rows / genai:.0f} | {one_genai * rows / genai:.2f}x |")


if __name__ == "__main__":
    main()
