# dlm: `make demo` and `make test` create the virtual environment themselves.
# TORCH_SPEC picks the torch build installed before dlm (an unpinned torch pulls CUDA wheels);
# GPU users: TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" make install
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test test-unit bench lint clean

$(BIN)/.dlm-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.dlm-installed

demo: install
	$(BIN)/dlm-demo

test: install
	$(BIN)/python -m pytest tests

test-unit: install
	$(BIN)/python -m pytest tests -m "not slow"

bench: install
	$(BIN)/dlm-bench train

lint: install
	$(BIN)/ruff check dlm tests scripts

clean:
	rm -rf $(VENV) .cache runs
