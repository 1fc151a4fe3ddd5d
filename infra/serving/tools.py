"""Tool calls on any chat template: the tools described in a system turn, the answer held to a JSON grammar.

Small models' chat templates rarely know tools, so the server uses one generic format (llama.cpp's "generic"
tool-call handler does the same): the request's tools are listed in a system turn, and the answer is a JSON
object enforced token by token (tasks/engine/structured.py):

- ``tool_choice: "auto"`` (the default when tools are given): ``{"tool_call": {"name": …, "arguments": {…}}}``
  or ``{"response": "…"}``;
- ``"required"``: a ``tool_call`` of one of the tools; a named function: a ``tool_call`` of that one;
- ``"none"``: the tools are left out and the answer is plain text.

The arguments follow each tool's ``parameters`` schema. A ``tool_call`` comes back as OpenAI's
``message.tool_calls`` (``finish_reason: "tool_calls"``), a ``response`` as the message's content. Earlier turns are
rendered in the same format: an assistant turn's ``tool_calls`` as the JSON it would have answered, and a ``tool``
turn as a user turn carrying the result. At most one call per answer (``parallel_tool_calls`` is honoured trivially).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

INSTRUCTIONS = {
    "auto": 'To call a tool, answer with {"tool_call": {"name": <tool name>, "arguments": <its arguments>}}; '
            'to answer directly, answer with {"response": <your answer>}.',
    "required": 'Call one tool: answer with {"tool_call": {"name": <tool name>, "arguments": <its arguments>}}.',
}


def mode(body: Any) -> str | None:
    """``auto``, ``required`` or a function's name when the answer may call a tool, else None."""
    if not getattr(body, "tools", None):
        return None
    choice = body.tool_choice or "auto"
    if choice == "none":
        return None
    return choice if isinstance(choice, str) else f"function:{choice.function.name}"


def _call_schema(tool: Any) -> dict[str, Any]:
    parameters = tool.function.parameters or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": tool.function.name}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def answer_schema(body: Any, how: str) -> dict[str, Any]:
    """The JSON schema of the answer for tool mode ``how`` (see ``mode``)."""
    tools = body.tools
    if how.startswith("function:"):
        tools = [t for t in tools if t.function.name == how.removeprefix("function:")]
    call = {"type": "object", "properties": {"tool_call": {"anyOf": [_call_schema(t) for t in tools]}},
            "required": ["tool_call"], "additionalProperties": False}
    if how != "auto":
        return call
    direct = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"],
              "additionalProperties": False}
    return {"anyOf": [call, direct]}


def system_text(body: Any, how: str) -> str:
    """What the system turn says about the tools."""
    listed = [{"name": t.function.name, "description": t.function.description or "",
               "parameters": t.function.parameters or {"type": "object"}} for t in body.tools]
    if how.startswith("function:"):
        name = how.removeprefix("function:")
        listed = [t for t in listed if t["name"] == name]
        rule = f'Call the tool {name}: answer with {{"tool_call": {{"name": "{name}", "arguments": <its arguments>}}}}.'
    else:
        rule = INSTRUCTIONS[how]
    return f"You can use these tools:\n{json.dumps(listed, ensure_ascii=False)}\n{rule}"


def template_messages(messages: list[dict[str, Any]], body: Any, how: str | None) -> list[dict[str, str]]:
    """The conversation as the chat template takes it (``as_template_input`` turns), with the tools described in
    the system turn (appended to the first one, or a new one first) when ``how`` is set."""
    if how is None:
        return messages
    text = system_text(body, how)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def call_text(calls: list[dict[str, Any]]) -> str:
    """An assistant turn's earlier tool calls as the JSON the format answers with (one line per call)."""
    lines = []
    for call in calls:
        function = call["function"]
        try:
            arguments = json.loads(function["arguments"])
        except (TypeError, ValueError):
            arguments = function["arguments"]
        lines.append(json.dumps({"tool_call": {"name": function["name"], "arguments": arguments}},
                                ensure_ascii=False))
    return "\n".join(lines)


def message(text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason for an answer in the tool format."""
    if finish_reason == "stop":
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("tool_call"), dict):
            call = value["tool_call"]
            return {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]
            }, "tool_calls"
        if isinstance(value, dict) and isinstance(value.get("response"), str):
            return {"role": "assistant", "content": value["response"]}, "stop"
    return {"role": "assistant", "content": text}, finish_reason  # cut short by max_tokens: the raw text
