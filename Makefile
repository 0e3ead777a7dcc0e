# Set-up and everyday commands. On a fresh machine, `make demo` and
# `make test` are all you need: each installs what it uses first.

# Where cargo builds (CI keeps it in a cache outside the clone).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
GUESTS := $(TARGET_DIR)/guests/wasm32-wasip2/release

.PHONY: setup demo test bench bench-smoke

# The only toolchain piece beyond stock Rust: the Wasm component target.
setup:
	rustup target add wasm32-wasip2

# Run the example upsert sink over a sample batch (builds everything first).
demo: setup
	cargo build --release --locked
	$(TARGET_DIR)/release/sluice exec --component $(GUESTS)/orders_upsert.wasm \
		--records examples/orders-upsert/sample-batch.jsonl --batch-id 1 --rows

# The test suite: unit tests and the integration suite in tests/it.
test: setup
	cargo test --release --locked

# Benchmarks, printing figures (not run as tests).
bench: setup
	cargo bench --locked --bench runtime

# The benchmarks at a tiny size, to check they still run.
bench-smoke: setup
	SLUICE_BENCH_RECORDS=20000 cargo bench --locked --bench runtime
