"""python3 -m dysink_deploy.gpukit COMMAND ... (what scripts/gpu-check.sh calls).

  prepare --kit DIR [--arch 90] [--tensorrt-include PATH] [--overwrite]   build the kit (no GPU needed)
  run --kit DIR --out OUTDIR [--budget-s 540]                            every stage, under the budget
  STAGE --kit DIR --out OUTDIR                                           one stage: kernels (a),
        harness (b), stream (c), fullsize (d); writes OUTDIR/stage-<name>.json

Exit codes (dysink_deploy.exitcodes): 0 passed, 1 failed or incomplete, 2 bad input, 77 skipped
(no CUDA GPU; a skip is not a pass).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

from ..errors import DysinkError
from ..exitcodes import FAILED as EXIT_FAILED, PASSED as EXIT_PASSED, SKIPPED as EXIT_SKIPPED
from .kit import load_manifest
from .result import ERROR, NOT_RUN, PASSED, SKIPPED, StageResult
from .runner import run_kit
from .stages import BY_NAME, stage

USAGE_EXIT = 2


def _log(message: str) -> None:
    print(message, flush=True)


def run_stage(name: str, kit: str, out: str, log=_log) -> int:
    """One stage in this process -> its exit code; the result is saved in OUTDIR/stage-<key>.json."""
    st = stage(name)
    Path(out).mkdir(parents=True, exist_ok=True)
    result = StageResult(st.key, st.title, out=str(out))
    load_manifest(kit)
    t0 = time.monotonic()
    try:
        st.function()(Path(kit), Path(out), log, result)
    except DysinkError as exc:
        result.status, result.detail = ERROR, str(exc)
    except Exception as exc:      # a stage's crash is its result, with the traceback in the log
        traceback.print_exc()
        result.status, result.detail = ERROR, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    if result.status == NOT_RUN:
        result.status, result.detail = ERROR, "the stage ended without a verdict"
    result.seconds = round(time.monotonic() - t0, 1)
    result.save()
    log(f"{st.letter} {st.key}: {result.status} | {result.detail}")
    return {PASSED: EXIT_PASSED, SKIPPED: EXIT_SKIPPED}.get(result.status, EXIT_FAILED)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m dysink_deploy.gpukit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["prepare", "run", *BY_NAME], help="what to do")
    p.add_argument("--kit", required=True, help="the kit directory")
    p.add_argument("--out", help="run / STAGE: the report directory")
    p.add_argument("--arch", default="90", help="prepare: GPU architectures, e.g. 90 or 87,90 [default: 90]")
    p.add_argument("--tensorrt-include", help="prepare: the folder holding NvInferRuntime.h (builds the plugin "
                                              "library and the harness)")
    p.add_argument("--overwrite", action="store_true", help="prepare: replace an existing kit")
    p.add_argument("--stream-blocks", type=int, default=12, help="prepare: blocks of the CPU reference stream that "
                                                                "stage c repeats [default: 12; fewer: tests only]")
    p.add_argument("--budget-s", type=float, default=540.0, help="run: seconds for every stage together "
                                                                 "[default: 540]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "prepare":
            from .prepare import prepare    # lazy: torch, triton (a kit is prepared with both)

            t0 = time.monotonic()
            if args.stream_blocks < 1:
                raise DysinkError(f"--stream-blocks must be >= 1, got {args.stream_blocks}")
            manifest = prepare(args.kit, args.arch, args.tensorrt_include, args.overwrite, log=_log,
                               stream_blocks=args.stream_blocks)
            skipped = [f"{k}: {v.get('reason')}" for k, v in manifest["contents"].items()
                       if isinstance(v, dict) and v.get("reason")]
            for line in skipped:
                _log(f"skipped | {line}")
            _log(f"DONE | kit {args.kit}: {manifest['size_bytes'] / 2 ** 20:.2f} MiB, {len(manifest['files'])} files, "
                 f"archs {','.join(map(str, manifest['archs']))} | {time.monotonic() - t0:.0f} s")
            return EXIT_PASSED
        if not args.out:
            raise DysinkError(f"{args.command} needs --out OUTDIR")
        if args.budget_s <= 0:
            raise DysinkError(f"--budget-s must be > 0, got {args.budget_s}")
        if args.command == "run":
            return run_kit(args.kit, args.out, args.budget_s, log=_log)
        return run_stage(args.command, args.kit, args.out)
    except DysinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
