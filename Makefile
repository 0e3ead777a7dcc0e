# Set-up and everyday commands. On a fresh machine, `make demo` and
# `make test` are all you need: each installs what it uses first.

# Where cargo builds, and where tools are installed (CI keeps both in a cache
# outside the clone, so a second run reuses them).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
GUESTS := $(TARGET_DIR)/guests/wasm32-wasip2/release
TOOLS := $(or $(SLUICE_TOOLS_DIR),$(HOME)/.cache/sluice-ci/tools)
# The Kafka-protocol broker of the integration tests (no JVM Kafka here).
TANSU := $(TOOLS)/bin/tansu

.PHONY: setup demo test bench bench-smoke

# Python and JavaScript sinks (componentize-py, componentize-js).
include mk/polyglot.mk

# Beyond stock Rust: the Wasm component target, and OpenSSL headers for the
# Delta Lake client (present on the usual image; installed if missing).
setup:
	rustup target add wasm32-wasip2
	@pkg-config --exists openssl || (apt-get update && apt-get install -y libssl-dev pkg-config)

$(TANSU):
	cargo install tansu@0.6.0 --locked --features libsql --root $(TOOLS)

# Run the example upsert sink over a sample batch (builds everything first).
demo: setup
	cargo build --release --locked
	$(TARGET_DIR)/release/sluice exec --component $(GUESTS)/orders_upsert.wasm \
		--records examples/orders-upsert/sample-batch.jsonl --batch-id 1 --rows

# The test suite: unit tests and the integration suite in tests/it, which
# starts its own broker processes from $(TANSU).
test: setup $(TANSU) polyglot-guests
	SLUICE_TANSU=$(TANSU) SLUICE_POLYGLOT_DIR=$(abspath $(POLYGLOT)) cargo test --release --locked

# Benchmarks, printing figures (not run as tests).
bench: setup
	cargo bench --locked --bench runtime

# The benchmarks at a tiny size, to check they still run.
bench-smoke: setup
	SLUICE_BENCH_RECORDS=20000 cargo bench --locked --bench runtime
