"""The GPU proof kit: prepared without a GPU, run on one in one command (docs/gpu-check.md).

    scripts/gpu-check.sh --prepare DIR [--arch 90] [--tensorrt-include PATH]     here (no GPU)
    scripts/gpu-check.sh --kit DIR --out OUTDIR [--budget-s 540]                 there (a CUDA GPU)

Modules: `kit` (layout, kit.json), `prepare` (--prepare), `runner` (--kit: the stages under one
budget, each in its own process), `stages` (the list), one module per stage (`kernels_stage` a,
`harness_stage` b, `stream_stage` c, `fullsize_stage` d), `result` (a stage's outcome), `report`
(gpu-check.md / .json), `device` (the skip rule and the device line). Nothing here is imported by the
runtime; the runner and the skip path import no torch.
"""
