"""Request bodies of the OpenAI-compatible endpoints (pydantic models; responses are plain dicts).

Fields a local engine cannot honour (``n`` > 1, ``logprobs``, penalties, ``echo``, ``suffix``) are refused with
a message naming them, never silently ignored; a few fields that change nothing here (``store``, ``metadata``,
``service_tier``...) are accepted and ignored so stock clients work unchanged.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: accepted for compatibility, no effect on a local model
IGNORED_FIELDS = ("store", "metadata", "service_tier", "prediction", "modalities", "reasoning_effort", "web_search_options")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0)  # not in OpenAI's API; common on local servers
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    user: Optional[str] = None
    n: Optional[int] = None
    logprobs: Optional[Union[bool, int]] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None

    @model_validator(mode="before")
    @classmethod
    def _drop_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in IGNORED_FIELDS}
        return data

    def unsupported(self) -> list[str]:
        """``field=value`` for each set field this server cannot honour."""
        bad = []
        if self.n not in (None, 1):
            bad.append(f"n={self.n!r} (valid: 1)")
        if self.logprobs not in (None, False, 0):
            bad.append(f"logprobs={self.logprobs!r} (valid: false)")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0, 0.0):
                bad.append(f"{name}={getattr(self, name)!r} (valid: 0)")
        if self.logit_bias:
            bad.append("logit_bias (valid: none)")
        return bad

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatCompletionRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[dict[str, Any]] = None
    top_logprobs: Optional[int] = None

    def unsupported(self) -> list[str]:
        bad = super().unsupported()
        if self.top_logprobs:
            bad.append(f"top_logprobs={self.top_logprobs!r} (valid: none)")
        return bad


class CompletionRequest(_Request):
    prompt: Union[str, list[str]]
    echo: Optional[bool] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    def unsupported(self) -> list[str]:
        bad = super().unsupported()
        if self.echo:
            bad.append("echo=true (valid: false)")
        if self.suffix:
            bad.append("suffix (valid: none; this server only continues a prompt)")
        if self.best_of not in (None, 1):
            bad.append(f"best_of={self.best_of!r} (valid: 1)")
        return bad
