"""A model reference resolved to what a deploy or a batch job runs: the version's served folder and its GGUF files.

Above both the plain lookups (registry/resolve.py) and the adapter-only versions (registry/adapters.py), so
neither imports the other back.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task

from registry.adapters import ADAPTER_KIND, BASE_TAG, KIND_TAG, assemble_adapter_release
from registry.errors import RegistryError
from registry.resolve import DIGEST_TAG, download_served, version_cache, version_of
from registry.tracking import setup_tracking
from tasks.records import ModelRelease


def resolve_release(root: Path, ref: str) -> ModelRelease:
    """Find the version ``ref`` points at and download its served ONNX folder and GGUF files (cached).

    An adapter-only version (registry/adapters.py) resolves to its base's folder with the adapter filed under
    the version's model name, which the server then answers that name with.
    """
    setup_tracking(root)
    client = MlflowClient()
    name, version = version_of(client, ref)
    mv = client.get_model_version(name, version)
    dest = version_cache(root, name, version)
    if mv.tags.get(KIND_TAG) == ADAPTER_KIND:
        served = assemble_adapter_release(root, client, name, version, mv.run_id, mv.tags[BASE_TAG], dest,
                                          mv.source)
        return ModelRelease(name=name, version=str(version), onnx_dir=str(served),
                            model_id=getattr(mv, "model_id", None) or "")
    served = download_served(root, name, version, mv.run_id, mv.source, mv.tags.get(DIGEST_TAG))
    try:
        gguf = {}
        for item in client.list_artifacts(mv.run_id, "gguf"):
            local = dest / item.path
            if not local.is_file():
                mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path=item.path, dst_path=str(dest))
            gguf[Path(item.path).stem.removeprefix("model-")] = str(local)
    except MlflowException as exc:
        raise RegistryError(f"cannot download the artifacts of {name}/{version}: {exc}") from None
    return ModelRelease(name=name, version=str(version), onnx_dir=str(served), gguf=gguf,
                        model_id=getattr(mv, "model_id", None) or "")


resolve_release_task = task(resolve_release, name="resolve-model", retries=2, retry_delay_seconds=2)
