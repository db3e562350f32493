#!/usr/bin/env bash
# The GPU proof kit (docs/gpu-check.md): prepared here without a GPU, run there in one command.
#
#   scripts/gpu-check.sh --prepare DIR [--arch 90] [--tensorrt-include PATH] [--overwrite] [--stream-blocks 12]
#       builds DIR: the AOT cubins, libdysink_plugins.so and the plugin harness (with TensorRT headers;
#       skipped with the reason without), the CPU references, kit.json; prints its size. Python: the
#       checkout's .venv/bin/python when present, else python3 ($PYTHON overrides). (--stream-blocks: the CPU reference
#       stream's length, which stage c repeats; fewer than 12 only to test the kit itself.)
#   scripts/gpu-check.sh --kit DIR --out OUTDIR [--budget-s 540]
#       runs every stage (a kernels, b harness, c stream, d fullsize), one line each with its time,
#       each in its own process with a timeout from what is left of the budget; writes
#       OUTDIR/gpu-check.md, gpu-check.json and gpu-check.log. Python: the python3 on PATH ($PYTHON
#       overrides), nothing installed: the package is put on PYTHONPATH as a temporary folder of
#       symlinks into this checkout (dysink_deploy/* plus export, runtime, plugins as subpackages).
#   scripts/gpu-check.sh --where
#       prints where python3 finds the package and its subpackages with that set-up (no import of
#       their code): a check of the import path on a new machine.
#
# Exit codes: 0 passed, 1 a stage failed or did not finish, 2 bad arguments, 77 skipped (no CUDA
# GPU: one "SKIPPED | ..." line; a skip is not a pass). 77 is the skip code of every GPU check of
# the project (dysink-bench kernels, the make gpu-check recipe).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2
  exit 2
}

mode="" kit="" out="" arch="90" trt="" budget="540" overwrite="" blocks="12"
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) mode=prepare; kit=${2:-}; shift 2 || usage ;;
    --kit) mode=kit; kit=${2:-}; shift 2 || usage ;;
    --out) out=${2:-}; shift 2 || usage ;;
    --arch) arch=${2:-}; shift 2 || usage ;;
    --tensorrt-include) trt=${2:-}; shift 2 || usage ;;
    --budget-s) budget=${2:-}; shift 2 || usage ;;
    --overwrite) overwrite=--overwrite; shift ;;
    --stream-blocks) blocks=${2:-}; shift 2 || usage ;;
    --where) mode=where; kit=-; shift ;;
    -h|--help) usage ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$mode" ] && [ -n "$kit" ] || usage
if [ "$mode" = kit ] && [ -z "$out" ]; then echo "error: --kit DIR needs --out OUTDIR" >&2; exit 2; fi
abspath() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }
kit=$(abspath "$kit")
[ -n "$out" ] && out=$(abspath "$out")
[ -n "$trt" ] && trt=$(abspath "$trt")
py=${PYTHON:-python3}
case "$py" in */*) py=$(abspath "$py") ;; esac     # a relative path, before Python starts elsewhere

# The package without installing it: a temporary dysink_deploy/ whose entries link into the checkout,
# with the package-dir folders (pyproject.toml) linked in as its subpackages; byte code goes there too.
pkg=$(mktemp -d "${TMPDIR:-/tmp}/dysink-gpukit-path-XXXXXX") || exit 1
trap 'rm -rf "$pkg"' EXIT
mkdir "$pkg/dysink_deploy"
for entry in "$ROOT"/dysink_deploy/*; do
  case "$(basename "$entry")" in __pycache__) continue ;; esac
  ln -s "$entry" "$pkg/dysink_deploy/$(basename "$entry")"
done
for sub in export runtime plugins; do ln -s "$ROOT/$sub" "$pkg/dysink_deploy/$sub"; done
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPYCACHEPREFIX="$pkg/pycache"
export PIP_NO_INDEX=1      # nothing here installs; should anything try, it finds no index
# Python puts the current folder first on sys.path: the checkout's own dysink_deploy/ (which lacks
# the package-dir subpackages) must not shadow the linked one, so Python starts in $pkg.
cd "$pkg" || exit 1

if [ "$mode" = prepare ]; then
  [ -z "${PYTHON:-}" ] && [ -x "$ROOT/.venv/bin/python" ] && py="$ROOT/.venv/bin/python"
  unset TRITON_INTERPRET     # the cubins are compiled, not interpreted
  "$py" -m dysink_deploy.gpukit prepare --kit "$kit" --arch "$arch" ${trt:+--tensorrt-include "$trt"} \
    --stream-blocks "$blocks" $overwrite
  rc=$?
  [ $rc -eq 0 ] && echo "kit size: $(du -sh "$kit" | cut -f1) ($kit)"
  exit $rc
fi

if [ "$mode" = where ]; then
  "$py" -c 'import importlib.util as u
for name in ("dysink_deploy", "dysink_deploy.export", "dysink_deploy.runtime", "dysink_deploy.plugins",
             "dysink_deploy.gpukit"):
    print(name, u.find_spec(name).origin)'
  exit $?
fi
if ! command -v "$py" >/dev/null 2>&1; then
  echo "SKIPPED | scripts/gpu-check.sh --kit needs python3 with torch on a CUDA GPU: no $py on PATH (exit 77: not a pass)"
  exit 77
fi
"$py" -m dysink_deploy.gpukit run --kit "$kit" --out "$out" --budget-s "$budget"
exit $?
