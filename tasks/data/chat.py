"""Chat rendering and tokenization: the one place that renders a chat template and tokenizes the result."""

from __future__ import annotations

from typing import Any

from tasks.errors import DatasetError

IGNORE_INDEX = -100


def encode_chat(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels for one conversation; only assistant tokens carry a loss.

    Assistant spans are found by rendering the chat template with and without each assistant turn,
    so any tokenizer's template works (no ``{% generation %}`` markers needed).
    """
    ids: list[int] = []
    labels: list[int] = []
    for i, msg in enumerate(messages):
        full = render_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if msg["role"] == "assistant":
            prefix = render_ids(tokenizer, messages[:i], add_generation_prompt=True)
            if full[: len(prefix)] != prefix or prefix[: len(ids)] != ids:
                raise DatasetError("chat template", ["the template does not render turns as a token prefix"])
            labels += [IGNORE_INDEX] * (len(prefix) - len(ids)) + full[len(prefix):]
        else:
            labels += [IGNORE_INDEX] * (len(full) - len(ids))
        ids = full
    if len(ids) > max_length:
        raise ValueError(f"{len(ids)} tokens > data.max_length {max_length}")
    return ids, labels


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation up to (not including) its final assistant answer, ready to generate."""
    history = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return render_ids(tokenizer, history, add_generation_prompt=True)


def render_ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` rendered with the tokenizer's chat template (no extra special tokens)."""
    if not messages:
        return []
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]
