"""Foundry Local target: layout in the cache, registered, loaded and chatting through foundry-local-sdk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.targets.base import DeployError
from infra.targets.config import FoundryTargetConfig
from infra.targets.foundry import FoundryTarget, prompt_template
from tasks.records import ModelRelease
from tests.fixtures.chat_templates import SMOLLM2


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
    status = target.status("tiny-slm")
    assert (status.state, status.recorded_version, status.served_version) == ("up", "1", "1")

    second = target.deploy(ModelRelease(name="tiny-slm", version="2", onnx_dir=str(tiny_onnx)))
    ids = [v.id for m in target.catalog().list_models() for v in m.variants]
    assert ids == ["tiny-slm:2"], "the previous version is unregistered once the new one answered"
    assert second.previous.version == "1" and not folder.exists()
    loaded = [m.id for m in target.catalog().get_loaded_models()]
    assert loaded == ["tiny-slm:2"]
    target.undeploy("tiny-slm")
    assert target.catalog().list_models() == [] and target.status("tiny-slm") is None


def test_prompt_template_keeps_a_default_system_prompt_out_of_every_user_turn(tiny_onnx: Path,
                                                                               tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    # given the tiny model's tokenizer with SmolLM2's template (a default system prompt before a first user turn)
    tok = AutoTokenizer.from_pretrained(str(tiny_onnx))
    tok.chat_template = SMOLLM2
    tok.save_pretrained(tmp_path)
    # when Foundry's PromptTemplate is derived from it
    template = prompt_template(tmp_path)
    # then each role's template is that role's turn alone, which Foundry repeats per message
    assert template == {"system": "<|im_start|>system\n{Content}<|im_end|>\n",
                        "user": "<|im_start|>user\n{Content}<|im_end|>\n",
                        "assistant": "<|im_start|>assistant\n{Content}<|im_end|>\n",
                        "prompt": "<|im_start|>user\n{Content}<|im_end|>\n<|im_start|>assistant\n"}


def test_foundry_redeploy_of_the_live_version_touches_it_only_after_the_new_copy_passed(tiny_onnx: Path,
                                                                                       tmp_path: Path) -> None:
    target = FoundryTarget(FoundryTargetConfig(golden_max_tokens=8), tmp_path)
    v1 = ModelRelease(name="tiny-slm", version="1", onnx_dir=str(tiny_onnx))
    live = target.deploy(v1)
    folder = Path(live.details["folder"])

    strict = FoundryTarget(target.cfg.model_copy(update={"golden_expect": "never said"}), tmp_path)
    with pytest.raises(DeployError, match="could not serve tiny-slm:1; what served before is untouched"):
        strict.deploy(v1)
    ids = [v.id for m in target.catalog().list_models() for v in m.variants]
    assert ids == ["tiny-slm:1"] and (folder / "genai_config.json").is_file()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["tiny-slm-1"], "the trial copy is gone"
    model = target.catalog().get_model_variant("tiny-slm:1")
    assert model.is_loaded and target.chat(model, "Reverse: a b c").strip(), "the live model still answers"

    again = target.deploy(v1)  # a passing redeploy of the same version replaces it in place
    assert [v.id for m in target.catalog().list_models() for v in m.variants] == ["tiny-slm:1"]
    assert Path(again.details["folder"]) == folder and sorted(p.name for p in folder.parent.iterdir()) == \
        ["tiny-slm-1"]
    assert target.status("tiny-slm").state == "up"

    target.catalog().get_model_variant("tiny-slm:1").unload()  # removed behind our back: status says down
    target.catalog().unregister_model("tiny-slm:1")
    status = target.status("tiny-slm")
    assert (status.state, status.served_version) == ("down", None) and "not registered" in status.problem
    target.undeploy("tiny-slm")
    assert not folder.exists() and target.status("tiny-slm") is None
