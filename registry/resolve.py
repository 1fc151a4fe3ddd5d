"""Model references (``name@alias`` or ``name/version``) resolved through the MLflow registry to local files."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task

from registry.errors import RegistryError
from registry.history import aliases, require_model, versions
from registry.tracking import setup_tracking
from tasks.records import ModelRelease

REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")


def parse_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``(name, alias, version)`` of a reference, or a RegistryError showing the accepted forms."""
    match = REF.match(ref)
    if not match:
        raise RegistryError(f"model reference {ref!r} is neither NAME@ALIAS (demo-slm@champion) "
                            "nor NAME/VERSION (demo-slm/3)")
    return match["name"], match["alias"], match["version"]


def version_of(client: MlflowClient, ref: str) -> tuple[str, str]:
    """``(name, version)`` that ``ref`` points at now, or a RegistryError listing what exists."""
    name, alias, version = parse_ref(ref)
    require_model(client, name)
    if alias:
        current = aliases(client, name)
        if alias not in current:
            raise RegistryError(f"{name} has no alias {alias!r}; aliases: "
                                f"{', '.join(f'{a}→{v}' for a, v in sorted(current.items())) or 'none'}")
        return name, current[alias]
    if version not in versions(client, name):
        raise RegistryError(f"{name} has no version {version!r}; versions: {', '.join(versions(client, name))}")
    return name, version


def version_cache(root: Path, name: str, version: str) -> Path:
    """Local folder holding the downloaded artifacts of one model version."""
    return Path(root) / "cache" / "registry" / name / str(version)


def download_served(root: Path, name: str, version: str, run_id: str) -> Path:
    """The version's served ONNX folder, downloaded once per version (atomically: never a half folder)."""
    dest = version_cache(root, name, version)
    served = dest / "served"
    if (served / "genai_config.json").is_file():
        return served
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="served", dst_path=str(staging))
        shutil.rmtree(served, ignore_errors=True)
        (staging / "served").replace(served)
    except MlflowException as exc:
        raise RegistryError(f"cannot download the artifacts of {name}/{version}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return served


def resolve_release(root: Path, ref: str) -> ModelRelease:
    """Find the version ``ref`` points at and download its served ONNX folder and GGUF files (cached).

    An adapter-only version (registry/adapters.py) resolves to its base's folder with the adapter filed under
    the version's model name, which the server then answers that name with.
    """
    from registry.adapters import ADAPTER_KIND, BASE_TAG, KIND_TAG, assemble_adapter_release

    setup_tracking(root)
    client = MlflowClient()
    name, version = version_of(client, ref)
    mv = client.get_model_version(name, version)
    dest = version_cache(root, name, version)
    if mv.tags.get(KIND_TAG) == ADAPTER_KIND:
        served = assemble_adapter_release(root, client, name, version, mv.run_id, mv.tags[BASE_TAG], dest)
        return ModelRelease(name=name, version=str(version), onnx_dir=str(served))
    served = download_served(root, name, version, mv.run_id)
    try:
        gguf = {}
        for item in client.list_artifacts(mv.run_id, "gguf"):
            local = dest / item.path
            if not local.is_file():
                mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=item.path, dst_path=str(dest))
            gguf[Path(item.path).stem.removeprefix("model-")] = str(local)
    except MlflowException as exc:
        raise RegistryError(f"cannot download the artifacts of {name}/{version}: {exc}") from None
    return ModelRelease(name=name, version=str(version), onnx_dir=str(served), gguf=gguf)


resolve_release_task = task(resolve_release, name="resolve-model", retries=2, retry_delay_seconds=2)
