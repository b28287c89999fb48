# Both main targets create .venv when missing and install what they need from the committed lock
# (requirements.lock, pip constraints), so an upstream release cannot break a fresh clone.
# torch 2.13.0 is installed first (a CPU build from local disk on our machines) so the project's
# own `torch>=2.4` never makes the resolver fetch a CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lladauni-installed
LOCK := requirements.lock
SMOKE := tests/test_api.py tests/test_packaging.py tests/test_kernel_choice.py tests/test_demo_cli.py \
         tests/test_tokenizer.py tests/test_decoder.py tests/test_workflows_validation.py tests/test_tools_mcp.py

.PHONY: test demo bench clean lock check-latest check-wheel mutation

# $(call fresh_venv,DIR,PIP_FLAGS): a throwaway venv at DIR with torch 2.13.0 first, then the
# project with every extra and Triton (no deps), resolved without the lock.
define fresh_venv
	rm -rf $(1) && $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet "torch==2.13.0"
	$(1)/bin/python -m pip install --quiet $(2) ".[dev,agent,server]"
	$(1)/bin/python -m pip install --quiet --no-deps $(2) triton
endef

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev,agent,server]"
	# Triton for the kernel tests (run in its CPU interpreter); --no-deps keeps the torch above
	$(PY) -m pip install --quiet --no-deps -c $(LOCK) triton
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/lladauni demo

bench: $(STAMP)
	$(PY) -m bench.run

# The wheel as a user gets it: built, installed (not editable) with the lock into a fresh venv,
# used from a directory outside the checkout (CI runs this before the tests).
# Mutation testing (bench/mutation.py): generated one-line bugs in generation, layers, MoE, image
# preprocessing, decoder samplers, the server's auth/path checks and the workflow limits; the score
# per module goes to bench/RESULTS.md. About an hour on 2 cores; not part of `make test`.
mutation: $(STAMP)
	$(PY) -m bench.mutation

check-wheel:
	bash .ci/wheel_check

# The newest versions pyproject allows, in a throwaway venv, on a smoke subset: finds the next
# upstream break before users do. Does not touch .venv or the lock.
check-latest:
	$(call fresh_venv,/tmp/lladauni-latest,--upgrade --upgrade-strategy eager)
	/tmp/lladauni-latest/bin/python -m pip freeze | grep -iE "^(transformers|diffusers|kernels|tokenizers|langgraph|mcp|fastapi|pydantic|triton)=="
	/tmp/lladauni-latest/bin/python -m pytest -q -p no:cacheprovider $(SMOKE)

# Re-resolve the lock from the newest allowed versions (then run `make test` before committing it).
lock:
	$(call fresh_venv,/tmp/lladauni-lock,)
	{ echo "# Resolved versions for 'make test' / 'make demo' (pip constraints; Python 3.11, CPU torch from local disk)."; \
	  echo "# Regenerate with 'make lock' (newest versions pyproject allows, resolved in a throwaway venv), then run 'make test'."; \
	  /tmp/lladauni-lock/bin/python -m pip freeze --exclude lladauni-agent | sed -e 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/'; } > $(LOCK)

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
