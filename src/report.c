#include "qevo/report.h"

#include <string.h>

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
