/* report: what qevo writes for people and programs: progress lines, JSON lines logs,
 * result files, .npy arrays and PNG image grids, all files written atomically. */
#ifndef QEVO_REPORT_H
#define QEVO_REPORT_H

#include <stddef.h>

#include "qevo/util.h"

/* Writes a float32 array of shape (rows, cols) as a NumPy .npy file (format 1.0). */
int report_write_npy(const char *path, const float *data, size_t rows, size_t cols,
                     qv_err *err);

#endif
