"""Aliases and their append-only promotion history, kept as registered-model tags in MLflow.

Each move of an alias appends a tag ``slmops.history.<seq>`` holding a JSON entry; nothing is rewritten.
Rollback replays the history of one alias as a stack (promote pushes, rollback pops).
"""

from __future__ import annotations

import json
import time
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import RegistryError

PREFIX = "slmops.history."


def registered_names(client: MlflowClient) -> list[str]:
    """Names of every registered model."""
    return sorted(m.name for m in client.search_registered_models())


def require_model(client: MlflowClient, name: str) -> Any:
    """The registered model ``name`` or a RegistryError listing those that exist."""
    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"unknown registered model {name!r}; registered: "
                            f"{registered_names(client) or 'none'}") from None


def versions(client: MlflowClient, name: str) -> list[str]:
    """Version numbers of ``name``, ascending."""
    return sorted((str(v.version) for v in client.search_model_versions(f"name='{name}'")), key=int)


def history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Promotion history of ``name``, oldest first."""
    tags = require_model(client, name).tags
    entries = [(int(k[len(PREFIX):]), json.loads(v)) for k, v in tags.items() if k.startswith(PREFIX)]
    return [e for _, e in sorted(entries, key=lambda kv: kv[0])]


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Current alias → version of ``name``."""
    return {alias: str(v) for alias, v in require_model(client, name).aliases.items()}


def _append(client: MlflowClient, name: str, entry: dict[str, Any]) -> None:
    seq = len(history(client, name)) + 1
    client.set_registered_model_tag(name, f"{PREFIX}{seq:06d}", json.dumps(entry))


def move_alias(client: MlflowClient, name: str, alias: str, version: str, reason: str,
               action: str = "promote") -> dict[str, Any]:
    """Point ``alias`` at ``version`` and append the move to the history; return the entry."""
    require_model(client, name)
    known = versions(client, name)
    if str(version) not in known:
        raise RegistryError(f"{name} has no version {version!r}; versions: {', '.join(known) or 'none'}")
    previous = aliases(client, name).get(alias)
    client.set_registered_model_alias(name, alias, str(version))
    entry = {"alias": alias, "version": str(version), "previous": previous, "action": action, "reason": reason,
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _append(client, name, entry)
    return entry


def rollback_alias(client: MlflowClient, name: str, alias: str) -> dict[str, Any]:
    """Move ``alias`` back to the version it held before its latest promotion."""
    current = aliases(client, name)
    if alias not in current:
        raise RegistryError(f"{name} has no alias {alias!r}; aliases: {', '.join(sorted(current)) or 'none'}")
    stack: list[str] = []
    for entry in history(client, name):
        if entry["alias"] != alias:
            continue
        if entry["action"] == "rollback":
            stack.pop()
        else:
            stack.append(entry["version"])
    if len(stack) < 2:
        raise RegistryError(f"{name}@{alias} has no earlier version in its history to roll back to")
    stack.pop()
    return move_alias(client, name, alias, stack[-1], reason=f"rollback from version {current[alias]}",
                      action="rollback")
