"""Aliases and their append-only promotion history, kept as registered-model tags in MLflow.

Each move of an alias appends a tag ``slmops.history.<time_ns>.<random>`` holding a JSON entry; nothing is
rewritten, and concurrent writers never pick the same key (earlier releases used ``slmops.history.NNNNNN``;
those sort first). The history is the truth: after appending, a writer points the alias at the version of the
latest entry for that alias and re-reads until the two agree, so concurrent moves converge on the last entry
and the alias and its history cannot diverge. Rollback replays one alias's history as a stack (promote
pushes, rollback pops).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from registry.errors import RegistryError

PREFIX = "slmops.history."
CONVERGE_ATTEMPTS = 50
MOVES = ("promote", "rollback")  # entries that move an alias; others (approval decisions) only record


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


def _order(key: str) -> tuple[int, str]:
    suffix = key[len(PREFIX):]
    return (0, suffix) if suffix.isdigit() else (1, suffix)  # legacy NNNNNN keys first


def history(client: MlflowClient, name: str) -> list[dict[str, Any]]:
    """Promotion history of ``name``, oldest first; ``previous`` is the version the alias held before each move."""
    tags = require_model(client, name).tags
    entries = [json.loads(tags[k]) for k in sorted((k for k in tags if k.startswith(PREFIX)), key=_order)]
    held: dict[str, str | None] = {}
    for entry in entries:
        entry["previous"] = held.get(entry["alias"])
        if entry.get("action", "promote") in MOVES:
            held[entry["alias"]] = entry["version"]
    return entries


def moves(entries: list[dict[str, Any]], alias: str) -> list[dict[str, Any]]:
    """The entries of ``entries`` that moved ``alias``, oldest first."""
    return [e for e in entries if e["alias"] == alias and e.get("action", "promote") in MOVES]


def _append(client: MlflowClient, name: str, entry: dict[str, Any]) -> str:
    entry_id = f"{time.time_ns():020d}.{secrets.token_hex(4)}"
    entry = {**entry, "id": entry_id, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    client.set_registered_model_tag(name, PREFIX + entry_id, json.dumps(entry))
    return entry_id


def record_approval(client: MlflowClient, name: str, alias: str, version: str, approved: bool | None,
                    comment: str, target: str) -> dict[str, Any]:
    """Append a person's decision on deploying ``version`` of ``name@alias`` to ``target`` (None: no answer)."""
    decision = {True: "approved", False: "rejected", None: "timed out"}[approved]
    entry_id = _append(client, name, {"alias": alias, "version": str(version), "action": "approval",
                                      "decision": decision, "target": target,
                                      "reason": f"{decision} for {target}" + (f": {comment}" if comment else "")})
    return next(e for e in history(client, name) if e.get("id") == entry_id)


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    """Current alias → version of ``name``."""
    return {alias: str(v) for alias, v in require_model(client, name).aliases.items()}


def _lost_insert_race(exc: MlflowException) -> bool:
    text = str(exc)
    return "UNIQUE constraint failed" in text or "duplicate key value" in text


def _converge(client: MlflowClient, name: str, alias: str) -> str:
    """Point ``alias`` at the version of its latest history entry until a re-read agrees; return that version."""
    for _ in range(CONVERGE_ATTEMPTS):
        latest = moves(history(client, name), alias)[-1]["version"]
        if aliases(client, name).get(alias) != latest:  # an unchanged alias is not set again (no extra webhook)
            try:
                client.set_registered_model_alias(name, alias, latest)
            except MlflowException as exc:
                # two first-ever sets of an alias race to insert its row; the loser re-reads and converges
                if not _lost_insert_race(exc):
                    raise
                time.sleep(0.01)
                continue
        if moves(history(client, name), alias)[-1]["version"] == latest:
            return latest
    raise RegistryError(f"{name}@{alias} kept moving under concurrent promotions; try again")


def move_alias(client: MlflowClient, name: str, alias: str, version: str, reason: str,
               action: str = "promote") -> dict[str, Any]:
    """Append the move of ``alias`` to ``version`` to the history, then make the alias follow the history.

    Returns the entry with ``previous`` (the version the alias held just before this move).
    """
    require_model(client, name)
    known = versions(client, name)
    if str(version) not in known:
        raise RegistryError(f"{name} has no version {version!r}; versions: {', '.join(known) or 'none'}")
    entry_id = _append(client, name, {"alias": alias, "version": str(version), "action": action, "reason": reason})
    _converge(client, name, alias)
    return next(e for e in history(client, name) if e.get("id") == entry_id)


def rollback_alias(client: MlflowClient, name: str, alias: str) -> dict[str, Any]:
    """Move ``alias`` back to the version it held before its latest promotion."""
    current = aliases(client, name)
    if alias not in current:
        raise RegistryError(f"{name} has no alias {alias!r}; aliases: {', '.join(sorted(current)) or 'none'}")
    stack: list[str] = []
    for entry in moves(history(client, name), alias):
        if entry["action"] == "rollback":
            stack.pop()
        else:
            stack.append(entry["version"])
    if len(stack) < 2:
        raise RegistryError(f"{name}@{alias} has no earlier version in its history to roll back to")
    stack.pop()
    return move_alias(client, name, alias, stack[-1], reason=f"rollback from version {current[alias]}",
                      action="rollback")
