/* report: what qevo writes for people and programs: progress lines, JSON lines logs,
 * result files, .npy arrays and PNG image grids, all files written atomically. */
#ifndef QEVO_REPORT_H
#define QEVO_REPORT_H

#include <stddef.h>

#include "qevo/util.h"

/* Writes a float32 array of shape (rows, cols) as a NumPy .npy file (format 1.0). */
int report_write_npy(const char *path, const float *data, size_t rows, size_t cols,
                     qv_err *err);

/* Writes a grid of rows x cols images (C = 1 gray or 3 RGB, H x W, values in [0, 1],
 * image (r, c) at images + (r * cols + c) * C*H*W) as an 8-bit PNG with `gap` pixels
 * of white between images, atomically. */
int report_write_png_grid(const char *path, const float *images, int rows, int cols, int c,
                          int h, int w, int gap, qv_err *err);

/* An append-only JSON lines log: each record is one write() of a whole line followed by
 * fsync, so a crash or kill never leaves a half-written record behind. */
typedef struct report_log report_log;
report_log *report_log_open(const char *path, qv_err *err);
/* Opens an existing log cut back to its first `bytes` bytes (a resumed run continues the
 * log its checkpoint saw). */
report_log *report_log_open_at(const char *path, long long bytes, qv_err *err);
/* Bytes written so far. */
long long report_log_size(const report_log *log);
int report_log_append(report_log *log, const char *json_line, qv_err *err);
void report_log_close(report_log *log);

/* "1:02:03" or "2:03" for a number of seconds. */
void report_format_duration(double seconds, char *buf, size_t cap);

#endif
