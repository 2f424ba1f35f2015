# Every target sets up what it needs: a fresh clone runs `make demo` or `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check sysdeps bench soak clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,speed]'
	touch $(STAMP)

# Debian packages the end-to-end tests drive (curl is the CONNECT client).
sysdeps:
	@command -v curl >/dev/null || { apt-get update -q && apt-get install -y -q curl; }

demo: $(STAMP)
	$(VENV)/bin/hijack demo

check: $(STAMP)
	$(VENV)/bin/ruff check hijack tests examples bench
	$(VENV)/bin/ruff format --check hijack tests examples bench
	$(VENV)/bin/mypy --strict hijack examples

# The suite runs twice: on plain h11 (the default dependency) and on the
# compiled h11-mypyc that hijack[speed] adds (see hijack/_h11.py).
test: $(STAMP) sysdeps check
	HIJACK_PURE_H11=1 $(PY) -m pytest -q
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
