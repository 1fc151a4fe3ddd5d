"""Deployment targets: one interface (deploy, status, rollback, undeploy), one module each."""

from pathlib import Path

from infra.targets.base import DeployError, Deployment, DeploymentStatus, Target
from infra.targets.config import (
    DeployConfig,
    FoundryTargetConfig,
    LocalTargetConfig,
    OllamaTargetConfig,
    SageMakerConfig,
)

TARGETS = ("local", "foundry", "ollama", "sagemaker")
CONFIGS = {"local": LocalTargetConfig, "foundry": FoundryTargetConfig, "ollama": OllamaTargetConfig,
           "sagemaker": SageMakerConfig}


def make_target(cfg: DeployConfig, root: Path) -> Target:
    """The target implementation for a config."""
    if isinstance(cfg, LocalTargetConfig):
        from infra.targets.local import LocalTarget

        return LocalTarget(cfg, root)
    if isinstance(cfg, FoundryTargetConfig):
        from infra.targets.foundry import FoundryTarget

        return FoundryTarget(cfg, root)
    if isinstance(cfg, OllamaTargetConfig):
        from infra.targets.ollama import OllamaTarget

        return OllamaTarget(cfg, root)
    if isinstance(cfg, SageMakerConfig):
        from infra.targets.sagemaker import SageMakerTarget

        return SageMakerTarget(cfg, root)
    raise DeployError(f"unknown target config {cfg!r}; targets: {', '.join(TARGETS)}")


def probe_all(root: Path, targets: tuple[str, ...] = TARGETS) -> list[DeploymentStatus]:
    """Probe every recorded deployment of ``targets`` (each probe reads where to look from its record)."""
    from infra.targets.store import DeploymentStore

    return [status for kind in targets if DeploymentStore(root, kind).all()
            for status in make_target(CONFIGS[kind](), root).statuses()]


__all__ = ["TARGETS", "DeployConfig", "DeployError", "Deployment", "DeploymentStatus", "Target", "make_target",
           "probe_all"]
