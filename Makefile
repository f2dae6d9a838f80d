# Set-up is `make install` (run implicitly by `make run` / `make test`): a ./.venv with the project editable.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# CPU machines take the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
export OMP_NUM_THREADS ?= 1

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: install
	$(PY) cli.py study --out runs/study

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benches/run_all.py

clean:
	rm -rf $(VENV) runs build *.egg-info
