# Two entry points do all the set-up on a fresh machine:
#   make demo   -> export the tiny model to bundles/tiny-fp32 (once) and stream it
#                  with ONNX Runtime on CPU into demo-out/
#   make test   -> the CPU test suite
PY ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	@echo "installing into $(VENV)/ (torch, onnxruntime, triton, ...: a few minutes the first time)"
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml (CPU wheel available locally).
	$(VENV)/bin/python -m pip install -q -e '.[all]'
	touch $(STAMP)
	@echo "installed; the commands are in $(VENV)/bin (source $(VENV)/bin/activate)"

.PHONY: install demo test bench gpu-check
install: $(STAMP)

# The bundle is reused when Bundle.load accepts it (files present, checksums and versions match).
DEMO_BUNDLE := bundles/tiny-fp32

demo: $(STAMP)
	@$(VENV)/bin/python -c "from dysink_deploy.bundle import Bundle; Bundle.load('$(DEMO_BUNDLE)')" 2>/dev/null \
		&& echo "reusing $(DEMO_BUNDLE)" \
		|| $(VENV)/bin/dysink-export onnx --model tiny --precision fp32 --out $(DEMO_BUNDLE) --overwrite
	# dedup 0.985 instead of the released 0.95: the random tiny model's block features are
	# all alike, and at 0.95 the bank would never grow past one entry in the demo.
	$(VENV)/bin/dysink-run --backend onnxruntime --bundle $(DEMO_BUNDLE) --blocks 12 --seed 0 \
		--dedup-threshold 0.985 --out demo-out --overwrite

# The suite in TEST_JOBS parallel workers (pytest-xdist; one thread each): about half the time
# on the 2-core CI machine. TEST_JOBS=0 runs it in this process, one test after another.
TEST_JOBS ?= 2
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n $(TEST_JOBS)

# Every table of the README's Benchmarks section (several minutes; pin threads on a busy machine).
bench: $(STAMP)
	$(VENV)/bin/python -c "from dysink_deploy.bundle import Bundle; Bundle.load('$(DEMO_BUNDLE)')" 2>/dev/null \
		|| $(VENV)/bin/dysink-export onnx --model tiny --precision fp32 --out $(DEMO_BUNDLE) --overwrite
	$(VENV)/bin/dysink-bench stream --model tiny --blocks 20 --threads 2
	$(VENV)/bin/dysink-bench stream --model tiny --blocks 20 --threads 2 --feature-mode streamed
	$(VENV)/bin/dysink-bench stream --backend onnxruntime --bundle $(DEMO_BUNDLE) --blocks 20 --threads 2
	$(VENV)/bin/dysink-bench graphs --model tiny --runs 20 --threads 2
	$(VENV)/bin/dysink-bench graphs --mid --runs 5 --threads 2
	$(VENV)/bin/dysink-bench memory --model tiny --blocks 600 --bank-capacity 16
	$(VENV)/bin/dysink-bench soak --bundle $(DEMO_BUNDLE) --blocks 2000

# On a machine with a CUDA GPU and a package index (the venv): the GPU kit's stages (docs/gpu-check.md:
# the kernels vs the references and vs SDPA, the plugin harness, the torch backend on CUDA decision
# for decision, full-size speed; report copied to docs/, commit it), then the GPU-marked tests; with
# TensorRT as well: the tiny fp16 bundle's plugin library and engines, every engine output against
# PyTorch and a 12-block stream on tensorrt vs torch, decision for decision (written to docs/ too).
# Without a GPU: one SKIPPED line and the recipe exits 77, the skip code of every GPU check of the
# project (make itself then says "Error 77" and exits 2; scripts/gpu-check.sh returns 77 itself).
GPU_BUNDLE := bundles/gpu-check-tiny-fp16
GPU_KIT := gpu-check-out/kit
gpu-check: $(STAMP)
	@reason=$$(TRITON_INTERPRET=0 $(VENV)/bin/python -c "from dysink_deploy.gpukit.device import skip_reason; print(skip_reason() or '')"); \
	if [ -n "$$reason" ]; then echo "SKIPPED | make gpu-check needs a CUDA GPU: $$reason (exit 77: not a pass)"; exit 77; fi; \
	set -e; \
	arch=$$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .); \
	scripts/gpu-check.sh --prepare $(GPU_KIT) --overwrite --arch $$arch $${TensorRT_INCLUDE_DIR:+--tensorrt-include $$TensorRT_INCLUDE_DIR}; \
	PYTHON=$(VENV)/bin/python scripts/gpu-check.sh --kit $(GPU_KIT) --out gpu-check-out/report; \
	cp gpu-check-out/report/gpu-check.md docs/gpu-check-$$(date +%F).md; \
	TRITON_INTERPRET=0 $(VENV)/bin/python -m pytest -q -m gpu; \
	if $(VENV)/bin/python -c "import tensorrt" 2>/dev/null; then \
	  $(VENV)/bin/dysink-export onnx --model tiny --precision fp16 --out $(GPU_BUNDLE) --overwrite; \
	  $(VENV)/bin/dysink-export plugins --bundle $(GPU_BUNDLE) --arch $$arch --out $(GPU_BUNDLE)/plugins --overwrite; \
	  $(VENV)/bin/dysink-export build --bundle $(GPU_BUNDLE); \
	  report=docs/engines-gpu-check-$$(date +%F).md; \
	  $(VENV)/bin/dysink-export check --bundle $(GPU_BUNDLE) --engines --blocks 12 > $$report \
	    || { cat $$report; exit 1; }; \
	  for g in "" --cuda-graph; do $(VENV)/bin/dysink-run --backend tensorrt --bundle $(GPU_BUNDLE) --blocks 12 \
	    --quiet --overwrite --out gpu-check-out/trt$$g $$g >> $$report; done; \
	  $(VENV)/bin/dysink-bench compare gpu-check-out/trt gpu-check-out/trt--cuda-graph >> $$report \
	    || { cat $$report; exit 1; }; cat $$report; \
	else echo "SKIPPED | TensorRT checks: the tensorrt Python package is not installed"; fi
