"""Static-batch decoding: a batch of prompts of different lengths decodes exactly like each prompt alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.data.chat import prompt_ids
from tasks.data.prepare import read_prepared
from tasks.engine.sampling import Sampling
from tasks.engine.static_batch import OgModel, decode_batch


@pytest.fixture(scope="module")
def model(tiny_onnx: Path) -> OgModel:
    return OgModel(tiny_onnx, threads=1)


@pytest.fixture(scope="module")
def prompts(tiny_assets: Path, tiny_onnx: Path) -> list[list[int]]:
    from tasks.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_onnx))
    return [prompt_ids(tokenizer, conv) for conv in read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:24]]


def test_a_batch_decodes_like_each_prompt_alone(model: OgModel, prompts: list[list[int]]) -> None:
    assert len({len(p) for p in prompts}) > 3, "prompts of different lengths share the batch"
    alone = [decode_batch(model, [p], [12])[0] for p in prompts]
    together = decode_batch(model, prompts, [12] * len(prompts))
    assert [d.tokens for d in together] == [d.tokens for d in alone]
    assert [d.finish_reason for d in together] == [d.finish_reason for d in alone]
    assert {d.finish_reason for d in alone} <= {"stop", "length"}
    assert all(model.eos_ids.isdisjoint(d.tokens) for d in together), "end-of-sequence is not part of the answer"


def test_each_row_keeps_its_own_budget(model: OgModel, prompts: list[list[int]]) -> None:
    budgets = [1, 3, 12, 0]
    rows = decode_batch(model, prompts[:4], budgets)
    for row, budget in zip(rows, budgets, strict=True):
        assert len(row.tokens) <= budget
        assert row.finish_reason == "stop" or len(row.tokens) == budget
    assert rows[3].tokens == [] and rows[3].finish_reason == "length"


def test_sampling_with_a_seed_repeats(model: OgModel, prompts: list[list[int]]) -> None:
    sampling = Sampling(temperature=1.0, top_p=0.9, seed=7)
    first = decode_batch(model, prompts[:4], [8] * 4, sampling)
    assert [d.tokens for d in decode_batch(model, prompts[:4], [8] * 4, sampling)] == [d.tokens for d in first]
