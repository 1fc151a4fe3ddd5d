"""The ``slmops`` command line. Errors print without a traceback and exit non-zero."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tasks.errors import ConfigError, SlmopsError
from tasks.settings import configure_environment, get_settings

EPILOG = """examples:
  slmops demo                                   # the whole pipeline on the embedded defaults
  slmops run --config configs/demo.yaml --set gate.min.exact_match=0.5
  slmops promote demo-slm 2 --alias champion
  slmops rollback demo-slm --alias champion
  slmops models demo-slm
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

    sub.add_parser("demo", help="Run slm_pipeline on the embedded demo config (makes demo assets if absent).")
    run = sub.add_parser("run", help="Run slm_pipeline: train → quantize → evaluate → gate → register.")
    _add_config_args(run)
    train = sub.add_parser("train", help="Run only the train flow: data → distill → LoRA → merge.")
    _add_config_args(train)

    promote = sub.add_parser("promote", help="Point an alias at a model version (appends to its history).")
    promote.add_argument("name", help="Registered model name, e.g. demo-slm.")
    promote.add_argument("version", help="Model version number.")
    promote.add_argument("--alias", default="champion", help="Alias to move (default: champion).")
    rollback = sub.add_parser("rollback", help="Move an alias back to the version it held before.")
    rollback.add_argument("name", help="Registered model name.")
    rollback.add_argument("--alias", default="champion", help="Alias to roll back (default: champion).")
    models = sub.add_parser("models", help="List registered models, or one model's versions, aliases, history.")
    models.add_argument("name", nargs="?", help="Registered model name.")

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


def demo_config_path() -> Path:
    """configs/demo.yaml of the working directory, else of the source checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "configs" / "demo.yaml").is_file():
            return base / "configs" / "demo.yaml"
    raise ConfigError("configs/demo.yaml not found; run from the slmops checkout or use slmops run --config")


def _run_pipeline(config_path: Path, overrides: list[str]) -> int:
    from tasks.config import load_config

    config = load_config(config_path, overrides)
    from flows.pipeline import slm_pipeline

    state = slm_pipeline(config, return_state=True)
    if state.name == "GateFailed":
        print(f"\n{state.message}", file=sys.stderr)
        return 3
    summary = state.result()  # re-raises the flow's error on any other failure
    served = summary.report.metrics(config.quantize.served)
    reg = summary.registered
    print(f"\nregistered {reg.name} version {reg.version} (aliases: {', '.join(reg.aliases)})")
    print(f"  {config.quantize.served}: exact match {served['exact_match']:.1%}, perplexity "
          f"{served['perplexity']:.3f} (+{served['perplexity_increase']:.1%} vs fp32), "
          f"{served['decode_tokens_per_s']:.0f} tokens/s, {served['size_mb']:.2f} MB")
    print("  seconds: " + ", ".join(f"{k}={v:.1f}" for k, v in summary.seconds.items()))
    home = get_settings().root
    print("\nopen the UIs:")
    print(f"  mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}      # http://127.0.0.1:5000")
    print(f"  PREFECT_HOME={home / 'prefect'} prefect server start           # http://127.0.0.1:4200")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    return _run_pipeline(Path(args.config), args.overrides)


def _cmd_demo(args: argparse.Namespace) -> int:
    return _run_pipeline(demo_config_path(), [])


def _registry_client():
    from mlflow.tracking import MlflowClient

    from registry.tracking import setup_tracking

    setup_tracking(get_settings().root)
    return MlflowClient()


def _cmd_promote(args: argparse.Namespace) -> int:
    from registry.history import move_alias

    entry = move_alias(_registry_client(), args.name, args.alias, args.version, reason="slmops promote")
    print(f"{args.name}@{args.alias}: {entry['previous'] or '(unset)'} → {entry['version']}")
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from registry.history import rollback_alias

    entry = rollback_alias(_registry_client(), args.name, args.alias)
    print(f"{args.name}@{args.alias}: {entry['previous']} → {entry['version']} (rolled back)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from registry.history import aliases, history, registered_names, versions

    client = _registry_client()
    if not args.name:
        print("\n".join(registered_names(client)) or "no registered models")
        return 0
    current = aliases(client, args.name)
    print(f"{args.name}: versions {', '.join(versions(client, args.name))}")
    print("aliases: " + (", ".join(f"{a}={v}" for a, v in sorted(current.items())) or "none"))
    for e in history(client, args.name):
        print(f"  {e['at']} {e['action']:8} {e['alias']}: {e['previous'] or '-'} → {e['version']}  ({e['reason']})")
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


COMMANDS = {"train": _cmd_train, "data": _cmd_data_validate, "config": _cmd_config_check, "run": _cmd_run,
            "demo": _cmd_demo, "promote": _cmd_promote, "rollback": _cmd_rollback, "models": _cmd_models}


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
