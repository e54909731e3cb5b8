"""langchain-tests ``ChatModelUnitTests`` for ChatLongctx (no model is loaded: construction is lazy)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from langchain_longctx import ChatLongctx  # noqa: E402
from standard_features import MODEL_PARAMS, DeclaredFeatures  # noqa: E402


class TestChatLongctxUnit(DeclaredFeatures, ChatModelUnitTests):
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
