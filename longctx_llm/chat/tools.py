"""Tool calling through a chat template: one prompt format and one parser for every integration.

Small local models rarely ship a chat template with a tools section (SmolLM2's has none), and the stock
wrappers then silently drop the tools. Here a tool list always reaches the model:

- if the template renders ``tools=`` itself (Qwen2.5, Llama 3.1, Hermes...), the specs go through it and
  tool messages keep their ``tool`` role;
- otherwise a documented fallback system prompt (:func:`tool_prompt`) lists the tools and asks for
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes/Qwen convention), earlier calls are
  rendered in that same form inside the assistant turns and tool results come back in a user turn as
  ``<tool_response name="..." id="...">...</tool_response>`` blocks.

Either way :func:`parse_tool_calls` reads ``<tool_call>`` blocks (and a reply that is a bare JSON object of a
known tool) back into plain dict calls; calls that name an unknown tool or carry broken JSON come back as
``invalid`` with the reason, never dropped. Nothing here imports LangChain or LlamaIndex: specs are plain
JSON-schema dicts in, calls are plain dicts out.

>>> specs = normalize_tools([{"name": "add", "description": "Add two integers.",
...     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}])
>>> parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>', specs).calls[0]["arguments"]
{'a': 1, 'b': 2}
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from ..errors import InputError
from ..runtime.templates import template_supports_tools

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
#: ``tool_choice`` values besides a tool's name; "any" is LangChain's spelling of OpenAI's "required".
TOOL_CHOICES = ("auto", "none", "any", "required")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
_CALL_RE = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolSpec:
    """One callable tool: its name, what it does, and a JSON schema (type object) of its arguments."""

    name: str
    description: str
    parameters: dict

    def as_openai(self) -> dict:
        """The ``{"type": "function", "function": {...}}`` form chat templates expect."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def normalize_tools(tools: Optional[Sequence[Union[dict, ToolSpec]]]) -> list[ToolSpec]:
    """Validate tool specs (OpenAI ``{"type": "function", "function": {...}}`` or bare ``{"name", ...}``)."""
    specs: list[ToolSpec] = []
    for i, t in enumerate(tools or []):
        if isinstance(t, ToolSpec):
            specs.append(t)
            continue
        if not isinstance(t, dict):
            raise InputError(f"tools[{i}]: expected a JSON-schema dict, got {type(t).__name__}")
        fn = t.get("function", t) if t.get("type", "function") == "function" else None
        if not isinstance(fn, dict):
            raise InputError(f"tools[{i}]: tool type {t.get('type')!r} is not callable by a local model (valid: function)")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InputError(f"tools[{i}].name: {name!r} is not a valid tool name (letters, digits, _ . -; max 64)")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise InputError(f"tools[{i}] ({name}).parameters: must be a JSON schema of type object, got {params!r}")
        specs.append(ToolSpec(name, str(fn.get("description") or ""), params))
    unique: dict[str, ToolSpec] = {}
    for s in specs:  # the same tool given twice (a class and its schema) is one tool; two different ones clash
        if s.name in unique and _shape(unique[s.name]) != _shape(s):
            raise InputError(f"tools: two different tools are named {s.name!r}; each tool needs its own name")
        unique.setdefault(s.name, s)
    return list(unique.values())


def _untitled(schema: Any) -> Any:
    """A schema without its ``title`` annotations (they name things; they constrain nothing)."""
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items() if k != "title"}
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


def _shape(spec: ToolSpec) -> tuple:
    return spec.name, spec.description, json.dumps(_untitled(spec.parameters), sort_keys=True)


def normalize_tool_choice(choice: Any, specs: Sequence[ToolSpec]) -> str:
    """Return "auto", "none", "required" or the name of the one tool that must be called."""
    names = [s.name for s in specs]
    if choice is None:
        return "auto"
    if choice is True:
        choice = "required"
    elif isinstance(choice, dict):  # OpenAI {"type": "function", "function": {"name"}} / Anthropic {"type", "name"}
        kind = choice.get("type")
        if kind in TOOL_CHOICES:
            choice = kind
        else:
            choice = (choice.get("function") or {}).get("name") or choice.get("name")
    if not isinstance(choice, str):
        raise InputError(f"tool_choice: {choice!r} is not valid (valid: {', '.join(TOOL_CHOICES)} or a tool name)")
    if choice == "any":
        choice = "required"
    if choice in ("auto", "none", "required"):
        if choice == "required" and not specs:
            raise InputError("tool_choice: 'required' needs at least one tool, got none")
        return choice
    if choice not in names:
        raise InputError(
            f"tool_choice: {choice!r} is neither a mode ({', '.join(TOOL_CHOICES)}) nor a bound tool "
            f"(tools: {', '.join(names) or 'none'})"
        )
    return choice


