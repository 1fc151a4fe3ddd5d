"""Olive user script: registers our prepared chat JSONL as a calibration dataset (no hub datasets).

Olive imports this file by path (``user_script`` in the workflow config written by ``tasks.quantize.olive``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from olive.data.registry import Registry


class _Calibration(torch.utils.data.Dataset):
    def __init__(self, rows: list[list[int]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids = torch.tensor(self.rows[i], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids


@Registry.register_dataset()
def slmops_chat_jsonl(data_files: str, model_path: str, max_samples: int = 64, max_length: int = 256,
                      text: str | None = None, text_samples: int = 0, **_: object) -> _Calibration:
    """Whole conversations of a prepared split, rendered with the model's chat template and tokenized; with
    ``text``, ``text_samples`` of the ``max_samples`` rows are windows of that general text instead (interleaved)."""
    from transformers import AutoTokenizer

    from tasks.data.chat import render_ids
    from tasks.quantize.calibration_text import text_rows

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    general = text_rows(tokenizer, text, text_samples, max_length) if text and text_samples else []
    lines = [line for line in Path(data_files).read_text().splitlines() if line.strip()][:max_samples - len(general)]
    rows = []
    for number, line in enumerate(lines, start=1):
        ids = render_ids(tokenizer, json.loads(line)["messages"], add_generation_prompt=False)
        if len(ids) > max_length:  # never cut silently: a cut row would calibrate on text the model never sees
            raise ValueError(f"{data_files}:{number}: {len(ids)} tokens > data.max_length {max_length}")
        rows.append(ids)
    return _Calibration(interleave(rows, general))


def interleave(first: list[list[int]], second: list[list[int]]) -> list[list[int]]:
    """Rows of both lists alternating while both last, then the rest of the longer one."""
    mixed = [row for pair in zip(first, second, strict=False) for row in pair]
    shorter = min(len(first), len(second))
    return mixed + first[shorter:] + second[shorter:]
