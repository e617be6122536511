# kipc — two commands: `make demo` (build, install into .venv, run the tour) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
NATIVE := $(wildcard src/kipc/_native/*.c src/kipc/_native/*.h src/kipc/_native/*/*.c src/kipc/_native/*/*.h)
PYTEST_ARGS ?=

.PHONY: demo test build venv lint bench stress sanitize reliability clean test-c fuzz test-versions

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel

# Reinstall when the package metadata or any C source changes.
$(VENV)/.installed: $(PY) pyproject.toml setup.py $(NATIVE)
	$(PY) -m pip install -q "setuptools>=77" wheel
	$(PY) -m pip install -q -e '.[all,test,dev]'
	@touch $@

venv build: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/kipc tour

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

# The same suite on newer CPythons, each in its own venv inside a Debian image built once with
# debootstrap into build/versions/rootfs (root; installs debootstrap when missing). See the script.
VERSIONS ?= 3.13 3.14 3.15
test-versions:
	VERSIONS="$(VERSIONS)" PYTEST_ARGS="$(PYTEST_ARGS)" .ci/test-versions.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

# The peers (pyzmq, faster-fifo, iceoryx2) go into the same venv only here: the tests never need them.
$(VENV)/.bench-peers: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[all,bench]'
	@touch $@

bench: $(VENV)/.bench-peers
	$(PY) benchmarks/run_all.py

# The reliability campaign: the long versions of the crash / stress / limits / abuse tests
# (their short versions run in `make test`); writes docs/reliability.md.
reliability: $(VENV)/.installed
	KIPC_RELIABILITY=full KIPC_RELIABILITY_REPORT=docs/reliability.md $(PY) -m pytest -m "stress or not stress" --timeout 900 \
		tests/reliability/test_reliability_generic.py tests/reliability/test_reliability_crash.py tests/reliability/test_fuzz.py \
		tests/reliability/test_ring_crash.py tests/reliability/test_lock_crash.py tests/reliability/test_reliability_objects.py tests/reliability/test_reliability_stress.py tests/reliability/test_reliability_ring.py \
		tests/reliability/test_hostile.py tests/reliability/test_ring_hostile.py tests/reliability/test_ring_topic_crash.py tests/mechanisms/test_ring_zerocopy.py tests/reliability/test_gc_identity.py $(PYTEST_ARGS)

# C-only unit tests of the ring's core (no Python), the C API (kipc_ring.h) and a short deterministic fuzz smoke, under
# ASan+UBSan with gcc; `make test` runs the same through tests/core_c/test_core_c.py.
CORE_SRC  := src/kipc/_native/ring/ring_core.c
CORE_CC   := gcc -std=c11 -O1 -g -Wall -Wextra -Wno-unused-parameter -Wno-unused-function \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
test-c:
	mkdir -p build/test-c
	$(CORE_CC) -o build/test-c/test_ring_core tests/core_c/test_ring_core.c $(CORE_SRC) -lpthread -lm
	$(CORE_CC) -o build/test-c/fuzz_ring_core tests/core_c/fuzz_ring_core.c $(CORE_SRC) -lpthread -lm
	$(CORE_CC) -o build/test-c/test_capi tests/core_c/test_capi.c -lpthread -lm
	build/test-c/test_ring_core
	build/test-c/fuzz_ring_core 20000
	KIPC_RUNTIME_DIR=$(CURDIR)/build/test-c/rt build/test-c/test_capi maketestc-capi$$$$

# libFuzzer on the core for FUZZ_SECONDS (installs clang with apt-get when it is missing).
FUZZ_SECONDS ?= 60
fuzz:
	command -v clang >/dev/null || (apt-get update -qq && apt-get install -y -qq clang)
	mkdir -p build/fuzz/corpus
	clang -std=c11 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -DKIPC_LIBFUZZER \
		-o build/fuzz/fuzz_ring_core tests/core_c/fuzz_ring_core.c $(CORE_SRC) -lpthread -lm
	build/fuzz/fuzz_ring_core -max_total_time=$(FUZZ_SECONDS) -max_len=512 -print_final_stats=1 build/fuzz/corpus

stress: $(VENV)/.installed
	$(PY) -m pytest -m stress tests

sanitize:
	# PYTHONPATH only wins over the editable install if it holds a whole kipc package:
	# copy the sources there and build the ASan+UBSan extensions beside them.
	rm -rf build/sanitize && mkdir -p build/sanitize && cp -r src/kipc build/sanitize/kipc
	rm -f build/sanitize/kipc/_native/*.so
	KIPC_SANITIZE=address $(PY) setup.py -q build_ext -b build/sanitize -t build/sanitize/tmp
	$(SANITIZE_ENV) $(PY) -c "import kipc._native._ring as r; assert r.__file__.startswith('$(CURDIR)/build/sanitize/'), r.__file__; print('sanitized:', r.__file__)"
	$(SANITIZE_ENV) $(PY) -m pytest -p no:cacheprovider tests/mechanisms/test_ring.py tests/mechanisms/test_ring_v2.py tests/reliability/test_ring_crash.py tests/mechanisms/test_queues.py tests/reliability/test_ring_hostile.py tests/mechanisms/test_ring_zerocopy.py tests/mechanisms/test_ring_fast.py

SANITIZE_ENV = LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONPATH=$(CURDIR)/build/sanitize

clean:
	rm -rf $(VENV) build dist src/*.egg-info src/kipc/_native/*.so
