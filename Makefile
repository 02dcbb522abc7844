# hull: the two commands of the README do all set-up on a fresh Debian 12 machine.
#   make demo   - a container on the host kernel (and, with vm isolation, one in a microVM)
#   make test   - the whole test suite
CARGO ?= cargo
export HULL_BIN_DIR := $(CURDIR)/target/debug

.PHONY: setup build release shim guest demo test fuzz bench fmt clippy

setup:
	@scripts/setup-host

build: setup
	$(CARGO) build --workspace --locked

# `hull` as it ships: static (glibc and libseccomp in the binary) and non-PIE, like the shim
# and the agent. Every `hull run` execs the binary twice (the binary guard's re-exec from its
# read-only copy) and forks it twice more (libcontainer's intermediate and init processes);
# without the dynamic loader and start-up relocations of an 11 MB PIE, `run` takes 0.89x
# the time (0.87x the CPU) of the dynamic build (scripts/bench-host with HULL_BASE, same
# run). The price: no ASLR for hull's own code, as for the shim.
release: setup
	$(CARGO) rustc --release --locked -p hull-cli --bin hull -- \
		-C target-feature=+crt-static -C relocation-model=static

# The containerd shim as it ships: static, non-PIE, its code laid out by a profile of a
# running shim (scripts/build-shim; the profile is cached outside the clone).
shim: setup
	@scripts/build-shim

# The guest kernel (cached build) and an initrd of the release hull-agent, installed as
# /var/lib/hull/vmlinux and /var/lib/hull/initrd.img (vm isolation's defaults). The agent is
# linked fully static (glibc and libseccomp in the binary): the initrd is 8.8 MB instead of
# 11 MB (libc, libm, ld.so, libgcc_s, libseccomp), and /init starts without the dynamic loader.
guest: setup
	$(CARGO) rustc --release --locked -p hull-agent --bin hull-agent -- -C target-feature=+crt-static
	@scripts/install-guest

demo: release guest
	@scripts/demo

test: build
	$(CARGO) test --workspace --locked --no-fail-fast -- --test-threads=2
	@scripts/fuzz $(FUZZ_SECONDS)

# A bounded fuzz campaign of every fuzz target (FUZZ_SECONDS each) from the checked-in corpus.
FUZZ_SECONDS ?= 60
fuzz:
	@scripts/fuzz $(FUZZ_SECONDS)

bench: release guest
	@scripts/bench-host
	@scripts/bench-vm
	@scripts/bench-exec
	@scripts/bench-memory
	@scripts/bench-density
	@scripts/bench-net
	@scripts/bench-blk

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings
