"""Batched evaluation answers exactly what one row at a time answers: the serving engine for ONNX (checked against
onnxruntime-genai's own decoding of each row alone), left-padded batches for transformers (the tiny demo teacher,
trained, and its int4 build)."""

from __future__ import annotations

from pathlib import Path

from tasks.data.chat import prompt_ids
from tasks.data.prepare import read_prepared
from tasks.engine.static_batch import OgModel, decode_batch
from tasks.evaluate.batched import engine_answers, hf_answers
from tasks.evaluate.runners import HfRunner, OnnxRunner
from tasks.modeling import load_tokenizer


def one_at_a_time(runner, tokenizer, conversations, max_new_tokens: int) -> list[str]:
    return [tokenizer.decode(runner.generate(prompt_ids(tokenizer, c), max_new_tokens).tokens,
                             skip_special_tokens=True) for c in conversations]


def test_engine_answers_equal_onnxruntime_genai_alone_and_the_runner_s_own(tiny_onnx: Path, tiny_assets: Path) -> None:
    # given: 40 test prompts of varied length (more than the engine's 16 rows at once)
    conversations = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:40]
    tokenizer = load_tokenizer(str(tiny_onnx))
    prompts = [prompt_ids(tokenizer, c) for c in conversations]
    runner = OnnxRunner(str(tiny_onnx), 2)
    # when: the engine answers them all at once (the gate's path)
    batched = engine_answers(runner.engine, prompts, 16, "tiny int4")
    # then: every answer is what onnxruntime-genai's own generator gives the row alone, and what the runner's
    # timed generate gives it, and they are not all alike
    og = OgModel(tiny_onnx, threads=2)
    alone = [tokenizer.decode(decode_batch(og, [p], [16])[0].tokens, skip_special_tokens=True) for p in prompts]
    assert batched == alone
    assert batched == one_at_a_time(runner, tokenizer, conversations, 16)
    assert len(set(batched)) >= 5  # the tiny teacher trains 40 steps: few distinct answers
    timed = runner.generate(prompts[0], 6, min_new_tokens=6)
    assert len(timed.tokens) == 6 and 0 < timed.ttft_s <= timed.total_s, "min_new_tokens holds and times add up"
    runner.close()


def test_hf_batches_answer_what_one_row_answers(tiny_assets: Path) -> None:
    conversations = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:40]
    runner = HfRunner(str(tiny_assets / "teacher"))
    batched = hf_answers(runner.model, runner.tokenizer, conversations, 16, "tiny teacher")
    alone = [a.strip() for a in one_at_a_time(runner, runner.tokenizer, conversations, 16)]
    assert batched == alone
    assert len(set(batched)) >= 2  # the tiny teacher trains 40 steps: few distinct answers


def test_batched_perplexity_equals_row_at_a_time(tiny_onnx: Path, tiny_assets: Path) -> None:
    # given: 40 conversations of varied length, so batches carry right padding
    from tasks.data.chat import render_ids

    conversations = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:40]
    tokenizer = load_tokenizer(str(tiny_onnx))
    examples = [(ids, ids) for ids in (render_ids(tokenizer, c, add_generation_prompt=False) for c in conversations)]
    assert len({len(ids) for ids, _ in examples}) > 3
    for runner in (OnnxRunner(str(tiny_onnx), 2), HfRunner(str(tiny_assets / "teacher"))):
        # when: scored in padded batches and one row at a time
        batched = runner.nll_many(examples)
        alone = [runner.nll(ids, labels) for ids, labels in examples]
        # then: every row's NLL and token count are the same (to float rounding)
        assert [n for _, n in batched] == [n for _, n in alone]
        for (a, _), (b, _) in zip(batched, alone, strict=True):
            assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), (type(runner).__name__, a, b)
