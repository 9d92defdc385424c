# copylab: two commands do all set-up on a fresh Debian 12 machine:
#   make demo   bring up a lab VM from the golden image and grade the reference solution
#   make test   the whole suite (unit tier, local sshd tier, real VM tier)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST := $(VENV)/bin/pytest
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOST_PACKAGES := $(shell grep -v '^\s*\#' provision/host-packages.txt | grep -v '^\s*$$')
KIT_DIR ?= build/copylab-kit
# lab VM architecture of `make image` / `make box`: amd64, or arm64 (the Apple Silicon box; built on
# any host, under emulation on x86_64)
COPYLAB_ARCH ?= amd64
# Debian release of `make image` / `make box` / `make demo`: bookworm (Debian 12, kernel 6.1) or trixie
# (Debian 13, kernel 6.12)
COPYLAB_SUITE ?= bookworm
QEMU_USER ?= $(or $(COPYLAB_QEMU_USER),copylab-qemu)

.PHONY: help deps apt-deps qemu-account venv image box demo test test-fast bench faults lint kit clean-cache

help:
	@echo "make demo       bring up a lab VM and grade the reference solution"
	@echo "make test       run the whole suite (builds the VM image on a cold cache)"
	@echo "make test-fast  unit tests and the local sshd tier only (no VM)"
	@echo "make image      build or reuse the golden lab-VM image (cache: \$$COPYLAB_CACHE or ~/.cache/copylab)"
	@echo "make box        export the golden image as a libvirt Vagrant box (COPYLAB_ARCH=arm64: the Apple Silicon box)"
	@echo "make bench      run the benchmarks (docs/development.md, Benchmarks; BENCH_ARGS=--skip-cold etc.)"
	@echo "make faults     run the fault and abuse suite (docs/development.md, Fault suite; FAULTS_ARGS=--only uploads etc.)"
	@echo "make lint       ansible-lint the provisioning"
	@echo "make kit        export the student kit to \$$KIT_DIR (default build/copylab-kit; KIT_ARGS=--force, --format tar|git)"

deps: apt-deps qemu-account venv

apt-deps:
	@missing=$$(for p in $(HOST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing host packages:" $$missing; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else echo "host packages: all present"; fi

# The unprivileged account lab VMs' QEMU runs as (COPYLAB_QEMU_USER / GRADER_POOL_QEMU_USER); in the kvm
# group where there is one, so that KVM stays usable
qemu-account:
	@id -u $(QEMU_USER) >/dev/null 2>&1 || { echo "creating the account $(QEMU_USER) for QEMU"; \
	  $(SUDO) useradd --system --user-group --no-create-home --home-dir /nonexistent \
	    --shell /usr/sbin/nologin $(QEMU_USER); }
	@if getent group kvm >/dev/null && ! id -nG $(QEMU_USER) | grep -qw kvm; then \
	  $(SUDO) usermod -a -G kvm $(QEMU_USER); fi

venv: $(VENV)/.installed

# The project itself is installed editable (pyproject.toml), from what requirements.txt put in the venv
# (setuptools, wheel: no build isolation, no download). Its editable finder knows the top-level
# packages of the moment it was installed, so a new package (its __init__.py) installs it again.
$(VENV)/.installed: requirements.txt pyproject.toml $(wildcard */__init__.py)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	@touch $@

image: deps
	$(SUDO) env PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) provision/image/build_image.py --arch $(COPYLAB_ARCH) --suite $(COPYLAB_SUITE) --stage golden

box: deps
	$(SUDO) env PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) provision/image/build_image.py --arch $(COPYLAB_ARCH) --suite $(COPYLAB_SUITE) --stage box

demo: image
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" COPYLAB_SUITE=$(COPYLAB_SUITE) $(PY) -m grader demo

# The golden image is built (or found in the cache) first, with its progress on the terminal, while
# the arm64 image (tests/vm/test_arm64.py) and the Debian 13 image (tests/vm/test_kernel_6_12.py) build
# beside it; the suite then runs on two workers, each with ONE lab VM shared by its tests through
# snapshot restore (the arm64 and Debian 13 tests wait for their images). It ends with the 30 slowest
# tests, the figures to read when the suite's time grows.
test: deps
	@date +%s > .test-session-start
	@mkdir -p build && echo "arm64 and Debian 13 images: building in the background (logs: build/image-arm64.log, build/image-trixie.log)"
	@($(MAKE) --no-print-directory image COPYLAB_ARCH=arm64 COPYLAB_SUITE=bookworm > build/image-arm64.log 2>&1 &)
	@($(MAKE) --no-print-directory image COPYLAB_ARCH=amd64 COPYLAB_SUITE=trixie > build/image-trixie.log 2>&1 &)
	$(MAKE) --no-print-directory image COPYLAB_ARCH=amd64 COPYLAB_SUITE=bookworm
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" COPYLAB_SESSION_START=$$(cat .test-session-start) \
	  $(PYTEST) -ra -n 2 --dist loadgroup --durations=30

test-fast: deps
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PYTEST) -ra -m "not vm and not libvirt" tests/unit

# Figures with their targets, written to bench/results/ (linked from docs/development.md); never timed test assertions.
bench: image
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m bench $(BENCH_ARGS)

# Crashes survived, restarts without loss, hostile uploads, access: figures, one per line (faults/results).
faults: image
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m faults $(FAULTS_ARGS)

lint: venv
	cd provision && ../$(VENV)/bin/ansible-lint --offline

# The student kit: an allowlist of the repository (no solutions, hidden checks or secrets), scanned first.
kit: venv
	$(PY) -m grader export-kit $(KIT_DIR) $(KIT_ARGS)

clean-cache:
	rm -rf "$${COPYLAB_CACHE:-$$HOME/.cache/copylab}"
