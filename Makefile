# Two commands on a fresh Debian/Ubuntu/Raspberry Pi OS machine:
#   make demo   installs what is missing, then runs the demo (server + agent + clip)
#   make test   installs what is missing, then runs every test
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
ENV := source .hydrant-env &&

.PHONY: help setup build demo test test-rust test-python bench fmt lint clean-data

help:
	@echo "make demo   run the demo: an embedded server, an agent replaying a recorded clip, a clip written back"
	@echo "make test   run every test (Rust unit + integration, Python AWS-client tests)"
	@echo "make bench  run the ingest benchmark"

setup:
	@scripts/setup.sh

build: setup
	@$(ENV) $(CARGO) build --release --bin hydrant

demo: build
	@$(ENV) $(CARGO) run --release --quiet --bin hydrant -- demo $(DEMO_ARGS)

test: setup
	@$(ENV) $(CARGO) build --bin hydrant
	@$(ENV) $(CARGO) test --no-fail-fast -- --test-threads=2
	@$(ENV) HYDRANT_BIN="$$($(CARGO) metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/hydrant" \
	  python -m pytest -q tests/python

bench: setup
	@$(ENV) $(CARGO) bench --bench ingest

fmt:
	$(CARGO) fmt

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
