"""Run llama.cpp's ``convert_hf_to_gguf.py`` (from the llama-cpp-python sdist) on a Hugging Face folder.

Usage: ``python -m tasks.quantize.gguf_convert LLAMA_CPP_DIR MODEL_DIR --outfile F --outtype f16``.
llama.cpp identifies BPE pre-tokenizers by hashing their output on a probe text and refuses unknown ones.
Tokenizers trained locally (ours) have no known hash; when the tokenizer's pre-tokenizer is exactly the
byte-level GPT-2 regex split, llama.cpp's ``gpt-2`` pre-tokenizer is the same thing, so we say so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def is_plain_byte_level(model_dir: Path) -> bool:
    """True when tokenizer.json pre-tokenizes with ByteLevel(use_regex=True) only (GPT-2's split)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return False
    pre = json.loads(path.read_text()).get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def main(argv: list[str]) -> None:
    """Import the converter from ``argv[0]`` and run it on the remaining arguments."""
    llama_cpp_dir, args = Path(argv[0]), argv[1:]
    sys.path[:0] = [str(llama_cpp_dir), str(llama_cpp_dir / "gguf-py")]
    import convert_hf_to_gguf
    from conversion import base

    model_dir = Path(args[0])
    original = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if is_plain_byte_level(model_dir):
                return "gpt-2"
            raise

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = ["convert_hf_to_gguf.py", *args]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])
