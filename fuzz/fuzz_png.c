/* png: data_load on a folder of PNG images, one subfolder per class (libpng decodes).
 *
 * Input: a control byte, then up to six chunks (fuzz.h), one PNG file each. File k goes
 * to class folder c(k mod C), C = 1 + (control mod 3), as D/png/cJ/iK.png. Control bit 2
 * adds a file that is not a .png and a hidden folder (both to be ignored); bit 3 names
 * the folder without its trailing slash. Class folders left empty are empty classes. */
#include "fuzz.h"

#include "fuzz_data.h"

#define MAX_FILES 6

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static void make_dir(const char *path)
{
    if (mkdir(path, 0700) != 0) {
        perror(path);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    uint8_t ctl = fuzz_byte(&in);
    int classes = 1 + ctl % 3;
    char root[600], dir[3][700], path[MAX_FILES][720], extra[720], hidden[720];
    fuzz_path(root, sizeof root, "png");
    make_dir(root);
    for (int c = 0; c < classes; c++) {
        snprintf(dir[c], sizeof dir[c], "%s/c%d", root, c);
        make_dir(dir[c]);
    }
    int n = 0;
    const uint8_t *part;
    size_t len;
    while (n < MAX_FILES && fuzz_chunk(&in, &part, &len)) {
        snprintf(path[n], sizeof path[n], "%s/i%d.png", dir[n % classes], n);
        fuzz_write(path[n], part, len);
        n++;
    }
    snprintf(extra, sizeof extra, "%s/README.txt", dir[0]);
    snprintf(hidden, sizeof hidden, "%s/.hidden", root);
    if (ctl & 4) {
        fuzz_write(extra, "not an image", 12);
        make_dir(hidden);
    }
    char spec[620];
    snprintf(spec, sizeof spec, "%s%s", root, ctl & 8 ? "" : "/");
    fuzz_load_dataset(spec, 0);
    for (int k = 0; k < n; k++)
        unlink(path[k]);
    if (ctl & 4) {
        unlink(extra);
        rmdir(hidden);
    }
    for (int c = 0; c < classes; c++)
        rmdir(dir[c]);
    rmdir(root);
    return 0;
}
