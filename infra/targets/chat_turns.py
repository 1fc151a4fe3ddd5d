"""Each role's turn read off a tokenizer's Jinja chat template, for targets whose engines template per role
(Ollama's Go TEMPLATE, Foundry Local's PromptTemplate)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MARK = "\x00"
ROLES = ("system", "user", "assistant")
EARLIER = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]


@dataclass(frozen=True)
class ChatTurns:
    """(prefix, suffix) around a message's content per role, as the first message and after an earlier exchange
    (templates put a BOS or a default system prompt, e.g. SmolLM2's, only before the first), plus the text that
    opens the assistant's answer and the stop strings."""

    first: dict[str, tuple[str, str]]
    later: dict[str, tuple[str, str]]
    generation: str
    stops: list[str]


def chat_turns(model_dir: Path) -> ChatTurns:
    """Read the turns off the chat template of the tokenizer in ``model_dir``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))

    def render(messages: list[dict[str, str]], generation: bool = False) -> str:
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    turns: tuple[dict[str, tuple[str, str]], dict[str, tuple[str, str]]] = ({}, {})
    for role in ROLES:
        for history, found in (([], turns[0]), (EARLIER, turns[1])):
            try:
                before = render(history) if history else ""
                text = render([*history, {"role": role, "content": MARK}])
            except Exception:  # a template may refuse this role here
                continue
            if text.startswith(before):
                prefix, suffix = text[len(before):].split(MARK)
                found[role] = (prefix, suffix)
    user_only = render([{"role": "user", "content": "x"}])
    generation = render([{"role": "user", "content": "x"}], generation=True)[len(user_only):]
    stops = [t for t in (tok.eos_token, *getattr(tok, "additional_special_tokens", [])) if t]
    return ChatTurns(first=turns[0], later=turns[1] or turns[0], generation=generation,
                     stops=list(dict.fromkeys(stops)))
