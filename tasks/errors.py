"""Errors that carry what the user needs to fix the problem."""


class SlmopsError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class ConfigError(SlmopsError):
    """A configuration key or value is invalid; the message names the key."""


class DatasetError(SlmopsError):
    """A dataset file is unreadable or has malformed rows; the message names file and line."""

    SHOWN = 20

    def __init__(self, path: str, problems: list[str], summary: str | None = None):
        self.path = path
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[: self.SHOWN])
        more = f"\n  … and {len(problems) - self.SHOWN} more" if len(problems) > self.SHOWN else ""
        super().__init__(f"{summary or f'{len(problems)} problem(s) in dataset {path}'}:\n{shown}{more}")


class DataSourceError(DatasetError):
    """A dataset could not be fetched (network, permissions); possibly transient."""


class ModelError(SlmopsError):
    """A model reference cannot be resolved or loaded."""


class TrainingError(SlmopsError):
    """Training cannot run as configured on this machine (e.g. QLoRA without CUDA)."""


class QuantizeError(SlmopsError):
    """A quantization tool failed or produced no model."""
