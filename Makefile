# Set-up is one idempotent target; `make run` and `make test` both depend on it, so a fresh
# clone needs nothing but `make run` (the service) or `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The stamp changes whenever the dependency list or this file does, so a second `make` is a no-op.
STAMP  := $(VENV)/.setup-$(shell cat pyproject.toml Makefile web/package-lock.json | sha1sum | cut -c1-12)
MEDIAPIPE := mediapipe==0.10.21
# Extras to install (dev = test tools) and whether to install Chromium for the browser test;
# the Docker images set EXTRAS= BROWSER=0 for a runtime-only install.
EXTRAS  ?= dev
BROWSER ?= 1

.PHONY: setup run test lint bench eval export clean

setup: $(STAMP)

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	@# Lean mediapipe: the face-mesh solution without jax/opencv-contrib (see pyproject.toml).
	$(BIN)/pip install -q --disable-pip-version-check --no-deps $(MEDIAPIPE)
	@# Debian's Chromium for the browser end-to-end test; never a downloaded browser build.
	@[ "$(BROWSER)" = 0 ] || command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: install Debian's chromium for the browser test (sudo apt-get install chromium)"; fi; }
	@# mediapipe's web build for the page's on-device keypoint mode, from npm (pinned in
	@# web/package-lock.json), served by the app from web/node_modules: no CDN at run time.
	@# Debian's npm is installed like Chromium above when it is missing and we are root (the
	@# images set BROWSER=0 and bring web/node_modules from a node build stage instead).
	@[ "$(BROWSER)" = 0 ] || command -v npm >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; }
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix web --no-audit --no-fund --loglevel=error; \
	 else echo "note: install Debian's npm (sudo apt-get install npm): the page's 'Keypoints from this device' mode and its browser test need it"; fi
	$(BIN)/reenact export --size 256 --size 512
	@rm -f $(VENV)/.setup-* && touch $@

run: setup
	$(BIN)/reenact serve

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.gpu

test: setup lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/reenact bench

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache
