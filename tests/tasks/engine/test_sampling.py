"""Sampling: banned tokens, top-p, log-probabilities and per-request generators."""

from __future__ import annotations

import numpy as np

from tasks.engine.sampling import Sampling, log_softmax, nucleus, pick, top_k


def test_pick_never_draws_a_banned_token_and_keeps_to_the_top_p_mass() -> None:
    rng = np.random.default_rng(0)
    scores = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    assert pick(scores, Sampling(), rng) == 0
    assert pick(scores, Sampling(), rng, banned={0}) == 1
    drawn = {pick(scores, Sampling(temperature=1.0, top_p=0.75), rng) for _ in range(300)}
    assert drawn == {0, 1}, "0.5 + 0.3 covers 0.75: only the first two can be drawn"
    drawn = {pick(scores, Sampling(temperature=1.0), rng, banned={1}) for _ in range(300)}
    assert drawn == {0, 2, 3}


def test_nucleus_is_the_set_a_full_sort_gives() -> None:
    rng = np.random.default_rng(1)
    for _ in range(60):  # peaked to flat distributions over 5000 tokens, small to large top_p
        probs = rng.dirichlet(np.full(5000, rng.choice([0.01, 0.1, 1.0])))
        top_p = float(rng.uniform(0.05, 0.999))
        order = np.argsort(-probs, kind="stable")
        expected = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
        assert sorted(nucleus(probs, top_p)) == sorted(expected)


def test_log_softmax_gives_banned_tokens_no_mass_and_top_k_orders_ties_by_id() -> None:
    scores = np.array([1.0, 3.0, 3.0, 0.5], np.float32)
    logprobs = log_softmax(scores, banned=[1])
    assert logprobs[1] == -np.inf
    assert np.isclose(np.exp(logprobs).sum(), 1.0)
    assert list(top_k(log_softmax(scores), 3)) == [1, 2, 0]
    assert list(top_k(log_softmax(scores), 0)) == []


def test_a_seeded_request_draws_the_same_stream_and_an_unseeded_one_does_not() -> None:
    seeded = Sampling(temperature=1.0, seed=2**70 + 5)  # any int: reduced modulo 2**64
    draws = [seeded.generator().integers(1 << 30, size=4).tolist() for _ in range(2)]
    assert draws[0] == draws[1]
    fresh = Sampling(temperature=1.0)
    assert fresh.generator().integers(1 << 62) != fresh.generator().integers(1 << 62)
