/* cnn_xp CPU kernels: direct 2-D convolution and max pooling on channels-last (NHWC) arrays.
 *
 * This file is the kernels' body, included by kernels_<isa>_<type>.c, each of which defines
 *   REAL          float or double
 *   VECTOR_BYTES  16 (baseline x86-64: SSE2), 32 (AVX2 + FMA) or 64 (AVX-512)
 *   TARGET        the variant's function attribute (empty for the baseline), on every function
 *   TABLE         the name of the cnn_xp_kernels table it defines (see kernels.h)
 * Plain C11 plus GCC/Clang vector extensions; the compiler maps the `vec` type onto the
 * variant's SIMD registers. Built by setup.py with -O3 -ffp-contract=fast, so a*b + c is one
 * fused multiply-add where the variant has FMA.
 *
 * Why not im2col here: the column matrix of a small-channel convolution is KH*KW times its
 * input, and writing it, then reading it back into a GEMM, costs more than the arithmetic.
 * These kernels read the image directly. One output tile is R neighbouring output pixels of
 * one row x B vectors of LANES output channels, held in R*B vector registers: every weight
 * vector loaded is used R times, every input value loaded is broadcast into B fused
 * multiply-adds.
 *
 * Layouts (all C-contiguous):
 *   x        (N, H, W, C)              the input, already zero-padded
 *   w_packed (OC/LANES, KH, KW*C, LANES) the weights, output channels in blocks of LANES
 *                                      (the last block zero-filled); row q of a kernel row
 *                                      is (j, c) = divmod(q, C)
 *   out      (N, OH, OW, OC)
 *   dw       (KH, KW*C, OC)            the weight gradient, rows (i, j, c)
 * A window row of KW pixels x C channels is KW*C contiguous values of x, so the kernels
 * walk a window as KH runs of KW*C values.
 *
 * Contents: conv_forward, conv_weight_grad, conv_input_grad (dx by scattering),
 * channel_sums (the bias gradient), maxpool_forward, maxpool_backward. These functions trust
 * their arguments: _native.c checks every buffer's size against the geometry first. Each is
 * checked against naive loops in tests/test_kernels_cpu.py, in every variant the CPU runs.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

#if !defined(REAL) || !defined(VECTOR_BYTES) || !defined(TARGET) || !defined(TABLE)
#error "define REAL, VECTOR_BYTES, TARGET and TABLE before including kernels_body.h"
#endif

typedef REAL vec __attribute__((vector_size(VECTOR_BYTES)));
enum { LANES = VECTOR_BYTES / sizeof(REAL) };
#define MAX_TILE 12
#define MAX_BLOCKS 4
/* Vector accumulators a tile may hold: 32 AVX-512 registers, 16 AVX2 ones, less room for
 * the operands; PIXELS(B): output pixels per tile for B channel blocks. */
#define ACCUMULATORS (VECTOR_BYTES == 64 ? 24 : 12)
#define PIXELS(B) (ACCUMULATORS / (B) > MAX_TILE ? MAX_TILE : ACCUMULATORS / (B))
#define INLINE static inline __attribute__((always_inline)) TARGET

INLINE vec load(const REAL *p) { vec v; memcpy(&v, p, sizeof v); return v; }

/* The first `lanes` values at p in a vector, zeros after (reads nothing past them). */
INLINE vec load_first(const REAL *p, int lanes) {
    vec v = {0};
    memcpy(&v, p, (size_t)lanes * sizeof(REAL));
    return v;
}

INLINE void store_first(REAL *p, vec v, int lanes) {
    memcpy(p, &v, (size_t)lanes * sizeof(REAL));
}

/* Outputs (n, oy, ox0 .. ox0+R-1) x B blocks of output channels from block b0 on (R and B
 * constants, R*B accumulators in registers): each weight vector loaded feeds R fused
 * multiply-adds, each input value loaded feeds B.
 *   x_win: x[n, oy*sh, ox0*sw, 0], the top-left of the first window
 *   w_blk: w_packed[b0]; bias: bias_padded + b0*LANES; out_px: out[n, oy, ox0, b0*LANES]
 *   step: sw*C, the distance between neighbouring windows; blk: between weight blocks
 *   lanes: the channels of the last of the B blocks (fewer than LANES in OC's last block) */
