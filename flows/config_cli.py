"""``slmops data validate`` and ``slmops config check|docs``: inputs checked before any work."""

from __future__ import annotations

import argparse
import sys


def cmd_data_validate(args: argparse.Namespace) -> int:
    from tasks.data.prepare import load_rows
    from tasks.errors import DatasetError

    failed = 0
    for uri in args.files:
        try:
            rows = load_rows(uri)
        except DatasetError as exc:
            failed += 1
            print(exc, file=sys.stderr)
        else:
            print(f"{uri}: {len(rows)} valid rows")
    return 1 if failed else 0


def cmd_config(args: argparse.Namespace) -> int:
    return {"check": cmd_config_check, "docs": cmd_config_docs}[args.config_command](args)


def cmd_config_docs(args: argparse.Namespace) -> int:
    from flows import config_docs

    if args.write:
        print(f"wrote {config_docs.write()}")
    else:
        print(config_docs.render(), end="")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    import yaml

    from tasks.config import load_config

    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0
