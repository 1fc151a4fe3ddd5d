"""Registered versions as MLflow Models: the ``python_function`` flavor over the served ONNX folder.

``log_served_model`` logs a version's served folder as an MLflow Model (``MLmodel``, a chat signature and input
example, pinned requirements, and slmops' own ``tasks`` package as code), so ``mlflow.pyfunc.load_model(
"models:/NAME@ALIAS")`` and ``mlflow models serve`` work on every version the pipeline registers. Its
``ServedChatModel`` decodes with the same engine (tasks/engine) and the same chat rendering as the local server,
so a greedy answer is the server's answer. ``log_adapter_model`` logs a LoRA adapter alone, over the base
model it names; loading it downloads that base, so a multi-LoRA registry stores the base weights once.

Input: one chat request (``{"messages": [...], "max_tokens": 32, ...}``) or a list of them; ``model`` may name
another LoRA adapter of a multi-LoRA base. Output: one OpenAI chat completion per request
(``choices[0].message.content``, ``finish_reason``, ``usage``).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Array, ColSpec, Map, Object, ParamSchema, ParamSpec, Property, Schema

from registry.tracking import on_run
from tasks.data.chat import render_ids
from tasks.engine.protocol import Failed, GenerationRequest, Sampling
from tasks.engine.settings import EngineConfig
from tasks.served_folder import served_folders_in, with_adapter

SERVED = "served"  # the artifact key (and the logged model's name) of the ONNX folder
ADAPTER = "adapter"  # the artifact key of an adapter-only version's .onnx_adapter file
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MAX_TOKENS = 128  # what the server answers a request that sends no max_tokens
REQUIREMENTS = ("mlflow", "onnxruntime", "transformers", "tokenizers", "llguidance", "numpy", "pydantic",
                "pydantic-settings", "jinja2", "pandas")  # what the engine imports, pinned to this process's versions

MESSAGE = Object([Property("role", "string"), Property("content", "string")])
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(Array(MESSAGE), "messages"), ColSpec("long", "max_tokens", required=False),
                   ColSpec("double", "temperature", required=False), ColSpec("double", "top_p", required=False),
                   ColSpec("long", "seed", required=False), ColSpec(Array("string"), "stop", required=False),
                   ColSpec("string", "model", required=False)]),
    outputs=Schema([ColSpec("string", "id"), ColSpec("string", "object"), ColSpec("long", "created"),
                    ColSpec("string", "model"),
                    ColSpec(Array(Object([Property("index", "long"), Property("message", MESSAGE),
                                          Property("finish_reason", "string")])), "choices"),
                    ColSpec(Map("long"), "usage")]),
    params=ParamSchema([ParamSpec("max_tokens", "long", DEFAULT_MAX_TOKENS)]),
)
INPUT_EXAMPLE = {"messages": [{"role": "user", "content": "Reverse: a b c"}], "max_tokens": 16, "temperature": 0.0}


class ServedChatModel(PythonModel):
    """A served ONNX folder answering chat requests through slmops' engine (int8 steps off: each answer is what
    its request gets alone)."""

    def load_context(self, context: Any) -> None:
        from tasks.engine.engine import Engine  # here, not at the top: the engine's libraries load with the model only

        config = context.model_config or {}
        self.adapter: str | None = config.get("adapter")
        folder = context.artifacts.get(SERVED) or _over_base(context.artifacts[ADAPTER], config["base"], self.adapter)
        self.engine = Engine(folder, EngineConfig(int8_steps="off"))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would read them as the schema
        """One chat completion per request of ``model_input`` (a dict, a list of dicts or a DataFrame of them)."""
        rows = requests_of(model_input)
        default = int((params or {}).get("max_tokens") or DEFAULT_MAX_TOKENS)
        ends = dict(self.engine.run([self._request(row, default) for row in rows]))
        failed = [f"request {i + 1}: {e.message}" for i, e in sorted(ends.items()) if isinstance(e, Failed)]
        if failed:
            raise mlflow.exceptions.MlflowException("; ".join(failed))
        return [completion(ends[i], self.engine.folder.path.name) for i in range(len(rows))]

    def _request(self, row: dict[str, Any], default_max_tokens: int) -> Any:
        messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in row["messages"]]
        ids = render_ids(self.engine.tokenizer, messages, True)
        room = self.engine.context_length - len(ids)
        if room < 1:
            raise mlflow.exceptions.MlflowException(f"the prompt has {len(ids)} tokens and leaves no room in the "
                                                    f"context window of {self.engine.context_length} tokens")
        max_tokens = min(int(_given(row, "max_tokens") or default_max_tokens), room)
        seed = _given(row, "seed")
        sampling = Sampling(float(_given(row, "temperature") or 0.0), float(_given(row, "top_p") or 1.0),
                            None if seed is None else int(seed))
        return GenerationRequest(ids, max_tokens, sampling, [str(s) for s in (_given(row, "stop") or [])],
                                 adapter=self._adapter(_given(row, "model")))

    def _adapter(self, asked: str | None) -> str | None:
        """The LoRA adapter a request's ``model`` names (none: this version's own adapter, if it is one)."""
        adapters = self.engine.adapters
        if asked is None or asked == self.adapter:
            return self.adapter
        if asked not in adapters:
            raise mlflow.exceptions.MlflowException(
                f"unknown model {asked!r}; this model serves the LoRA adapters {adapters or 'none'}")
        return asked


def _given(row: dict[str, Any], key: str) -> Any:
    """``row[key]``, None where absent or missing (a DataFrame row holds NaN for a column another row set)."""
    value = row.get(key)
    try:
        return None if value is None or value != value else value  # NaN is not equal to itself
    except ValueError:  # an array-like (stop)
        return value


def requests_of(model_input: Any) -> list[dict[str, Any]]:
    """The chat requests in a pyfunc input: one dict, a list of dicts, or a DataFrame with a ``messages`` column."""
    if hasattr(model_input, "to_dict"):  # pandas
        model_input = model_input.to_dict(orient="records")
    rows = [model_input] if isinstance(model_input, dict) else list(model_input)
    for i, row in enumerate(rows):
        messages = row.get("messages") if isinstance(row, dict) else None
        if hasattr(messages, "tolist"):  # a numpy array, from a DataFrame
            messages = row["messages"] = messages.tolist()
        if not isinstance(messages, list | tuple) or not messages:
            raise mlflow.exceptions.MlflowException(
                f"request {i + 1}: expected {{'messages': [{{'role': ..., 'content': ...}}, ...]}}")
    return rows


def completion(done: Any, model: str) -> dict[str, Any]:
    """An OpenAI chat completion of one finished request."""
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                         "finish_reason": done.finish_reason}],
            "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                      "total_tokens": done.prompt_tokens + done.completion_tokens}}


def _over_base(adapter_file: str, base_uri: str, name: str) -> str:
    """A folder with the base model ``base_uri``'s served folder and ``adapter_file`` filed as adapter ``name``."""
    found = served_folders_in(mlflow.artifacts.download_artifacts(artifact_uri=base_uri))
    if not found:
        raise mlflow.exceptions.MlflowException(f"the base model {base_uri} holds no served folder")
    # the outermost one: a version upgraded in place (registry/upgrade.py) also holds its copy under artifacts/
    return str(with_adapter(found[0], adapter_file, name, Path(tempfile.mkdtemp(prefix="slmops-lora-")) / SERVED))


