"""The served-folder format, read in one place: an onnxruntime-genai folder (``genai_config.json``, the decoder's
ONNX file, the tokenizer) and, in a multi-LoRA build, ``adapters/<name>.onnx_adapter``.

Everything that decodes a served folder — the serving engine, the gate's evaluation, the batch executors, the
deploy targets — asks this module what the folder says: its context window, end-of-sequence ids (always a
tuple: a model may have several), pad id, sampling defaults, decoder layout and adapters. It imports nothing
of the stages, so the serving runtime does not pull in quantization or training.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.errors import SlmopsError

CONFIG_FILE = "genai_config.json"
ADAPTERS_DIR = "adapters"
ADAPTER_SUFFIX = ".onnx_adapter"

_DEFAULT_NAMES = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                  "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value",
                  "logits": "logits", "present_key_names": "present.%d.key",
                  "present_value_names": "present.%d.value"}


class NotAServedFolder(SlmopsError):
    """A folder lacks ``genai_config.json`` or the fields decoding needs."""


def is_served_folder(path: str | Path) -> bool:
    """True when ``path`` holds a ``genai_config.json`` (its contents are checked by ``ServedFolder.read``)."""
    return (Path(path) / CONFIG_FILE).is_file()


def read_genai_config(path: str | Path) -> dict[str, Any]:
    """``path``'s ``genai_config.json`` as a dict (NotAServedFolder when it is missing or not JSON)."""
    file = Path(path) / CONFIG_FILE
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise NotAServedFolder(f"{path} is not an onnxruntime-genai folder (no {CONFIG_FILE})") from None
    except json.JSONDecodeError as exc:
        raise NotAServedFolder(f"{file}: not valid JSON ({exc})") from None


def adapter_files(path: str | Path) -> dict[str, Path]:
    """The LoRA adapters a multi-LoRA folder holds, by name (empty for a plain build)."""
    folder = Path(path) / ADAPTERS_DIR
    return {p.name[: -len(ADAPTER_SUFFIX)]: p for p in sorted(folder.glob(f"*{ADAPTER_SUFFIX}"))}


def served_folders_in(root: str | Path) -> list[Path]:
    """Every served folder at or below ``root`` (a downloaded MLflow Model holds one under ``artifacts/``)."""
    return sorted(p.parent for p in Path(root).rglob(CONFIG_FILE))


def with_adapter(base: str | Path, adapter_file: str | Path, name: str, dest: str | Path) -> Path:
    """``dest``: the served folder ``base`` (files hard-linked where the filesystem allows) with ``adapter_file``
    as ``adapters/<name>.onnx_adapter``; written beside ``dest`` and moved in whole, so ``dest`` is never half."""
    dest = Path(dest)
    staging = dest.with_name(f".{dest.name}.assembling")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(base, staging, copy_function=_link_or_copy)
    (staging / ADAPTERS_DIR).mkdir(exist_ok=True)
    shutil.copy2(adapter_file, staging / ADAPTERS_DIR / f"{name}{ADAPTER_SUFFIX}")
    shutil.rmtree(dest, ignore_errors=True)
    staging.replace(dest)
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@dataclass(frozen=True)
class DecoderLayout:
    """The decoder's file, input/output names and cache shape, as ``genai_config.json`` gives them."""

    file: Path
    layers: int
    kv_heads: int
    head_size: int
    context_length: int
    vocab_size: int
    names: dict[str, str]

    def past(self, layer: int) -> tuple[str, str]:
        """Input names of ``layer``'s past key and value."""
        return self.names["past_key_names"] % layer, self.names["past_value_names"] % layer

    def present(self, layer: int) -> tuple[str, str]:
        """Output names of ``layer``'s present key and value."""
        return self.names["present_key_names"] % layer, self.names["present_value_names"] % layer


@dataclass(frozen=True)
class ServedFolder:
    """What a served folder says about generation."""

    path: Path
    context_length: int
    vocab_size: int
    eos_ids: tuple[int, ...]
    pad_id: int
    decoder: DecoderLayout
    search: dict[str, Any] = field(default_factory=dict)  # the folder's sampling defaults ("search" section)
    adapters: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> ServedFolder:
        """Read ``path``'s ``genai_config.json`` and list its adapters."""
        path = Path(path)
        config = read_genai_config(path)
        try:
            model, decoder = config["model"], config["model"]["decoder"]
            raw_eos = model["eos_token_id"]
            eos_ids = tuple(int(t) for t in (raw_eos if isinstance(raw_eos, list) else [raw_eos]))
            layout = DecoderLayout(path / decoder["filename"], int(decoder["num_hidden_layers"]),
                                   int(decoder["num_key_value_heads"]), int(decoder["head_size"]),
                                   int(model["context_length"]), int(model["vocab_size"]),
                                   _DEFAULT_NAMES | decoder.get("inputs", {}) | decoder.get("outputs", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise NotAServedFolder(f"{path / CONFIG_FILE}: missing or malformed {exc}") from None
        if not eos_ids:
            raise NotAServedFolder(f"{path / CONFIG_FILE}: model.eos_token_id is empty")
        # onnxruntime-genai masks the model's own pad id and derives each row's length from it
        pad = int(model.get("pad_token_id", min(eos_ids)))
        return cls(path, layout.context_length, layout.vocab_size, eos_ids, pad, layout,
                   dict(config.get("search", {})), adapter_files(path))

    def is_eos(self, token: int) -> bool:
        """True when ``token`` ends a sequence (any of the folder's end-of-sequence ids)."""
        return token in self.eos_ids
