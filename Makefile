# Both targets create .venv when missing and install what they need.
# torch 2.13.0 is installed first (a CPU build from local disk on our machines) so the
# project's own `torch>=2.4` never makes the resolver fetch a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lladauni-installed

.PHONY: test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev,agent,server]"
	# Triton for the kernel tests (run in its CPU interpreter); --no-deps keeps the torch above
	$(PY) -m pip install --quiet --no-deps "triton>=3.0"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/lladauni demo

bench: $(STAMP)
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
