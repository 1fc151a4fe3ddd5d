"""Distillation on tiny demo models: logit KD lowers validation loss; sequence-level when tokenizers differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.config import DataConfig, DistillConfig, RuntimeConfig
from tasks.data import prepare_data
from tasks.distill import distill
from tasks.errors import ConfigError
from tasks.inputs import describe_model
from tasks.records import PreparedData


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
    cfg = _cfg(tiny_assets, "student-qwen2-othertok", steps=10, max_new_tokens=12)
    with caplog.at_level("INFO", logger="tasks.distill"):
        result = distill(describe_model(cfg.teacher), describe_model(cfg.student), data, cfg, 96,
                         RuntimeConfig(), tmp_path / "out")
    assert result.method == "sequence"
    assert "tokenizers differ" in caplog.text
    labelled = (tmp_path / "out" / "teacher.jsonl").read_text().splitlines()
    assert labelled and all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in labelled)


def test_logit_refused_across_tokenizers(tiny_assets: Path, data: PreparedData, tmp_path: Path) -> None:
    cfg = _cfg(tiny_assets, "student-qwen2-othertok", method="logit")
    with pytest.raises(ConfigError, match="distill.method: 'logit' needs teacher and student to share"):
        distill(describe_model(cfg.teacher), describe_model(cfg.student), data, cfg, 96, RuntimeConfig(),
                tmp_path / "out")
