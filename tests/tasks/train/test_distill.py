"""Distillation on tiny demo models: logit KD lowers validation loss; sequence-level when tokenizers differ."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.config import DataConfig, DistillConfig, RuntimeConfig
from tasks.data.prepare import prepare_data
from tasks.errors import ConfigError, TrainingError
from tasks.inputs import describe_model
from tasks.records import PreparedData
from tasks.train.distill import distill


@pytest.fixture(scope="module")
def data(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> PreparedData:
    d = tiny_assets / "data"
    return prepare_data(DataConfig(train=str(d / "train.jsonl"), validation=str(d / "validation.jsonl")),
                        tmp_path_factory.mktemp("data"))


def _cfg(tiny_assets: Path, student: str, **kw) -> DistillConfig:
    base = dict(teacher=str(tiny_assets / "teacher"), student=str(tiny_assets / student), steps=30,
                batch_size=16, learning_rate=5e-3, warmup_steps=3, eval_every=15)
    return DistillConfig(**(base | kw))


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_logit_distillation_lowers_validation_loss(tiny_assets: Path, data: PreparedData, tmp_path: Path,
                                                    architecture: str) -> None:
    # given a random student sharing the teacher's tokenizer
    cfg = _cfg(tiny_assets, f"student-{architecture}")
    # when distilled for a few steps
    result = distill(describe_model(cfg.teacher), describe_model(cfg.student), data, cfg, 96, RuntimeConfig(),
                     tmp_path / "out")
    # then logit KD was chosen, the validation loss fell, and a loadable model of that architecture is saved
    assert result.method == "logit"
    assert result.val_losses[-1][1] < result.val_losses[0][1] * 0.8
    assert len(result.losses) == 30
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == architecture
    assert result.model.digest != describe_model(cfg.student).digest


def test_sequence_level_when_tokenizers_differ(tiny_assets: Path, data: PreparedData, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg(tiny_assets, "student-qwen2-othertok", steps=10, max_new_tokens=12, max_empty_share=0.6)
    with caplog.at_level("INFO", logger="tasks.train.distill"):
        result = distill(describe_model(cfg.teacher), describe_model(cfg.student), data, cfg, 96,
                         RuntimeConfig(), tmp_path / "out")
    assert result.method == "sequence"
    assert "tokenizers differ" in caplog.text
    assert re.search(r"the teacher left \d+ of \d+ training prompts unanswered", caplog.text)
    labelled = (tmp_path / "out" / "teacher.jsonl").read_text().splitlines()
    assert labelled and all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in labelled)


def test_logit_refused_across_tokenizers(tiny_assets: Path, data: PreparedData, tmp_path: Path) -> None:
    cfg = _cfg(tiny_assets, "student-qwen2-othertok", method="logit")
    with pytest.raises(ConfigError, match="distill.method: 'logit' needs teacher and student to share"):
        distill(describe_model(cfg.teacher), describe_model(cfg.student), data, cfg, 96, RuntimeConfig(),
                tmp_path / "out")


def test_sequence_level_fails_when_the_teacher_leaves_too_many_prompts_unanswered(
        tiny_assets: Path, data: PreparedData, tmp_path: Path) -> None:
    import torch

    from tasks.modeling import load_model, load_tokenizer

    # given a teacher whose final norm is zeroed: every logit ties, greedy decoding picks the pad token, and
    # every answer decodes to empty text
    mute = tmp_path / "mute-teacher"
    model = load_model(str(tiny_assets / "teacher"))
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(mute)
    load_tokenizer(str(tiny_assets / "teacher")).save_pretrained(mute)
    cfg = _cfg(tiny_assets, "student-qwen2-othertok", teacher=str(mute), max_new_tokens=4, max_empty_share=0.5)
    # when distilled, the step fails before training and says how many prompts were left unanswered
    with pytest.raises(TrainingError, match=r"the teacher left (\d+) of \1 training prompts unanswered "
                                            r"\(100% > distill.max_empty_share 50%\)"):
        distill(describe_model(cfg.teacher), describe_model(cfg.student), data, cfg, 96, RuntimeConfig(),
                tmp_path / "out")
