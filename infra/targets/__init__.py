"""Deployment targets: one interface (deploy, status, rollback, undeploy), one module each."""

from pathlib import Path

from infra.targets.base import DeployError, Deployment, Target
from infra.targets.config import DeployConfig, FoundryTargetConfig, LocalTargetConfig, OllamaTargetConfig

TARGETS = ("local", "foundry", "ollama")


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
    raise DeployError(f"unknown target config {cfg!r}; targets: {', '.join(TARGETS)}")


__all__ = ["TARGETS", "DeployConfig", "DeployError", "Deployment", "Target", "make_target"]
