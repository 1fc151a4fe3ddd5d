"""Ollama target through the Ollama-API test server (tests/fixtures/ollama_server.py), read with the official
``ollama`` client. The stand-in exists because Ollama's server cannot be installed here."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import ollama
import pytest

from infra.targets.base import DeployError
from infra.targets.config import OllamaTargetConfig
from infra.targets.ollama import OllamaTarget, go_template
from tasks.records import ModelRelease


@pytest.fixture(scope="module")
def gguf(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from tasks.gguf import build_gguf
    from tasks.inputs import describe_model

    built = build_gguf(describe_model(str(tiny_assets / "teacher")), ["f16"], tmp_path_factory.mktemp("gguf"))
    return {"f16": built[0].path}


def test_go_template_matches_the_chat_template(tiny_onnx: Path) -> None:
    from transformers import AutoTokenizer

    from tests.fixtures.ollama_server import render

    template, stops = go_template(tiny_onnx)
    tok = AutoTokenizer.from_pretrained(str(tiny_onnx))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse: a b"},
                {"role": "assistant", "content": "b a"}, {"role": "user", "content": "Uppercase: c"}]
    expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render(template, {"messages": messages}) == expected
    assert "<|im_end|>" in stops


def test_ollama_deploy_verify_replace_and_undeploy(ollama_server, tiny_onnx: Path, gguf, tmp_path: Path) -> None:
    target = OllamaTarget(OllamaTargetConfig(host=ollama_server.url, golden_max_tokens=8), tmp_path)
    client = ollama.Client(host=ollama_server.url)
    v1 = target.deploy(ModelRelease(name="tiny-slm", version="1", onnx_dir=str(tiny_onnx), gguf=gguf))
    assert v1.details["model"] == "tiny-slm:v1" and v1.details["gguf"] == "f16"
    assert [m.model for m in client.list().models] == ["tiny-slm:v1"]
    shown = client.show("tiny-slm:v1")
    assert "{{ range .Messages }}" in shown.template and "<|im_end|>" in shown.parameters
    streamed = "".join(part.response for part in client.generate(model="tiny-slm:v1", prompt="Reverse: a b c",
                                                                  stream=True, options={"num_predict": 8}))
    whole = client.generate(model="tiny-slm:v1", prompt="Reverse: a b c", options={"num_predict": 8}).response
    assert streamed == whole and whole.strip()
    chat = client.chat(model="tiny-slm:v1", messages=[{"role": "user", "content": "Reverse: a b c"}],
                       options={"num_predict": 8})
    assert chat.message.content == whole  # same rendered prompt through /api/chat and /api/generate
    modelfile = Path(v1.details["modelfile"]).read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf\nTEMPLATE \"\"\"") and 'PARAMETER stop "<|im_end|>"' in modelfile

    # version 2 replaces version 1 only after it answered; a version that cannot answer changes nothing
    v2 = target.deploy(ModelRelease(name="tiny-slm", version="2", onnx_dir=str(tiny_onnx), gguf=gguf))
    assert [m.model for m in client.list().models] == ["tiny-slm:v2"] and v2.previous.version == "1"
    strict = OllamaTarget(target.cfg.model_copy(update={"golden_expect": "never said"}), tmp_path)
    with pytest.raises(DeployError, match="tiny-slm:v3 failed its golden prompt; the previous version is untouched"):
        strict.deploy(ModelRelease(name="tiny-slm", version="3", onnx_dir=str(tiny_onnx), gguf=gguf))
    assert [m.model for m in client.list().models] == ["tiny-slm:v2"]
    with pytest.raises(DeployError, match=r"has no GGUF of types .*it has none"):
        target.deploy(ModelRelease(name="tiny-slm", version="4", onnx_dir=str(tiny_onnx)))

    assert target.status("tiny-slm").details["present"]
    target.undeploy("tiny-slm")
    assert client.list().models == []


def test_blob_digest_is_checked(ollama_server, gguf) -> None:
    data = Path(gguf["f16"]).read_bytes()
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    assert httpx.post(f"{ollama_server.url}/api/blobs/{wrong}", content=data).status_code == 400
    right = "sha256:" + hashlib.sha256(data).hexdigest()
    assert httpx.post(f"{ollama_server.url}/api/blobs/{right}", content=data).status_code == 201
    assert httpx.head(f"{ollama_server.url}/api/blobs/{right}").status_code == 200
