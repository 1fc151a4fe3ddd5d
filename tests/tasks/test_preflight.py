"""Preflight: bad data and missing inputs stop the pipeline before the first training step, with file:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from flows.cli import main


@pytest.fixture
def long_test_row(tiny_assets: Path, tmp_path: Path) -> tuple[Path, int]:
    """The tiny test split with one over-long row appended; returns (file, its line number)."""
    rows = (tiny_assets / "data" / "test.jsonl").read_text().splitlines()
    long = {"messages": [{"role": "user", "content": "Reverse: " + " ".join("abcdefgh" * 20)},
                         {"role": "assistant", "content": "x"}]}
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join([*rows, json.dumps(long)]) + "\n")
    return path, len(rows) + 1


def _config(tiny_assets: Path, tmp_path: Path, test: Path, **evaluate) -> Path:
    d = tiny_assets / "data"
    raw = {"name": "tiny-preflight",
           "data": {"train": str(d / "train.jsonl"), "validation": str(d / "validation.jsonl"), "test": str(test),
                    "max_length": 96},
           "distill": {"teacher": str(tiny_assets / "teacher"), "student": str(tiny_assets / "student-qwen2"),
                       "steps": 5, "batch_size": 8},
           "finetune": {"steps": 2, "batch_size": 8}, "evaluate": evaluate}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_long_test_row_stops_training_before_it_starts(prefect_harness, tiny_assets: Path, tmp_path: Path,
                                                         long_test_row, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    # given a config whose test split (evaluated only after training) has one row over data.max_length
    test, line = long_test_row
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    # when the train command runs
    code = main(["train", "--config", str(_config(tiny_assets, tmp_path, test))])
    # then it exits non-zero with one error naming file:line, no traceback, and no training step ran
    err = capsys.readouterr().err
    assert code == 2
    assert "error: 1 row(s) longer than data.max_length 96 tokens" in err
    assert f"{test}:{line}: " in err and "tokens > data.max_length 96" in err
    assert "Traceback" not in err
    assert not (tmp_path / "home" / "models").exists(), "distillation must not have started"


def test_missing_heldout_text_is_named_before_training(prefect_harness, tiny_assets: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    config = _config(tiny_assets, tmp_path, tiny_assets / "data" / "test.jsonl", heldout_text=str(tmp_path / "no"))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"error: evaluate.heldout_text: file not found: {tmp_path / 'no'}" in err and "Traceback" not in err
    assert not (tmp_path / "home" / "models").exists()


def test_a_long_heldout_passage_is_an_error_not_a_cut(prefect_harness, tiny_assets: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path / "home"))
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("a short passage\n\n" + "a b c d " * 100 + "\n")
    config = _config(tiny_assets, tmp_path, tiny_assets / "data" / "test.jsonl", heldout_text=str(heldout))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"evaluate.heldout_text {heldout}:3: " in err and "tokens > data.max_length 96" in err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_demo_rejects_a_port_outside_1_to_65535(port: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--port", port])
    assert exit_.value.code == 2
    assert "--port: a TCP port is a number from 1 to 65535" in capsys.readouterr().err
