"""General text for GPTQ calibration (tasks/quantize/calibration_text.py) and its mix with the train rows."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tasks.config import load_config
from tasks.errors import ConfigError
from tasks.modeling import load_tokenizer
from tasks.quantize.calibration_text import PYTHON_DOCS, read_text, text_rows
from tasks.quantize.olive import calibration_text
from tasks.quantize.olive_data import interleave, slmops_chat_jsonl


def test_windows_are_whole_spread_over_the_text_and_never_overlap(tiny_assets: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(tiny_assets / "teacher"))
    text = tmp_path / "prose.txt"
    text.write_text(" ".join(f"word{i}" for i in range(3000)), encoding="utf-8")
    ids = tok(text.read_text(), add_special_tokens=False)["input_ids"]
    rows = text_rows(tok, str(text), 4, 32)
    assert [len(r) for r in rows] == [32] * 4
    starts = [next(i for i in range(len(ids)) if ids[i: i + 32] == r) for r in rows]
    assert starts[0] == 0 and starts == sorted(starts) and all(b - a >= 32 for a, b in itertools.pairwise(starts))
    assert starts[-1] > len(ids) / 2, "the windows cover the whole text, not only its start"


def test_a_text_too_short_for_the_rows_asked_says_how_many_it_makes(tiny_assets: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(str(tiny_assets / "teacher"))
    text = tmp_path / "short.txt"
    text.write_text("only a few words here", encoding="utf-8")
    with pytest.raises(ValueError, match=r"short.txt: \d+ tokens make 0 window\(s\) of 32, 2 needed"):
        text_rows(tok, str(text), 2, 32)


def test_python_docs_is_the_reference_text_every_cpython_ships() -> None:
    text = read_text(PYTHON_DOCS)
    assert len(text) > 100_000 and 'The "while" statement' in text


def test_a_missing_text_file_is_rejected_when_the_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: x}\ndistill: {teacher: a, student: b}\n")
    with pytest.raises(ConfigError, match=r"quantize.olive_calibration_text: .*file not found: /nope.txt "
                       r"\(a plain UTF-8 text file, or 'python-docs'\)"):
        load_config(path, ["quantize.olive_calibration_text=/nope.txt"])
    cfg = load_config(path, ["quantize.olive_calibration_text=python-docs", "quantize.olive_calibration_samples=10",
                             "quantize.olive_calibration_text_share=0.3"]).quantize
    assert calibration_text(cfg) == {"text": "python-docs", "text_samples": 3}


def test_the_calibration_set_mixes_text_windows_between_train_rows(tiny_assets: Path) -> None:
    assert interleave([[1], [2], [3]], [[9]]) == [[1], [9], [2], [3]]
    teacher = str(tiny_assets / "teacher")
    train = str(tiny_assets / "data" / "train.jsonl")
    plain = slmops_chat_jsonl(train, teacher, max_samples=6, max_length=96)
    mixed = slmops_chat_jsonl(train, teacher, max_samples=6, max_length=96, text=PYTHON_DOCS, text_samples=2)
    assert len(plain) == len(mixed) == 6
    rows = [mixed[i][0]["input_ids"].tolist() for i in range(6)]
    task = [plain[i][0]["input_ids"].tolist() for i in range(4)]
    assert [rows[0], rows[2], rows[4], rows[5]] == task
    assert [len(rows[1]), len(rows[3])] == [96, 96] and rows[1] != rows[3]