INLINE void forward_tile(const REAL *x_win, const REAL *w_blk, const REAL *bias, REAL *out_px,
                         ptrdiff_t kh, ptrdiff_t row, ptrdiff_t run, ptrdiff_t step,
                         ptrdiff_t blk, ptrdiff_t oc, int lanes, const int R, const int B)
{
    vec acc[MAX_TILE][MAX_BLOCKS];
    for (int b = 0; b < B; b++) {
        const vec bias_b = load(bias + b * LANES);
        for (int r = 0; r < R; r++) acc[r][b] = bias_b;
    }
    for (ptrdiff_t i = 0; i < kh; i++) {
        const REAL *xi = x_win + i * row;
        const REAL *wi = w_blk + i * run * LANES;
        for (ptrdiff_t q = 0; q < run; q++) {
            vec wq[MAX_BLOCKS];
            for (int b = 0; b < B; b++) wq[b] = load(wi + b * blk + q * LANES);
            for (int r = 0; r < R; r++) {
                const REAL xv = xi[r * step + q];
                for (int b = 0; b < B; b++) acc[r][b] += xv * wq[b];
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int b = 0; b < B; b++) {
            REAL *o = out_px + r * oc + b * LANES;
            if (b < B - 1 || lanes == LANES) memcpy(o, &acc[r][b], sizeof(vec));
            else store_first(o, acc[r][b], lanes);
        }
}

/* out = conv(x, w) + bias, stride (sh, sw); bias_padded has OC rounded up to LANES. Output
 * channel blocks go 4, then 2, then 1 at a time, each with as many pixels as registers
 * allow (ACCUMULATORS). */
static TARGET void conv_forward(const REAL *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                  const REAL *w_packed, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t oc,
                  const REAL *bias_padded, ptrdiff_t sh, ptrdiff_t sw,
                  REAL *out, ptrdiff_t oh, ptrdiff_t ow)
{
    const ptrdiff_t row = w * c, run = kw * c, step = sw * c, blk = kh * run * LANES;
    const ptrdiff_t blocks = (oc + LANES - 1) / LANES;
    for (ptrdiff_t img = 0; img < n; img++)
        for (ptrdiff_t oy = 0; oy < oh; oy++) {
            const REAL *x_row = x + (img * h + oy * sh) * row;
            REAL *out_row = out + (img * oh + oy) * ow * oc;
            for (ptrdiff_t b = 0; b < blocks;) {
                const int group = blocks - b >= 4 ? 4 : blocks - b >= 2 ? 2 : 1;
                const int lanes = b + group == blocks ? (int)(oc - (blocks - 1) * LANES) : LANES;
                ptrdiff_t ox = 0;
#define TILE(R, B) forward_tile(x_row + ox * step, w_packed + b * blk, bias_padded + b * LANES, \
                                out_row + ox * oc + b * LANES, kh, row, run, step, blk, oc, lanes, R, B)
#define TILES(B) for (; ox + PIXELS(B) <= ow; ox += PIXELS(B)) TILE(PIXELS(B), B); \
                 if (PIXELS(B) > 8) for (; ox + 8 <= ow; ox += 8) TILE(8, B);    \
                 for (; ox + 4 <= ow; ox += 4) TILE(4, B);                       \
                 for (; ox + 2 <= ow; ox += 2) TILE(2, B);                       \
                 for (; ox < ow; ox += 1) TILE(1, B);
                if (group == 4) { TILES(4) } else if (group == 2) { TILES(2) } else { TILES(1) }
#undef TILES
#undef TILE
                b += group;
            }
        }
}

/* Adds to dw rows q0 .. q0+R-1 of kernel rows i0 .. i0+RI-1, channel blocks b0 .. b0+B-1
 * (RI, R and B constants), the sum over the output pixels p of `images` images of
 * x[window of p, kernel row i, q0+r] * dout[p]: each dout vector loaded feeds RI*R fused
 * multiply-adds, each input value B. RI > 1 serves short window rows (one input channel:
 * KW values), whose tiles would otherwise hold few accumulators.
 *   x_img: x[n, i0, q0] (kernel row i0, row offset q0, of the first image's first window)
 *   d_img: dout[n, 0, 0, b0*LANES]; image: h*W*C, the distance between images in x
 *   dw_rows: dw[i0, q0, b0*LANES]; run: KW*C, the distance between kernel rows in dw
 *   lanes: the channels of the last of the B blocks
 *   full_loads: a constant; 1 where loading a whole vector of the last block at every
 *     pixel stays inside dout. Past the block's `lanes` such a load reads the next pixel's
 *     channels: harmless, as those lanes are never stored. 0 (slower) for the last images'
 *     partial block. */
INLINE void weight_grad_tile(const REAL *x_img, const REAL *d_img, int full_loads, REAL *dw_rows,
                             ptrdiff_t images, ptrdiff_t image, ptrdiff_t row, ptrdiff_t run,
                             ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t sh, ptrdiff_t step, ptrdiff_t oc,
                             int lanes, const int RI, const int R, const int B)
{
    vec acc[ACCUMULATORS];  /* acc[(ii * R + r) * B + b] */
    for (int ii = 0; ii < RI; ii++)
        for (int r = 0; r < R; r++)
            for (int b = 0; b < B; b++)
                acc[(ii * R + r) * B + b] = load_first(dw_rows + (ii * run + r) * oc + b * LANES,
                                                       b < B - 1 ? LANES : lanes);
    const REAL *d = d_img;
    for (ptrdiff_t img = 0; img < images; img++)
        for (ptrdiff_t oy = 0; oy < oh; oy++) {
            const REAL *xs = x_img + img * image + oy * sh * row;
            for (ptrdiff_t ox = 0; ox < ow; ox++, d += oc, xs += step) {
                vec dv[MAX_BLOCKS];
                for (int b = 0; b < B - 1; b++) dv[b] = load(d + b * LANES);
                dv[B - 1] = full_loads ? load(d + (B - 1) * LANES) : load_first(d + (B - 1) * LANES, lanes);
                for (int ii = 0; ii < RI; ii++)
                    for (int r = 0; r < R; r++) {
                        const REAL xv = xs[ii * row + r];
                        for (int b = 0; b < B; b++) acc[(ii * R + r) * B + b] += xv * dv[b];
                    }
            }
        }
    for (int ii = 0; ii < RI; ii++)
        for (int r = 0; r < R; r++)
            for (int b = 0; b < B; b++)
                store_first(dw_rows + (ii * run + r) * oc + b * LANES, acc[(ii * R + r) * B + b],
                            b < B - 1 ? LANES : lanes);
}

/* dw = the gradient of conv_forward's weights for upstream gradient dout (N, OH, OW, OC).
 * A few images at a time (at least CHUNK_PIXELS output pixels), so that their input and
 * dout stay in cache while every tile of dw passes over them; channel blocks 4, 2, then 1
 * at a time, as in conv_forward. Window rows shorter than SHORT_RUN values (one input
 * channel: KW values) take tiles of up to ROWS(R, B) kernel rows, for up to 2 channel blocks
 * (docs/history.md has the measurement). */
#define CHUNK_PIXELS 256
#define SHORT_RUN 8
#define ROWS(R, B) (ACCUMULATORS / ((R) * (B)) > 3 ? 3 : ACCUMULATORS / ((R) * (B)))
static TARGET void conv_weight_grad(const REAL *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                      const REAL *dout, ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t oc,
                      ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, REAL *dw)
{
    const ptrdiff_t row = w * c, image = h * row, run = kw * c, step = sw * c;
    const ptrdiff_t blocks = (oc + LANES - 1) / LANES;
    const ptrdiff_t chunk = oh * ow >= CHUNK_PIXELS ? 1 : CHUNK_PIXELS / (oh * ow);
    const ptrdiff_t rows_at_once = run < SHORT_RUN && blocks <= 2 ? kh : 1;
    const REAL *d_end = dout + n * oh * ow * oc;
    memset(dw, 0, (size_t)(kh * run * oc) * sizeof(REAL));
    for (ptrdiff_t img = 0; img < n; img += chunk) {
        const ptrdiff_t images = n - img < chunk ? n - img : chunk;
        for (ptrdiff_t i0 = 0; i0 < kh; i0 += rows_at_once)
            for (ptrdiff_t b = 0; b < blocks;) {
                const int group = blocks - b >= 4 ? 4 : blocks - b >= 2 ? 2 : 1;
                const int lanes = b + group == blocks ? (int)(oc - (blocks - 1) * LANES) : LANES;
                const REAL *d_img = dout + img * oh * ow * oc + b * LANES;
                const REAL *d_last = d_img + (group - 1) * LANES;
                const int full = d_last + (images * oh * ow - 1) * oc + LANES <= d_end;
                const ptrdiff_t i_end = i0 + rows_at_once;
                ptrdiff_t q = 0;
#define TILE(F, RI, R, B) weight_grad_tile(x + img * image + i * row + q, d_img, F, \
                                           dw + (i * run + q) * oc + b * LANES, images, image, \
                                           row, run, oh, ow, sh, step, oc, lanes, RI, R, B)
/* long rows: one kernel row i0 at a time, row offsets PIXELS(B), 8, 4, 2, then 1 at a time */
#define TILES(F, B) { const ptrdiff_t i = i0;                                                 \
                      for (; q + PIXELS(B) <= run; q += PIXELS(B)) TILE(F, 1, PIXELS(B), B);  \
                      if (PIXELS(B) > 8) for (; q + 8 <= run; q += 8) TILE(F, 1, 8, B);       \
                      for (; q + 4 <= run; q += 4) TILE(F, 1, 4, B);                          \
                      for (; q + 2 <= run; q += 2) TILE(F, 1, 2, B);                          \
                      for (; q < run; q += 1) TILE(F, 1, 1, B); }
/* short rows (run < SHORT_RUN): all kernel rows, ROWS(R, B), 2, then 1 at a time */
#define ROW_TILES(F, R, B) { ptrdiff_t i = i0;                                                \
                             for (; i + ROWS(R, B) <= i_end; i += ROWS(R, B)) TILE(F, ROWS(R, B), R, B); \
                             for (; i + 2 <= i_end; i += 2) TILE(F, 2, R, B);                 \
                             for (; i < i_end; i += 1) TILE(F, 1, R, B); }
#define SHORT_TILES(F, B) for (; q + 4 <= run; q += 4) ROW_TILES(F, 4, B)                     \
                          for (; q + 2 <= run; q += 2) ROW_TILES(F, 2, B)                     \
                          for (; q < run; q += 1) ROW_TILES(F, 1, B)
                if (run < SHORT_RUN && group <= 2) {
                    if (group == 2) { if (full) { SHORT_TILES(1, 2) } else { SHORT_TILES(0, 2) } }
                    else if (full) { SHORT_TILES(1, 1) } else { SHORT_TILES(0, 1) }
                } else {
                    if (group == 4) { if (full) { TILES(1, 4) } else { TILES(0, 4) } }
                    else if (group == 2) { if (full) { TILES(1, 2) } else { TILES(0, 2) } }
                    else if (full) { TILES(1, 1) } else { TILES(0, 1) }
                }
#undef SHORT_TILES
#undef TILES
#undef ROW_TILES
#undef TILE
                b += group;
            }
    }
}

