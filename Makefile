# qevo build. `make`, `make test`, `make bench`, `make SAN=address,undefined test`,
# `make DEBUG=1`, `make install PREFIX=/usr/local`.

CC      := mpicc
PREFIX  ?= /usr/local
PKGS    := openblas jansson libpng zlib

WARN    := -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS  := -std=c11 $(WARN) -ffp-contract=off -Iinclude $(shell pkg-config --cflags $(PKGS)) -MMD -MP
LDLIBS  := $(shell pkg-config --libs $(PKGS)) -lm

ifdef DEBUG
  CFLAGS += -O0 -g3
  BUILD  ?= build/debug
else
  CFLAGS += -O3 -g
endif
ifdef SAN
  CFLAGS  += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDFLAGS += -fsanitize=$(SAN)
  BUILD   ?= build/san
endif
# Binaries land in build/ (sanitized and debug builds in their own folders).
BUILD   ?= build

LIB_SRC  := $(wildcard src/*.c)
LIB_OBJ  := $(LIB_SRC:src/%.c=$(BUILD)/obj/%.o)
BIN_SRC  := $(wildcard src/bin/*.c)
BINS     := $(BIN_SRC:src/bin/%.c=$(BUILD)/%)
TEST_SRC := $(wildcard tests/unit/*.c)
TESTS    := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
MPITEST_SRC := $(wildcard tests/mpi/*.c)
MPITESTS := $(MPITEST_SRC:tests/mpi/%.c=$(BUILD)/mpitests/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCHES  := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
LIB      := $(BUILD)/libqevo.a
# Fault injectors for the tests (LD_PRELOAD shims), built without MPI or sanitizers.
FAULT_SRC := $(wildcard tests/faults/*.c)
FAULTS   := $(FAULT_SRC:tests/faults/%.c=$(BUILD)/faults/%.so)

all: $(BINS) $(TESTS) $(MPITESTS) $(BENCHES) $(FAULTS)

$(BUILD)/faults/%.so: tests/faults/%.c
	@mkdir -p $(dir $@)
	cc -std=c11 $(WARN) -O2 -fPIC -shared $< -o $@ -ldl

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/bin/%.o: src/bin/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/unit/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -c $< -o $@

$(BUILD)/obj/mpitests/%.o: tests/mpi/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -c $< -o $@

$(BUILD)/mpitests/%: $(BUILD)/obj/mpitests/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/obj/bench/%.o: bench/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/%: $(BUILD)/obj/bin/%.o $(LIB)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

# Runs every test (unit, command-line, MPI, PyTorch parity) and ends with
# "N passed, N failed".
test: all
	@BUILD=$(BUILD) SAN=$(SAN) tests/run.sh

bench: all
	@BUILD=$(BUILD) bench/run.sh

install: $(BINS)
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 755 $(BINS) $(DESTDIR)$(PREFIX)/bin

clean:
	rm -rf build

.PHONY: all test bench install clean
.SECONDARY:

-include $(wildcard $(BUILD)/obj/*.d $(BUILD)/obj/*/*.d)
include fuzz/fuzz.mk
