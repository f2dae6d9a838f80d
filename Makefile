# Set-up is `make install` (run implicitly by `make run` / `make test`): a ./.venv with the exact versions of
# requirements.lock and the project editable. The same suite runs at both ends of the transformers / accelerate
# range pyproject.toml declares: `make test-oldest` on its minimums (in ./.venv-oldest), `make test-latest` on the
# newest releases (in ./.venv-latest); `make lock` moves the lock forward to the newest releases.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
LATEST := .venv-latest
OLDEST := .venv-oldest
LOCK   := requirements.lock
# the declared minimums, e.g. "transformers==5.23.0 accelerate==1.15.0", read from pyproject.toml
MINIMUMS := $(shell sed -n 's/^ *"\(transformers\|accelerate\)>=\([0-9.]*\).*/\1==\2/p' pyproject.toml)
# CPU machines take the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
# CUDA machines also get torchvision, installed with torch so that pip picks the matching build: the published
# Qwen3-VL and Llama-4 processors need it (without it Qwen3-VL's image processor is built with PIL, Llama-4 stops).
TORCHVISION ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torchvision)
export OMP_NUM_THREADS ?= 1

.PHONY: install run test test-latest test-oldest test-upstream lint lock bench clean

install: $(STAMP)

# $(1): venv folder; $(2): extra pip arguments installed after the lock (the newest releases for test-latest, the
# declared minimums for test-oldest)
define make_venv
	python3 -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q "$(TORCH)" $(TORCHVISION)
	$(1)/bin/python -m pip install -q -r $(LOCK)
	$(1)/bin/python -m pip install -q --no-deps -e .
	$(if $(2),$(1)/bin/python -m pip install -q --upgrade $(2))
	touch $(1)/.installed
endef

$(STAMP): pyproject.toml $(LOCK)
	$(call make_venv,$(VENV),)

$(LATEST)/.installed: pyproject.toml $(LOCK)
	$(call make_venv,$(LATEST),transformers accelerate)

$(OLDEST)/.installed: pyproject.toml $(LOCK)
	$(call make_venv,$(OLDEST),$(MINIMUMS))

run: install
	$(PY) cli.py study --out runs/study

# $(1): venv folder whose python runs the suite, then the usage examples of moehooks' docstrings
define suite
	$(1)/bin/python -m pytest
	$(1)/bin/python -m pytest --doctest-modules moehooks
endef

test: install
	$(call suite,$(VENV))

test-latest: $(LATEST)/.installed
	$(LATEST)/bin/python -m pip install -q --upgrade transformers accelerate
	$(call versions,$(LATEST))
	$(call suite,$(LATEST))

test-oldest: $(OLDEST)/.installed
	$(call versions,$(OLDEST))
	$(call suite,$(OLDEST))

lint: install
	$(PY) -m ruff check .

# $(1): venv folder whose transformers and accelerate versions are printed before its run
define versions
	$(1)/bin/python -c "import transformers, accelerate; print('transformers', transformers.__version__, 'accelerate', accelerate.__version__)"
endef

# transformers' own model tests of the MoE families with every generate run twice, unhooked and inside
# moehooks.record + steer(soft, beta=0), compared bit for bit (tests/upstream_plugin.py). TRANSFORMERS_TESTS is
# the tests/ folder of a transformers checkout at the tag of the installed version (the sdist has none); the
# checkout's utils/ and src/transformers must sit beside it. Report: runs/upstream/report.jsonl.
TRANSFORMERS_TESTS ?=
UPSTREAM_FAMILIES  ?= qwen3_moe mixtral olmoe deepseek_v3 gpt_oss qwen2_moe glm4_moe granitemoe qwen3_vl_moe \
                      phimoe ernie4_5_moe dots1 jetmoe qwen3_next minimax
UPSTREAM_K         ?= generate or assisted or prompt_lookup or beam or sample or greedy
UPSTREAM_ROOT      = $(abspath $(TRANSFORMERS_TESTS)/..)
UPSTREAM_CHECKOUT  = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' $(UPSTREAM_ROOT)/src/transformers/__init__.py 2>/dev/null)
UPSTREAM_REPORT    = $(CURDIR)/runs/upstream/report.jsonl
UPSTREAM_ARGS      = -p upstream_plugin -p no:cacheprovider -o log_cli=false -W ignore -q -rfEx --moehooks-report $(UPSTREAM_REPORT)

test-upstream: install
	@test -d "$(TRANSFORMERS_TESTS)/models" || { echo "error: TRANSFORMERS_TESTS='$(TRANSFORMERS_TESTS)' is not the tests/ folder of a transformers checkout (README)"; exit 2; }
	@v=$$($(PY) -c "import transformers; print(transformers.__version__)"); test "$(UPSTREAM_CHECKOUT)" = "$$v" || { echo "error: the checkout $(UPSTREAM_ROOT) is transformers '$(UPSTREAM_CHECKOUT)', the installed one $$v: check out tag v$$v"; exit 2; }
	$(PY) -c "import parameterized, xdist" 2>/dev/null || $(PY) -m pip install -q parameterized pytest-xdist
	mkdir -p $(dir $(UPSTREAM_REPORT)) && rm -f $(UPSTREAM_REPORT)
	cd $(UPSTREAM_ROOT) && PYTHONPATH=$(CURDIR)/tests $(abspath $(PY)) -m pytest $(UPSTREAM_ARGS) -k "$(UPSTREAM_K)" $(foreach f,$(UPSTREAM_FAMILIES),tests/models/$(f)/test_modeling_$(f).py)

lock:
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q "$(TORCH)"
	.venv-lock/bin/python -m pip install -q --upgrade -e ".[dev,bench]"
	{ sed -n '1,2p' $(LOCK); .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -E '^(torch==|-e )'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "$(LOCK) updated: run make test, make test-oldest and make test-latest, then commit it"

bench: install
	$(PY) benches/run_all.py

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) .venv-lock runs build *.egg-info
