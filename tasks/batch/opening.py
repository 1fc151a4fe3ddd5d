"""Opening the executor a batch config names: the local one, or a remote one a flow registered (tasks know no
cloud: flows/batch.py registers ``sagemaker``)."""

from __future__ import annotations

from collections.abc import Callable

from tasks.batch.config import BatchConfig
from tasks.batch.executors import Executor
from tasks.batch.local import LocalExecutor
from tasks.errors import SlmopsError
from tasks.records import ModelRelease

Opener = Callable[[ModelRelease, BatchConfig], Executor]
OPENERS: dict[str, Opener] = {}  # remote executors, registered by the layer that knows them (flows/batch.py)


def register_executor(kind: str, opener: Opener) -> None:
    """Make ``executor: {type: kind}`` open with ``opener`` (tasks know no cloud; the flows wire it in)."""
    OPENERS[kind] = opener


def make_executor(release: ModelRelease, config: BatchConfig) -> Executor:
    """The executor ``config.executor`` names, opened on ``release``."""
    if config.executor.type == "local":
        return LocalExecutor(release, config.executor, config.generation)
    opener = OPENERS.get(config.executor.type)
    if opener is None:
        raise SlmopsError(f"executor {config.executor.type!r} is not available in this process (flows.batch "
                          f"registers it); available: local, {', '.join(OPENERS) or 'nothing else'}")
    return opener(release, config)
