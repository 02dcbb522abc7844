# hull: the two commands of the README do all set-up on a fresh Debian 12 machine.
#   make demo   - a container on the host kernel (and, with vm isolation, one in a microVM)
#   make test   - the whole test suite
CARGO ?= cargo
export HULL_BIN_DIR := $(CURDIR)/target/debug

.PHONY: setup build release demo test bench fmt clippy

setup:
	@scripts/setup-host

build: setup
	$(CARGO) build --workspace --locked

release: setup
	$(CARGO) build --release --locked -p hull-runtime

demo: release
	@scripts/demo

test: build
	$(CARGO) test --workspace --locked --no-fail-fast -- --test-threads=2

bench: release
	@scripts/bench-host

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
