# Sinks in Python and JavaScript: the pinned component toolchains and the
# components built with them. Included by the Makefile; the Rust guests are
# built by host/build.rs instead.
#
# Tools go into $(TOOLS), keyed by version (Python) or by the hash of the
# committed package-lock.json (JavaScript), so a fresh clone reuses them and
# a version bump installs beside the old one. Components are file targets
# with their sources as prerequisites: unchanged sources, no rebuild; and
# in a fresh clone, mk/build-once.sh reuses the last build of the same
# sources rather than making a new (not byte-identical) component.

COMPONENTIZE_PY_VERSION := 0.25.1
PY_TOOLS := $(TOOLS)/componentize-py-$(COMPONENTIZE_PY_VERSION)
COMPONENTIZE_PY := $(PY_TOOLS)/bin/componentize-py

JS_MANIFEST := examples/js-orders-upsert
JS_TOOLS := $(TOOLS)/componentize-js-$(shell sha256sum $(JS_MANIFEST)/package-lock.json | cut -c1-16)
COMPONENTIZE_JS := $(JS_TOOLS)/node_modules/.bin/componentize-js

# Where the components go; the conformance tests read SLUICE_POLYGLOT_DIR.
POLYGLOT := $(TARGET_DIR)/guests/polyglot
POLYGLOT_GUESTS := $(POLYGLOT)/python_orders_upsert.wasm $(POLYGLOT)/python_probe.wasm \
	$(POLYGLOT)/js_orders_upsert.wasm $(POLYGLOT)/js_probe.wasm $(POLYGLOT)/c_probe.wasm

# C: Debian's clang 14 and wasi-libc (a WASI preview 1 sysroot), bindings
# from wit-bindgen's C generator, and wasm-component-ld (shipped with the
# Rust toolchain for wasm32-wasip2) to link and adapt preview 1 to WASI 0.2.
WIT_BINDGEN_VERSION := 0.63.0
WIT_BINDGEN := $(TOOLS)/wit-bindgen-$(WIT_BINDGEN_VERSION)/bin/wit-bindgen
CLANG := clang-14
WASI_SYSROOT_LIB := /usr/lib/wasm32-wasi
CLANG_RT_WASM := /usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a
RUST_BIN = $(shell rustc --print sysroot)/lib/rustlib/$(shell rustc -vV | sed -n 's/^host: //p')/bin

.PHONY: polyglot-guests polyglot-tools bench-languages c-tools

polyglot-guests: $(POLYGLOT_GUESTS)
polyglot-tools: $(COMPONENTIZE_PY) $(COMPONENTIZE_JS) c-tools $(WIT_BINDGEN)

# python3 with venv, node and npm: on the usual image; from Debian if not.
$(COMPONENTIZE_PY):
	@command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null \
		|| (apt-get update && apt-get install -y python3 python3-venv)
	rm -rf $(PY_TOOLS)
	python3 -m venv $(PY_TOOLS)
	$(PY_TOOLS)/bin/pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY_VERSION)

$(COMPONENTIZE_JS):
	@command -v npm >/dev/null || (apt-get update && apt-get install -y nodejs npm)
	rm -rf $(JS_TOOLS) $(JS_TOOLS).part
	mkdir -p $(JS_TOOLS).part
	cp $(JS_MANIFEST)/package.json $(JS_MANIFEST)/package-lock.json $(JS_TOOLS).part/
	# Not `npm ci`: the lock lacks optional binaries of other platforms that
	# the registry does not have at the locked version (jco-node-fs), and
	# `npm ci` refuses such a lock. `npm install` of a lock in sync with
	# package.json installs exactly the locked versions and integrity hashes.
	cd $(JS_TOOLS).part && npm install --no-save --no-audit --no-fund --loglevel=error
	mv $(JS_TOOLS).part $(JS_TOOLS)

# Installed from Debian when missing (the usual image has none of them).
c-tools:
	@test -x /usr/bin/$(CLANG) && test -x /usr/bin/wasm-ld-14 && test -f $(WASI_SYSROOT_LIB)/libc.a && test -f $(CLANG_RT_WASM) \
		|| (apt-get update && apt-get install -y clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32)

