# The two commands a new user needs: `make serve` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium
CHROMEDRIVER ?= /usr/bin/chromedriver

.PHONY: setup serve test fuzz clean browser container container-test

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

test: setup browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Fuzzing, long and with fresh randomness: the decoder and request parsers in-process (hypothesis), and a
# server it starts against its own OpenAPI document (schemathesis). `make test` runs the same tests with
# a few dozen examples each. FUZZ_EXAMPLES is per property; each API operation gets a quarter of it.
FUZZ_EXAMPLES ?= 2000
fuzz: setup
	FACECHECK_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz.py $(PYTEST_ARGS)

# The bento's container image, built and run with podman (deploy/container.py); minutes, so not part of
# `make test`. `container` makes the base image from Debian's packages when it is missing (root and
# debootstrap), then `bentoml build` and `bentoml containerize`; `container-test` runs IMAGE on a loopback
# port and checks its answers against this checkout's engine, on PHOTO (default: a face of ../shared/data).
IMAGE ?= facecheck:latest
container: setup
	$(BIN)/python -m deploy.container build

container-test: setup
	$(BIN)/python -m deploy.container test --image $(IMAGE) $(if $(PHOTO),--photo $(PHOTO))

# The page's end-to-end test drives Debian's headless Chromium. Where it is missing, try to install it
# (as root, with apt-get: CI); this never fails the build: without a browser that one test skips.
browser:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  { apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y chromium chromium-driver >/dev/null; } \
	    || echo "could not install chromium and chromium-driver: the browser test will skip"; \
	else echo "no $(CHROMIUM) and no apt-get as root: the browser test will skip"; fi

clean:
	rm -rf $(VENV) .cache .pytest_cache
