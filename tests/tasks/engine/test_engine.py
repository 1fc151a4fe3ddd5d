"""The engine in-process, under both schedulers: batch planning, padding, per-row budgets, logprobs, cancellation.

int8 steps are off here: these tests compare answers token for token across batch compositions, which int8 steps
(one activation scale per step) do not promise; tests/infra/serving/test_int8_rows.py covers them."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tasks.data.chat import render_ids
from tasks.engine.engine import Engine, EngineConfig
from tasks.engine.protocol import Delta, Done, Event, GenerationRequest, Sampling
from tasks.engine.static_batch import plan_batches


def run(engine: Engine, requests: list[GenerationRequest], cancel_after: dict[int, int] | None = None
        ) -> list[list[Event]]:
    """Submit ``requests`` together and collect their events; request i is cancelled after cancel_after[i] deltas."""
    events: list[list[Event]] = [[] for _ in requests]
    finished = [threading.Event() for _ in requests]
    for i, request in enumerate(requests):
        def emit(event: Event, i: int = i) -> None:
            events[i].append(event)
            deltas = sum(isinstance(e, Delta) for e in events[i])
            if cancel_after and deltas == cancel_after.get(i):
                engine.cancel(requests[i])  # from the engine's own thread: deterministic
                finished[i].set()
            if not isinstance(event, Delta):
                finished[i].set()
        request.emit = emit
        engine.submit(request)
    for flag in finished:
        assert flag.wait(120), "a request never finished"
    return events


def prompt(engine: Engine, text: str) -> list[int]:
    return render_ids(engine.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)


def test_plan_batches_keeps_every_batch_inside_the_window() -> None:
    # given requests that each fit a 128-token window alone: long prompts with small budgets, short with large
    shapes = [(110, 18), (10, 118), (64, 64), (120, 8), (5, 100), (100, 28), (30, 90), (90, 30)]
    greedy, sampled = Sampling(), Sampling(temperature=0.7, seed=3)
    requests = [GenerationRequest([1] * n, budget, greedy if i % 3 else sampled) for i, (n, budget) in
                enumerate(shapes)]
    # when they are planned together
    batches = plan_batches(requests, context_length=128, max_batch_size=3)
    # then every request runs exactly once, in arrival order, in a batch that fits and shares sampling settings
    assert sorted(id(r) for b in batches for r in b) == sorted(id(r) for r in requests)
    for batch in batches:
        assert len(batch) <= 3 and len({r.sampling for r in batch}) == 1
        assert max(len(r.prompt_ids) for r in batch) + max(r.max_tokens for r in batch) <= 128
        assert [requests.index(r) for r in batch] == sorted(requests.index(r) for r in batch)
    assert len(batches) < len(requests), "requests that fit together share a batch"


@pytest.fixture(scope="module")
def odd_pad_model(tiny_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model whose tokenizer pads with <|im_end|>, while genai_config.json's pad_token_id stays 0."""
    folder = tmp_path_factory.mktemp("oddpad") / "model"
    shutil.copytree(tiny_onnx, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "pad_token": "<|im_end|>"}))
    return folder


SCHEDULERS = pytest.mark.parametrize("scheduler", ["continuous", "batches"])


@SCHEDULERS
def test_a_row_answers_alike_alone_and_in_a_batch(odd_pad_model: Path, scheduler: str) -> None:
    # given a model whose tokenizer's pad token (2) is not the model's pad_token_id (0), and prompts of 3 lengths
    engine = Engine(odd_pad_model, EngineConfig(int8_steps="off", batch_window_ms=500, scheduler=scheduler))
    assert engine.scheduler == scheduler
    assert engine.tokenizer.pad_token_id != engine.folder.pad_id == 0
    prompts = [prompt(engine, text) for text in ("Upper: x", "Reverse: a b c d e f g h i j", "Reverse: a b c d e")]
    assert len({len(p) for p in prompts}) == 3

    def request(ids: list[int]) -> GenerationRequest:  # min_tokens: every row decodes 10 tokens
        return GenerationRequest(ids, 10, Sampling(min_tokens=10))

    # when each runs alone, then all three run as one padded batch
    alone = [run(engine, [request(p)])[0][-1] for p in prompts]
    sizes: list[int] = []
    engine.on_batch = sizes.append
    together = [events[-1] for events in run(engine, [request(p) for p in prompts])]
    engine.close()
    # then padding (or rows of different lengths sharing steps) changed nothing: same tokens, same text
    assert sizes == [3] if scheduler == "batches" else max(sizes) == 3
    assert [d.text for d in together] == [d.text for d in alone]
    assert all(isinstance(d, Done) and d.completion_tokens == 10 for d in together)


@SCHEDULERS
def test_rows_stop_at_their_own_budget_and_a_cancelled_row_stops(random_onnx: Path, scheduler: str) -> None:
    engine = Engine(random_onnx, EngineConfig(int8_steps="off", batch_window_ms=500, scheduler=scheduler))
    ids = prompt(engine, "a b c")
    budgets = [3, 40, 40]
    requests = [GenerationRequest(ids, n) for n in budgets]
    # when the third is cancelled after 5 deltas
    events = run(engine, requests, cancel_after={2: 5})
    engine.close()
    done = [e[-1] for e in events[:2]]
    # then the first stopped at 3 tokens, the second ran to 40, the third stopped without an answer
    assert all(isinstance(d, Done) for d in done)
    assert [d.completion_tokens for d in done] == [3, 40] and done[0].finish_reason == "length"
    assert not any(isinstance(e, Done) for e in events[2]) and sum(isinstance(e, Delta) for e in events[2]) == 5
    assert engine.stats.cancelled == 1 and engine.stats.active == 0
    assert engine.stats.tokens < 3 + 40 + 40, "the cancelled row stopped decoding"


