"""Request bodies of the serving API (OpenAI-compatible subset) with validation messages."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class _Body(BaseModel):
    # OpenAI clients send fields we do not use (e.g. user, logprobs): ignore those, validate what we use.
    model_config = ConfigDict(extra="ignore")

    model: StrictStr | None = Field(None, description="Served model name (see GET /v1/models).")
    max_tokens: StrictInt | None = Field(None, ge=1, description="Tokens to generate at most.")
    min_tokens: StrictInt = Field(0, ge=0, description="Tokens to generate before end-of-sequence is allowed "
                                  "(extension, as in vLLM).")
    temperature: StrictFloat | StrictInt = Field(0.0, ge=0, le=2, description="0 is greedy.")
    top_p: StrictFloat | StrictInt = Field(1.0, gt=0, le=1)
    stop: StrictStr | list[StrictStr] | None = Field(None, description="Stop sequence(s), up to 4.")
    seed: StrictInt | None = None
    stream: StrictBool = False
    n: StrictInt = Field(1, ge=1, le=1, description="Only n=1 is supported.")

    def stops(self) -> list[str]:
        """Stop sequences as a list (at most 4, none empty)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop: at most 4 non-empty sequences")
        return stops


class Message(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatRequest(_Body):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Body):
    """POST /v1/completions."""

    prompt: StrictStr = Field(min_length=1)