/* The input gradient by scattering (dx of conv_forward), for window rows of at most 6
 * vectors (KW*C <= 6*LANES): every output pixel p adds, for every kernel row i, the vector
 * sum over oc of dout[p, oc] * wt[oc, i] to the KW*C contiguous values of its window row
 * in dx. Those run values are NV whole vectors: wt (OC, KH, NV*LANES) is zero past the
 * run, so the lanes past it add zero to whatever they cover, and dx needs NV*LANES - KW*C
 * values of slack after its end. R neighbouring pixels (R constant, R*NV <= ACCUMULATORS)
 * share each loaded wt vector; their windows overlap, so each adds to dx in turn.
 *   d_px: dout[n, oy, ox0, 0]; wt_i: wt[0, i]; dx_win: dx[n, oy*sh + i, ox0*sw, 0] */
#define MAX_RUN_VECTORS 6  /* the table's max_run_vectors */
INLINE void input_grad_tile(const REAL *d_px, const REAL *wt_i, REAL *dx_win, ptrdiff_t oc,
                            ptrdiff_t wt_stride, ptrdiff_t step, const int NV, const int R)
{
    vec acc[8][MAX_RUN_VECTORS];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) acc[r][v] = (vec){0};
    for (ptrdiff_t o = 0; o < oc; o++) {
        vec wv[MAX_RUN_VECTORS];
        for (int v = 0; v < NV; v++) wv[v] = load(wt_i + o * wt_stride + v * LANES);
        for (int r = 0; r < R; r++) {
            const REAL d = d_px[r * oc + o];
            for (int v = 0; v < NV; v++) acc[r][v] += d * wv[v];
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) {
            REAL *seg = dx_win + r * step + v * LANES;
            vec sum = load(seg) + acc[r][v];
            memcpy(seg, &sum, sizeof sum);
        }
}

