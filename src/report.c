#define _POSIX_C_SOURCE 200809L
#include "qevo/report.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int report_write_npy(const char *path, const float *data, size_t rows, size_t cols,
                     qv_err *err)
{
    char header[256];
    int len = snprintf(header + 10, sizeof header - 10,
                       "{'descr': '<f4', 'fortran_order': False, 'shape': (%zu, %zu), }", rows,
                       cols);
    /* Pad with spaces so magic + header length + header is a multiple of 64, ending in \n. */
    size_t total = 10 + (size_t)len + 1;
    size_t padded = (total + 63) / 64 * 64;
    memset(header + 10 + len, ' ', padded - total);
    header[padded - 1] = '\n';
    memcpy(header, "\x93NUMPY\x01\x00", 8);
    size_t hlen = padded - 10;
    header[8] = (char)(hlen & 0xff);
    header[9] = (char)(hlen >> 8);
    qv_atomic a;
    if (qv_atomic_open(&a, path, err))
        return -1;
    size_t n = rows * cols;
    if (fwrite(header, 1, padded, a.f) != padded ||
        fwrite(data, sizeof(float), n, a.f) != n) {
        qv_atomic_abort(&a);
        return qv_fail(err, "%s: write failed", path);
    }
    return qv_atomic_commit(&a, err);
}

int report_write_png_grid(const char *path, const float *images, int rows, int cols, int c,
                          int h, int w, int gap, qv_err *err)
{
    QV_ASSERT(c == 1 || c == 3);
    int width = cols * w + (cols - 1) * gap, height = rows * h + (rows - 1) * gap;
    size_t stride = (size_t)width * c;
    png_bytep pixels = qv_malloc(stride * (size_t)height);
    memset(pixels, 255, stride * (size_t)height);
    size_t per = (size_t)c * h * w;
    for (int r = 0; r < rows; r++)
        for (int col = 0; col < cols; col++) {
            const float *img = images + ((size_t)r * cols + col) * per;
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int ch = 0; ch < c; ch++) {
                        float v = img[((size_t)ch * h + y) * w + x];
                        v = v < 0 ? 0 : v > 1 ? 1 : v;
                        size_t py = (size_t)r * (h + gap) + (size_t)y;
                        size_t px = (size_t)col * (w + gap) + (size_t)x;
                        pixels[py * stride + px * c + ch] = (png_byte)lrintf(v * 255.0f);
                    }
        }
    qv_atomic a;
    if (qv_atomic_open(&a, path, err)) {
        free(pixels);
        return -1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *volatile row_ptrs = NULL;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(row_ptrs);
        free(pixels);
        qv_atomic_abort(&a);
        return qv_fail(err, "%s: PNG encoding failed", path);
    }
    png_init_io(png, a.f);
    png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, 8,
                 c == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    row_ptrs = qv_malloc(sizeof(png_bytep) * (size_t)height);
    for (int y = 0; y < height; y++)
        row_ptrs[y] = pixels + (size_t)y * stride;
    png_set_rows(png, info, row_ptrs);
    png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
    png_destroy_write_struct(&png, &info);
    free(row_ptrs);
    free(pixels);
    return qv_atomic_commit(&a, err);
}

struct report_log {
    int fd;
    char *path;
};

report_log *report_log_open(const char *path, qv_err *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        qv_fail(err, "%s: cannot open for writing: %s", path, strerror(errno));
        return NULL;
    }
    report_log *log = qv_malloc(sizeof *log);
    log->fd = fd;
    log->path = qv_strdup(path);
    return log;
}

int report_log_append(report_log *log, const char *json_line, qv_err *err)
{
    size_t len = strlen(json_line);
    char *line = qv_malloc(len + 2);
    memcpy(line, json_line, len);
    line[len] = '\n';
    ssize_t wrote = write(log->fd, line, len + 1);
    free(line);
    if (wrote != (ssize_t)(len + 1) || fsync(log->fd) != 0)
        return qv_fail(err, "%s: write failed: %s", log->path,
                       wrote < 0 ? strerror(errno) : "short write");
    return 0;
}

report_log *report_log_open_at(const char *path, long long bytes, qv_err *err)
{
    if (truncate(path, (off_t)bytes) != 0) {
        qv_fail(err, "%s: cannot cut back to %lld bytes: %s", path, bytes, strerror(errno));
        return NULL;
    }
    return report_log_open(path, err);
}

long long report_log_size(const report_log *log)
{
    if (!log)
        return 0;
    off_t end = lseek(log->fd, 0, SEEK_END);
    return end < 0 ? 0 : (long long)end;
}

void report_log_close(report_log *log)
{
    if (!log)
        return;
    close(log->fd);
    free(log->path);
    free(log);
}

void report_format_duration(double seconds, char *buf, size_t cap)
{
    long s = seconds > 0 ? lround(seconds) : 0;
    if (s >= 3600)
        snprintf(buf, cap, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, cap, "%ld:%02ld", s / 60, s % 60);
}