def tool_prompt(specs: Sequence[ToolSpec], choice: str = "auto") -> str:
    """The fallback system prompt for templates with no tools section."""
    lines = ["You can call the following tools. Each is given with a JSON schema of its arguments:"]
    for s in specs:
        lines.append(json.dumps({"name": s.name, "description": s.description, "parameters": s.parameters}))
    lines.append(
        "To call a tool, reply with only "
        f'{TOOL_CALL_OPEN}{{"name": <tool name>, "arguments": <arguments as a JSON object>}}{TOOL_CALL_CLOSE}. '
        'Tool results come back inside <tool_response> tags.'
    )
    if choice == "required":
        lines.append("You must call one of these tools now.")
    elif choice not in ("auto", "none"):
        lines.append(f"You must call the tool {choice} now.")
    else:
        lines.append("If no tool is needed, answer the user directly.")
    return "\n".join(lines)


def format_tool_call(name: str, arguments: dict) -> str:
    """One call in the fallback wire format."""
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}{TOOL_CALL_CLOSE}"


def _call_arguments(call: dict) -> tuple[str, dict]:
    fn = call.get("function", call)
    args = fn.get("arguments", fn.get("args", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise InputError(f"tool call {fn.get('name')!r}: arguments are not valid JSON: {args!r}") from e
    if not isinstance(args, dict):
        raise InputError(f"tool call {fn.get('name')!r}: arguments must be a JSON object, got {args!r}")
    return fn.get("name"), args


def _fallback_messages(messages: Sequence[dict], specs: Sequence[ToolSpec], choice: str) -> list[dict]:
    """Rewrite tool calls and tool results as text in the roles every template knows."""
    out: list[dict] = []
    for m in messages:
        role = m["role"]
        if role == "assistant" and m.get("tool_calls"):
            parts = [m.get("content") or ""]
            for call in m["tool_calls"]:
                name, args = _call_arguments(call)
                parts.append(format_tool_call(name, args))
            out.append({"role": "assistant", "content": "\n".join(p for p in parts if p)})
        elif role == "tool":
            attrs = "".join(
                f' {k}="{m[src]}"' for k, src in (("name", "name"), ("id", "tool_call_id"), ("status", "status"))
                if m.get(src)
            )
            block = f"<tool_response{attrs}>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1]["role"] == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool_results": True})
        else:
            out.append({k: v for k, v in m.items() if k != "tool_calls"})
    for m in out:
        m.pop("_tool_results", None)
    if specs and choice != "none":
        prompt = tool_prompt(specs, choice)
        if out and out[0]["role"] == "system":
            out[0] = dict(out[0], content=f"{out[0]['content']}\n\n{prompt}" if out[0]["content"] else prompt)
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def prepare_messages(
    tokenizer, messages: Sequence[dict], specs: Sequence[ToolSpec], choice: str = "auto"
) -> tuple[list[dict], Optional[list[dict]]]:
    """Messages and the ``tools=`` argument to render, for this tokenizer's template.

    Returns ``(messages, tools)``; ``tools`` is None when the fallback prompt was used (or no tools apply).
    """
    has_tool_parts = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if template_supports_tools(tokenizer):
        tools = [s.as_openai() for s in specs] if specs and choice != "none" else None
        native = []
        for m in messages:
            if m.get("tool_calls"):
                calls = []
                for c in m["tool_calls"]:
                    name, args = _call_arguments(c)
                    calls.append({"id": c.get("id"), "type": "function", "function": {"name": name, "arguments": args}})
                m = dict(m, tool_calls=calls)
            native.append(m)
        if choice == "required" or choice not in ("auto", "none"):
            forced = tool_prompt([], choice).splitlines()[-1]
            native = [*native[:-1], dict(native[-1], content=f"{native[-1]['content']}\n{forced}")] if native else native
        return native, tools
    if not specs and not has_tool_parts:
        return list(messages), None
    return _fallback_messages(messages, specs, choice), None