/* dx (N, H, W, C), padded coordinates, of conv_forward for dout (N, OH, OW, OC); `total`:
 * the values of dx plus its slack, all cleared first. */
static TARGET void conv_input_grad(const REAL *dout, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t oc,
                     const REAL *wt, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t c, ptrdiff_t sh,
                     ptrdiff_t sw, REAL *dx, ptrdiff_t h, ptrdiff_t w, ptrdiff_t total)
{
    const ptrdiff_t nv = (kw * c + LANES - 1) / LANES, wt_stride = kh * nv * LANES, step = sw * c;
    memset(dx, 0, (size_t)total * sizeof(REAL));
    for (ptrdiff_t img = 0; img < n; img++)
        for (ptrdiff_t oy = 0; oy < oh; oy++)
            for (ptrdiff_t i = 0; i < kh; i++) {
                const REAL *d_row = dout + (img * oh + oy) * ow * oc;
                const REAL *wt_i = wt + i * nv * LANES;
                REAL *dx_row = dx + (img * h + oy * sh + i) * w * c;
                ptrdiff_t ox = 0;
#define TILE(NV, R) input_grad_tile(d_row + ox * oc, wt_i, dx_row + ox * step, oc, wt_stride, step, NV, R)
#define SCATTER_PIXELS(NV) (ACCUMULATORS / (NV) > 8 ? 8 : ACCUMULATORS / (NV))
#define TILES(NV) for (; ox + SCATTER_PIXELS(NV) <= ow; ox += SCATTER_PIXELS(NV)) TILE(NV, SCATTER_PIXELS(NV)); \
                  for (; ox + 2 <= ow; ox += 2) TILE(NV, 2); \
                  for (; ox < ow; ox += 1) TILE(NV, 1);
                switch (nv) {
                    case 1: TILES(1) break;
                    case 2: TILES(2) break;
                    case 3: TILES(3) break;
                    case 4: TILES(4) break;
                    case 5: TILES(5) break;
                    default: TILES(6) break;
                }
#undef TILES
#undef SCATTER_PIXELS
#undef TILE
            }
}

