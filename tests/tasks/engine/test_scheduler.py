"""Continuous batching: rows joining and leaving a running batch answer as onnxruntime-genai answers them alone."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from tasks.data.chat import render_ids
from tasks.engine.engine import Engine, EngineConfig
from tasks.engine.protocol import Delta, Done, Event, GenerationRequest, Sampling
from tasks.engine.slots import SlotsUnsupported, check_slots
from tasks.engine.static_batch import OgModel, decode_batch
from tasks.served_folder import ServedFolder

QUESTIONS = ["a b c", "Reverse: x y z w", "Uppercase: q", "Sort the letters: d c b a e", "Add 2 and 3", "Hi",
             "Reverse: m n o p q r s t"]
BUDGETS = [30, 7, 18, 12, 25, 9, 16]


def staggered(engine: Engine, requests: list[GenerationRequest], join_after: int = 3) -> list[list[Event]]:
    """Submit ``requests[0]``, then each next one once the previous one has decoded ``join_after`` tokens (from the
    engine's own thread, so it arrives mid-batch); the events of each."""
    events: list[list[Event]] = [[] for _ in requests]
    finished = [threading.Event() for _ in requests]
    counts, sent = [0] * len(requests), {0}
    for i, request in enumerate(requests):
        def emit(event: Event, i: int = i) -> None:
            events[i].append(event)
            if isinstance(event, Delta):
                counts[i] += len(event.logprobs)
            ready = counts[i] >= join_after or not isinstance(event, Delta)
            if ready and i + 1 < len(requests) and i + 1 not in sent:
                sent.add(i + 1)
                engine.submit(requests[i + 1])
            if not isinstance(event, Delta):
                finished[i].set()
        request.emit = emit
    engine.submit(requests[0])
    for flag in finished:
        assert flag.wait(120), "a request never finished"
    return events


def tokens(events: list[Event]) -> list[int]:
    """The answer's token ids, from its logprobs."""
    return [t.token_id for e in events if isinstance(e, Delta) for t in e.logprobs]


@pytest.mark.parametrize("fixture", ["tiny_onnx", "slow_onnx"])
def test_rows_joining_and_leaving_a_running_batch_answer_as_onnxruntime_genai_alone(fixture: str,
                                                                                   request: pytest.FixtureRequest
                                                                                   ) -> None:
    # given 7 greedy requests of different lengths, each arriving while the ones before it decode, 3 slots at most
    folder = request.getfixturevalue(fixture)
    engine = Engine(folder, EngineConfig(scheduler="continuous", max_batch_size=3, int8_steps="off"))
    sizes: list[int] = []
    engine.on_batch = sizes.append
    prompts = [render_ids(engine.tokenizer, [{"role": "user", "content": q}], True) for q in QUESTIONS]
    requests = [GenerationRequest(p, n, top_logprobs=0) for p, n in zip(prompts, BUDGETS, strict=True)]
    events = staggered(engine, requests)
    engine.close()
    # when onnxruntime-genai answers each alone
    model = OgModel(folder, threads=2)
    alone = [decode_batch(model, [p], [n])[0] for p, n in zip(prompts, BUDGETS, strict=True)]
    # then every row got the same tokens and finish reason, though rows joined, waited for a slot and left midway
    assert [tokens(e) for e in events] == [row.tokens for row in alone]
    assert [e[-1].finish_reason for e in events] == [row.finish_reason for row in alone]
    assert all(isinstance(e[-1], Done) for e in events)
    assert max(sizes) == 3 and {1, 2, 3} <= set(sizes), sizes
    assert engine.stats.active == 0 and engine.queue_depth() == 0


def test_prompts_prefilled_together_get_the_logits_and_cache_of_each_prefilled_alone(tiny_onnx: Path) -> None:
    from tasks.engine.slots import SlotDecoder

    decoder = SlotDecoder(tiny_onnx, 2)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    together, alone = decoder.cache(3), decoder.cache(3)
    logits = decoder.prefill(together, 0, prompts)
    for i, prompt in enumerate(prompts):
        np.testing.assert_allclose(logits[i], decoder.prefill(alone, i, [prompt])[0], atol=1e-4)
    assert together.lengths.tolist() == alone.lengths.tolist() == [7, 2, 4]
    for layer in range(decoder.layout.layers):
        np.testing.assert_allclose(together.keys[layer], alone.keys[layer], atol=1e-4)
        np.testing.assert_allclose(together.values[layer], alone.values[layer], atol=1e-4)
    # and the next step decodes the three rows of different lengths as their own
    np.testing.assert_allclose(decoder.decode(together, np.array([1, 2, 3])),
                               decoder.decode(alone, np.array([1, 2, 3])), atol=1e-4)


def test_rows_of_different_adapters_in_one_step_each_answer_with_their_own(multi_lora: dict[str, Path]) -> None:
    from tasks.engine.slots import SlotDecoder
    from tasks.served_folder import ServedFolder

    # given the multi-LoRA folder: alpha (r=8 on q/v/o/down) and beta (r=4 on q/v)
    decoder = SlotDecoder(multi_lora["served"], 2, ServedFolder.read(multi_lora["served"]).adapters)
    rows = ["beta", None, "alpha", "beta", "alpha"]
    prompts = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14, 15, 16, 17, 18], [19]]
    # when the five rows are prefilled and decoded together, and each row alone
    mixed = decoder.cache(5)
    first = decoder.prefill(mixed, 0, prompts, rows)
    steps = [decoder.decode(mixed, np.arange(5) + 20 + i, rows).copy() for i in range(3)]
    for i, (prompt, adapter) in enumerate(zip(prompts, rows, strict=True)):
        alone = decoder.cache(1)
        np.testing.assert_allclose(first[i], decoder.prefill(alone, 0, [prompt], [adapter])[0], atol=1e-4)
        for k, step in enumerate(steps):
            np.testing.assert_allclose(step[i], decoder.decode(alone, np.array([i + 20 + k]), [adapter])[0],
                                       atol=1e-4)
    # then each row matched its own adapter alone, and the adapters change the answer
    for adapter in (None, "alpha"):
        other = decoder.prefill(decoder.cache(1), 0, [prompts[0]], [adapter])[0]
        assert not np.allclose(first[0], other, atol=1e-3), f"beta's row answers like {adapter or 'the base'}"