def pinned_requirements() -> list[str]:
    """``REQUIREMENTS`` at this process's versions."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]


def log_served_model(run_id: str, served: str | Path) -> Any:
    """Log the ONNX folder ``served`` on run ``run_id`` as an MLflow Model (``python_function``); its ModelInfo
    (``model_uri``, ``model_id``)."""
    return _log(run_id, SERVED, {SERVED: str(served)})


def log_adapter_model(run_id: str, name: str, adapter_file: str | Path, base_uri: str) -> Any:
    """Log LoRA adapter ``name`` alone (its ``.onnx_adapter`` file) as an MLflow Model over the base model
    ``base_uri`` (``models:/m-…``), which loading it downloads: the base's weights are stored once."""
    return _log(run_id, f"adapter-{name}", {ADAPTER: str(adapter_file)}, {"adapter": name, "base": base_uri})


def save_served_model(path: str | Path, served: str | Path) -> Path:
    """The MLflow Model of ``log_served_model`` written to the local folder ``path`` (for ``slmops registry
    upgrade``, which uploads it into a version's existing source)."""
    mlflow.pyfunc.save_model(path=str(path), **_model_kwargs({SERVED: str(served)}))
    return Path(path)


def save_adapter_model(path: str | Path, name: str, adapter_file: str | Path, base_uri: str) -> Path:
    """The MLflow Model of ``log_adapter_model`` written to the local folder ``path``."""
    mlflow.pyfunc.save_model(path=str(path), **_model_kwargs({ADAPTER: str(adapter_file)},
                                                             {"adapter": name, "base": base_uri}))
    return Path(path)


def _log(run_id: str, name: str, artifacts: dict[str, str], model_config: dict[str, str] | None = None) -> Any:
    with on_run(run_id):
        return mlflow.pyfunc.log_model(name=name, **_model_kwargs(artifacts, model_config))


def _model_kwargs(artifacts: dict[str, str], model_config: dict[str, str] | None = None) -> dict[str, Any]:
    return {"python_model": ServedChatModel(), "artifacts": artifacts, "model_config": model_config,
            "code_paths": [str(ROOT / "tasks"), str(ROOT / "registry")], "pip_requirements": pinned_requirements(),
            "signature": SIGNATURE, "input_example": INPUT_EXAMPLE}