/* sums[k] = the sum over `pixels` rows of d (pixels, C): a conv's bias gradient. d is read
 * as one flat run, in blocks of `block` values (lcm(C, LANES): whole vectors, whole pixels)
 * added into `partial`, which is added into `total` every SUM_BLOCKS blocks (that keeps
 * float32 rounding errors near those of a pairwise sum); total is folded into sums at the
 * end. scratch: 2 * block values. */
#define SUM_BLOCKS 64
static TARGET void channel_sums(const REAL *d, ptrdiff_t pixels, ptrdiff_t c, ptrdiff_t block, REAL *sums,
                  REAL *scratch)
{
    REAL *partial = scratch, *total = scratch + block;
    const ptrdiff_t size = pixels * c;
    ptrdiff_t p = 0;
    for (ptrdiff_t k = 0; k < block; k++) total[k] = 0;
    while (p + block <= size) {
        for (ptrdiff_t k = 0; k < block; k++) partial[k] = 0;
        for (int b = 0; b < SUM_BLOCKS && p + block <= size; b++, p += block)
            for (ptrdiff_t k = 0; k < block; k++) partial[k] += d[p + k];
        for (ptrdiff_t k = 0; k < block; k++) total[k] += partial[k];
    }
    for (ptrdiff_t k = 0; k < c; k++) sums[k] = 0;
    for (ptrdiff_t k = 0; k < block; k++) sums[k % c] += total[k];
    for (; p < size; p++) sums[p % c] += d[p];  /* the last, partial block */
}