def test_seeded_sampling_repeats_in_any_company_and_a_tiny_top_p_is_greedy(random_onnx: Path) -> None:
    engine = Engine(random_onnx, EngineConfig(scheduler="continuous", int8_steps="off"))
    ids = render_ids(engine.tokenizer, [{"role": "user", "content": "Reverse: a b c"}], True)

    def answers(*samplings: Sampling) -> list[list[int]]:
        return [tokens(e) for e in staggered(engine, [GenerationRequest(ids, 20, s, top_logprobs=0)
                                                      for s in samplings], join_after=2)]

    seeded = Sampling(temperature=1.0, seed=7, min_tokens=20)
    alone = answers(seeded)[0]
    crowded = answers(Sampling(temperature=1.0, seed=8, min_tokens=20), seeded, Sampling(min_tokens=20))
    greedy = answers(Sampling(min_tokens=20), Sampling(temperature=1.0, top_p=1e-9, seed=1, min_tokens=20))
    negative = answers(*[Sampling(temperature=1.0, seed=-3, min_tokens=20)] * 2)
    engine.close()
    assert len(negative[0]) == 20 and negative[1] == negative[0], "any int64 seed is a seed"
    assert crowded[1] == alone, "the same seed draws the same answer whatever rows share its steps"
    assert crowded[0] != alone, "another seed draws another answer"
    assert greedy[1] == greedy[0] and crowded[2] == greedy[0]


