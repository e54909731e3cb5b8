"""Chat messages and chat templates.

Messages are plain dicts as in transformers: ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``,
assistant messages may carry ``tool_calls`` and tool messages a ``tool_call_id``/``name``. Rendering goes through
the tokenizer's own chat template; a template that cannot express a message raises :class:`InputError`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..errors import InputError

ROLES = ("system", "user", "assistant", "tool")
#: roles accepted as another name of one of ROLES (OpenAI's newer name for the system role)
ROLE_ALIASES = {"developer": "system"}
Message = dict[str, Any]


def check_text(text: Any, what: str) -> str:
    """``text`` if it is a string a tokenizer can take (valid Unicode: no lone surrogates), else InputError."""
    if not isinstance(text, str):
        raise InputError(f"{what}: expected a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start : e.end]
        raise InputError(
            f"{what}: not valid Unicode text (character {bad!r} at position {e.start}, e.g. bytes that are not "
            "UTF-8); give UTF-8 text"
        ) from None
    return text


def normalize_messages(messages: Sequence[Any]) -> list[Message]:
    """Validate and copy messages; accepts dicts or (role, content) pairs."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, (list, tuple)):
        raise InputError(
            f"messages: expected a list of messages (or a string with a session), got {type(messages).__name__}"
        )
    if not messages:
        raise InputError("messages: at least one message is required, got an empty list")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, (tuple, list)) and len(m) == 2:
            m = {"role": m[0], "content": m[1]}
        if not isinstance(m, dict):
            raise InputError(f"messages[{i}]: expected a dict with role and content, got {type(m).__name__}")
        role = m.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise InputError(
                f"messages[{i}].role: {role!r} is not a valid role (valid: {', '.join([*ROLES, *ROLE_ALIASES])})"
            )
        content = m.get("content")
        if content is None and not m.get("tool_calls"):
            raise InputError(f"messages[{i}].content: missing (only assistant messages with tool_calls may omit it)")
        if content is not None:
            check_text(content, f"messages[{i}].content")
        out.append(dict(m, role=role, content=content if content is not None else ""))
    return out


def render(
    tokenizer,
    messages: Sequence[Message],
    *,
    tools: Optional[list[dict]] = None,
    add_generation_prompt: bool = True,
) -> str:
    """The prompt text for ``messages`` under the model's chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "this model's tokenizer has no chat template; use Engine.complete() with a plain prompt instead"
        )
    try:
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
        if tools:
            kwargs["tools"] = tools
        return tokenizer.apply_chat_template(list(messages), **kwargs)
    except Exception as e:  # jinja2.TemplateError and template-raised exceptions
        raise InputError(f"the model's chat template cannot express these messages: {type(e).__name__}: {e}") from e


def template_supports_tools(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template
