"""Exit codes shared by every command of the project.

`SKIPPED` (77, automake's skip code, also understood by ctest's SKIP_RETURN_CODE) is what every GPU
check exits with when the machine cannot run it (no CUDA GPU, no torch, Triton's interpreter on):
`scripts/gpu-check.sh --kit`, `python3 -m dysink_deploy.gpukit`, `dysink-bench kernels` and the recipe
of `make gpu-check`. A skip is not a pass: 0 means the checks ran and passed, 1 that one failed.
"""

PASSED = 0
FAILED = 1
SKIPPED = 77