/* Max pooling over NHWC x (N, H, W, C), unpadded in memory: window positions outside the
 * image count as -inf (padding pH, pW). out (N, OH, OW, C) gets each window's maximum and
 * argmax (N, OH, OW, C) the row-major offset i*KW + j of its first maximum; a NaN counts as
 * the maximum (the first NaN wins), as in NumPy's argmax. argmax is `lane_index`, an integer
 * as wide as REAL (int32 or int64), so that one vector of offsets covers one of channels.
 *
 * Channels go in whole vectors of LANES, also where C is not a multiple of LANES (LeNet-5's
 * 6 channels, SimpleConvNet's 30): a pixel's last vector spills into the next pixel's first
 * channels, which that pixel overwrites later (pixels are written in memory order), so out
 * and argmax need LANES values of slack after their ends. Loads that could run past the end
 * of an input read only the channels that are there. */
typedef __typeof__(_Generic((REAL)0, float: (int32_t)0, default: (int64_t)0)) lane_index;
typedef lane_index mask __attribute__((vector_size(VECTOR_BYTES)));  /* comparison results */

INLINE vec load_within(const REAL *p, const REAL *end, int lanes) {
    return p + LANES <= end ? load(p) : load_first(p, lanes);
}

INLINE mask load_indices(const lane_index *p, const lane_index *end, int lanes) {
    mask m = {0};
    memcpy(&m, p, (size_t)(p + LANES <= end ? LANES : lanes) * sizeof(lane_index));
    return m;
}

INLINE vec select(mask m, vec yes, vec no) { return (vec)(((mask)yes & m) | ((mask)no & ~m)); }

static TARGET void maxpool_forward(const REAL *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                     ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw,
                     REAL *out, lane_index *argmax, ptrdiff_t oh, ptrdiff_t ow)
{
    const REAL *x_end = x + n * h * w * c;
    const vec minus_inf = (vec){0} - (REAL)__builtin_inf();
    for (ptrdiff_t img = 0; img < n; img++)
        for (ptrdiff_t oy = 0; oy < oh; oy++)
            for (ptrdiff_t ox = 0; ox < ow; ox++)
                for (ptrdiff_t k = 0; k < c; k += LANES) {
                    const int lanes = c - k < LANES ? (int)(c - k) : LANES;
                    vec best = minus_inf;
                    mask at = {0};
                    for (ptrdiff_t i = 0; i < kh; i++) {
                        const ptrdiff_t y = oy * sh + i - ph;
                        for (ptrdiff_t j = 0; j < kw; j++) {
                            const ptrdiff_t xx = ox * sw + j - pw;
                            if (y < 0 || y >= h || xx < 0 || xx >= w) continue;  /* -inf: never better */
                            const vec v = load_within(x + ((img * h + y) * w + xx) * c + k, x_end, lanes);
                            const mask better = (v > best) | ((v != v) & (best == best));
                            best = select(better, v, best);
                            at = (at & ~better) | (((mask){0} + (lane_index)(i * kw + j)) & better);
                        }
                    }
                    const ptrdiff_t o = ((img * oh + oy) * ow + ox) * c + k;
                    memcpy(out + o, &best, sizeof best);
                    memcpy(argmax + o, &at, sizeof at);
                }
}

/* dx (N, H, W, C) of maxpool_forward for dout (N, OH, OW, C): each output's gradient is
 * added to its window's argmax. dx is cleared first (`total` values: dx and LANES of slack,
 * which whole-vector additions past the last channel reach); lanes past C add zero. */
static TARGET void maxpool_backward(const REAL *dout, const lane_index *argmax, ptrdiff_t n, ptrdiff_t oh,
                      ptrdiff_t ow, ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw,
                      ptrdiff_t ph, ptrdiff_t pw, REAL *dx, ptrdiff_t h, ptrdiff_t w, ptrdiff_t total)
{
    const REAL *d_end = dout + n * oh * ow * c;
    const lane_index *at_end = argmax + n * oh * ow * c;
    mask lane;
    for (int l = 0; l < LANES; l++) lane[l] = l;
    memset(dx, 0, (size_t)total * sizeof(REAL));
    for (ptrdiff_t img = 0; img < n; img++)
        for (ptrdiff_t oy = 0; oy < oh; oy++)
            for (ptrdiff_t ox = 0; ox < ow; ox++)
                for (ptrdiff_t k = 0; k < c; k += LANES) {
                    const int lanes = c - k < LANES ? (int)(c - k) : LANES;
                    const ptrdiff_t o = ((img * oh + oy) * ow + ox) * c + k;
                    const vec d = load_within(dout + o, d_end, lanes);
                    const mask at = load_indices(argmax + o, at_end, lanes);
                    const mask valid = lane < (lane_index)lanes;
                    for (ptrdiff_t i = 0; i < kh; i++) {
                        const ptrdiff_t y = oy * sh + i - ph;
                        for (ptrdiff_t j = 0; j < kw; j++) {
                            const ptrdiff_t xx = ox * sw + j - pw;
                            if (y < 0 || y >= h || xx < 0 || xx >= w) continue;
                            const mask hit = (at == (lane_index)(i * kw + j)) & valid;
                            REAL *t = dx + ((img * h + y) * w + xx) * c + k;
                            const vec sum = load(t) + select(hit, d, (vec){0});
                            memcpy(t, &sum, sizeof sum);
                        }
                    }
                }
}

