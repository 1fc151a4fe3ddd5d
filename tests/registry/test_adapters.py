"""Adapter-only registry versions beside their multi-LoRA base: registered, resolved over the base, served."""

from __future__ import annotations

from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from infra import process
from infra.targets.base import DeployError
from infra.targets.config import FoundryTargetConfig
from infra.targets.foundry import FoundryTarget
from registry.adapters import ADAPTER_KIND, register_multi_lora
from registry.errors import RegistryError
from registry.history import move_alias
from registry.releases import resolve_release
from tasks.data.chat import render_ids
from tasks.engine.engine import load_tokenizer
from tasks.engine.output import TokenText
from tasks.engine.static_batch import OgModel, decode_batch
from tasks.served_folder import adapter_files
from tests.infra.serving.conftest import start_server

QUESTION = "Reverse: a b c"


def test_an_adapter_version_is_served_over_its_base_under_its_own_name(multi_lora: dict[str, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLMOPS_HOME", str(tmp_path))
    registered = register_multi_lora(tmp_path, "ml-base", multi_lora["served"])
    assert [(r.name, r.version) for r in registered] == [("ml-base", "1"), ("alpha", "1"), ("beta", "1")]
    client = MlflowClient()
    alpha = client.get_model_version("alpha", "1")
    assert alpha.tags["slmops.kind"] == ADAPTER_KIND and alpha.tags["slmops.base"] == "ml-base/1"
    assert alpha.source.startswith("models:/m-") and client.get_model_version("ml-base", "1").source.startswith(
        "models:/m-")
    stored = mlflow.artifacts.download_artifacts(artifact_uri=alpha.source, dst_path=str(tmp_path / "alpha-model"))
    files = {p.name for p in Path(stored).rglob("*") if p.is_file() and "code" not in p.relative_to(stored).parts}
    assert "alpha.onnx_adapter" in files and "MLmodel" in files
    assert not files & {"model.onnx", "model.onnx.data", "genai_config.json"}, "the adapter version holds no base"

    move_alias(client, "alpha", "champion", "1", reason="test")
    release = resolve_release(tmp_path, "alpha@champion")
    folder = Path(release.onnx_dir)
    assert (release.name, release.version) == ("alpha", "1")
    assert sorted(adapter_files(folder)) == ["alpha", "beta"]
    assert resolve_release(tmp_path, "alpha/1").onnx_dir == release.onnx_dir, "assembled once, then cached"

    # served as `alpha`, a request naming it (or naming nothing) answers with the alpha adapter, not the base
    model, tok = OgModel(folder, threads=2), load_tokenizer(folder)
    prompt = render_ids(tok, [{"role": "user", "content": QUESTION}], True)
    token_bytes = TokenText(tok).bytes
    expected = {a: [token_bytes(t) for t in decode_batch(model, [prompt], [10], adapter=a)[0].tokens]
                for a in (None, "alpha")}
    assert expected[None] != expected["alpha"]
    served_text = {}
    for served_as, adapter, listed in (("tiny-slm", None, ["tiny-slm", "alpha", "beta"]),
                                       ("alpha", "alpha", ["alpha", "beta"])):
        url, pid = start_server(folder, tmp_path / f"{served_as}.log", "--name", served_as)
        try:
            assert [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=60).json()["data"]] == listed
            for named in (served_as, None):
                assert answer(url, named) == expected[adapter], (served_as, named)
            served_text[served_as] = text(url, served_as)
        finally:
            process.stop(pid)

    # as MLflow Models: the adapter version loads over its base and answers what the server serving it answers
    request = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 10}
    lora = mlflow.pyfunc.load_model("models:/alpha@champion")
    assert lora.predict(request)[0]["choices"][0]["message"]["content"] == served_text["alpha"]
    base = mlflow.pyfunc.load_model("models:/ml-base/1")
    assert base.predict(request)[0]["choices"][0]["message"]["content"] == served_text["tiny-slm"]
    assert base.predict(request | {"model": "alpha"})[0]["choices"][0]["message"]["content"] == served_text["alpha"]
    with pytest.raises(mlflow.exceptions.MlflowException, match="unknown model 'gamma'; this model serves the LoRA"):
        base.predict(request | {"model": "gamma"})

    # Foundry Local would load the base and ignore the adapter: an adapter release is refused there, not served wrong
    with pytest.raises(DeployError, match="alpha/1 is a LoRA adapter served over its base, and Foundry Local"):
        FoundryTarget(FoundryTargetConfig(), tmp_path).deploy(release)


def answer(url: str, model: str | None) -> list[list[int]]:
    """The greedy answer's tokens (their bytes) to QUESTION, naming ``model`` or no model."""
    body = {"max_tokens": 10, "temperature": 0, "logprobs": True, "messages": [{"role": "user", "content": QUESTION}]}
    reply = httpx.post(f"{url}/v1/chat/completions", json=body | ({"model": model} if model else {}), timeout=60)
    assert reply.status_code == 200, reply.text
    return [t["bytes"] for t in reply.json()["choices"][0]["logprobs"]["content"]]


def text(url: str, model: str) -> str:
    """The greedy answer to QUESTION, as text."""
    body = {"max_tokens": 10, "temperature": 0, "model": model, "messages": [{"role": "user", "content": QUESTION}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]


def test_a_folder_without_lora_inputs_is_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="has no LoRA inputs: build it with `slmops multi-lora`"):
        register_multi_lora(tmp_path, "plain", tiny_onnx)
