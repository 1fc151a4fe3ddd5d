"""Batched evaluation answers exactly what one row at a time answers: the serving engine for ONNX, left-padded
batches for transformers (the tiny demo teacher, trained, and its int4 build)."""

from __future__ import annotations

from pathlib import Path

from tasks.data.chat import prompt_ids
from tasks.data.prepare import read_prepared
from tasks.evaluate.batched import engine_answers, hf_answers
from tasks.evaluate.runners import HfRunner, OnnxRunner
from tasks.modeling import load_tokenizer


def one_at_a_time(runner, tokenizer, conversations, max_new_tokens: int) -> list[str]:
    return [tokenizer.decode(runner.generate(prompt_ids(tokenizer, c), max_new_tokens).tokens,
                             skip_special_tokens=True) for c in conversations]


def test_engine_answers_equal_row_at_a_time_answers(tiny_onnx: Path, tiny_assets: Path) -> None:
    # given: 40 test prompts of varied length (more than one engine batch of 16)
    conversations = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:40]
    tokenizer = load_tokenizer(str(tiny_onnx))
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    # when: the engine answers them all at once
    batched = engine_answers(tiny_onnx, prompts, 16, 2, "tiny int4")
    # then: every answer is the one the row gets alone, and they are not all alike
    assert batched == one_at_a_time(OnnxRunner(str(tiny_onnx), 2), tokenizer, conversations, 16)
    assert len(set(batched)) >= 5  # the tiny teacher trains 40 steps: few distinct answers


def test_hf_batches_answer_what_one_row_answers(tiny_assets: Path) -> None:
    conversations = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:40]
    runner = HfRunner(str(tiny_assets / "teacher"))
    batched = hf_answers(runner.model, runner.tokenizer, conversations, 16, "tiny teacher")
    alone = [a.strip() for a in one_at_a_time(runner, runner.tokenizer, conversations, 16)]
    assert batched == alone
    assert len(set(batched)) >= 2  # the tiny teacher trains 40 steps: few distinct answers
