"""Model references (``name@alias`` or ``name/version``) looked up in the MLflow registry, and a version's served folder
downloaded (registry/releases.py builds a deploy's release from them)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import RegistryError
from registry.history import aliases, require_model, versions
from tasks.records import digest_dir
from tasks.served_folder import is_served_folder, served_folders_in

DIGEST_TAG = "slmops.served_digest"  # sha256 of a version's served folder (tasks.records.digest_dir)
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


def download_served(root: Path, name: str, version: str, run_id: str, source: str | None = None,
                    digest: str | None = None) -> Path:
    """The version's served ONNX folder, downloaded once per version (atomically: never a half folder).

    ``source`` is the version's: an MLflow Model (``models:/m-…``, what the pipeline registers; the folder is its
    ``served`` artifact) or, for versions registered before slmops logged MLflow Models, the run's ``served``
    folder itself (``runs:/RUN/served``, also the default). ``digest`` is the version's ``slmops.served_digest``:
    an MLflow Model's folder must match it, and the cache is only used while it holds that digest (a registry made
    anew, with other bytes under the same name and version, is downloaded again), so the cache is only a cache."""
    dest = version_cache(root, name, version)
    served, marker = dest / "served", dest / "served.sha256"
    if is_served_folder(served) and (digest is None or (marker.is_file() and marker.read_text() == digest)):
        return served
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    try:
        if source and not source.startswith("runs:/"):
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging / "model"))
            found = served_folders_in(staging / "model")
            if len(found) != 1:
                raise RegistryError(f"{name}/{version}: its model {source} holds {len(found)} served folders, not one")
            folder = found[0]
            if digest and digest_dir(folder) != digest:
                raise RegistryError(f"{name}/{version}: the served folder downloaded from {source} does not match "
                                    f"the version's digest {digest[:12]}… (changed or damaged in the store)")
        else:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="served", dst_path=str(staging))
            folder = staging / "served"
        shutil.rmtree(served, ignore_errors=True)
        folder.replace(served)
        marker.unlink(missing_ok=True)
        if digest:
            marker.write_text(digest)
    except MlflowException as exc:
        raise RegistryError(f"cannot download the artifacts of {name}/{version}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return served
