"""Fixtures of the langchain-longctx tests (the root conftest supplies ``smollm``, ``tokenizer``...).

- async tests (ours and those the langchain-tests suites inherit) are marked for pytest-asyncio at collection;
- torch runs one intra-op thread while these tests run: on a small shared CPU, oversubscribed OpenMP threads make
  the 135M model an order of magnitude slower, and the concurrency test runs 8 sessions in parallel threads anyway.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # for ``standard_features`` (tests here have no packages)

@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Mark the async tests of this folder for pytest-asyncio, including those a langchain-tests suite class
    inherits (the suites rely on ``asyncio_mode = auto``, which the repository's shared pytest configuration does
    not set, and they refuse overridden tests). Runs inside pytest-asyncio's own wrapper, which then sees it."""
    outcome = yield
    if name.startswith("test_") and inspect.iscoroutinefunction(obj):
        result = outcome.get_result()
        for node in result if isinstance(result, list) else [result]:
            if isinstance(node, pytest.Function):
                node.add_marker(pytest.mark.asyncio)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
