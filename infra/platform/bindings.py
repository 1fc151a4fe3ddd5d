"""Bindings: which deployment targets follow which ``model@alias`` (``configs/bindings.yaml``, path configurable)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from infra.targets.config import DeployConfig
from tasks.config import StageConfig, format_validation_error
from tasks.errors import ConfigError


class Binding(StageConfig):
    """One target that serves whatever version ``model@alias`` names."""

    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Registered model name.")
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$", description="Alias the target follows.")
    target: DeployConfig = Field(description="Where and how to serve (the deploy config of one target).")
    approval: Literal["none", "required"] = Field("none", description="required: a redeploy waits for a person "
                                                  "to approve it in the Prefect UI (approve yes/no, comment).")
    approval_timeout_s: int = Field(3600, gt=0, description="How long a redeploy waits for approval; no answer "
                                    "by then changes nothing.")

    @property
    def deployment_name(self) -> str:
        """Name of the deployment on its target (the target's ``name``, else the model name)."""
        return self.target.name or self.model

    @property
    def key(self) -> str:
        """``model@alias → target/deployment`` for logs and tables."""
        return f"{self.model}@{self.alias} → {self.target.target}/{self.deployment_name}"


class BindingsFile(StageConfig):
    """The bindings file: a list of bindings."""

    bindings: list[Binding] = Field(default_factory=list, description="Targets and the aliases they follow.")


def load_bindings(path: str | Path) -> list[Binding]:
    """Every binding of ``path`` (a missing file means none), validated; errors name the key."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return BindingsFile.model_validate(raw).bindings
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def bindings_for(path: str | Path, model: str, alias: str) -> list[Binding]:
    """The bindings following ``model@alias``; those without approval first."""
    found = [b for b in load_bindings(path) if (b.model, b.alias) == (model, alias)]
    return sorted(found, key=lambda b: b.approval == "required")
