"""The local executor decodes with the serving engine: greedy answers are onnxruntime-genai's own for each record
alone, and a sampled record's answer repeats whatever part it is in (its own seed). On the trained tiny teacher."""

from __future__ import annotations

from pathlib import Path

from tasks.batch.config import GenerationSettings, LocalExecutorConfig
from tasks.batch.executors import Part
from tasks.batch.inputs import parse_input
from tasks.batch.local import LocalExecutor
from tasks.data.chat import prompt_ids
from tasks.data.prepare import read_prepared
from tasks.engine.static_batch import OgModel, decode_batch
from tasks.modeling import load_tokenizer
from tasks.records import ModelRelease


def _part(tiny_onnx: Path, tiny_assets: Path, rows: int) -> tuple[Part, list[list[int]]]:
    import json

    conversations = read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:rows]
    text = "".join(json.dumps({"id": f"r{i}", "messages": c[:-1]}) + "\n" for i, c in enumerate(conversations))
    records = parse_input("test.jsonl", text).records
    tokenizer = load_tokenizer(str(tiny_onnx))
    prompts = [prompt_ids(tokenizer, r.as_messages()) for r in records]
    return Part(0, records, prompts), prompts


def test_greedy_answers_are_onnxruntime_genai_s_for_each_record_alone(tiny_onnx: Path, tiny_assets: Path) -> None:
    part, prompts = _part(tiny_onnx, tiny_assets, 20)
    release = ModelRelease(name="tiny", version="1", onnx_dir=str(tiny_onnx))
    executor = LocalExecutor(release, LocalExecutorConfig(batch_size=6, threads=2),
                             GenerationSettings(max_new_tokens=12))
    finished: list[int] = []
    answers = {a.id: a for a in executor.run(part, finished.append)}
    executor.close()
    assert sum(finished) == 20 and sorted(answers) == sorted(r.id for r in part.records)
    og, tokenizer = OgModel(tiny_onnx, threads=2), load_tokenizer(str(tiny_onnx))
    for record, prompt in zip(part.records, prompts, strict=True):
        [alone] = decode_batch(og, [prompt], [12])
        answer = answers[record.id]
        assert answer.text == tokenizer.decode(alone.tokens, skip_special_tokens=True), record.id
        assert (answer.finish_reason, answer.completion_tokens) == (alone.finish_reason, len(alone.tokens))
        assert answer.prompt_tokens == len(prompt)


def test_a_sampled_record_repeats_its_answer_in_another_part(tiny_onnx: Path, tiny_assets: Path) -> None:
    part, _ = _part(tiny_onnx, tiny_assets, 12)
    release = ModelRelease(name="tiny", version="1", onnx_dir=str(tiny_onnx))
    sampled = GenerationSettings(max_new_tokens=12, temperature=1.5, seed=7)
    executor = LocalExecutor(release, LocalExecutorConfig(batch_size=4, threads=2), sampled)
    whole = {a.id: a.text for a in executor.run(part, lambda _: None)}
    alone = {a.id: a.text for a in executor.run(Part(1, part.records[5:7], part.prompt_ids[5:7]), lambda _: None)}
    executor.close()
    assert alone == {k: whole[k] for k in alone}, "a record's draw does not depend on its company"
    other = LocalExecutor(release, LocalExecutorConfig(batch_size=4, threads=2), sampled.model_copy(update={"seed": 8}))
    assert {a.id: a.text for a in other.run(part, lambda _: None)} != whole, "another seed draws other answers"
    other.close()
