# Every target sets up what it needs: a fresh clone runs `make demo` or `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test check docs sysdeps bench bench-venv bench-reverse soak autobahn clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,metrics,docs]'
	touch $(STAMP)

# Debian packages the end-to-end tests drive (curl is the CONNECT client,
# haproxy and nginx's stream module the balancers in front of and behind
# hijack for PROXY protocol; proxychains4, ncat, Dante's socksify, kdig and
# dig the SOCKS5 and UDP clients, dnsmasq and redis-server their servers;
# Redis, OpenSSH and Chromium the services and clients of the reverse-tunnel
# tests).
sysdeps:
	@missing=""; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	test -e /usr/lib/nginx/modules/ngx_stream_module.so || missing="$$missing libnginx-mod-stream"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	command -v systemd-socket-activate >/dev/null || missing="$$missing systemd"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v proxychains4 >/dev/null || missing="$$missing proxychains4"; \
	command -v ncat >/dev/null || missing="$$missing ncat"; \
	command -v socksify >/dev/null || missing="$$missing dante-client"; \
	command -v kdig >/dev/null || missing="$$missing knot-dnsutils"; \
	command -v dig >/dev/null || missing="$$missing bind9-dnsutils"; \
	test -x /usr/sbin/dnsmasq || missing="$$missing dnsmasq-base"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	command -v ssh >/dev/null || missing="$$missing openssh-client"; \
	command -v redis-benchmark >/dev/null || missing="$$missing redis-tools"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# Node clients (the `ws` package) for the WebSocket tests, in tests/node only.
NODE_CLIENTS := tests/node/node_modules/.package-lock.json
$(NODE_CLIENTS): tests/node/package.json tests/node/package-lock.json | sysdeps
	cd tests/node && npm ci --no-audit --no-fund

demo: $(STAMP)
	$(VENV)/bin/hijack demo

# The floors of the package (core <- tunnel <- upgrades/client <- cli) and no
# import loop: tools/check_layers.py says which import breaks them.
check: $(STAMP)
	$(VENV)/bin/ruff check hijack tests examples bench autobahn tools docs/conf.py docs/_ext pytest_hijack.py
	$(VENV)/bin/ruff format --check hijack tests examples bench autobahn tools docs/conf.py docs/_ext pytest_hijack.py
	$(VENV)/bin/mypy --strict hijack examples bench tests autobahn tools docs/conf.py docs/_ext pytest_hijack.py
	$(PY) tools/check_layers.py

# The manual (docs/, Sphinx + MyST): warnings are errors, every cross reference
# and internal link is checked (-n), nothing is fetched from the network; the
# command reference, config keys, metrics and benchmark charts are written
# from the code at build time. Output: docs/_build/html.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -E -n -W --keep-going -q -b html docs docs/_build/html

# Branch coverage is measured on every run (gate: fail_under in pyproject.toml).
test: $(STAMP) sysdeps $(NODE_CLIENTS) check docs
	$(PY) -m pytest -q --cov --cov-report=term

# Peers go into their own virtualenv, never into the project's.
BENCH_VENV := bench/.venv
$(BENCH_VENV)/.installed: bench/requirements-peers.txt pyproject.toml
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r bench/requirements-peers.txt -e '.[redis]'
	touch $@

bench-venv: $(BENCH_VENV)/.installed

# Reverse tunnels against OpenSSH's ssh -R; writes bench/RESULTS-reverse.md.
bench-reverse: $(STAMP) sysdeps
	$(PY) bench/reverse_rows.py

# Side by side with the peers, about 15 minutes; writes bench/RESULTS.md.
bench: $(STAMP) bench-venv bench/goproxy/goproxy
	@command -v wrk >/dev/null || { apt-get update -q && apt-get install -y -q wrk; }
	@command -v redis-benchmark >/dev/null || { apt-get update -q && apt-get install -y -q redis-server redis-tools; }
	$(PY) bench/run.py

# The Go net/http peer (bench/goproxy): Debian's golang-go, standard library only.
bench/goproxy/goproxy: bench/goproxy/main.go
	@command -v go >/dev/null || { apt-get update -q && apt-get install -y -q golang-go; }
	cd bench/goproxy && go build -o goproxy main.go

# Mixed load for a bounded time, RSS and fds over time, then RSS growth per
# input kind. `make soak SECONDS=600` is the long mode.
SECONDS ?= 120
soak: $(STAMP)
	$(PY) bench/soak.py --seconds $(SECONDS)

# Autobahn server cases 1-13 against `hijack echo` (minutes; not in `make
# test`). The runner (kosoku, PyPI) gets its own virtualenv.
AUTOBAHN_VENV := autobahn/.venv
$(AUTOBAHN_VENV)/.installed: autobahn/requirements.txt
	python3 -m venv $(AUTOBAHN_VENV)
	$(AUTOBAHN_VENV)/bin/pip install -q -r autobahn/requirements.txt
	touch $@

autobahn: $(STAMP) $(AUTOBAHN_VENV)/.installed
	$(AUTOBAHN_VENV)/bin/python autobahn/run_cases.py --hijack $(VENV)/bin/hijack

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache docs/_build docs/_generated
