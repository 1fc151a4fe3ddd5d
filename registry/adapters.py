"""Multi-LoRA in the registry: a base version (a multi-LoRA folder) and adapter-only versions beside it.

An adapter-only version holds one ``.onnx_adapter`` file and names its base version in a tag; resolving it
(``registry/resolve.py``) assembles the base's served folder with the adapter filed under the version's own model
name, which the serving runtime answers that name with. So promoting an adapter version redeploys like any
other version, and a deployment holds the base in memory once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from prefect import task

from registry.errors import RegistryError
from registry.history import require_model
from registry.models import RegisteredVersion, find_identical
from registry.resolve import download_served, version_of
from registry.tracking import setup_tracking
from tasks.quantize.adapters import lora_inputs
from tasks.records import digest_dir, digest_file
from tasks.served_folder import ADAPTER_SUFFIX, ADAPTERS_DIR, adapter_files

KIND_TAG, BASE_TAG = "slmops.kind", "slmops.base"
BASE_KIND, ADAPTER_KIND = "multi-lora-base", "lora-adapter"


def _ensure_model(client: MlflowClient, name: str, description: str) -> None:
    try:
        require_model(client, name)
    except RegistryError:
        client.create_registered_model(name, description=description)


def register_multi_lora(root: Path, base_name: str, folder: Path) -> list[RegisteredVersion]:
    """Register a multi-LoRA folder: the base (with every adapter it holds) as a version of ``base_name``, and each
    adapter alone as a version of the registered model named like the adapter, tagged with that base version.
    A folder whose base and adapters are all registered already (same digests) reuses those versions."""
    folder = Path(folder)
    if not lora_inputs(folder):
        raise RegistryError(f"{folder} has no LoRA inputs: build it with `slmops multi-lora`")
    setup_tracking(root)
    client = MlflowClient()
    files = adapter_files(folder)
    reused = _reuse(client, base_name, folder, files)
    if reused:
        return reused
    with mlflow.start_run(run_name=f"multi-lora {base_name}") as run:
        client.log_artifacts(run.info.run_id, str(folder), "served")
        for name, file in files.items():
            client.log_artifact(run.info.run_id, str(file), f"adapter-{name}")
    run_id = run.info.run_id
    _ensure_model(client, base_name, f"Multi-LoRA base model registered by slmops ({base_name}).")
    base = client.create_model_version(base_name, source=f"runs:/{run_id}/served", run_id=run_id, tags={
        KIND_TAG: BASE_KIND, "slmops.served_digest": digest_dir(folder), "slmops.adapters": ",".join(files)})
    registered = [RegisteredVersion(name=base_name, version=str(base.version), run_id=run_id, aliases=[])]
    for name, file in files.items():
        _ensure_model(client, name, f"LoRA adapter over {base_name} registered by slmops.")
        mv = client.create_model_version(name, source=f"runs:/{run_id}/adapter-{name}", run_id=run_id, tags={
            KIND_TAG: ADAPTER_KIND, BASE_TAG: f"{base_name}/{base.version}", "slmops.served_digest": digest_file(file)})
        registered.append(RegisteredVersion(name=name, version=str(mv.version), run_id=run_id, aliases=[]))
    return registered


def _reuse(client: MlflowClient, base_name: str, folder: Path, files: dict[str, Path]) -> list[RegisteredVersion]:
    """The registered versions of this very folder and its adapters, when all are registered already (a rerun)."""
    found = []
    for name, digest in [(base_name, digest_dir(folder)), *((n, digest_file(f)) for n, f in files.items())]:
        version = find_identical(client, name, digest)
        if version is None:
            return []
        found.append(RegisteredVersion(name=name, version=version, run_id=client.get_model_version(
            name, version).run_id, aliases=[], reused=True))
    return found


def assemble_adapter_release(root: Path, client: MlflowClient, name: str, version: str, run_id: str,
                             base_ref: str, dest: Path) -> Path:
    """``dest/served``: the base version's served folder with this adapter version's file as
    ``adapters/<name>.onnx_adapter`` (files hard-linked where the filesystem allows), made once per version."""
    served = dest / "served"
    if (served / ADAPTERS_DIR / f"{name}{ADAPTER_SUFFIX}").is_file():
        return served
    base_name, base_version = version_of(client, base_ref)
    base = client.get_model_version(base_name, base_version)
    base_dir = download_served(root, base_name, base_version, base.run_id, base.source)
    staging = dest / ".assembling"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(base_dir, staging, copy_function=_link_or_copy)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"adapter-{name}",
                                                dst_path=str(staging / ".download"))
    files = list(Path(local).glob(f"*{ADAPTER_SUFFIX}"))
    if len(files) != 1:
        raise RegistryError(f"{name}/{version}: expected one {ADAPTER_SUFFIX} file in its artifacts, found {files}")
    (staging / ADAPTERS_DIR).mkdir(exist_ok=True)
    files[0].replace(staging / ADAPTERS_DIR / f"{name}{ADAPTER_SUFFIX}")
    shutil.rmtree(staging / ".download")
    shutil.rmtree(served, ignore_errors=True)
    staging.replace(served)
    return served


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


register_multi_lora_task = task(register_multi_lora, name="register-adapters")
