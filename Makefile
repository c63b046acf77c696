# The two commands a new user needs: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup serve test clean

setup: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 come first and by exact version, so pip takes them from the
# machine's local wheels where it has them; facenet-pytorch 2.5.3's loose pins then keep them.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

serve: setup
	$(BIN)/bentoml serve --host $${FACECHECK_HOST:-127.0.0.1} --port $${FACECHECK_PORT:-3000}

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache
