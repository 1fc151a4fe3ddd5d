"""``python -m infra.serving MODEL_DIR`` — run the serving runtime (127.0.0.1 by default)."""

from __future__ import annotations

import argparse
import os

import uvicorn

from infra.serving.app import create_app
from infra.serving.engine import Engine


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m infra.serving", description=__doc__)
    parser.add_argument("model_dir", help="onnxruntime-genai model folder (genai_config.json, tokenizer).")
    parser.add_argument("--name", default="model", help="Model name clients send as 'model'.")
    parser.add_argument("--version", default="", help="Version label shown by /v1/models and /health.")
    parser.add_argument("--host", default="127.0.0.1", help="Bind address (default 127.0.0.1).")
    parser.add_argument("--port", type=int, default=8080, help="Port (default 8080, SageMaker's).")
    parser.add_argument("--max-batch-size", type=int, default=8, help="Requests batched together at most.")
    parser.add_argument("--max-queue", type=int, default=64, help="Waiting requests before 503 (Retry-After).")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="How long a batch waits to fill.")
    parser.add_argument("--max-tokens", type=int, default=128, help="Default max_tokens of a request.")
    parser.add_argument("--api-key-env", default="SLMOPS_API_KEY",
                        help="Environment variable holding the API key; unset or empty means no key.")
    args = parser.parse_args(argv)
    engine = Engine(args.model_dir, max_batch_size=args.max_batch_size, max_queue=args.max_queue,
                    batch_window_ms=args.batch_window_ms)
    app = create_app(engine, args.name, args.version, api_key=os.environ.get(args.api_key_env) or None,
                     default_max_tokens=args.max_tokens)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)


if __name__ == "__main__":
    main()