@dataclass
class ParsedReply:
    """A model reply split into its text and its tool calls (``{"id", "name", "arguments"}``)."""

    content: str
    calls: list[dict] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)  # {"id", "name", "arguments" (raw text), "error"}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _to_call(obj: Any, raw: str, known: dict[str, ToolSpec]) -> tuple[Optional[dict], Optional[dict]]:
    """(valid call, None) or (None, invalid call) from one decoded JSON value."""
    cid = new_call_id()
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None, {"id": cid, "name": None, "arguments": raw, "error": "a tool call needs a JSON object with a name"}
    name = obj["name"]
    args = obj.get("arguments", obj.get("parameters", obj.get("args", {})))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass
    if name not in known:
        err = f"unknown tool {name!r} (tools: {', '.join(known) or 'none'})"
        return None, {"id": cid, "name": name, "arguments": json.dumps(args), "error": err}
    if not isinstance(args, dict):
        return None, {"id": cid, "name": name, "arguments": str(args), "error": "arguments must be a JSON object"}
    return {"id": cid, "name": name, "arguments": args}, None


def parse_tool_calls(text: str, specs: Sequence[ToolSpec]) -> ParsedReply:
    """Split ``text`` into prose and tool calls (``<tool_call>`` blocks, or a bare JSON object of a known tool)."""
    known = {s.name: s for s in specs}
    calls: list[dict] = []
    invalid: list[dict] = []
    decoder = json.JSONDecoder()
    if TOOL_CALL_OPEN in text:
        for match in _CALL_RE.finditer(text):
            body = match.group(1).strip()
            try:
                obj, _ = decoder.raw_decode(body)
            except json.JSONDecodeError as e:
                invalid.append({"id": new_call_id(), "name": None, "arguments": body, "error": f"invalid JSON: {e}"})
                continue
            ok, bad = _to_call(obj, body, known)
            calls.extend([ok] if ok else [])
            invalid.extend([bad] if bad else [])
        content = _CALL_RE.sub("", text).strip()
        return ParsedReply(content, calls, invalid)
    stripped = text.strip()
    if specs and stripped[:1] in ("{", "["):
        try:
            obj, end = decoder.raw_decode(stripped)
        except json.JSONDecodeError:
            return ParsedReply(text)
        items = obj if isinstance(obj, list) else [obj]
        if items and all(isinstance(o, dict) and o.get("name") in known for o in items):
            for o in items:
                ok, bad = _to_call(o, json.dumps(o), known)
                calls.extend([ok] if ok else [])
                invalid.extend([bad] if bad else [])
            return ParsedReply(stripped[end:].strip(), calls, invalid)
    return ParsedReply(text)


class ToolCallHoldback:
    """Streams prose but holds back text from the point a tool call may start, so calls never leak as text.

    Push text deltas; :meth:`push` returns what is safe to show now. At the end, :meth:`finish` returns the
    held-back tail (to parse with :func:`parse_tool_calls`).
    """

    def __init__(self):
        self.text = ""
        self.emitted = 0
        self.holding = False

    def push(self, delta: str) -> str:
        self.text += delta
        if self.holding:
            return ""
        if not self.text[self.emitted :].strip():
            return ""
        if self.emitted == 0 and self.text.lstrip()[:1] in ("{", "["):
            self.holding = True  # a reply that is one JSON object may be a bare call
            return ""
        i = self.text.find(TOOL_CALL_OPEN, max(0, self.emitted - len(TOOL_CALL_OPEN)))
        if i >= 0:
            self.holding = True
            out, self.emitted = self.text[self.emitted : i], i
            return out
        hold = 0
        for k in range(min(len(TOOL_CALL_OPEN) - 1, len(self.text)), 0, -1):
            if self.text.endswith(TOOL_CALL_OPEN[:k]):
                hold = k
                break
        safe = len(self.text) - hold
        out = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def finish(self) -> str:
        """The text not yet emitted."""
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out
