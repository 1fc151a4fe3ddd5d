"""Finding a model's GGUF blob in a local Ollama model store through its manifest.

Layout (Ollama's documented store): ``$OLLAMA_MODELS/manifests/<host>/<namespace>/<model>/<tag>`` is an OCI-style
JSON manifest whose layer of media type ``application/vnd.ollama.image.model`` names the weights blob by digest;
blobs live in ``$OLLAMA_MODELS/blobs/sha256-<hex>`` (``sha256:<hex>`` in old stores).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tasks.errors import ModelError

MODEL_LAYER = "application/vnd.ollama.image.model"
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


def default_store() -> Path:
    """``OLLAMA_MODELS``, else the user's ``~/.ollama/models``, else the Linux service's store."""
    if os.environ.get("OLLAMA_MODELS"):
        return Path(os.environ["OLLAMA_MODELS"]).expanduser()
    user = Path.home() / ".ollama" / "models"
    service = Path("/usr/share/ollama/.ollama/models")
    return service if not user.is_dir() and service.is_dir() else user


def manifest_path(store: Path, name: str) -> Path:
    """Where the manifest of ``[host/][namespace/]model[:tag]`` lies in ``store``."""
    path, _, tag = name.partition(":")
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 3 or any(p in (".", "..") for p in parts) or "/" in tag:
        raise ModelError(f"ollama:{name}: not a model name of the form [host/][namespace/]model[:tag]")
    parts = [DEFAULT_HOST, DEFAULT_NAMESPACE][: 3 - len(parts)] + parts
    return store / "manifests" / Path(*parts) / (tag or DEFAULT_TAG)


def installed_models(store: Path) -> list[str]:
    """Every ``model:tag`` the store has a manifest for (short names for the default registry)."""
    root = store / "manifests"
    names = []
    for manifest in sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []:
        host, namespace, *model, tag = manifest.relative_to(root).parts
        prefix = "" if (host, namespace) == (DEFAULT_HOST, DEFAULT_NAMESPACE) else f"{host}/{namespace}/"
        names.append(f"{prefix}{'/'.join(model)}:{tag}")
    return names


def find_ollama_gguf(name: str, store: Path | None = None) -> Path:
    """The GGUF blob of Ollama model ``name`` (``model[:tag]``); errors name the models the store has."""
    store = store or default_store()
    manifest = manifest_path(store, name)
    if not manifest.is_file():
        have = installed_models(store)
        raise ModelError(f"ollama:{name}: no such model in the Ollama store {store}; it has "
                         f"{', '.join(have) if have else 'no models'} (OLLAMA_MODELS sets the store)")
    try:
        layers = json.loads(manifest.read_text())["layers"]
        digest = next(layer["digest"] for layer in layers if layer.get("mediaType") == MODEL_LAYER)
    except (ValueError, KeyError, TypeError, StopIteration):
        raise ModelError(f"ollama:{name}: manifest {manifest} has no {MODEL_LAYER} layer") from None
    algorithm, _, hexdigest = digest.partition(":")
    for blob in (store / "blobs" / f"{algorithm}-{hexdigest}", store / "blobs" / digest):
        if blob.is_file():
            return blob
    raise ModelError(f"ollama:{name}: the manifest names weights blob {digest}, which is missing from "
                     f"{store / 'blobs'} (pull the model again with `ollama pull {name}`)")