def test_a_decoder_without_group_query_attention_is_refused_by_name(random_onnx: Path, tmp_path: Path) -> None:
    import onnx

    # given the model with its attention renamed to an op the slot decoder cannot drive row by row
    folder = tmp_path / "model"
    shutil.copytree(random_onnx, folder)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention":
            node.op_type = "MultiHeadAttention"
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(SlotsUnsupported, match="no GroupQueryAttention"):
        check_slots(ServedFolder.read(folder).decoder)
    # then asking for the continuous scheduler fails with the reason, before any request
    with pytest.raises(ValueError, match="scheduler 'continuous' cannot serve .*no GroupQueryAttention"):
        Engine(folder, EngineConfig(scheduler="continuous"))


def test_a_prefill_projects_only_each_prompts_last_position_yet_gets_the_unchanged_decoders_logits(
        tiny_onnx: Path) -> None:
    import onnxruntime as ort

    from tasks.engine.slots import LAST_INPUT, SlotDecoder

    # given the slot decoder (lm_head fed one position per row) and the build's own decoder, unchanged
    decoder = SlotDecoder(tiny_onnx, 2)
    assert decoder.last_only and LAST_INPUT in {i.name for i in decoder.session.get_inputs()}
    layout = decoder.layout
    prompts = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    ids = np.zeros((3, 7), decoder.id_type)
    mask = np.zeros((3, 7), decoder.mask_type)
    for i, prompt in enumerate(prompts):
        ids[i, : len(prompt)], mask[i, : len(prompt)] = prompt, 1
    feeds = {layout.names["input_ids"]: ids, layout.names["attention_mask"]: mask}
    if decoder.positions:
        feeds[layout.names["position_ids"]] = np.broadcast_to(np.arange(7, dtype=decoder.id_type), ids.shape)
    empty = np.zeros((3, layout.kv_heads, 0, layout.head_size), decoder.cache_type)
    for layer in range(layout.layers):
        feeds |= dict.fromkeys(layout.past(layer), empty)
    full = ort.InferenceSession(str(layout.file), providers=["CPUExecutionProvider"]).run(
        [layout.names["logits"]], feeds)[0]
    # when the three prompts are prefilled together
    logits = decoder.prefill(decoder.cache(3), 0, prompts)
    # then each gets the unchanged decoder's logits at its own last position (of 7 computed there)
    assert full.shape[:2] == (3, 7)
    for i, prompt in enumerate(prompts):
        np.testing.assert_allclose(logits[i], full[i, len(prompt) - 1], atol=1e-5)


def test_last_position_logits_gathers_the_named_rows_and_leaves_a_graph_without_an_lm_head_matmul_alone() -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tasks.engine.slots import LAST_INPUT, last_position_logits

    def graph(last: str) -> onnx.ModelProto:
        nodes = [helper.make_node("MatMul", ["hidden", "w"], ["projected"]),
                 helper.make_node(last, ["projected"], ["logits"], **({"to": TensorProto.FLOAT} if last == "Cast"
                                                                      else {}))]
        w = helper.make_tensor("w", TensorProto.FLOAT, [4, 6], np.arange(24, dtype=np.float32).tolist())
        return helper.make_model(helper.make_graph(
            nodes, "head", [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["b", "s", 4])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", 6])], [w]),
            opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    hidden = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    full = hidden @ np.arange(24, dtype=np.float32).reshape(4, 6)
    # given an lm_head MatMul whose output is cast to the logits: row 0 wants position 1, row 1 position 2
    model = graph("Cast")
    assert last_position_logits(model, "logits")
    run = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run
    out = run(["logits"], {"hidden": hidden, LAST_INPUT: np.array([0 * 3 + 1, 1 * 3 + 2])})[0]
    np.testing.assert_allclose(out, full[[0, 1], [1, 2]][:, None], rtol=1e-5)
    # and a graph whose logits come from something else than a MatMul (or a Cast of one) is left as it was
    other = graph("Relu")
    before = other.SerializeToString()
    assert not last_position_logits(other, "logits")
    assert other.SerializeToString() == before
