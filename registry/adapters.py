"""Multi-LoRA in the registry: a base version (a multi-LoRA folder) and adapter-only versions beside it.

Both are MLflow Models (registry/pyfunc.py). An adapter-only version holds one ``.onnx_adapter`` file and names
its base version in a tag (and its base model in its MLflow Model, which ``mlflow.pyfunc`` loads it over);
resolving it (``registry/resolve.py``) assembles the base's served folder with the adapter filed under the
version's own model name, which the serving runtime answers that name with. So promoting an adapter version
redeploys like any other version, and a deployment holds the base in memory once.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from prefect import task

from registry.errors import RegistryError
from registry.history import require_model
from registry.models import RegisteredVersion, find_identical
from registry.pyfunc import log_adapter_model, log_served_model
from registry.resolve import DIGEST_TAG, download_served, version_of
from registry.tracking import setup_tracking
from tasks.quantize.adapters import lora_inputs
from tasks.records import digest_dir, digest_file
from tasks.served_folder import ADAPTER_SUFFIX, ADAPTERS_DIR, adapter_files, with_adapter

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
        run_id = run.info.run_id
        base_model = log_served_model(run_id, folder)
        adapter_models = {name: log_adapter_model(run_id, name, file, base_model.model_uri)
                          for name, file in files.items()}
    _ensure_model(client, base_name, f"Multi-LoRA base model registered by slmops ({base_name}).")
    base = client.create_model_version(base_name, source=base_model.model_uri, run_id=run_id,
                                       model_id=base_model.model_id, tags={
        KIND_TAG: BASE_KIND, DIGEST_TAG: digest_dir(folder), "slmops.adapters": ",".join(files)})
    registered = [RegisteredVersion(name=base_name, version=str(base.version), run_id=run_id, aliases=[])]
    for name, file in files.items():
        _ensure_model(client, name, f"LoRA adapter over {base_name} registered by slmops.")
        model = adapter_models[name]
        mv = client.create_model_version(name, source=model.model_uri, run_id=run_id, model_id=model.model_id, tags={
            KIND_TAG: ADAPTER_KIND, BASE_TAG: f"{base_name}/{base.version}", DIGEST_TAG: digest_file(file)})
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
                             base_ref: str, dest: Path, source: str | None = None) -> Path:
    """``dest/served``: the base version's served folder with this adapter version's file as
    ``adapters/<name>.onnx_adapter`` (files hard-linked where the filesystem allows), made once per version.

    ``source`` is the adapter version's: an MLflow Model (``models:/m-…``) holding the file, or, for versions
    registered before, the run's ``adapter-<name>`` folder (the default)."""
    served = dest / "served"
    if (served / ADAPTERS_DIR / f"{name}{ADAPTER_SUFFIX}").is_file():
        return served
    base_name, base_version = version_of(client, base_ref)
    base = client.get_model_version(base_name, base_version)
    base_dir = download_served(root, base_name, base_version, base.run_id, base.source, base.tags.get(DIGEST_TAG))
    dest.mkdir(parents=True, exist_ok=True)
    download = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        if source and not source.startswith("runs:/"):
            local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(download))
        else:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"adapter-{name}",
                                                        dst_path=str(download))
        files = list(Path(local).rglob(f"*{ADAPTER_SUFFIX}"))
        if len(files) != 1:
            raise RegistryError(f"{name}/{version}: expected one {ADAPTER_SUFFIX} file in its artifacts, found "
                                f"{[f.name for f in files]}")
        return with_adapter(base_dir, files[0], name, served)
    except MlflowException as exc:
        raise RegistryError(f"cannot download the artifacts of {name}/{version}: {exc}") from None
    finally:
        shutil.rmtree(download, ignore_errors=True)


register_multi_lora_task = task(register_multi_lora, name="register-adapters")
