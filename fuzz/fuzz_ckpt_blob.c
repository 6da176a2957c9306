/* ckpt_blob: ckpt_read_blob, the reader of every checkpoint file (8-byte magic
 * "QEVOCKP1", u64 payload length, u32 CRC-32, payload).
 *
 * Input: a control byte, then bytes B. Control bit 0 set: B is the whole file. Clear: the
 * file is a proper blob of payload B, then damaged as bits 1-4 say (length one more, one
 * less, CRC flipped, last byte cut off). An undamaged blob must read back as exactly B,
 * 0-terminated; a damaged one must be refused. */
#include "fuzz.h"

#include <zlib.h>

#include "qevo/ckpt.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    uint8_t ctl = fuzz_byte(&in);
    char path[600];
    fuzz_path(path, sizeof path, "blob.bin");
    int damaged = 0;
    if (ctl & 1) {
        fuzz_write(path, in.p, in.left);
    } else {
        size_t flen = 20 + in.left;
        uint8_t *file = malloc(flen);
        FUZZ_CHECK(file);
        memcpy(file, "QEVOCKP1", 8);
        uint64_t len = in.left;
        uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), in.p, (uInt)in.left);
        if (ctl & 2)
            len++, damaged = 1;
        if ((ctl & 4) && len > 0)
            len--, damaged = !damaged;
        if (ctl & 8)
            crc ^= 1u << (ctl >> 5), damaged = 1;
        memcpy(file + 8, &len, 8);
        memcpy(file + 16, &crc, 4);
        if (in.left)
            memcpy(file + 20, in.p, in.left);
        if (ctl & 16)
            flen--, damaged = 1;
        fuzz_write(path, file, flen);
        free(file);
    }
    unsigned char *out = NULL;
    size_t len = 0;
    qv_err err;
    int rc = ckpt_read_blob(fuzz_dir(), "blob.bin", &out, &len, &err);
    fuzz_note("ckpt_read_blob", rc, err.msg);
    if (rc == 0) {
        FUZZ_CHECK(out && out[len] == 0);
        if (!(ctl & 1)) {
            FUZZ_CHECK(!damaged);
            FUZZ_CHECK(len == in.left && (!len || !memcmp(out, in.p, len)));
        }
        free(out);
    } else {
        FUZZ_CHECK((ctl & 1) || damaged);
        FUZZ_CHECK(err.msg[0]);
    }
    unlink(path);
    return 0;
}
