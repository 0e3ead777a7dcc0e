# Set-up and everyday commands. On a fresh machine, `make demo` and
# `make test` are all you need: each installs what it uses first.

# Where cargo builds, and where tools are installed (CI keeps both in a cache
# outside the clone, so a second run reuses them).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
GUESTS := $(TARGET_DIR)/guests/wasm32-wasip2/release
TOOLS := $(or $(SLUICE_TOOLS_DIR),$(HOME)/.cache/sluice-ci/tools)
# The Kafka-protocol broker of the integration tests (no JVM Kafka here).
TANSU := $(TOOLS)/bin/tansu
# The independent Delta reader of the tests: Python deltalake in a venv.
READER_VENV := $(TOOLS)/delta-reader
PYTHON := $(READER_VENV)/bin/python
# Object stores for the tests of remote tables, as real servers on loopback
# ports: moto's S3-compatible server and Azurite's Blob emulator. The moto
# venv's Python also creates buckets and containers (boto3,
# azure-storage-blob). Both are keyed by the hash of their pins, so a fresh
# clone reuses them and a bump reinstalls.
SERVERS_VENV := $(TOOLS)/moto
SERVERS_PYTHON := $(SERVERS_VENV)/bin/python
MOTO := $(SERVERS_VENV)/bin/moto_server
SERVERS_STAMP := $(SERVERS_VENV)/.installed-$(shell sha256sum tests/servers/moto-requirements.txt | cut -c1-16)
AZURITE_MANIFEST := tests/servers/azurite
AZURITE_DIR := $(TOOLS)/azurite
AZURITE := $(AZURITE_DIR)/node_modules/.bin/azurite-blob
AZURITE_STAMP := $(AZURITE_DIR)/.installed-$(shell cat $(AZURITE_MANIFEST)/package.json $(AZURITE_MANIFEST)/package-lock.json | sha256sum | cut -c1-16)

.PHONY: setup demo test bench bench-smoke object-servers

# Python and JavaScript sinks (componentize-py, componentize-js).
include mk/polyglot.mk

# Beyond stock Rust: the Wasm component target, OpenSSL headers for the
# Delta Lake client and librdkafka's TLS and SASL, GNU time, with which the
# tests measure a sluice process's own peak memory, and stunnel, the TLS
# listener in front of the tests' secured broker (installed if missing).
setup:
	rustup target add wasm32-wasip2
	@pkg-config --exists openssl || (apt-get update && apt-get install -y libssl-dev pkg-config)
	@test -x /usr/bin/time || (apt-get update && apt-get install -y time)
	@command -v stunnel >/dev/null || (apt-get update && apt-get install -y stunnel4)

$(TANSU):
	cargo install tansu@0.6.0 --locked --features libsql --root $(TOOLS)

$(READER_VENV)/.installed: tests/reader/requirements.txt
	python3 -m venv $(READER_VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/reader/requirements.txt
	touch $@

# The S3 server and the servers' Python (see tests/servers/). Made anew, not
# upgraded in place, so the venv holds exactly the pins.
$(SERVERS_STAMP):
	@command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
		|| (apt-get update && apt-get install -y python3 python3-venv)
	rm -rf $(SERVERS_VENV)
	python3 -m venv $(SERVERS_VENV)
	$(SERVERS_PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/servers/moto-requirements.txt
	touch $@

# Azurite from its committed lock (tests/servers/azurite), installed into a
# .part directory and moved into place whole, so an interrupted install is
# not taken for a finished one.
$(AZURITE_STAMP):
	@command -v npm >/dev/null || (apt-get update && apt-get install -y nodejs npm)
	rm -rf $(AZURITE_DIR) $(AZURITE_DIR).part
	mkdir -p $(AZURITE_DIR).part
	cp $(AZURITE_MANIFEST)/package.json $(AZURITE_MANIFEST)/package-lock.json $(AZURITE_DIR).part/
	cd $(AZURITE_DIR).part && npm ci --no-audit --no-fund --loglevel=error
	mv $(AZURITE_DIR).part $(AZURITE_DIR)
	touch $@

object-servers: $(SERVERS_STAMP) $(AZURITE_STAMP)

# The embedded demo: Kafka (in-process mock cluster) → the example upsert
# sink → a local Delta table in ./sluice-demo (builds everything first).
demo: setup
	cargo build --release --locked
	$(TARGET_DIR)/release/sluice demo --dir sluice-demo

# The test suite: unit tests and the integration suite in tests/it, which
# starts its own broker processes from $(TANSU), reads Delta tables back
# with an independent reader (Python deltalake, $(PYTHON)), and runs the
# Python, JavaScript and C sinks built into $(POLYGLOT). Tests of remote
# tables start their own moto and Azurite servers from $(MOTO) and
# $(AZURITE), and make buckets and containers with $(SERVERS_PYTHON).
test: setup $(TANSU) $(READER_VENV)/.installed polyglot-guests object-servers
	SLUICE_TANSU=$(TANSU) SLUICE_PYTHON=$(PYTHON) SLUICE_POLYGLOT_DIR=$(abspath $(POLYGLOT)) \
	SLUICE_MOTO=$(MOTO) SLUICE_AZURITE=$(AZURITE) SLUICE_SERVERS_PYTHON=$(SERVERS_PYTHON) \
		cargo test --release --locked -p sluice -p sluice-sdk

# Benchmarks, printing figures (not run as tests).
bench: setup $(SERVERS_STAMP)
	cargo bench --locked --bench runtime
	cargo bench --locked --bench pipeline
	SLUICE_MOTO=$(MOTO) cargo bench --locked --bench object_store
	cargo bench --locked --bench maintenance
	cargo bench --locked --bench merge

# The benchmarks at a tiny size, to check they still run.
bench-smoke: setup $(SERVERS_STAMP)
	SLUICE_BENCH_RECORDS=20000 cargo bench --locked --bench runtime
	SLUICE_BENCH_RECORDS=20000 cargo bench --locked --bench pipeline
	SLUICE_MOTO=$(MOTO) SLUICE_BENCH_RECORDS=5000 cargo bench --locked --bench object_store
	SLUICE_BENCH_RECORDS=300 cargo bench --locked --bench maintenance
	SLUICE_BENCH_CHANGES=20000 cargo bench --locked --bench merge
