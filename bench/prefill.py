"""Prefill time of the slot decoder with lm_head over each prompt's last position only vs over every position.

The model is bench/decode.py's SmolLM-135M-shaped Llama (random init), int4. The serving runtime's slot decoder
(tasks/engine/slots.py) loads its decoder with ``last_position_logits``: lm_head projects one position per row.
This times ``SlotDecoder.prefill`` for a few shapes (rows × prompt tokens) with that change and without it (the
build's graph as it is: logits of every position, of which the last of each prompt is kept), in alternating runs,
and checks both give the same logits.

    python bench/prefill.py [--threads N] [--repeats 7] [--out .slmops/bench]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

SHAPES = ((1, 16), (1, 128), (1, 512), (16, 16), (4, 128))  # (prompts prefilled together, tokens each)


def prefill_s(decoder, rows: int, tokens: int) -> tuple[float, np.ndarray]:
    """Seconds of one prefill of ``rows`` prompts of ``tokens`` tokens, and the logits of its first prompt."""
    prompts = [list(range(100 + r, 100 + r + tokens)) for r in range(rows)]
    cache = decoder.cache(rows)
    start = time.perf_counter()
    logits = decoder.prefill(cache, 0, prompts)
    return time.perf_counter() - start, logits[0]


def main() -> None:
    from tasks.engine.settings import available_cores

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=available_cores(), help="onnxruntime intra-op threads.")
    parser.add_argument("--repeats", type=int, default=7, help="Alternating runs per shape (default 7).")
    parser.add_argument("--out", type=Path, default=Path(".slmops/bench"), help="Working folder.")
    args = parser.parse_args()

    from decode import make_model, onnx_model

    from infra.serving import slots
    from tasks.engine.slots import SlotDecoder

    onnx = onnx_model(args.out, make_model(args.out), "int4")
    last = SlotDecoder(onnx, args.threads)
    with mock.patch.object(slots, "last_position_logits", return_value=False):
        every = SlotDecoder(onnx, args.threads)
    assert last.last_only and not every.last_only
    print(f"\nSmolLM-135M shape (random init), int4, threads={args.threads}, median of {args.repeats} alternating "
          f"runs\n")
    print("| prompts × tokens | lm_head on every position ms | last position only ms | speed-up | max logit diff |")
    print("|---|---:|---:|---:|---:|")
    for rows, tokens in SHAPES:
        prefill_s(last, rows, tokens), prefill_s(every, rows, tokens)  # first use of the shape
        runs = [(prefill_s(every, rows, tokens), prefill_s(last, rows, tokens)) for _ in range(args.repeats)]
        slow, fast = (statistics.median(r[i][0] for r in runs) for i in (0, 1))
        diff = float(np.abs(runs[0][0][1] - runs[0][1][1]).max())
        print(f"| {rows} × {tokens} | {1000 * slow:.1f} | {1000 * fast:.1f} | {slow / fast:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
