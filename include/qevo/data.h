/* data: labelled image datasets (IDX, CIFAR-10 binary, PNG folders), normalisation,
 * deterministic splits and shards. */
#ifndef QEVO_DATA_H
#define QEVO_DATA_H

#include <stdint.h>

#include "qevo/util.h"

/* A dataset in memory: 8-bit images (n, c, h, w) and one label per image. */
typedef struct {
    int n, c, h, w;
    uint8_t *pixels; /* (n, c, h, w), owned */
    int32_t *labels; /* (n), owned; 0 <= label < classes */
    int classes;     /* 1 + the largest label */
    char *name;      /* the spec it was loaded from, owned */
} data_set;

/* Loads a dataset named by `spec`:
 *   fashion-mnist:train | fashion-mnist:test   Debian's dataset-fashion-mnist package
 *                                              (/usr/share/datasets/fashion-mnist, or the
 *                                              folder in $QEVO_FASHION_MNIST_DIR)
 *   PATH-images-idx3-ubyte[.gz]                IDX images; the labels file is found by
 *                                              replacing "images-idx3" with "labels-idx1"
 *   IMAGES.idx,LABELS.idx                      IDX images and labels named explicitly
 *   cifar10:DIR:train | cifar10:DIR:test       CIFAR-10 binary batches in DIR
 *   FILE.bin[,FILE.bin...]                     CIFAR-10 binary batch files
 *   DIR/                                       PNG folder: one subfolder per class (sorted
 *                                              by name -> label 0, 1, ...), 8-bit gray or
 *                                              RGB images of one size
 * IDX files may be gzipped (read through zlib) or raw. PNGs: gray of 1/2/4 bits is
 * expanded to 8 bits and palette images to RGB (tRNS transparency is ignored); 16-bit
 * images and images with an alpha channel are rejected, not converted. Returns 0 and a
 * new data_set, or -1 with a message naming the file and what was wrong. */
int data_load(const char *spec, data_set **out, qv_err *err);

void data_free(data_set *ds);

/* Writes images idx[0..count) as float32 (count, c, h, w), each value
 * (pixel / 255 - mean[ch]) / std[ch], computed in float32 in that order. */
void data_normalize(const data_set *ds, const int *idx, int count, const float *mean,
                    const float *std, float *out);

/* A permutation of 0..n-1 determined by seed alone (malloc'd; caller frees). */
int *data_permutation(int n, uint64_t seed);

/* Shard `rank` of `nranks` of the items list[0..n): contiguous, disjoint, covering,
 * sizes differing by at most one. Sets *first and *count. */
void data_shard_range(int n, int rank, int nranks, int *first, int *count);

#endif
