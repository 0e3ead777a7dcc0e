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

.PHONY: setup demo test bench bench-smoke

# Python and JavaScript sinks (componentize-py, componentize-js).
include mk/polyglot.mk

# Beyond stock Rust: the Wasm component target, OpenSSL headers for the
# Delta Lake client, and GNU time, with which the tests measure a sluice
# process's own peak memory (all present on the usual image; installed if
# missing).
setup:
	rustup target add wasm32-wasip2
	@pkg-config --exists openssl || (apt-get update && apt-get install -y libssl-dev pkg-config)
	@test -x /usr/bin/time || (apt-get update && apt-get install -y time)

$(TANSU):
	cargo install tansu@0.6.0 --locked --features libsql --root $(TOOLS)

$(READER_VENV)/.installed: tests/reader/requirements.txt
	python3 -m venv $(READER_VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r tests/reader/requirements.txt
	touch $@

# The embedded demo: Kafka (in-process mock cluster) → the example upsert
# sink → a local Delta table in ./sluice-demo (builds everything first).
demo: setup
	cargo build --release --locked
	$(TARGET_DIR)/release/sluice demo --dir sluice-demo

# The test suite: unit tests and the integration suite in tests/it, which
# starts its own broker processes from $(TANSU), reads Delta tables back
# with an independent reader (Python deltalake, $(PYTHON)), and runs the
# Python, JavaScript and C sinks built into $(POLYGLOT).
test: setup $(TANSU) $(READER_VENV)/.installed polyglot-guests
	SLUICE_TANSU=$(TANSU) SLUICE_PYTHON=$(PYTHON) SLUICE_POLYGLOT_DIR=$(abspath $(POLYGLOT)) cargo test --release --locked -p sluice -p sluice-sdk

# Benchmarks, printing figures (not run as tests).
bench: setup
	cargo bench --locked --bench runtime
	cargo bench --locked --bench pipeline

# The benchmarks at a tiny size, to check they still run.
bench-smoke: setup
	SLUICE_BENCH_RECORDS=20000 cargo bench --locked --bench runtime
	SLUICE_BENCH_RECORDS=20000 cargo bench --locked --bench pipeline
