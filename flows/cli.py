"""The ``slmops`` command line. Errors print without a traceback and exit non-zero."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tasks.errors import SlmopsError
from tasks.settings import configure_environment

EPILOG = """examples:
  slmops train --config configs/demo.yaml
  slmops train --config configs/demo.yaml --set distill.steps=50 --set finetune.r=4
  slmops data validate data/train.jsonl
  slmops config check --config configs/demo.yaml --set finetune.alpha=32
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML pipeline config (configs/*.yaml).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one config value by dotted key, e.g. distill.steps=100 (repeatable).")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    parser = argparse.ArgumentParser(prog="slmops", description="Distil, fine-tune, quantize, gate, register "
                                     "and deploy small language models.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="Run the train flow: data → distill → LoRA → merge.")
    _add_config_args(train)

    data = sub.add_parser("data", help="Dataset utilities.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    validate = data_sub.add_parser("validate", help="Check JSONL files without training (exit 0 when valid).")
    validate.add_argument("files", nargs="+", metavar="FILE", help="Local JSONL path or s3:// URI.")

    config = sub.add_parser("config", help="Configuration utilities.")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_sub.add_parser("check", help="Validate a config with overrides and print it resolved.")
    _add_config_args(check)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from tasks.config import load_config

    config = load_config(args.config, args.overrides)  # rejected here, before any training minute
    from flows.train import train

    summary = train(config)
    print(f"\nmodel: {summary.model.path}")
    print(f"MLflow run: {summary.run_id}")
    for name, score in summary.exact_match.items():
        print(f"  exact match ({name}): {score:.1%}")
    print("  seconds: " + ", ".join(f"{k}={v:.1f}" for k, v in summary.seconds.items()))
    return 0


def _cmd_data_validate(args: argparse.Namespace) -> int:
    from tasks.data import load_rows
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


def _cmd_config_check(args: argparse.Namespace) -> int:
    import yaml

    from tasks.config import load_config

    config = load_config(args.config, args.overrides)
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


COMMANDS = {"train": _cmd_train, "data": _cmd_data_validate, "config": _cmd_config_check}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slmops`` console script."""
    args = build_parser().parse_args(argv)
    configure_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except SlmopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
