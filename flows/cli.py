"""The ``slmops`` command line. Errors print without a traceback and exit non-zero."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from flows import commands
from flows.commands import TARGET_NAMES
from tasks.errors import SlmopsError
from tasks.settings import configure_environment

EPILOG = """examples:
  slmops demo                                   # the whole pipeline on the embedded defaults
  slmops run --config configs/demo.yaml --set gate.min.exact_match=0.5
  slmops promote demo-slm 2 --alias champion
  slmops rollback demo-slm --alias champion
  slmops models demo-slm
  slmops deploy demo-slm@champion --target local --port 8080
  slmops status
  slmops undeploy demo-slm --target local
  slmops train --config configs/demo.yaml
  slmops train --config configs/demo.yaml --set distill.steps=50 --set finetune.r=4
  slmops data validate data/train.jsonl
  slmops config check --config configs/demo.yaml --set finetune.alpha=32
"""


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="YAML pipeline config (configs/*.yaml).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one config value by dotted key, e.g. distill.steps=100 (repeatable).")




def _add_target_args(parser: argparse.ArgumentParser, with_name: bool = True) -> None:
    parser.add_argument("--target", required=True, choices=TARGET_NAMES, help="Where to serve.")
    if with_name:
        parser.add_argument("--name", help="Deployment name (default: the model name).")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (kept separate so tests and docs can inspect it)."""
    parser = argparse.ArgumentParser(prog="slmops", description="Distil, fine-tune, quantize, gate, register "
                                     "and deploy small language models.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="Run slm_pipeline on the embedded demo config (making the demo assets if "
                          "absent), deploy the champion locally and chat with it.")
    demo.add_argument("--port", type=int, default=8080, help="Stable port of the local deployment (default 8080; "
                      "a free one is used when it is taken).")
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
    deploy = sub.add_parser("deploy", help="Deploy NAME@ALIAS or NAME/VERSION to a target (blue/green locally).")
    deploy.add_argument("model_ref", metavar="MODEL_REF", help="e.g. demo-slm@champion or demo-slm/3")
    _add_target_args(deploy)
    deploy.add_argument("--port", type=int, help="local: stable port (default 8080).")
    deploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Target option, e.g. golden_expect='c b a', api_key_env=MY_KEY, host=http://…")
    status = sub.add_parser("status", help="Show what serves where (every target, or one).")
    status.add_argument("--target", choices=TARGET_NAMES, help="Only this target.")
    undeploy = sub.add_parser("undeploy", help="Stop serving a deployment and forget it.")
    undeploy.add_argument("name", help="Deployment name (the model name unless --name was given).")
    _add_target_args(undeploy, with_name=False)
    undeploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    back = sub.add_parser("deploy-rollback", help="Serve a deployment's previous version again.")
    back.add_argument("name", help="Deployment name.")
    _add_target_args(back, with_name=False)
    back.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
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


COMMANDS = {"train": commands.cmd_train, "data": commands.cmd_data_validate, "config": commands.cmd_config_check,
            "run": commands.cmd_run, "demo": commands.cmd_demo, "promote": commands.cmd_promote,
            "rollback": commands.cmd_rollback, "models": commands.cmd_models, "deploy": commands.cmd_deploy,
            "status": commands.cmd_status, "undeploy": commands.cmd_undeploy,
            "deploy-rollback": commands.cmd_deploy_rollback}


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
