/* net: the layer graph of a model file, planned for execution, and forward passes.
 *
 * At load time batch-norm layers are folded into the convolution before them, an add
 * (a ResNet block's residual sum) is fused into the conv2d computed just before it when
 * it reads that conv's output and nothing else does, and ReLU/sigmoid layers are fused
 * into the producer before them (when it has no other consumer), so the executed graph
 * is a list of nodes, each one kernel call. A conv2d node with a fused add keeps its own
 * name and weights; the add layer's name finds it (net_find). Every
 * weight of every conv2d / convtranspose2d / linear node lives in one contiguous buffer
 * (net_weights); a quantization state is an array of codes over the same index space. */
#ifndef QEVO_NET_H
#define QEVO_NET_H

#include <stdbool.h>
#include <stddef.h>

#include "qevo/ops.h"
#include "qevo/util.h"

typedef enum {
    NET_CONV2D,
    NET_CONVT2D,
    NET_LINEAR,
    NET_BATCHNORM, /* only in files: folded away at load time */
    NET_RELU,
    NET_SIGMOID,
    NET_MAXPOOL,
    NET_AVGPOOL,
    NET_GLOBAL_AVGPOOL,
    NET_FLATTEN,
    NET_ADD,
    NET_SUBSAMPLE,
    NET_PAD_CHANNELS,
    NET_OP_COUNT
} net_op;

/* The op's name in the model file ("conv2d", ...). */
const char *net_op_name(net_op op);

typedef enum { NET_CLASSIFY, NET_RECONSTRUCT } net_task;

#define NET_INPUT (-1) /* input index meaning "the image" */

/* One executed node. Read-only for users of the net. */
typedef struct {
    char *name;      /* the file's layer name */
    char *bn_name;   /* folded batch-norm layer, or NULL */
    char *add_name;  /* conv2d only: fused residual add layer, or NULL (see below) */
    char *act_name;  /* fused activation layer, or NULL */
    net_op op;
    op_act act;      /* fused activation */
    int ninputs;
    int inputs[2];   /* node indices, or NET_INPUT; a conv2d with a fused add has two:
                      * out = act(conv(inputs[0]) + bias + inputs[1]) */
    int add_slot;    /* fused add: the conv's position (0 or 1) in the add's inputs */
    op_dims in;      /* shape of the (first) input for one image (n = 1) */
    op_dims out;     /* shape of the output for one image (n = 1) */
    union {
        op_conv conv; /* conv2d, convtranspose2d; linear uses cin/cout */
        op_pool pool;
        struct {
            int sh, sw;
        } subsample;
        struct {
            int before, after;
        } pad;
    } p;
    /* Weights (conv2d, convtranspose2d, linear): net_weights() + woff, wcount floats,
     * PyTorch layout with dims wshape[0..wndim). */
    size_t woff, wcount;
    int wndim, wshape[4];
    bool has_bias;
    size_t boff; /* net_biases() + boff, out.c floats */
    double flops; /* per image, multiply-add counted as 2 */
    bool cut;     /* no later node reads the input or a node before this one */
} net_node;

typedef struct net net;

/* Loads a model file (float or quantized, see docs/FORMAT.md) and checks the graph:
 * unknown ops, missing or misshapen tensors and inconsistent shapes are errors naming
 * the file and the layer. Returns 0 and a new net, or -1. */
int net_load(const char *path, net **out, qv_err *err);
void net_free(net *n);

const char *net_path(const net *n);
int net_node_count(const net *n);
const net_node *net_node_at(const net *n, int i);
/* Node index of the node holding layer `name` (also a folded or fused one), or -1. */
int net_find(const net *n, const char *name);

net_task net_get_task(const net *n);
op_dims net_input_dims(const net *n);  /* one image: c, n = 1, h, w */
op_dims net_output_dims(const net *n); /* one image */
const float *net_mean(const net *n);   /* (C) */
const float *net_std(const net *n);    /* (C) */
const char *net_description(const net *n); /* "" if none */

/* The flat weight buffer (all weighted nodes, in node order) and the biases. The
 * weights may be overwritten (quantization does); forward passes read them. */
float *net_weights(net *n);
const float *net_weights_const(const net *n);
size_t net_weight_count(const net *n);
const float *net_biases(const net *n);
size_t net_bias_count(const net *n);
double net_flops(const net *n); /* per image */

/* The graph after folding, as a qevo.graph JSON string (malloc'd): weighted layers
 * reference tensors "<node>.weight" and "<node>.bias"; fused activations are written
 * back as their own layers. Used to write quantized models. */
char *net_folded_graph_json(const net *n);

/* Activation storage for batches of up to max_batch images: one buffer per node (the
 * incremental evaluation of the optimizer keeps a parent's activations and recomputes
 * from the first changed node) plus the kernels' workspace. Passes run depth-first on
 * blocks of images, and the buffers hold consecutive per-block tensors: read outputs
 * with net_output. */
typedef struct net_acts net_acts;
net_acts *net_acts_create(const net *n, int max_batch);
void net_acts_free(net_acts *a);
int net_acts_batch(const net_acts *a);
size_t net_acts_bytes(const net_acts *a);

/* Activation storage that keeps only the input and the outputs of "cut" nodes: nodes
 * after which nothing reads an earlier node (block boundaries of a ResNet, every node of
 * a chain). It is enough to resume a pass at net_resume_node() and is several times
 * smaller than full storage: the optimizer keeps one per cached parent. */
net_acts *net_acts_create_cache(const net *n, int max_batch);

/* True if no node after i reads the input or a node before i. */
bool net_is_cut(const net *n, int i);
/* The node a pass must restart from to recompute node `first` when only cut nodes are
 * stored: the largest r <= first with r == 0 or net_is_cut(r - 1). */
int net_resume_node(const net *n, int first);

/* Copies the stored outputs of nodes first..end-1 (and the input if first == 0) of n
 * images from src to dst; src must hold every node dst stores in that range. */
void net_acts_copy(const net *nt, const net_acts *src, net_acts *dst, int first, int end,
                   int n);

/* Full forward pass of n images, x (n, C, H, W) normalised, into a. */
void net_forward(const net *nt, net_acts *a, const float *x, int n);

/* Recomputes nodes first.. onwards into `out` (full storage), reading the outputs of
 * nodes before `first` (and the input images) from `cached`, which holds a forward pass
 * of the same n images (possibly with other weights in nodes >= first). out may equal
 * cached. With a cache-only `cached`, first must be a net_resume_node(). The result
 * equals a full forward pass with the current weights, bit for bit. */
void net_forward_from(const net *nt, int first, const net_acts *cached, net_acts *out, int n);

/* Passes store activations as consecutive CNHW tensors of net_block_images() images
 * (the last one may hold fewer). The first input of node i for the block starting at
 * image b0 (a multiple of net_block_images()) in the last pass into full storage a:
 * (C, min(block, n - b0), H, W) in the shape of net_node_at(nt, i)->in. */
int net_block_images(const net *nt);
const float *net_node_input(const net *nt, const net_acts *a, int i, int b0);

/* The output of the last forward pass in a (for n images) as (n, C*H*W), row-major. */
void net_output(const net *nt, const net_acts *a, int n, float *y);

#endif
