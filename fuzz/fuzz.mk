# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of every parser of client-controlled input.
# Included by the top-level Makefile (`include fuzz/fuzz.mk`); every command runs from the repo
# root. See fuzz/RESULTS.md for what each target checks and the last long run.
#
#   make fuzz-smoke               every target, short bounded run (CI): build + runs < ~3 min
#   make fuzz                     every target for FUZZ_SECONDS (default 60) each
#   make fuzz-run-cors            one target for FUZZ_SECONDS
#   make fuzz FUZZ_SANITIZER=address FUZZ_SECONDS=600
#
# New corpus entries go to fuzz/corpus/TARGET (git-ignored); the hand-written seeds in
# fuzz/seeds/TARGET and the reproducers in fuzz/regressions/TARGET are read as extra corpora and
# never written. A crash stops the run, fails make, and leaves the input in fuzz/artifacts/TARGET.

FUZZ_TARGETS := signature_headers api_key cors host ip config_json request_id_and_reject engine_request state_answer upload_inspector path rfc9421
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_RUNS ?= 100000
# `none` by default: edge-warden is safe Rust (no `unsafe`), so what we hunt is a panic, which
# libFuzzer catches without a sanitizer; ASan doubles the build time and halves exec/s or worse.
# `address` is there for a deeper run (each sanitizer builds in its own target directory).
FUZZ_SANITIZER ?= none
# Extra libFuzzer flags, e.g. FUZZ_ARGS='-jobs=2 -workers=2' or '-only_ascii=1'.
FUZZ_ARGS ?=

FUZZ_CARGO = cargo +nightly fuzz
FUZZ_OPTS = --fuzz-dir fuzz --sanitizer $(FUZZ_SANITIZER) --target-dir fuzz/target/$(FUZZ_SANITIZER)
# A single input taking over 10 s is a hang: report it instead of waiting.
FUZZ_LIBFUZZER = -timeout=10 -print_final_stats=1 $(FUZZ_ARGS)

# The corpus directories for a target: the growing one first (libFuzzer writes only there).
fuzz_dirs = fuzz/corpus/$(1) fuzz/seeds/$(1) $(wildcard fuzz/regressions/$(1))

.PHONY: fuzz-deps fuzz-build fuzz fuzz-smoke $(addprefix fuzz-run-,$(FUZZ_TARGETS))

fuzz-deps:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

fuzz-build: fuzz-deps
	$(FUZZ_CARGO) build $(FUZZ_OPTS)

fuzz: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
	  mkdir -p fuzz/corpus/$$t; \
	  $(FUZZ_CARGO) run $(FUZZ_OPTS) $$t $(call fuzz_dirs,$$t) -- \
	    -max_total_time=$(FUZZ_SECONDS) $(FUZZ_LIBFUZZER); \
	done

$(addprefix fuzz-run-,$(FUZZ_TARGETS)): fuzz-run-%: fuzz-build
	@mkdir -p fuzz/corpus/$*
	$(FUZZ_CARGO) run $(FUZZ_OPTS) $* $(call fuzz_dirs,$*) -- \
	  -max_total_time=$(FUZZ_SECONDS) $(FUZZ_LIBFUZZER)

# Bounded by run count, not time, so that a slow CI machine does the same work; a fixed -seed
# makes a failure reproducible. Each run's full log is kept in fuzz/target/smoke-TARGET.log.
fuzz-smoke: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; log=fuzz/target/smoke-$$t.log; \
	  if $(FUZZ_CARGO) run $(FUZZ_OPTS) $$t $(call fuzz_dirs,$$t) -- \
	       -runs=$(FUZZ_SMOKE_RUNS) -seed=1 $(FUZZ_LIBFUZZER) >$$log 2>&1; then \
	    echo "fuzz-smoke $$t: ok, $$(grep -m1 -E '^#[0-9]+[[:space:]]+DONE' $$log | sed -E 's/[[:space:]]+/ /g')"; \
	  else \
	    tail -n 40 $$log; echo "fuzz-smoke $$t: FAILED (log $$log, input in fuzz/artifacts/$$t)"; exit 1; \
	  fi; \
	done; echo "fuzz-smoke: $(words $(FUZZ_TARGETS)) passed, 0 failed"
