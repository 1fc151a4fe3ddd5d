"""The served-folder format read in one place (tasks/served_folder.py), and every decoder honouring all of a
folder's end-of-sequence ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.data.chat import prompt_ids
from tasks.data.prepare import read_prepared
from tasks.engine.static_batch import OgModel, decode_batch
from tasks.served_folder import CONFIG_FILE, NotAServedFolder, ServedFolder, is_served_folder


def test_reads_a_built_folder_and_its_adapters(tiny_onnx: Path, multi_lora: dict[str, Path]) -> None:
    folder = ServedFolder.read(tiny_onnx)
    raw = json.loads((tiny_onnx / CONFIG_FILE).read_text())["model"]
    assert folder.eos_ids == tuple(raw["eos_token_id"] if isinstance(raw["eos_token_id"], list)
                                   else [raw["eos_token_id"]])
    assert folder.context_length == raw["context_length"] and folder.decoder.file.is_file()
    assert folder.decoder.past(1) == ("past_key_values.1.key", "past_key_values.1.value")
    assert folder.adapters == {} and is_served_folder(tiny_onnx)
    assert sorted(ServedFolder.read(multi_lora["served"]).adapters) == ["alpha", "beta"]


def test_a_folder_without_or_with_a_broken_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotAServedFolder, match=f"no {CONFIG_FILE}"):
        ServedFolder.read(tmp_path)
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"model": {"context_length": 8}}))
    with pytest.raises(NotAServedFolder, match="missing or malformed"):
        ServedFolder.read(tmp_path)
    assert not is_served_folder(tmp_path / "nowhere")


def test_every_decoder_stops_on_any_of_several_eos_ids(tiny_onnx: Path, tiny_assets: Path,
                                                       tmp_path: Path) -> None:
    """A second EOS id (the token the model answers first) ends the answer in the batch decoder and in the
    gate's runner, and is never part of the answer (the gate's runner once compared the last token with the whole
    list and kept it)."""
    from tasks.evaluate.runners import OnnxRunner
    from tasks.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_onnx))
    prompt = prompt_ids(tokenizer, read_prepared(str(tiny_assets / "data" / "test.jsonl"))[0])
    first = decode_batch(OgModel(tiny_onnx, threads=1), [prompt], [4])[0].tokens[0]
    copy = tmp_path / "served"
    shutil.copytree(tiny_onnx, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    eos = config["model"]["eos_token_id"]
    config["model"]["eos_token_id"] = [*(eos if isinstance(eos, list) else [eos]), first]
    (copy / CONFIG_FILE).write_text(json.dumps(config))

    assert ServedFolder.read(copy).is_eos(first)
    row = decode_batch(OgModel(copy, threads=1), [prompt], [4])[0]
    assert (row.tokens, row.finish_reason) == ([], "stop")
    assert OnnxRunner(str(copy), threads=1).generate(prompt, 4).tokens == []
