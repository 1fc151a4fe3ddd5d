"""Bindings: which deployment targets follow which ``model@alias`` (``configs/bindings.yaml``, path configurable)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

from infra.fleet.models import GoldenPrompt, RolloutPolicy, VariantPolicy
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


class FleetBinding(StageConfig):
    """A group of edge devices that follows ``model@alias``: every alias move rolls out to it in waves."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Fleet name (slmops fleet status NAME).")
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Registered model name.")
    alias: str = Field("champion", pattern=r"^[A-Za-z0-9_-]+$", description="Alias the fleet follows.")
    group: dict[str, str] = Field(description="Label selector: the devices with all of these labels.")
    policy: RolloutPolicy = Field(default_factory=RolloutPolicy, description="Waves, thresholds, budget.")
    variants: VariantPolicy = Field(default_factory=VariantPolicy, description="Variant per hardware class.")
    golden: list[GoldenPrompt] = Field(default_factory=lambda: [GoldenPrompt(prompt="Reverse: a b c")],
                                       min_length=1, description="Prompts every device answers on the new "
                                       "version before it switches.")
    approval_timeout_s: int = Field(3600, gt=0, description="With policy.approval: how long the rollout flow "
                                    "waits for a person between waves (the wave stays paused after that).")

    @property
    def key(self) -> str:
        return f"{self.model}@{self.alias} → fleet/{self.name}"


class BindingsFile(StageConfig):
    """The bindings file: targets and fleets, and the aliases they follow."""

    bindings: list[Binding] = Field(default_factory=list, description="Targets and the aliases they follow.")
    fleets: list[FleetBinding] = Field(default_factory=list, description="Device fleets and the aliases they "
                                       "follow.")


def load_bindings(path: str | Path) -> list[Binding]:
    """Every target binding of ``path`` (a missing file means none), validated; errors name the key."""
    return load_bindings_file(path).bindings


def fleet_bindings(path: str | Path, model: str | None = None, alias: str | None = None) -> list[FleetBinding]:
    """The fleets of ``path`` (those following ``model@alias`` when given)."""
    return [f for f in load_bindings_file(path).fleets if model is None or (f.model, f.alias) == (model, alias)]


def load_bindings_file(path: str | Path) -> BindingsFile:
    """The whole bindings file, validated (fleet names unique)."""
    path = Path(path)
    if not path.is_file():
        return BindingsFile()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        found = BindingsFile.model_validate(raw)
        names = [f.name for f in found.fleets]
        if len(set(names)) != len(names):
            raise ConfigError(f"{path}: fleet names must be unique, got {names}")
        return found
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def bindings_for(path: str | Path, model: str, alias: str) -> list[Binding]:
    """The bindings following ``model@alias``; those without approval first."""
    found = [b for b in load_bindings(path) if (b.model, b.alias) == (model, alias)]
    return sorted(found, key=lambda b: b.approval == "required")
