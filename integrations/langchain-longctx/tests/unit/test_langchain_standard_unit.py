"""langchain-tests ``ChatModelUnitTests`` for ChatLongctx (no model is loaded: construction is lazy)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from langchain_longctx import ChatLongctx  # noqa: E402

MODEL_PARAMS = {"model": "smollm2-135m-instruct", "device": "cpu", "dtype": "float32"}  # float32 on CPU: exact greedy



class TestChatLongctxUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self):
        return ChatLongctx

    @property
    def chat_model_params(self):
        return dict(MODEL_PARAMS)

    @property
    def standard_chat_model_params(self):
        # A local model has no API key: ChatLongctx forbids unknown fields, so the suite's "api_key" is left out.
        params = super().standard_chat_model_params
        params.pop("api_key")
        return params

    @property
    def has_tool_calling(self):
        return True

    @property
    def has_tool_choice(self):
        return True

    @property
    def has_structured_output(self):
        return True

    @property
    def structured_output_kwargs(self):
        return {"method": "json_schema"}

    @property
    def returns_usage_metadata(self):
        return True

    @property
    def supports_json_mode(self):
        return True
