"""Dataset reading and validation: every malformed row is named by file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from tasks.config import DataConfig
from tasks.data.chat import IGNORE_INDEX, encode_chat
from tasks.data.prepare import load_rows, prepare_data
from tasks.errors import DatasetError

GOOD = {"messages": [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3"}]}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"messages": [', "invalid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"text": "hello"}', "expected 'messages' or 'prompt'/'completion' keys, found ['text']"),
        ('{"messages": "hi"}', "'messages' must be a list, got str"),
        ('{"messages": []}', "'messages' is empty"),
        ('{"messages": [{"role": "user"}]}', "messages[0] is missing 'content'"),
        ('{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
         "messages[0].role 'robot' is not one of system, user, assistant"),
        ('{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]}',
         "messages[0].content must be a string, got int"),
        ('{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}]}',
         "messages[0].content is empty"),
        ('{"messages": [{"role": "user", "content": "x"}]}', "the last message must be from the assistant"),
        ('{"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}',
         "no 'user' message"),
        ('{"prompt": "x"}', "missing 'completion'"),
        ('{"prompt": "x", "completion": ["y"]}', "'completion' must be a string, got list"),
        ('{"prompt": "x", "completion": "y", "messages": []}', "row mixes 'messages' with 'prompt'"),
        ('"just a string"', "expected a JSON object, got str"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    # given a file whose third line is malformed
    path = write_lines(tmp_path / "train.jsonl", [json.dumps(GOOD), json.dumps(GOOD), bad_line])
    # when it is read, then the error names the file, the line number and the problem
    with pytest.raises(DatasetError) as err:
        load_rows(str(path))
    assert f"{path}:3: {expected}" in str(err.value)


def test_all_bad_lines_are_reported(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ["{", json.dumps(GOOD), "[]", "", '{"prompt": ""}'])
    with pytest.raises(DatasetError) as err:
        load_rows(str(path))
    lines = [p.split(": ")[0] for p in err.value.problems]
    assert lines == [f"{path}:1", f"{path}:3", f"{path}:5", f"{path}:5"]  # line 5: empty prompt, no completion


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = write_lines(tmp_path / "empty.jsonl", [""])
    with pytest.raises(DatasetError, match="no rows"):
        load_rows(str(empty))
    with pytest.raises(DatasetError, match="file not found"):
        load_rows(str(tmp_path / "missing.jsonl"))


def test_prompt_completion_is_normalised_to_chat(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "pc.jsonl", ['{"prompt": "Reverse: a b", "completion": "b a"}'])
    assert load_rows(str(path)) == [{"messages": [{"role": "user", "content": "Reverse: a b"},
                                                  {"role": "assistant", "content": "b a"}], "line": 1}]


def test_digest_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    a = write_lines(tmp_path / "a.jsonl", [json.dumps(GOOD)])
    first = prepare_data(DataConfig(train=str(a)), tmp_path / "out")
    again = prepare_data(DataConfig(train=str(a)), tmp_path / "out")
    write_lines(a, [json.dumps(GOOD), json.dumps(GOOD)])
    changed = prepare_data(DataConfig(train=str(a)), tmp_path / "out")
    assert first.digest == again.digest != changed.digest
    assert changed.rows == {"train": 2}


def test_only_assistant_tokens_carry_loss(tiny_assets: Path) -> None:
    from tasks.modeling import load_tokenizer

    tok = load_tokenizer(str(tiny_assets / "tokenizer"))
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse: a b c"},
            {"role": "assistant", "content": "c b a"}]
    ids, labels = encode_chat(tok, msgs, max_length=128)
    labelled = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert tok.decode(labelled) == "c b a<|im_end|>\n"
    assert labels[: len(ids) - len(labelled)] == [IGNORE_INDEX] * (len(ids) - len(labelled))
    with pytest.raises(ValueError, match="tokens > data.max_length 5"):
        encode_chat(tok, msgs, max_length=5)


def test_cli_data_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = write_lines(tmp_path / "good.jsonl", [json.dumps(GOOD)] * 3)
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), '{"messages": 1}'])
    assert main(["data", "validate", str(good)]) == 0
    assert "3 valid rows" in capsys.readouterr().out
    assert main(["data", "validate", str(good), str(bad)]) == 1
    assert f"{bad}:2: 'messages' must be a list, got int" in capsys.readouterr().err
