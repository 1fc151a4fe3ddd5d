"""Reference profiles on model versions: stored where a batch job finds them; absent on older versions."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from registry.batch import PROFILE_TAG, reference_profile, store_profile
from registry.tracking import setup_tracking
from tasks.batch.profile import FeatureProfile, Profile
from tasks.records import ModelRelease


def test_a_stored_profile_is_the_reference_of_its_version(tmp_path: Path) -> None:
    setup_tracking(tmp_path)
    client = MlflowClient()
    client.create_registered_model("profiled")
    for _ in range(2):
        with mlflow.start_run() as run:
            mlflow.log_text("w", "served/weights.txt")
        client.create_model_version("profiled", source=f"runs:/{run.info.run_id}/served", run_id=run.info.run_id)
    profile = Profile(rows=3, features={"roles": FeatureProfile(kind="categorical", bins=["user", "(other)"],
                                                                shares=[1.0, 0.0])})
    store_profile(client, "profiled", "2", profile)
    assert client.get_model_version("profiled", "2").tags[PROFILE_TAG] == "profile.json"
    release = ModelRelease(name="profiled", version="2", onnx_dir=str(tmp_path))
    assert reference_profile(tmp_path, release) == profile
    assert reference_profile(tmp_path, release.model_copy(update={"version": "1"})) is None
