# Every target sets up what it needs: a fresh clone runs `make demo` or `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check sysdeps bench bench-venv soak clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian packages the end-to-end tests drive (curl is the CONNECT client).
sysdeps:
	@command -v curl >/dev/null || { apt-get update -q && apt-get install -y -q curl; }

demo: $(STAMP)
	$(VENV)/bin/hijack demo

check: $(STAMP)
	$(VENV)/bin/ruff check hijack tests examples bench
	$(VENV)/bin/ruff format --check hijack tests examples bench
	$(VENV)/bin/mypy --strict hijack examples bench

test: $(STAMP) sysdeps check
	$(PY) -m pytest -q

# Peers go into their own virtualenv, never into the project's.
BENCH_VENV := bench/.venv
$(BENCH_VENV)/.installed: bench/requirements-peers.txt pyproject.toml
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r bench/requirements-peers.txt -e .
	touch $@

bench-venv: $(BENCH_VENV)/.installed

# Side by side with the peers, under 10 minutes; writes bench/RESULTS.md.
bench: $(STAMP) bench-venv
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	$(PY) bench/run.py

# Mixed load for a bounded time, RSS and fds over time, then RSS growth per
# input kind. `make soak SECONDS=600` is the long mode.
SECONDS ?= 120
soak: $(STAMP)
	$(PY) bench/soak.py --seconds $(SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
