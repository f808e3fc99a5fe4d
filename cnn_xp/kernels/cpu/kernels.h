/* The kernel table of one instruction-set variant for one dtype.
 *
 * kernels_body.h is compiled six times (kernels_<isa>_<type>.c): for float and double, each
 * for baseline x86-64 (SSE2, 16-byte vectors), AVX2 + FMA (32-byte vectors) and AVX-512
 * (64-byte vectors), every function carrying its variant's target attribute. Each
 * compilation defines one `cnn_xp_kernels` table; _native.c picks the table at run time
 * from what the CPU supports. Arrays are passed as void pointers: REAL (float or double)
 * values, and for max pooling's argmax an integer as wide as REAL (int32 or int64). The
 * layouts and the geometry each kernel expects are described in kernels_body.h; _native.c
 * checks every buffer against them before a call.
 */
#ifndef CNN_XP_KERNELS_H
#define CNN_XP_KERNELS_H

#include <stddef.h>

typedef struct {
    const char *isa;   /* "baseline", "avx2" or "avx512" */
    int lanes;         /* REAL values in one vector: the output-channel block of w_packed */
    int itemsize;      /* sizeof(REAL) */
    int max_run_vectors;  /* conv_input_grad's longest window row, in vectors */
    void (*conv_forward)(const void *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                         const void *w_packed, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t oc,
                         const void *bias_padded, ptrdiff_t sh, ptrdiff_t sw,
                         void *out, ptrdiff_t oh, ptrdiff_t ow);
    void (*conv_weight_grad)(const void *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                             const void *dout, ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t oc,
                             ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, void *dw);
    void (*conv_input_grad)(const void *dout, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t oc,
                            const void *wt, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t c, ptrdiff_t sh,
                            ptrdiff_t sw, void *dx, ptrdiff_t h, ptrdiff_t w, ptrdiff_t total);
    void (*channel_sums)(const void *d, ptrdiff_t pixels, ptrdiff_t c, ptrdiff_t block, void *sums,
                         void *scratch);
    void (*maxpool_forward)(const void *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                            ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                            ptrdiff_t pw, void *out, void *argmax, ptrdiff_t oh, ptrdiff_t ow);
    void (*maxpool_backward)(const void *dout, const void *argmax, ptrdiff_t n, ptrdiff_t oh,
                             ptrdiff_t ow, ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                             ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, void *dx, ptrdiff_t h,
                             ptrdiff_t w, ptrdiff_t total);
} cnn_xp_kernels;

extern const cnn_xp_kernels cnn_xp_kernels_float_baseline, cnn_xp_kernels_double_baseline;
extern const cnn_xp_kernels cnn_xp_kernels_float_avx2, cnn_xp_kernels_double_avx2;
extern const cnn_xp_kernels cnn_xp_kernels_float_avx512, cnn_xp_kernels_double_avx512;

#endif