$(WIT_BINDGEN):
	cargo install wit-bindgen-cli@$(WIT_BINDGEN_VERSION) --locked --root $(TOOLS)/wit-bindgen-$(WIT_BINDGEN_VERSION)

PY_SDK := guest-sdk-python/sluice.py
JS_SDK := guest-sdk-js/sluice.js guest-sdk-js/wit/world.wit guest-sdk-js/build.sh
WIT := $(wildcard wit/v0.2.0/*.wit)
# The pins live here and in the lock file: a bump rebuilds the components.
PY_DEPS := $(PY_SDK) $(WIT) mk/polyglot.mk mk/build-once.sh
JS_DEPS := $(JS_SDK) $(WIT) mk/polyglot.mk mk/build-once.sh $(JS_MANIFEST)/package-lock.json

# componentize-py APP_MODULE SOURCE_DIR (for the target $@, inputs $^)
define componentize_py
	mkdir -p $(POLYGLOT)
	mk/build-once.sh $@ "$^" -- \
		$(COMPONENTIZE_PY) --quiet -d wit/v0.2.0 -w sink componentize $(1) -p $(2) -p guest-sdk-python -o $@
endef

$(POLYGLOT)/python_orders_upsert.wasm: examples/python-orders-upsert/orders_upsert.py $(PY_DEPS) | $(COMPONENTIZE_PY)
	$(call componentize_py,orders_upsert,examples/python-orders-upsert)

$(POLYGLOT)/python_probe.wasm: tests/guests/python-probe/probe.py $(PY_DEPS) | $(COMPONENTIZE_PY)
	$(call componentize_py,probe,tests/guests/python-probe)

$(POLYGLOT)/js_orders_upsert.wasm: examples/js-orders-upsert/orders-upsert.js $(JS_DEPS) | $(COMPONENTIZE_JS)
	mk/build-once.sh $@ "$^" -- guest-sdk-js/build.sh $(JS_TOOLS) $< $@

$(POLYGLOT)/js_probe.wasm: tests/guests/js-probe/probe.js $(JS_DEPS) | $(COMPONENTIZE_JS)
	mk/build-once.sh $@ "$^" -- guest-sdk-js/build.sh $(JS_TOOLS) $< $@

$(POLYGLOT)/c_probe.wasm: tests/guests/c-probe/probe.c $(WIT) mk/polyglot.mk | c-tools $(WIT_BINDGEN)
	rm -rf $(POLYGLOT)/c_probe.gen && mkdir -p $(POLYGLOT)/c_probe.gen
	$(WIT_BINDGEN) c wit/v0.2.0 --world sink --out-dir $(POLYGLOT)/c_probe.gen
	$(CLANG) --target=wasm32-wasi --sysroot=/usr -O2 -Wall -I$(POLYGLOT)/c_probe.gen \
		-c $< -o $(POLYGLOT)/c_probe.gen/probe.o
	$(CLANG) --target=wasm32-wasi --sysroot=/usr -O2 -c $(POLYGLOT)/c_probe.gen/sink.c -o $(POLYGLOT)/c_probe.gen/sink.o
	$(RUST_BIN)/wasm-component-ld --wasm-ld-path wasm-ld-14 --wasi-adapter reactor --no-entry --export-dynamic \
		-o $@.part $(WASI_SYSROOT_LIB)/crt1-reactor.o $(POLYGLOT)/c_probe.gen/probe.o $(POLYGLOT)/c_probe.gen/sink.o \
		$(POLYGLOT)/c_probe.gen/sink_component_type.o -L$(WASI_SYSROOT_LIB) -lc $(CLANG_RT_WASM)
	mv $@.part $@

# Per-language figures of the orders-upsert sink (size, compile, instantiate,
# throughput over SLUICE_BENCH_RECORDS orders, default 1M). Not run in CI.
bench-languages: setup polyglot-guests
	SLUICE_POLYGLOT_DIR=$(abspath $(POLYGLOT)) cargo bench --locked --bench languages