/* The table: each kernel behind a void-pointer signature (kernels.h). */
static TARGET void conv_forward_entry(const void *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w, ptrdiff_t c,
                                      const void *w_packed, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t oc,
                                      const void *bias_padded, ptrdiff_t sh, ptrdiff_t sw,
                                      void *out, ptrdiff_t oh, ptrdiff_t ow)
{
    conv_forward(x, n, h, w, c, w_packed, kh, kw, oc, bias_padded, sh, sw, out, oh, ow);
}

static TARGET void conv_weight_grad_entry(const void *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                          ptrdiff_t c, const void *dout, ptrdiff_t oh, ptrdiff_t ow,
                                          ptrdiff_t oc, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                          ptrdiff_t sw, void *dw)
{
    conv_weight_grad(x, n, h, w, c, dout, oh, ow, oc, kh, kw, sh, sw, dw);
}

static TARGET void conv_input_grad_entry(const void *dout, ptrdiff_t n, ptrdiff_t oh, ptrdiff_t ow,
                                         ptrdiff_t oc, const void *wt, ptrdiff_t kh, ptrdiff_t kw,
                                         ptrdiff_t c, ptrdiff_t sh, ptrdiff_t sw, void *dx,
                                         ptrdiff_t h, ptrdiff_t w, ptrdiff_t total)
{
    conv_input_grad(dout, n, oh, ow, oc, wt, kh, kw, c, sh, sw, dx, h, w, total);
}

static TARGET void channel_sums_entry(const void *d, ptrdiff_t pixels, ptrdiff_t c, ptrdiff_t block,
                                      void *sums, void *scratch)
{
    channel_sums(d, pixels, c, block, sums, scratch);
}

static TARGET void maxpool_forward_entry(const void *x, ptrdiff_t n, ptrdiff_t h, ptrdiff_t w,
                                         ptrdiff_t c, ptrdiff_t kh, ptrdiff_t kw, ptrdiff_t sh,
                                         ptrdiff_t sw, ptrdiff_t ph, ptrdiff_t pw, void *out,
                                         void *argmax, ptrdiff_t oh, ptrdiff_t ow)
{
    maxpool_forward(x, n, h, w, c, kh, kw, sh, sw, ph, pw, out, argmax, oh, ow);
}

static TARGET void maxpool_backward_entry(const void *dout, const void *argmax, ptrdiff_t n,
                                          ptrdiff_t oh, ptrdiff_t ow, ptrdiff_t c, ptrdiff_t kh,
                                          ptrdiff_t kw, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t ph,
                                          ptrdiff_t pw, void *dx, ptrdiff_t h, ptrdiff_t w,
                                          ptrdiff_t total)
{
    maxpool_backward(dout, argmax, n, oh, ow, c, kh, kw, sh, sw, ph, pw, dx, h, w, total);
}

const cnn_xp_kernels TABLE = {
    .isa = VECTOR_BYTES == 64 ? "avx512" : VECTOR_BYTES == 32 ? "avx2" : "baseline",
    .lanes = LANES,
    .itemsize = sizeof(REAL),
    .max_run_vectors = MAX_RUN_VECTORS,
    .conv_forward = conv_forward_entry,
    .conv_weight_grad = conv_weight_grad_entry,
    .conv_input_grad = conv_input_grad_entry,
    .channel_sums = channel_sums_entry,
    .maxpool_forward = maxpool_forward_entry,
    .maxpool_backward = maxpool_backward_entry,
};
