# Source at the start of every command on the lent GPU machine (see benchmarks/README.md):
#   . benchmarks/device_env.sh
# Installs the carried wheels (.whl: gguf, pydantic...) and this repository's distributions without touching the
# image's torch/transformers, and assembles the embedded model's GGUF from its carried parts (.gguf/part_*,
# one per call because of the per-call carry limit) at /root/smol.gguf.
set -e
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 LONGCTX_PROGRESS=0
# .whl: what every run needs; .whl2, .whl3 (optional): the server's and the integrations' dependencies, carried only by
# the calls that run benchmarks/serve_throughput.py and benchmarks/layers_overhead.py (the carry limit)
for d in .whl .whl2 .whl3; do
  if [ -d $d ] && [ ! -f /tmp/site/.done$d ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $d/*.whl
    touch /tmp/site/.done$d
  fi
done
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
# .whlsplit (optional): wheels over one call's carry limit (Ray's is 79 MB), split as NAME.whl.part_aa, _ab, ... with
# NAME.whl.parts holding their count; parts arrive over several calls, the wheel is assembled and installed once all
# of them are in ${WHL_PARTS_DIR:-/root/whlparts}
if [ -d .whlsplit ]; then
  P=${WHL_PARTS_DIR:-/root/whlparts}; mkdir -p "$P"
  cp -n .whlsplit/* "$P"/ 2>/dev/null || true
  for count in "$P"/*.whl.parts; do
    [ -f "$count" ] || continue
    wheel=${count%.parts}
    if [ ! -f "$wheel" ] && [ "$(ls "$wheel".part_* 2>/dev/null | wc -l)" -eq "$(cat "$count")" ]; then
      cat "$wheel".part_* > "$wheel"
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheel"
    fi
  done
fi
if [ -d .gguf ]; then
  for p in .gguf/part_*; do cp -n "$p" /root/ 2>/dev/null || true; done
  # the parts arrive one per call; the last one is smaller than the others
  if [ ! -f /root/smol.gguf ] && ls /root/part_* >/dev/null 2>&1; then
    last=$(ls /root/part_* | tail -1)
    first=$(ls /root/part_* | head -1)
    if [ "$(stat -c %s "$last")" -lt "$(stat -c %s "$first")" ] || [ -f /root/.gguf-complete ]; then
      cat /root/part_* > /root/smol.gguf
    fi
  fi
fi
pkgs=(-e .)
for d in plugins/*/ integrations/*/; do [ -f "$d/pyproject.toml" ] && pkgs+=(-e "$d"); done
python3 -m pip install -q --no-index --no-deps --no-build-isolation "${pkgs[@]}" >/tmp/pip-install.log 2>&1 || {
  echo "device_env: editable install failed"; tail -20 /tmp/pip-install.log; }
set +e

# Shared by the gpu_*.sh drivers: `bench_log NAME` starts $OUT/NAME.log with the date and the GPU;
# `run SECONDS CMD...` runs one benchmark under a time limit, appending its output (warnings dropped) to it.
OUT=${OUT:-bench-out}; TEXT=${TEXT:-.data/pydocs-3.11.jsonl.gz}; MODEL=${MODEL:-/root/smol.gguf}
mkdir -p "$OUT"
bench_log() {
  LOG="$OUT/$1.log"
  { date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } 2>&1 | tee "$LOG"
}
run() { echo "== $*" | tee -a "$LOG"; timeout "$@" 2>&1 | grep -v -i warning | tee -a "$LOG"; }
