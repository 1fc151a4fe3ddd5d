"""Greedy generation with the chat template, and exact-match accuracy on a prepared split."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from prefect import task

from tasks.caching import digest_cache_key
from tasks.config import RuntimeConfig
from tasks.data.chat import prompt_ids
from tasks.data.prepare import read_prepared
from tasks.evaluate.metrics import exact_match_rate
from tasks.modeling import apply_threads, load_model, load_tokenizer, select_device
from tasks.records import ModelDir


@torch.no_grad()
def generate_answers(model: Any, tokenizer: Any, conversations: Sequence[list[dict[str, str]]],
                     max_new_tokens: int = 32, batch_size: int = 64) -> list[str]:
    """Greedy answers for each conversation (its final assistant turn, if any, is left out)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id
    answers: list[str] = []
    model.eval()
    for start in range(0, len(conversations), batch_size):
        prompts = [prompt_ids(tokenizer, conv) for conv in conversations[start: start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding so every row continues at the same position
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id,
                             eos_token_id=tokenizer.eos_token_id)
        answers += [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return answers


def exact_match(model: Any, tokenizer: Any, split_path: str, max_new_tokens: int = 32,
                limit: int | None = None) -> float:
    """Share of conversations whose greedy answer equals the reference answer (whitespace-trimmed)."""
    conversations = read_prepared(split_path)[:limit]
    answers = generate_answers(model, tokenizer, conversations, max_new_tokens)
    return exact_match_rate(answers, [conv[-1]["content"] for conv in conversations])


def score_exact_match(model: ModelDir, split_path: str, runtime: RuntimeConfig, max_new_tokens: int = 32) -> float:
    """Load ``model`` and return its exact-match accuracy on a prepared split."""
    apply_threads(runtime.threads)
    device = select_device(runtime.device)
    return exact_match(load_model(model.path, device), load_tokenizer(model.path), split_path, max_new_tokens)


score_exact_match_task = task(score_exact_match, name="exact-match", cache_key_fn=digest_cache_key)
