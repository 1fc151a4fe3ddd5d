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


TARGET_NAMES = ("local", "foundry", "ollama")


def _add_target_args(parser: argparse.ArgumentParser, with_name: bool = True) -> None:
    parser.add_argument("--target", required=True, choices=TARGET_NAMES, help="Where to serve.")
    if with_name:
        parser.add_argument("--name", help="Deployment name (default: the model name).")


def _target_config(args: argparse.Namespace, **fields: object):
    from pydantic import TypeAdapter, ValidationError

    from infra.targets import DeployConfig
    from tasks.config import format_validation_error, parse_overrides

    raw = {"target": args.target, **{k: v for k, v in fields.items() if v is not None}}
    raw.update(dict(parse_overrides(args.overrides)))
    try:
        return TypeAdapter(DeployConfig).validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, f"--target {args.target} options")) from None


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


def _run_pipeline(config_path: Path, overrides: list[str], deploy_port: int | None = None) -> int:
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
    if deploy_port is not None and "champion" in reg.aliases:
        _deploy_and_chat(f"{reg.name}@champion", deploy_port)
    print("\nopen the UIs:")
    print(f"  mlflow ui --backend-store-uri sqlite:///{home / 'mlflow.db'}      # http://127.0.0.1:5000")
    print(f"  PREFECT_HOME={home / 'prefect'} prefect server start           # http://127.0.0.1:4200")
    return 0


def _deploy_and_chat(model_ref: str, port: int) -> None:
    """Deploy ``model_ref`` on the local target and print one chat completion from it (openai client)."""
    from openai import OpenAI

    from flows.deploy import deploy_model
    from infra.process import free_port
    from infra.targets.base import DeploymentStore
    from infra.targets.config import LocalTargetConfig

    name = model_ref.split("@")[0]
    current = DeploymentStore(get_settings().root, "local").load(name)
    if current is not None:
        port = current.details["proxy"]["port"]  # blue/green on the existing stable port
    elif not _port_free(port):
        port = free_port()
    deployment = deploy_model(model_ref, LocalTargetConfig(port=port))
    client = OpenAI(base_url=deployment.endpoint, api_key="not-needed")
    question = "Reverse: d e c a f"
    reply = client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                           max_tokens=16, temperature=0)
    print(f"\n{model_ref} (version {deployment.release.version}) serves at {deployment.endpoint}")
    print(f"  openai client → {question!r}: {reply.choices[0].message.content!r}")
    print(f"  stop it with: slmops undeploy {name} --target local")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cmd_run(args: argparse.Namespace) -> int:
    return _run_pipeline(Path(args.config), args.overrides)


def _cmd_demo(args: argparse.Namespace) -> int:
    return _run_pipeline(demo_config_path(), [], deploy_port=args.port)


def _registry_client():
    from mlflow.tracking import MlflowClient

    from registry.tracking import setup_tracking

    setup_tracking(get_settings().root)
    return MlflowClient()


def _cmd_deploy(args: argparse.Namespace) -> int:
    cfg = _target_config(args, name=args.name, port=args.port)
    from flows.deploy import deploy_model

    deployment = deploy_model(args.model_ref, cfg)
    print(f"{deployment.release.name} version {deployment.release.version} serves on {deployment.target} at "
          f"{deployment.endpoint}")
    if deployment.previous:
        print(f"  previous version: {deployment.previous.version} (slmops deploy-rollback {deployment.name} "
              f"--target {deployment.target})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from infra.targets.base import DeploymentStore

    home = get_settings().root
    rows = [d for t in ([args.target] if args.target else TARGET_NAMES) for d in DeploymentStore(home, t).all()]
    if not rows:
        print("nothing deployed")
    for d in rows:
        prev = f", previous {d.previous.version}" if d.previous else ""
        print(f"{d.target:8} {d.name}: version {d.release.version} at {d.endpoint} since {d.since}{prev}")
    return 0


def _cmd_undeploy(args: argparse.Namespace) -> int:
    from infra.targets import make_target

    make_target(_target_config(args), get_settings().root).undeploy(args.name)
    print(f"undeployed {args.name} from {args.target}")
    return 0


def _cmd_deploy_rollback(args: argparse.Namespace) -> int:
    from infra.targets import make_target

    d = make_target(_target_config(args), get_settings().root).rollback(args.name)
    print(f"{d.name} on {d.target} serves version {d.release.version} again at {d.endpoint}")
    return 0


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
            "demo": _cmd_demo, "promote": _cmd_promote, "rollback": _cmd_rollback, "models": _cmd_models,
            "deploy": _cmd_deploy, "status": _cmd_status, "undeploy": _cmd_undeploy,
            "deploy-rollback": _cmd_deploy_rollback}


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
