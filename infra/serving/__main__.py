"""``python -m infra.serving MODEL_DIR`` — run the serving runtime (127.0.0.1 by default)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Literal, get_args, get_origin

import uvicorn
from pydantic import BaseModel

from infra.serving.app import create_app
from infra.serving.capture import CaptureConfig
from infra.serving.settings import ServerSettings
from infra.serving.tracing import TraceConfig
from tasks.engine.engine import Engine
from tasks.engine.settings import EngineConfig


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel], skip: tuple[str, ...] = (),
                prefix: str = "") -> None:
    """One ``--[prefix-]kebab-case`` option per field of ``model``, with its default and description as help."""
    for name, field in model.model_fields.items():
        if name not in skip:
            choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
            parser.add_argument(f"--{prefix}{name.replace('_', '-')}", dest=prefix + name, type=type(field.default),
                                default=field.default, choices=choices,
                                help=f"{field.description} (default {field.default!r})")


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m infra.serving", description=__doc__)
    parser.add_argument("model_dir", help="onnxruntime-genai model folder (genai_config.json, tokenizer).")
    parser.add_argument("--host", default="127.0.0.1", help="Bind address (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8080, help="Port (default 8080, SageMaker's).")
    parser.add_argument("--api-key-env", default="SLMOPS_API_KEY",
                        help="Environment variable holding the API key; unset or empty means no key.")
    add_options(parser, ServerSettings, skip=("api_key", "capture", "trace"))
    add_options(parser, CaptureConfig, prefix="capture-")
    add_options(parser, TraceConfig, prefix="trace-")
    add_options(parser, EngineConfig)
    args = vars(parser.parse_args(argv))
    engine = Engine(args["model_dir"], EngineConfig(**{k: args[k] for k in EngineConfig.model_fields}))
    int8 = f", int8 steps {engine.decoder.int8_note}" if engine.decoder else ""
    print(f"serving {args['model_dir']}: scheduler {engine.scheduler}{int8}", file=sys.stderr, flush=True)
    capture = CaptureConfig(**{k: args[f"capture-{k}"] for k in CaptureConfig.model_fields})
    trace = TraceConfig(**{k: args[f"trace-{k}"] for k in TraceConfig.model_fields})
    settings = ServerSettings(api_key=os.environ.get(args["api_key_env"]) or None, capture=capture, trace=trace,
                              **{k: args[k] for k in ServerSettings.model_fields
                                 if k not in ("api_key", "capture", "trace")})
    uvicorn.run(create_app(engine, settings), host=args["host"], port=args["port"], log_level="warning",
                timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
