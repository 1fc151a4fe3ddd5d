"""``deploy_model``: resolve a model reference through the registry and deploy it to a target."""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from pydantic import Field

from infra.targets import DeployConfig, Deployment, make_target
from registry.costs import log_deploy_cost
from registry.releases import resolve_release_task
from tasks.records import ModelRelease
from tasks.settings import get_settings


def deploy_release(release: ModelRelease, target: DeployConfig) -> Deployment:
    """Deploy a resolved release; returns only once the target serves it and the golden prompt passed."""
    return make_target(target, get_settings().root).deploy(release)


deploy_release_task = task(deploy_release, name="deploy")


@flow(name="deploy_model")
def deploy_model(model_ref: Annotated[str, Field(description="NAME@ALIAS (demo-slm@champion) or NAME/VERSION "
                                                    "(demo-slm/3), resolved through the registry when the run "
                                                    "starts.")],
                 target: DeployConfig) -> Deployment:
    """Deploy ``name@alias`` or ``name/version`` to ``target`` (local, foundry, ollama or sagemaker)."""
    release = resolve_release_task(get_settings().root, model_ref)
    deployment = deploy_release_task(release, target)
    get_run_logger().info("%s version %s serves at %s", release.name, release.version, deployment.endpoint)
    if deployment.details.get("cost_per_hour") is not None:
        d = deployment.details
        create_table_artifact(key="deploy-cost", description=f"Cost of {deployment.name} on {deployment.target}",
                              table=[{"deployment": deployment.name, "version": release.version,
                                      "instances": d.get("instance_count"), "instance_type": d.get("instance_type"),
                                      "usd_per_hour": d["cost_per_hour"]}])
        task(log_deploy_cost, name="log-deploy-cost")(
            get_settings().root, deployment.name, deployment.target, release.name, str(release.version),
            d["cost_per_hour"], d.get("instance_count"), d.get("instance_type"))
    return deployment
