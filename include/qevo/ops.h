/* ops: the compute kernels, each with a naive `_ref` twin that tests compare against.
 *
 * Activations are stored channel-major, (C, N, H, W) ("CNHW"): a convolution over a
 * whole batch is then one sgemm, W (C_out, C_in*kh*kw) x columns (C_in*kh*kw, N*H*W),
 * whose result is already the next layer's input, with no transposes in between. A
 * fully connected activation is (features, N). Images arrive NCHW and are transposed
 * once (op_nchw_to_cnhw). */
#ifndef QEVO_OPS_H
#define QEVO_OPS_H

#include <stdbool.h>
#include <stddef.h>

/* Picks OpenBLAS's fastest sgemm kernels; call it first thing in main(), before MPI_Init
 * and before any thread starts. A DYNAMIC_ARCH OpenBLAS (Debian's) picks its kernels in a
 * constructor that runs before main(): from the environment variable OPENBLAS_CORETYPE
 * if set, else from the CPU, and a version older than the CPU may not know it and fall
 * back to AVX2 ("Haswell") or older kernels at about half the speed on an AVX-512 CPU.
 * So when OPENBLAS_CORETYPE is unset, OpenBLAS reports a core without AVX-512 kernels,
 * and the CPU and OS support AVX-512 F/BW/DQ/VL/CD, this sets OPENBLAS_CORETYPE=SkylakeX
 * and re-executes the program (/proc/self/exe with the same argv, once: the re-executed
 * process has QEVO_BLAS_REEXECUTED set). A user's OPENBLAS_CORETYPE is always kept.
 * Returns normally when nothing needs to change or the re-exec fails. argv: main's argv,
 * NULL-terminated. */
void op_blas_select_kernels(char **argv);

/* Shape of a CNHW activation. */
typedef struct {
    int c, n, h, w;
} op_dims;

/* Activation fused into the epilogue of a kernel. */
typedef enum { ACT_NONE, ACT_RELU, ACT_SIGMOID } op_act;

/* conv2d / conv-transpose2d geometry. */
typedef struct {
    int cin, cout;
    int kh, kw;
    int sh, sw; /* stride */
    int ph, pw; /* padding */
    int oph, opw; /* output padding (transpose only) */
} op_conv;

/* max / average pooling geometry. */
typedef struct {
    int kh, kw, sh, sw, ph, pw;
} op_pool;

op_dims op_conv2d_out(op_dims in, const op_conv *p);
op_dims op_convt2d_out(op_dims in, const op_conv *p);
op_dims op_pool_out(op_dims in, const op_pool *p);

/* Floats of workspace op_conv2d / op_convt2d need for a batch of `in.n` images. The
 * kernels work on chunks of images so the workspace stays small (a few MiB). */
size_t op_conv2d_workspace(op_dims in, const op_conv *p);
size_t op_convt2d_workspace(op_dims in, const op_conv *p);

/* y (cout, N, OH, OW) = act(conv(x) + b). w: (cout, cin*kh*kw); b: (cout) or NULL.
 * im2col + cblas_sgemm per chunk of images; 1x1 stride-1 unpadded convs use x directly.
 * Other stride-1 convs use a direct AVX-512 kernel when the CPU has AVX-512F. */
void op_conv2d(const float *x, op_dims in, const op_conv *p, const float *w, const float *b,
               op_act act, float *y, float *ws);
void op_conv2d_ref(const float *x, op_dims in, const op_conv *p, const float *w,
                   const float *b, op_act act, float *y);
/* A conv2d fused with the residual add after it (ResNet blocks): y = act(conv(x) + b + r),
 * r (cout, N, OH, OW) shaped like y; x, r and y must not overlap. Same workspace as
 * op_conv2d. */
void op_conv2d_add(const float *x, op_dims in, const op_conv *p, const float *w,
                   const float *b, const float *r, op_act act, float *y, float *ws);
void op_conv2d_add_ref(const float *x, op_dims in, const op_conv *p, const float *w,
                       const float *b, const float *r, op_act act, float *y);

/* The columns op_conv2d multiplies by its weights: col (cin*kh*kw, N*OH*OW), row
 * (c, ki, kj) in PyTorch's weight order, column (image, oy, ox); padding gives zeros. */
void op_im2col(const float *x, op_dims in, const op_conv *p, float *col);

/* For tests and benchmarks: false makes op_conv2d use im2col + sgemm also where it
 * would use the direct kernel (default true). The workspace size depends on it, so set
 * it before sizing workspaces (op_conv2d_workspace, net_acts_create). Not thread-safe. */
void op_set_direct_conv(bool enable);

/* Transposed convolution (PyTorch ConvTranspose2d, groups 1). w: (cin, cout*kh*kw). */
void op_convt2d(const float *x, op_dims in, const op_conv *p, const float *w, const float *b,
                op_act act, float *y, float *ws);
void op_convt2d_ref(const float *x, op_dims in, const op_conv *p, const float *w,
                    const float *b, op_act act, float *y);

/* y (out, N) = act(W x + b). x: (in, N); w: (out, in). */
void op_linear(const float *x, int in, int n, const float *w, const float *b, int out,
               op_act act, float *y);
void op_linear_ref(const float *x, int in, int n, const float *w, const float *b, int out,
                   op_act act, float *y);

void op_maxpool(const float *x, op_dims in, const op_pool *p, float *y);
void op_maxpool_ref(const float *x, op_dims in, const op_pool *p, float *y);
/* Zero padding counts in the divisor (PyTorch's count_include_pad=True). */
void op_avgpool(const float *x, op_dims in, const op_pool *p, float *y);
void op_avgpool_ref(const float *x, op_dims in, const op_pool *p, float *y);
/* y (C, N) = mean over H*W. */
void op_global_avgpool(const float *x, op_dims in, float *y);
void op_global_avgpool_ref(const float *x, op_dims in, float *y);

/* y = act(a + b), count elements. */
void op_add(const float *a, const float *b, size_t count, op_act act, float *y);
void op_add_ref(const float *a, const float *b, size_t count, op_act act, float *y);
/* In place. */
void op_activate(float *x, size_t count, op_act act);
void op_activate_ref(float *x, size_t count, op_act act);

/* (C, N, H, W) -> (C*H*W, N) with feature index c*H*W + h*W + w (PyTorch's flatten). */
void op_flatten(const float *x, op_dims in, float *y);
void op_flatten_ref(const float *x, op_dims in, float *y);

/* y = x[:, :, ::sh, ::sw] */
void op_subsample(const float *x, op_dims in, int sh, int sw, float *y);
void op_subsample_ref(const float *x, op_dims in, int sh, int sw, float *y);
/* y = x with `before` zero channels in front and `after` behind. */
void op_pad_channels(const float *x, op_dims in, int before, int after, float *y);
void op_pad_channels_ref(const float *x, op_dims in, int before, int after, float *y);

/* Layout changes at the edges of the network. x (N, C, H, W) -> y (C, N, H, W), and back. */
void op_nchw_to_cnhw(const float *x, op_dims d, float *y);
void op_cnhw_to_nchw(const float *x, op_dims d, float *y);

#endif
