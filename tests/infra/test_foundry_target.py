"""Foundry Local target: layout in the cache, registered, loaded and chatting through foundry-local-sdk."""

from __future__ import annotations

import json
from pathlib import Path

from infra.targets.config import FoundryTargetConfig
from infra.targets.foundry import FoundryTarget
from tasks.records import ModelRelease


def test_foundry_registers_loads_and_chats(tiny_onnx: Path, tmp_path: Path) -> None:
    target = FoundryTarget(FoundryTargetConfig(golden_max_tokens=8), tmp_path)
    first = target.deploy(ModelRelease(name="tiny-slm", version="1", onnx_dir=str(tiny_onnx)))
    folder = Path(first.details["folder"])
    assert folder.is_relative_to(tmp_path / "foundry" / "cache")
    assert (folder / "genai_config.json").is_file()
    inference = json.loads((folder / "inference_model.json").read_text())
    assert inference["Name"] == "tiny-slm:1"
    assert inference["PromptTemplate"]["prompt"] == "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n"
    assert inference["PromptTemplate"]["assistant"] == "<|im_start|>assistant\n{Content}<|im_end|>\n"
    assert first.details["golden_answer"].strip()
    assert target.status("tiny-slm").details["registered"]

    second = target.deploy(ModelRelease(name="tiny-slm", version="2", onnx_dir=str(tiny_onnx)))
    ids = [v.id for m in target.catalog().list_models() for v in m.variants]
    assert ids == ["tiny-slm:2"], "the previous version is unregistered once the new one answered"
    assert second.previous.version == "1" and not folder.exists()
    loaded = [m.id for m in target.catalog().get_loaded_models()]
    assert loaded == ["tiny-slm:2"]
    target.undeploy("tiny-slm")
    assert target.catalog().list_models() == [] and target.status("tiny-slm") is None