@SCHEDULERS
def test_logprobs_are_the_models_log_softmax(random_onnx: Path, scheduler: str) -> None:
    import onnxruntime_genai as og

    engine = Engine(random_onnx, EngineConfig(int8_steps="off", scheduler=scheduler))
    ids = prompt(engine, "Reverse: a b c")
    events = run(engine, [GenerationRequest(ids, 6, top_logprobs=3),
                          GenerationRequest(ids, 6, Sampling(min_tokens=6), top_logprobs=20)])
    engine.close()
    tokens = [t for e in events[0] if isinstance(e, Delta) for t in e.logprobs]
    assert len(tokens) == 6
    # independently: one forward pass over prompt + answer, log-softmax at each answer position
    model = og.Model(str(random_onnx))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 8)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([ids + [t.token_id for t in tokens]], dtype=np.int32))
    logits = np.asarray(generator.get_output("logits"))[0].astype(np.float64)
    for i, token in enumerate(tokens):
        row = logits[len(ids) - 1 + i]
        expected = row - row.max() - np.log(np.exp(row - row.max()).sum())
        assert token.logprob == pytest.approx(expected[token.token_id], abs=1e-4)
        assert [t.token_id for t in token.top] == list(np.argsort(-expected, kind="stable")[:3])
        assert token.top[0].token_id == token.token_id  # greedy picks the most likely token
        assert token.bytes == list(engine.tokenizer.decode([token.token_id]).encode())
    # while min_tokens holds end-of-sequence back, it has no probability: the rest share all of it
    held = [t for e in events[1] if isinstance(e, Delta) for t in e.logprobs]
    assert [t.token_id for t in held] == [t.token_id for t in tokens]
    for i, token in enumerate(held):
        row = np.delete(logits[len(ids) - 1 + i], sorted(engine.folder.eos_ids))
        token_index = token.token_id - sum(e < token.token_id for e in engine.folder.eos_ids)
        assert token.logprob == pytest.approx(row[token_index] - row.max() - np.log(np.exp(row - row.max()).sum()),
                                              abs=1e-4)
        assert not {a.token_id for a in token.top} & set(engine.folder.eos_ids)


@SCHEDULERS
def test_a_request_arriving_mid_batch_finishes_before_the_running_batch_ends(random_onnx: Path, scheduler: str
                                                                            ) -> None:
    # given a long request (110 tokens) already decoding
    engine = Engine(random_onnx, EngineConfig(int8_steps="off", batch_window_ms=0, scheduler=scheduler))
    sizes: list[int] = []
    engine.on_batch = sizes.append
    ids = prompt(engine, "a b c")
    long_done, short_done, order = threading.Event(), threading.Event(), []
    long_deltas: list[int] = []

    def on_long(event: Event) -> None:
        if isinstance(event, Delta):
            long_deltas.append(1)
            if len(long_deltas) == 10:  # mid-batch: submit the short request from the engine's own thread
                engine.submit(GenerationRequest(ids, 5, Sampling(min_tokens=5), emit=on_short))
        else:
            order.append("long")
            long_done.set()

    def on_short(event: Event) -> None:
        if not isinstance(event, Delta):
            order.append(("short", len(long_deltas)))
            short_done.set()

    engine.submit(GenerationRequest(ids, 110, Sampling(min_tokens=110), emit=on_long))
    assert long_done.wait(120) and short_done.wait(120)
    engine.close()
    # then the short one started at once and ended long before the long one (it did not wait): batches runs it
    # in a batch of its own beside the long one, continuous adds it to the long one's batch (steps of two rows)
    assert order[0][0] == "short" and order[0][1] < 30, order
    assert engine.stats.active == 0
    if scheduler == "batches":
        assert engine.stats.batches == 2 and set(sizes) == {1}
    else:
        assert engine.stats.batches == 1 and sizes.count(2) >= 4 and max(sizes) == 2


def test_interleaved_batches_give_the_same_greedy_answers_as_one_batch_at_a_time(random_onnx: Path) -> None:
    prompts = ["a b c", "Reverse: x y", "Uppercase: q"]
    answers = {}
    for running in (1, 4):
        engine = Engine(random_onnx, EngineConfig(int8_steps="off", batch_window_ms=0, max_batch_size=1,
                                                  max_running_batches=running,
                                                  scheduler="batches"))
        requests = [GenerationRequest(prompt(engine, p), 12 + 4 * i) for i, p in enumerate(prompts)]
        answers[running] = [(e[-1].text, e[-1].completion_tokens) for e in run(engine, requests)]
        engine.close()
    assert answers[4] == answers[1]


def test_a_request_that_cannot_fit_the_window_is_refused_before_it_is_queued(random_onnx: Path) -> None:
    engine = Engine(random_onnx, EngineConfig(int8_steps="off"))
    try:
        ids = prompt(engine, "a b c")
        too_long = GenerationRequest(ids, engine.context_length - len(ids) + 1)
        with pytest.raises(ValueError, match="does not fit the context window of 128 tokens"):
            engine.submit(too_long)
        with pytest.raises(ValueError, match="does not fit"):
            list(engine.run([GenerationRequest(ids, 4), too_long]))
        assert engine.queue_depth() == 0, "nothing of a refused set was queued"
        [(_, done)] = list(engine.run([GenerationRequest(ids, engine.context_length - len(ids))]))
        assert isinstance(done, Done) and done.completion_tokens >= 1
    finally:
        engine.close()
