# libFuzzer targets for every file reader (included at the end of the Makefile).
#
#   make fuzz          builds build/fuzz/fuzz_<target> for every target below
#   make fuzz-smoke    per target: replays fuzz/corpus/<target>/ and fuzz/crashes/<target>/,
#                      then fuzzes FUZZ_SECONDS (default 20) seconds; one line per target,
#                      then "fuzz-smoke: N passed, N failed" (part of `make test`)
#   make fuzz-corpus   regenerates the committed seed corpora (fuzz/make_corpus.sh)
#
# A long run of one target on one core (new inputs go to a scratch folder, not to the
# committed corpus; a crash is written to build/fuzz/artifacts/):
#
#   mkdir -p /tmp/graph-corpus build/fuzz/artifacts
#   OPENBLAS_NUM_THREADS=1 build/fuzz/fuzz_graph -max_total_time=3600 -rss_limit_mb=2048 \
#       -timeout=10 -print_final_stats=1 -artifact_prefix=build/fuzz/artifacts/ \
#       /tmp/graph-corpus fuzz/corpus/graph
#
# The library is compiled again by clang (through mpicc) with coverage instrumentation
# and ASan + UBSan into build/fuzz/obj; harnesses link with -fsanitize=fuzzer.

FUZZ_DIR     := build/fuzz
FUZZ_CC      := OMPI_CC=clang mpicc
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_CFLAGS  := -std=c11 $(WARN) -ffp-contract=off -Iinclude \
                $(shell pkg-config --cflags $(PKGS)) -g -O1 $(FUZZ_SAN) -MMD -MP
FUZZ_TARGETS := safetensors graph quant_codes idx cifar png config ckpt_blob checkpoint
FUZZ_SECONDS ?= 20

FUZZ_LIB_OBJ := $(LIB_SRC:src/%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_LIB     := $(FUZZ_DIR)/libqevo.a
FUZZ_BINS    := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)
FUZZ_HOBJ    := $(FUZZ_TARGETS:%=$(FUZZ_DIR)/obj/fuzz/fuzz_%.o)

fuzz: $(FUZZ_BINS) $(FUZZ_DIR)/make_corpus

$(FUZZ_LIB_OBJ): $(FUZZ_DIR)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_LIB): $(FUZZ_LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(FUZZ_HOBJ) $(FUZZ_DIR)/obj/fuzz/make_corpus.o: $(FUZZ_DIR)/obj/fuzz/%.o: fuzz/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -Ifuzz -Isrc -Itests -c $< -o $@

$(FUZZ_BINS): $(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/fuzz/fuzz_%.o $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ $(LDLIBS) -o $@

# The seed corpus generator: the library's own writers, so seeds are valid files.
$(FUZZ_DIR)/make_corpus: $(FUZZ_DIR)/obj/fuzz/make_corpus.o $(FUZZ_LIB)
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer-no-link $^ $(LDLIBS) -o $@

fuzz-smoke: fuzz
	@FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/smoke.sh $(FUZZ_TARGETS)

fuzz-corpus: $(FUZZ_DIR)/make_corpus
	fuzz/make_corpus.sh

.PHONY: fuzz fuzz-smoke fuzz-corpus

-include $(wildcard $(FUZZ_DIR)/obj/*.d $(FUZZ_DIR)/obj/fuzz/*.d)
