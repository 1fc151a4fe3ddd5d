"""A fleet's status as people read it (the CLI and the rollout flow's Prefect artifact)."""

from __future__ import annotations

from typing import Any


def status_markdown(status: dict[str, Any]) -> str:
    """One fleet's status as markdown: the rollout, a row per hardware class, the failures."""
    lines = [f"## Fleet {status['fleet']}: {status['model']} {status['previous_version'] or '-'} → "
             f"{status['version']}", "",
             f"Rollout {status['rollout']} is **{status['state']}**, wave {status['wave'] + 1} of {status['waves']}"
             + (f": {status['reason']}" if status["reason"] else ""), "",
             "| class | devices | updated | updating | failed | rolled back | offline | versions | variants | "
             "halted |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in status["classes"].items():
        versions = ", ".join(f"{'v' + k if k != 'none' else 'none'}: {n}" for k, n in sorted(c["versions"].items()))
        variants = ", ".join(f"{k}: {n}" for k, n in sorted(c["variants"].items()))
        lines.append(f"| {name} | {c['devices']} | {c['updated']} | {c['updating']} | {c['failed']} | "
                     f"{c['rolled_back']} | {c['offline']} | {versions} | {variants} | {c['halted'] or ''} |")
    if status["failures"]:
        lines += ["", "| device | class | failure | reason |", "|---|---|---|---|"]
        lines += [f"| {f['device']} | {f['hw_class']} | {f['failure']} | {f['reason']} |"
                  for f in status["failures"][:20]]
    return "\n".join(lines)
