# Two entry points do all the set-up on a fresh machine:
#   make demo   -> stream the tiny model on CPU into demo-out/
#   make test   -> the CPU test suite
PY ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# torch is pinned to 2.13.0 in pyproject.toml (CPU wheel available locally).
	$(VENV)/bin/python -m pip install -q -e '.[all]'
	touch $(STAMP)

.PHONY: install demo test bench
install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dysink-run --model tiny --backend torch --blocks 12 --seed 0 --out demo-out --overwrite

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/dysink-bench stream --model tiny --blocks 20
	$(VENV)/bin/dysink-bench memory --model tiny --blocks 300 --bank-capacity 16
