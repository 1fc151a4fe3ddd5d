"""Drift against the training prompts' profile: an unshifted input passes, a shifted one is flagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.batch.config import DriftConfig
from tasks.batch.drift import DriftFailed, compare, enforce, psi
from tasks.batch.profile import Profile, profile_prompts, profile_training_prompts
from tasks.data.prepare import read_prepared


@pytest.fixture(scope="module")
def reference(tiny_assets: Path) -> Profile:
    return profile_training_prompts(str(tiny_assets / "teacher"), str(tiny_assets / "data" / "train.jsonl"))


@pytest.fixture(scope="module")
def tokenizer(tiny_assets: Path):
    from tasks.modeling import load_tokenizer

    return load_tokenizer(str(tiny_assets / "teacher"))


def _longer(conversations: list, times: int) -> list:
    return [[{**m, "content": " ".join([m["content"]] * times)} if m["role"] == "user" else m for m in conv]
            for conv in conversations]


def test_reference_profile_holds_every_feature(reference: Profile) -> None:
    assert reference.rows == 1880
    assert set(reference.features) == {"prompt_tokens", "prompt_chars", "chars_per_token", "rare_token_share", "roles"}
    tokens = reference.features["prompt_tokens"]
    assert tokens.kind == "numeric" and sum(tokens.shares) == pytest.approx(1)
    assert len(tokens.shares) == len(tokens.edges) + 1 == len(tokens.bins)
    assert set(reference.features["roles"].bins) == {"user", "system>user", "(other)"}
    assert reference.features["rare_token_share"].summary["max"] == 0.0, "ASCII data has no byte fallbacks"
    Profile.model_validate_json(reference.model_dump_json())  # what the registry stores round-trips


def test_the_same_distribution_passes(reference: Profile, tokenizer, tiny_assets: Path) -> None:
    test_split = read_prepared(str(tiny_assets / "data" / "test.jsonl"))
    report = compare(profile_prompts(tokenizer, test_split, bins_from=reference), reference, DriftConfig())
    assert report.status == "ok", report
    assert all(f.psi < 0.1 for f in report.features)
    enforce(report, "test.jsonl")


def test_prompts_ten_times_longer_fail_on_length_features(reference: Profile, tokenizer, tiny_assets: Path) -> None:
    shifted = _longer(read_prepared(str(tiny_assets / "data" / "test.jsonl")), 10)
    report = compare(profile_prompts(tokenizer, shifted, bins_from=reference), reference, DriftConfig())
    by_name = {f.feature: f for f in report.features}
    assert report.status == "fail"
    assert by_name["prompt_tokens"].status == by_name["prompt_chars"].status == "fail"
    assert by_name["prompt_tokens"].psi > 1 and by_name["roles"].status == "ok"
    assert by_name["prompt_tokens"].current["mean"] > 4 * by_name["prompt_tokens"].reference["mean"]
    with pytest.raises(DriftFailed, match=r"prompt_tokens PSI \d"):
        enforce(report, "shifted.jsonl")
    # thresholds are the user's: fail: null only warns
    assert compare(profile_prompts(tokenizer, shifted, bins_from=reference), reference,
                   DriftConfig(fail=None)).status == "warn"


def test_unseen_characters_raise_the_byte_fallback_share(reference: Profile, tokenizer, tiny_assets: Path) -> None:
    rows = read_prepared(str(tiny_assets / "data" / "test.jsonl"))
    foreign = [[{**m, "content": m["content"] + " 日本語"} if m["role"] == "user" else m for m in conv]
               for conv in rows]
    report = compare(profile_prompts(tokenizer, foreign, bins_from=reference), reference, DriftConfig())
    rare = next(f for f in report.features if f.feature == "rare_token_share")
    assert rare.status == "fail" and rare.current["mean"] > 0


def test_small_inputs_are_reported_not_judged(reference: Profile, tokenizer, tiny_assets: Path) -> None:
    few = _longer(read_prepared(str(tiny_assets / "data" / "test.jsonl"))[:10], 10)
    report = compare(profile_prompts(tokenizer, few, bins_from=reference), reference, DriftConfig(min_rows=50))
    assert report.status == "not judged" and "10 rows < drift.min_rows 50" in report.note
    assert max(f.psi for f in report.features) > 0.25
    enforce(report, "few.jsonl")


def test_psi_of_known_distributions() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5], 1000, 1000) == pytest.approx(0)
    # a hand-computed value: (0.8-0.5)ln(0.8/0.5) + (0.2-0.5)ln(0.2/0.5), smoothing negligible at 10^6 rows
    assert psi([0.8, 0.2], [0.5, 0.5], 10**6, 10**6) == pytest.approx(0.3 * 0.470004 + 0.3 * 0.916291, rel=1e-4)
