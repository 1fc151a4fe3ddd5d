"""Errors that carry what the user needs to fix the problem."""


class SlmopsError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class ConfigError(SlmopsError):
    """A configuration key or value is invalid; the message names the key."""


class DatasetError(SlmopsError):
    """A dataset file is unreadable or has malformed rows; the message names file and line."""

    def __init__(self, path: str, problems: list[str]):
        self.path = path
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in dataset {path}:\n{shown}{more}")


class DataSourceError(DatasetError):
    """A dataset could not be fetched (network, permissions); possibly transient."""


class ModelError(SlmopsError):
    """A model reference cannot be resolved or loaded."""


class TrainingError(SlmopsError):
    """Training cannot run as configured on this machine (e.g. QLoRA without CUDA)."""
