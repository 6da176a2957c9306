/* run: one qevo-island run, from the configuration to the results: sets up every rank,
 * breeds generations, migrates, validates, reports, scores the test split once, and
 * writes the outputs. It calls island_* for every exchange between ranks. */
#ifndef QEVO_RUN_H
#define QEVO_RUN_H

/* The whole program of `qevo-island CONFIG [--set key=value]... [--dry-run]`; returns
 * the exit status (the same on every rank). */
int run_island(int argc, char **argv);

#endif
