"""Each request's output state (tasks/engine/output.py): incremental detokenizing, stop strings held back, logprobs
and the events a caller gets, fed token by token as any scheduler feeds them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.engine.engine import load_tokenizer
from tasks.engine.output import Outputs, held_back
from tasks.engine.protocol import Delta, Done, EngineStats, Event, GenerationRequest, Sampling
from tasks.served_folder import ServedFolder


@pytest.fixture(scope="module")
def outputs(random_onnx: Path) -> Outputs:
    return Outputs(load_tokenizer(random_onnx), ServedFolder.read(random_onnx).eos_ids, EngineStats())


def feed(outputs: Outputs, ids: list[int], **request) -> list[Event]:
    """The events of a request whose answer is ``ids`` (then end-of-sequence)."""
    events: list[Event] = []
    row = outputs.open(GenerationRequest([1], request.pop("max_tokens", len(ids) + 1), emit=events.append,
                                         **request))
    for token in [*ids, min(outputs.eos_ids)]:
        if row.done:
            break
        row.add(token, np.zeros(outputs.tokenizer.vocab_size + 8, np.float32))
    return events


def test_incremental_detokenization_emits_what_decoding_the_whole_answer_emits(outputs: Outputs) -> None:
    # given the tokens of an answer with multi-byte characters split across byte-level tokens
    assert outputs.incremental, "the demo tokenizer should take the incremental path"
    text = "Grüße, 世界! naïve café 🙂🚀 — done.  Two  spaces\nand a line"
    ids = outputs.tokenizer(text, add_special_tokens=False)["input_ids"]
    emitted: dict[bool, list[str]] = {}
    for incremental in (True, False):
        outputs.incremental = incremental  # False: the whole answer decoded again after every token
        emitted[incremental] = [e.text for e in feed(outputs, ids) if isinstance(e, Delta)]
    outputs.incremental = True
    # then both paths emit the same pieces, never half a character, adding up to the decoded answer
    assert emitted[True] == emitted[False]
    assert "".join(emitted[True]) == outputs.tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in piece for piece in emitted[True]) and len(emitted[True]) > 10


def test_a_stop_string_ends_the_row_and_what_might_begin_one_is_held_back(outputs: Outputs) -> None:
    ids = outputs.tokenizer("one two STOP three", add_special_tokens=False)["input_ids"]
    events = feed(outputs, ids, stop=["STOP"])
    deltas, done = [e.text for e in events if isinstance(e, Delta)], events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop" and done.text == "one two "
    assert "".join(deltas) == "one two " and not any("S" in d for d in deltas), "no part of the stop was sent"
    assert held_back("two ST", ["STOP"]) == 2 and held_back("two", ["STOP"]) == 0


def test_max_tokens_ends_with_length_and_eos_with_stop_and_the_counters_follow(outputs: Outputs) -> None:
    ids = outputs.tokenizer("a b c d e", add_special_tokens=False)["input_ids"]
    active = outputs.stats.active
    cut = feed(outputs, ids, max_tokens=2)[-1]
    whole = feed(outputs, ids)[-1]
    assert isinstance(cut, Done) and cut.finish_reason == "length" and cut.token_ids == ids[:2]
    assert isinstance(whole, Done) and whole.finish_reason == "stop" and whole.token_ids == ids
    assert outputs.stats.active == active, "every row that ended left the active count"


def test_logprobs_come_with_their_text_and_min_tokens_bans_end_of_sequence(outputs: Outputs) -> None:
    events: list[Event] = []
    row = outputs.open(GenerationRequest([1], 4, Sampling(min_tokens=2), top_logprobs=2, emit=events.append))
    eos = min(outputs.eos_ids)
    assert eos in row.banned()
    scores = np.zeros(outputs.tokenizer.vocab_size, np.float32)
    scores[eos] = 50.0  # end-of-sequence would take all the mass, were it allowed
    token = outputs.tokenizer("x", add_special_tokens=False)["input_ids"][0]
    row.add(token, scores)
    [logprob] = [lp for e in events if isinstance(e, Delta) for lp in e.logprobs]
    assert logprob.token_id == token and len(logprob.top) == 2 and eos not in {t.token_id for t in logprob.top}
    row.add(token, scores)
    assert not row.banned(), "after min_tokens end-of-sequence is allowed again"
    row.abandon()
