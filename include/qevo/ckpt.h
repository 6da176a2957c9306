/* ckpt: checkpoint files. A checkpoint of generation G is a directory
 * ROOT/gen-00000G holding verified blobs (magic, length, CRC-32): one per island, and
 * the run's own state. It is built under ROOT/.gen-00000G and renamed into place only
 * when complete, so a crash or kill at any moment leaves either no checkpoint of G or a
 * whole one; a checkpoint whose blobs fail to verify is never used. */
#ifndef QEVO_CKPT_H
#define QEVO_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "qevo/util.h"

/* Paths of the staging and the final directory of generation gen (malloc'd). */
char *ckpt_staging_dir(const char *root, uint64_t gen);
char *ckpt_final_dir(const char *root, uint64_t gen);

/* Creates an empty staging directory for gen (and root), removing a stale one. */
int ckpt_begin(const char *root, uint64_t gen, qv_err *err);
/* Writes DIR/name as a verified blob, atomically. */
int ckpt_write_blob(const char *dir, const char *name, const void *data, size_t len,
                    qv_err *err);
/* Reads and verifies DIR/name; *data is malloc'd (with a terminating 0 byte). */
int ckpt_read_blob(const char *dir, const char *name, unsigned char **data, size_t *len,
                   qv_err *err);
/* Removes the staging directory of a checkpoint that could not be completed (a full
 * disk, say), so that nothing half-written stays behind. */
void ckpt_abandon(const char *root, uint64_t gen);
/* Renames the staging directory of gen into place and deletes all but the newest
 * `keep` checkpoints. */
int ckpt_commit(const char *root, uint64_t gen, int keep, qv_err *err);

/* The newest checkpoint directory under root whose blobs named by `check` verify:
 * check(dir) returns 0 if the checkpoint is whole. Returns a malloc'd path, or NULL if
 * there is none (*skipped counts broken ones passed over). */
char *ckpt_latest(const char *root, int (*check)(const char *dir, void *arg), void *arg,
                  int *skipped);

#endif
