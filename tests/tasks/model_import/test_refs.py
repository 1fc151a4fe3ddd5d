"""``gguf:`` and ``ollama:`` model references: located, dequantized once into a Hugging Face folder, cached by the
GGUF's digest, with their lineage recorded.

The GGUF is the tiny demo teacher converted by llama.cpp's own converter (the ``gguf`` extra). The Ollama store
is laid out by the test in Ollama's documented manifest and blob format: reading a store needs no Ollama server.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tasks.errors import ModelError
from tasks.model_import.gguf_file import locate_gguf
from tasks.model_import.refs import import_model, import_record

if not os.environ.get("CI"):  # CI installs the gguf extra: there a missing llama_cpp must fail
    pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def teacher_gguf(tiny_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tasks.inputs import describe_model
    from tasks.quantize.gguf import build_gguf

    built = build_gguf(describe_model(str(tiny_assets / "teacher")), ["f16"], tmp_path_factory.mktemp("gguf"))
    return Path(built[0].path)


def lay_out_store(store: Path, model: str, tag: str, gguf: Path) -> str:
    """An Ollama store holding ``model:tag``: blobs by sha256 and an OCI manifest naming them by media type."""
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    layers = []
    for media, payload in (("application/vnd.ollama.image.model", gguf.read_bytes()),
                           ("application/vnd.ollama.image.template", b"{{ .Prompt }}"),
                           ("application/vnd.ollama.image.params", b'{"stop": ["<|im_end|>"]}')):
        digest = hashlib.sha256(payload).hexdigest()
        (store / "blobs" / f"sha256-{digest}").write_bytes(payload)
        layers.append({"mediaType": media, "digest": f"sha256:{digest}", "size": len(payload)})
    config = b'{"model_format": "gguf", "model_family": "llama"}'
    (store / "blobs" / f"sha256-{hashlib.sha256(config).hexdigest()}").write_bytes(config)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": f"sha256:{hashlib.sha256(config).hexdigest()}", "size": len(config)},
        "layers": layers}))
    return layers[0]["digest"].split(":")[1]


def test_an_ollama_model_is_imported_once_with_its_digest_and_quant_type(
        teacher_gguf: Path, tiny_assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # given: a local Ollama store holding the teacher as tiny-teacher:v1
    digest = lay_out_store(tmp_path / "ollama", "tiny-teacher", "v1", teacher_gguf)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    # when: it is imported
    folder = import_model("ollama:tiny-teacher:v1", tmp_path / "home")
    # then: a plain Hugging Face folder that computes what the original computes, with its lineage beside it
    record = import_record(folder)
    assert record["gguf_sha256"] == digest and record["quant_type"] == "F16" and record["architecture"] == "llama"
    assert record["source"] == "ollama:tiny-teacher:v1"
    assert (folder / "model.safetensors").is_file() and (folder / "generation_config.json").is_file()
    original = AutoModelForCausalLM.from_pretrained(tiny_assets / "teacher", dtype=torch.float32).eval()
    imported = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok, imported_tok = AutoTokenizer.from_pretrained(tiny_assets / "teacher"), AutoTokenizer.from_pretrained(folder)
    chat = [{"role": "user", "content": "Reverse: a b c"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert imported_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False) == ids
    with torch.no_grad():
        want, got = (m(torch.tensor([ids])).logits for m in (original, imported))
    assert torch.allclose(want, got, atol=0.05), (want - got).abs().max()  # f16 weights: close, not equal
    assert want[0, -1].argmax() == got[0, -1].argmax()
    # and a second import reuses the folder (keyed by the GGUF's sha256) without dequantizing again
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert import_model("ollama:tiny-teacher:v1", tmp_path / "home") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_an_unknown_ollama_model_names_the_models_the_store_has(
        teacher_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lay_out_store(tmp_path / "ollama", "tiny-teacher", "v1", teacher_gguf)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama"))
    with pytest.raises(ModelError, match=r"no such model .* it has tiny-teacher:v1"):
        import_model("ollama:tiny-teacher", tmp_path / "home")  # tag 'latest' is not there
    blob = next((tmp_path / "ollama" / "blobs").glob("sha256-*"))
    for b in (tmp_path / "ollama" / "blobs").glob("sha256-*"):
        b.unlink()
    with pytest.raises(ModelError, match=r"missing from .*ollama pull tiny-teacher:v1"):
        import_model("ollama:tiny-teacher:v1", tmp_path / "home")
    assert not blob.exists()


def test_a_gguf_path_inside_an_installed_package_is_found(
        teacher_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "site" / "packaged_models"
    package.mkdir(parents=True)
    (package / "__init__.py").touch()
    shutil.copy(teacher_gguf, package / "teacher.f16.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert locate_gguf("packaged_models/teacher.f16.gguf") == package / "teacher.f16.gguf"
    assert locate_gguf(str(teacher_gguf)) == teacher_gguf
    with pytest.raises(ModelError, match=r"installed package 'packaged_models' has no 'other.gguf'"):
        locate_gguf("packaged_models/other.gguf")
    with pytest.raises(ModelError, match="no such file or installed package"):
        locate_gguf("no_such_package_here/model.gguf")


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "odd.gguf"
    writer = GGUFWriter(str(path), arch="nosucharch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match=r"architecture 'nosucharch' cannot be imported; supported: .*llama"):
        import_model(f"gguf:{path}", tmp_path / "home")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match="not a readable GGUF file"):
        import_model(f"gguf:{tmp_path / 'junk.gguf'}", tmp_path / "home")


def test_the_pipeline_config_resolves_import_refs(teacher_gguf: Path, tiny_assets: Path, tmp_path: Path) -> None:
    from tasks.config import validate_config
    from tasks.inputs import resolve_inputs

    config = validate_config({"data": {"train": str(tiny_assets / "data" / "train.jsonl")},
                              "distill": {"enabled": False, "teacher": f"gguf:{teacher_gguf}",
                                          "student": f"gguf:{teacher_gguf}"}})
    resolved = resolve_inputs(config, tmp_path)
    assert resolved.distill.student == resolved.distill.teacher
    assert import_record(resolved.distill.student)["source"] == f"gguf:{teacher_gguf}"
