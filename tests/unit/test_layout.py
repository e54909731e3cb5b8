"""Layout rules: the core never imports LangChain or LlamaIndex; nothing called `plugins`/`integrations` is installed."""

import subprocess
import sys

CHECK = """
import importlib.util, sys
import longctx_llm, longctx_llm.cli, longctx_llm.runtime.engine, longctx_llm.pipeline
import longctx_llm.chat.tools, longctx_llm.chat.guided
leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core', 'llama_index'))
print('leaked', leaked)
print('plugins', importlib.util.find_spec('plugins'), 'integrations', importlib.util.find_spec('integrations'))
"""


def test_core_imports_no_framework_and_no_stray_top_level_packages(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "leaked []" in out.stdout
    assert "plugins None integrations None" in out.stdout
