"""Small typed records steps hand each other: paths plus content digests, never live objects."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field


def digest_file(path: Path, h: hashlib._Hash | None = None) -> str:
    """sha256 of one file's bytes."""
    h = h or hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_dir(path: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        h.update(str(file.relative_to(path)).encode())
        digest_file(file, h)
    return h.hexdigest()


class PreparedData(BaseModel):
    """Validated, normalised chat JSONL splits and their combined content digest."""

    train: str
    validation: str | None = None
    test: str | None = None
    digest: str
    rows: dict[str, int] = Field(default_factory=dict)
    sources: dict[str, str] = Field(default_factory=dict, description="Original URI of each split.")


class ModelDir(BaseModel):
    """A Hugging Face model folder (weights + tokenizer) and its content digest."""

    path: str
    digest: str
    architecture: str = ""
    parameters: int = 0

    @classmethod
    def from_path(cls, path: str | Path, architecture: str = "", parameters: int = 0) -> ModelDir:
        """Describe a saved model folder, digesting its contents."""
        return cls(path=str(path), digest=digest_dir(Path(path)), architecture=architecture,
                   parameters=parameters)


class TrainResult(BaseModel):
    """What a training stage produced: the model and the numbers to log."""

    model: ModelDir
    stage: str
    method: str = ""
    losses: list[float] = Field(default_factory=list, description="Training loss per step.")
    val_losses: list[tuple[int, float]] = Field(default_factory=list, description="(step, validation loss).")
    seconds: float = 0.0
    trainable_parameters: int = 0


class Artifact(BaseModel):
    """One quantized artifact: a folder (ONNX) or a file (GGUF)."""

    name: str = Field(description="e.g. onnx-int4, olive-gptq-int4, gguf-Q4_K_M")
    kind: Literal["onnx", "gguf"]
    path: str
    digest: str
    size_bytes: int


@dataclass
class Generation:
    """Tokens from one greedy request and its timing."""

    tokens: list[int]
    ttft_s: float
    total_s: float


class ModelRelease(BaseModel):
    """A registered model version resolved to local files, ready for a deployment target."""

    name: str
    version: str
    onnx_dir: str = Field(description="onnxruntime-genai folder (the served artifact).")
    gguf: dict[str, str] = Field(default_factory=dict, description="GGUF type → file, where built.")
    model_id: str = Field("", description="The MLflow logged model (m-…) the version is, where it is one.")

    @property
    def ref(self) -> str:
        """``name/version``."""
        return f"{self.name}/{self.version}"
