#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

/* Images are shared out over OpenMP threads. Built with -fopenmp, this library binds to the
   libgomp torch has already loaded (same soname), so it runs on torch's own worker threads:
   separate threads would compete for the cores with torch's workers, which spin for a
   while after every torch op (measured: the event synapse took 1.4-1.8 ms a step instead
   of 1.1 on the Yang net). Without OpenMP the pragmas are ignored and Python splits the
   images over threads instead. */
int spikeconv_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* One step of one image's n neurons. The flags are compile-time constants at every call
   below, so the compiler emits one branch-free, vectorized loop per combination; the
   spike count is an integer so that its sum vectorizes too. In place (spikes over the
   current) goes through its own pointer, as restrict pointers must not alias. */
#define IF_BLOCK(NAME, T)                                                                    \
static inline __attribute__((always_inline)) int32_t NAME(                                  \
        const T *restrict z, T *restrict s, T *restrict zs, T *restrict v, T *restrict m,  \
        int64_t n, const int inplace, const int mode, const int has_vmin, const int sat,   \
        const int has_m, T threshold, T vmin, T low, T high) {                              \
    int32_t total = 0;                                                                      \
    for (int64_t i = 0; i < n; ++i) {                                                       \
        T u = v[i] + (inplace ? zs[i] : z[i]);                                              \
        T fired = 0;                                                                        \
        if (mode != 2) {                                                                    \
            fired = u >= threshold ? (T)1 : (T)0;                                           \
            total += u >= threshold;                                                        \
            if (mode == 0) u = u >= threshold ? (T)0 : u;                                   \
            else u = u - fired * threshold;                                                 \
            if (has_vmin) u = u < vmin ? vmin : u;                                          \
        }                                                                                   \
        if (sat) { u = u < low ? low : u; u = u > high ? high : u; }                        \
        v[i] = u;                                                                           \
        if (inplace) zs[i] = fired; else s[i] = fired;                                      \
        if (has_m) m[i] = u;                                                                \
    }                                                                                       \
    return total;                                                                           \
}

/* z: current, element (k, b, i) at z[k * z_step + b * n + i] (z_step = 0: the same current
   every step). spikes: [steps, batch, n] out (may be z itself when z_step = batch * n).
   membranes: [steps, batch, n] out or NULL. v: [batch, n] in/out. counts: [steps, batch]
   out, spikes of each image in each step. Images b0 .. b1 - 1. mode: 0 reset to zero,
   1 reset by subtraction, 2 integrate only. */
#define IF_KERNEL(NAME, BLOCK, T)                                                            \
void NAME(const T *z, int64_t z_step, T *spikes, T *membranes, T *v, double *counts,        \
          int64_t steps, int64_t batch, int64_t n, int64_t b0, int64_t b1, int mode,        \
          T threshold, int has_vmin, T vmin, int saturate, T low, T high, int nthreads) {   \
    const int inplace = (const void *)z == (const void *)spikes;                            \
    const int fast = !membranes && !saturate && mode != 2;                                  \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1)")       \
    for (int64_t b = b0; b < b1; ++b) {                                                     \
        T *vb = v + b * n;                                                                  \
        for (int64_t k = 0; k < steps; ++k) {                                               \
            const T *zk = z + k * z_step + b * n;                                           \
            T *sk = spikes + (k * batch + b) * n;                                           \
            T *mk = membranes ? membranes + (k * batch + b) * n : 0;                        \
            int32_t total;                                                                  \
            if (fast && inplace)                                                            \
                total = mode == 0                                                           \
                    ? (has_vmin ? BLOCK(0, 0, sk, vb, 0, n, 1, 0, 1, 0, 0, threshold, vmin, 0, 0)      \
                                : BLOCK(0, 0, sk, vb, 0, n, 1, 0, 0, 0, 0, threshold, vmin, 0, 0))     \
                    : (has_vmin ? BLOCK(0, 0, sk, vb, 0, n, 1, 1, 1, 0, 0, threshold, vmin, 0, 0)      \
                                : BLOCK(0, 0, sk, vb, 0, n, 1, 1, 0, 0, 0, threshold, vmin, 0, 0));    \
            else if (fast)                                                                  \
                total = mode == 0                                                           \
                    ? (has_vmin ? BLOCK(zk, sk, 0, vb, 0, n, 0, 0, 1, 0, 0, threshold, vmin, 0, 0)     \
                                : BLOCK(zk, sk, 0, vb, 0, n, 0, 0, 0, 0, 0, threshold, vmin, 0, 0))    \
                    : (has_vmin ? BLOCK(zk, sk, 0, vb, 0, n, 0, 1, 1, 0, 0, threshold, vmin, 0, 0)     \
                                : BLOCK(zk, sk, 0, vb, 0, n, 0, 1, 0, 0, 0, threshold, vmin, 0, 0));   \
            else if (inplace) /* output layers and fixed point: one general loop */          \
                total = BLOCK(0, 0, sk, vb, mk, n, 1, mode, has_vmin, saturate, mk != 0,    \
                              threshold, vmin, low, high);                                  \
            else                                                                            \
                total = BLOCK(zk, sk, 0, vb, mk, n, 0, mode, has_vmin, saturate, mk != 0,   \
                              threshold, vmin, low, high);                                  \
            counts[k * batch + b] = (double)total;                                          \
        }                                                                                   \
    }                                                                                       \
}
IF_BLOCK(if_block_f32, float)
IF_BLOCK(if_block_f64, double)
IF_KERNEL(if_recurrence_f32, if_block_f32, float)
IF_KERNEL(if_recurrence_f64, if_block_f64, double)

/* Event-driven synapse: an optional k x k average pool (stride k) then a convolution
   (groups 1, dilation 1), over binary spikes x [images][H][W][C] (channels-last), into
   out [images][OH][OW][CO] (channels-last). Each image's spikes are first listed per
   pooled pixel, row by row; per output row, the lists of the KH pooled rows it reads are
   merged column by column, so that each output pixel adds the weight rows w[ky][kx][c][:]
   (already divided by k * k) of one contiguous range of spikes. A kernel over the whole
   map (a linear layer) adds the whole list. The sums run in a different order from a
   dense convolution's, so the caller uses this only where every partial sum is exact. CO
   is a multiple of 16 (one 64-byte vector per 16 outputs; the caller pads), summed 128
   outputs at a time. */
typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));  /* unsigned: wrapping, never UB, on the slack */
static inline v16f load16(const float *p) { v16f v; memcpy(&v, p, sizeof v); return v; }

/* Lists one image's spikes x [H][W][C] per pooled pixel (py, px), row by row: offsets[py *
   PW + px] is where the pixel's entries start in rows, and the entry of element j of the
   pixel's k * C (one input row of the pool window) is py * row_step + px * column_step +
   table[j]. For summing per output pixel, the spike's weight offset: row_step 0 (or a
   whole map's row), column_step C * CO, table[j] = (j % C) * CO. For scattering, a packed
   (halo pixel, channel), see event_conv_f32. With AVX-512 each 16 elements are one compare
   and one compress (the scalar loop cost 4.6 vector additions per element, most of the
   synapse's time at 5 % spikes); rows needs 16 entries of slack for the whole-vector stores.
   Returns the number of spikes. Inlined, so that each path gets its own copy (measured: one
   shared copy made the scatter path 1.2x slower). */
static inline __attribute__((always_inline)) int32_t list_spikes(
        const float *xi, int64_t W, int64_t C, int64_t k, int64_t PH, int64_t PW, int64_t row_step,
        int64_t column_step, int32_t *offsets, int32_t *rows, const int32_t *table) {
    const int64_t L = k * C;  /* elements of a pooled pixel in one input row */
    int32_t nnz = 0;
    for (int64_t py = 0; py < PH; ++py)
        for (int64_t px = 0; px < PW; ++px) {
            offsets[py * PW + px] = nnz;
            const int32_t column = (int32_t)(py * row_step + px * column_step);
            for (int64_t dy = 0; dy < k; ++dy) {
                const float *p = xi + ((py * k + dy) * W + px * k) * C;
#ifdef __AVX512F__
                int64_t j = 0;
                for (; j + 16 <= L; j += 16) {  /* whole vectors: plain loads, no masks */
                    const __mmask16 fired = _mm512_cmp_ps_mask(_mm512_loadu_ps(p + j), _mm512_setzero_ps(), _CMP_NEQ_UQ);
                    const __m512i at = _mm512_add_epi32(_mm512_loadu_si512((const void *)(table + j)),
                                                        _mm512_set1_epi32(column));
                    _mm512_storeu_si512((void *)(rows + nnz), _mm512_maskz_compress_epi32(fired, at));
                    nnz += __builtin_popcount(fired);
                }
                if (j < L) {
                    const __mmask16 in = (__mmask16)((1u << (L - j)) - 1);
                    const __mmask16 fired = _mm512_mask_cmp_ps_mask(in, _mm512_maskz_loadu_ps(in, p + j),
                                                                    _mm512_setzero_ps(), _CMP_NEQ_UQ);
                    const __m512i at = _mm512_add_epi32(_mm512_maskz_loadu_epi32(in, table + j), _mm512_set1_epi32(column));
                    _mm512_storeu_si512((void *)(rows + nnz), _mm512_maskz_compress_epi32(fired, at));
                    nnz += __builtin_popcount(fired);
                }
#else
                for (int64_t j = 0; j < L; ++j) {  /* branch-free append */
                    rows[nnz] = column + table[j];
                    nnz += p[j] != 0;
                }
#endif
            }
        }
    offsets[PH * PW] = nnz;
    return nnz;
}

/* The scatter path of a 16-output, stride-1 layer: each spike adds its KH * KW weight rows
   into the halo buffer S [PH + KH - 1][PW + KW - 1][16] (one full convolution, so no bounds
   checks), one flat loop over the spikes. At low rates this beats summing one range per
   output pixel, whose merge and loop exit cost more than the additions (measured on a
   16 -> 16 3x3 conv, 32x32, 100 images: 1.6x at 3 % spikes, 1.33x at 7 %, 0.97x at 15 %).
   Pooled inputs work too (each spike of a pool window adds its weights / k^2 at the pooled
   pixel) but were measured slower, so the simulator does not ask for them. */
static inline __attribute__((always_inline)) void scatter_taps(
        const int32_t *entries, int32_t nnz, int shift, const float *w, float *S,
        const int64_t *toffsets, const int64_t *woffsets, const int64_t taps) {
    int64_t toff[25], woff[25];  /* in registers when taps is a constant */
    for (int64_t t = 0; t < taps; ++t) { toff[t] = toffsets[t]; woff[t] = woffsets[t]; }
    const int32_t channel = (1 << shift) - 1;
    for (int32_t e = 0; e < nnz; ++e) {
        const int32_t entry = entries[e];
        v16f *s = (v16f *)(S + ((int64_t)(entry >> shift) << 4));
        const float *wc = w + ((int64_t)(entry & channel) << 4);
        /* typed, aligned stores (the buffer is 64-byte aligned): unlike memcpy they cannot alias
           the lists and offsets, which then stay in registers */
        for (int64_t t = 0; t < taps; ++t) s[toff[t] >> 4] += load16(wc + woff[t]);
    }
}

static void scatter_sum(const int32_t *entries, int32_t nnz, int shift, const float *w, float *S,
                        const int64_t *toff, const int64_t *woff, int64_t taps) {
    if (taps == 9) scatter_taps(entries, nnz, shift, w, S, toff, woff, 9);
    else if (taps == 25) scatter_taps(entries, nnz, shift, w, S, toff, woff, 25);
    else if (taps == 1) scatter_taps(entries, nnz, shift, w, S, toff, woff, 1);
    else {
        const int32_t channel = (1 << shift) - 1;
        for (int32_t e = 0; e < nnz; ++e) {
            float *s = S + ((int64_t)(entries[e] >> shift) << 4);
            const float *wc = w + ((int64_t)(entries[e] & channel) << 4);
            for (int64_t t = 0; t < taps; ++t) {
                v16f sum = load16(s + toff[t]) + load16(wc + woff[t]);
                memcpy(s + toff[t], &sum, sizeof sum);
            }
        }
    }
}

/* Outputs o[0 .. 16 * nv - 1] of one output pixel: the sum of the weights w[base + entries[e]]
   (16 * nv floats each) for e in e0 .. e1 - 1, plus the bias. nv is a constant at every call,
   so each count gets a loop without per-vector branches. */
static inline __attribute__((always_inline)) void output_block(
        const int nv, const int32_t *entries, int32_t e, const int32_t e1, const float *w, int64_t base,
        const float *bias, float *o) {
    v16f a[8], b[8];  /* two partial sums per vector: independent add chains */
    for (int v = 0; v < nv; ++v) {
        a[v] = bias ? load16(bias + 16 * v) : (v16f){0};
        b[v] = (v16f){0};
    }
    for (; e + 1 < e1; e += 2) {
        const float *p = w + (base + entries[e]), *q = w + (base + entries[e + 1]);
        for (int v = 0; v < nv; ++v) { a[v] += load16(p + 16 * v); b[v] += load16(q + 16 * v); }
    }
    if (e < e1)
        for (int v = 0; v < nv; ++v) a[v] += load16(w + (base + entries[e]) + 16 * v);
    for (int v = 0; v < nv; ++v) { v16f sum = a[v] + b[v]; memcpy(o + 16 * v, &sum, sizeof sum); }
}

/* Outputs o0 .. o0 + 127 (or up to CO) of the output pixel at o, from entries e0 .. e1 - 1:
   one unrolled loop per vector count. */
#define OUTPUT_BLOCKS(ENTRIES, E0, E1, SHIFT, O0)                                              \
    switch ((CO - (O0) < 128 ? CO - (O0) : 128) / 16) {                                       \
    case 1: output_block(1, ENTRIES, E0, E1, w, (O0) + (SHIFT), bias ? bias + (O0) : 0, o + (O0)); break; \
    case 2: output_block(2, ENTRIES, E0, E1, w, (O0) + (SHIFT), bias ? bias + (O0) : 0, o + (O0)); break; \
    case 3: output_block(3, ENTRIES, E0, E1, w, (O0) + (SHIFT), bias ? bias + (O0) : 0, o + (O0)); break; \
    case 4: output_block(4, ENTRIES, E0, E1, w, (O0) + (SHIFT), bias ? bias + (O0) : 0, o + (O0)); break; \
    case 5: output_block(5, ENTRIES, E0, E1, w, (O0) + (SHIFT), bias ? bias + (O0) : 0, o + (O0)); break; \
    case 6: output_block(6, ENTRIES, E0, E1, w, (O0) + (SHIFT), bias ? bias + (O0) : 0, o + (O0)); break; \
    case 7: output_block(7, ENTRIES, E0, E1, w, (O0) + (SHIFT), bias ? bias + (O0) : 0, o + (O0)); break; \
    default: output_block(8, ENTRIES, E0, E1, w, (O0) + (SHIFT), bias ? bias + (O0) : 0, o + (O0));    \
    }

int event_conv_f32(const float *x, int64_t H, int64_t W, int64_t C, int64_t k,
                   const float *w, const float *bias, int64_t KH, int64_t KW, int64_t stride,
                   int64_t pad, int64_t CO, float *out, int64_t OH, int64_t OW, int64_t i0, int64_t i1,
                   int scatter, int nthreads) {
    const int64_t PH = H / k, PW = W / k;
    const int whole_map = OH == 1 && OW == 1 && KH == PH && KW == PW && pad == 0;
    /* scatter: the caller's choice at low spike rates, see scatter_sum */
    scatter = scatter && CO == 16 && stride == 1 && pad < KH && pad < KW && !whole_map;
    const int64_t SH = PH + KH - 1, SW = PW + KW - 1;  /* the scatter path's halo buffer */
    /* A scatter list entry packs the spike's halo pixel and channel, (py * SW + px) * 2^shift
       + c with 2^shift >= C (measured: a second list for the channels made it ~1.5x slower) */
    int shift = 0;
    while (((int64_t)1 << shift) < C) ++shift;
    scatter = scatter && ((SH * SW) << shift) < ((int64_t)1 << 31);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if(nthreads > 1) reduction(|: failed)
    {
    int32_t *offsets = malloc((PH * PW + 1) * sizeof(int32_t));
    int32_t *rows = malloc((H * W * C + 16) * sizeof(int32_t));  /* + 16: whole-vector stores */
    int32_t *table = malloc((k * C + 16) * sizeof(int32_t));
    /* per output row: the merged lists of its KH pooled rows (not for a whole-map kernel) */
    int32_t *merged = whole_map ? 0 : malloc((KH * k * W * C + 16) * sizeof(int32_t));
    int32_t *columns = whole_map ? 0 : malloc((PW + 1) * sizeof(int32_t));
    /* 64-byte aligned: each of its vectors is then one cache line (measured: malloc's 16-byte
       alignment made the scatter path 1.6x slower) */
    float *halo = scatter ? aligned_alloc(64, (SH * SW * CO * sizeof(float) + 63) / 64 * 64) : 0;
    int64_t *toff = scatter ? malloc(2 * KH * KW * sizeof(int64_t)) : 0, *woff = toff ? toff + KH * KW : 0;
    failed = !offsets || !rows || !table || (!whole_map && (!merged || !columns))
             || (scatter && (!halo || !toff));
    if (table) for (int64_t j = 0; j < k * C; ++j) table[j] = (int32_t)((j % C) * (scatter ? 1 : CO));
    if (toff)  /* tap (ky, kx) of a spike at (py, px) adds to the full convolution's (py + KH - 1 - ky, px + KW - 1 - kx) */
        for (int64_t t = 0; t < KH * KW; ++t) {
            toff[t] = ((KH - 1 - t / KW) * SW + (KW - 1 - t % KW)) * CO;
            woff[t] = t * C * CO;
        }
#pragma omp for schedule(static)
    for (int64_t i = i0; i < i1; ++i) {
        if (failed) continue;
        const float *xi = x + i * H * W * C;
        if (scatter) {
            memset(halo, 0, SH * SW * CO * sizeof(float));
            const int32_t nnz = list_spikes(xi, W, C, k, PH, PW, SW << shift, (int64_t)1 << shift, offsets, rows, table);
            scatter_sum(rows, nnz, shift, w, halo, toff, woff, KH * KW);
            const v16f b = bias ? load16(bias) : (v16f){0};
            float *oi = out + i * OH * OW * CO;
            for (int64_t oy = 0; oy < OH; ++oy)
                for (int64_t ox = 0; ox < OW; ++ox) {
                    const v16f sum = b + load16(halo + ((oy + KH - 1 - pad) * SW + ox + KW - 1 - pad) * CO);
                    memcpy(oi + (oy * OW + ox) * CO, &sum, sizeof sum);
                }
            continue;
        }
        if (whole_map) {  /* a linear layer: every spike feeds the one output pixel, no merging */
            list_spikes(xi, W, C, k, PH, PW, PW * C * CO, C * CO, offsets, rows, table);
            float *o = out + i * CO;
            for (int64_t o0 = 0; o0 < CO; o0 += 128)
                OUTPUT_BLOCKS(rows, 0, offsets[PH * PW], 0, o0)
            continue;
        }
        list_spikes(xi, W, C, k, PH, PW, 0, C * CO, offsets, rows, table);
        for (int64_t oy = 0; oy < OH; ++oy) {
            /* The spikes of the KH pooled rows this output row reads, merged column by column
               (column px: row 0's, then row 1's, ...), each entry + ky * KW * C * CO: an output
               pixel's whole receptive field is then one contiguous range (measured: a range per
               kernel row cost ~21 vector additions each, the most of a 16-output layer's time). */
            int32_t n = 0;
            for (int64_t px = 0; px < PW; ++px) {
                columns[px] = n;
                for (int64_t ky = 0; ky < KH; ++ky) {
                    const int64_t py = oy * stride - pad + ky;
                    if (py < 0 || py >= PH) continue;
                    const int32_t shift = (int32_t)(ky * KW * C * CO), from = offsets[py * PW + px];
                    const int32_t count = offsets[py * PW + px + 1] - from;
                    /* 16 entries at a time, the first 16 unconditionally (both arrays have 16
                       of slack): a pixel rarely holds more, so this branch predicts well */
                    int32_t j = 0;
                    do {
                        v16u chunk;
                        memcpy(&chunk, rows + from + j, sizeof chunk);
                        chunk += (uint32_t)shift;
                        memcpy(merged + n + j, &chunk, sizeof chunk);
                        j += 16;
                    } while (j < count);
                    n += count;
                }
            }
            columns[PW] = n;
            for (int64_t ox = 0; ox < OW; ++ox) {
                const int64_t x0 = ox * stride - pad, xa = x0 < 0 ? 0 : x0;
                const int64_t xb = x0 + KW > PW ? PW : x0 + KW;
                const int32_t e0 = columns[xa], e1 = xa < xb ? columns[xb] : e0;
                float *o = out + ((i * OH + oy) * OW + ox) * CO;
                /* entries hold (ky * KW + px) * C * CO + c * CO: minus x0 * C * CO, the weight row
                   of kernel tap (ky, px - x0), channel c. Blocks of up to 8 vectors in registers
                   (measured: fewer per pass, for the weights' sake of L1, lost to the per-spike
                   index work). */
                for (int64_t o0 = 0; o0 < CO; o0 += 128)
                    OUTPUT_BLOCKS(merged, e0, e1, -x0 * C * CO, o0)
            }
        }
    }
    free(offsets);
    free(rows);
    free(table);
    free(merged);
    free(columns);
    free(halo);
    free(toff);
    }
    return failed;
}

/* Spiking max-pool gate (spikeconv.sim.neurons.maxpool_gate) over a chunk of steps: per image
   and step, the rate estimate e [C][H][W] (element strides sc, sy, sx: contiguous or
   channels-last, as the spikes) is updated with the step's spikes s (rate 0, count: e + s;
   1, ewma: keep * e + take * s, two products and a sum as the tensor code makes them;
   2, spikes: s), then each
   window passes the spike at its largest estimate, the first in row-major order on a tie
   (max_pool2d's index: a running maximum from -inf with a strict >, so padding never
   wins). out [steps][batch][C][OH][OW] with element strides oc, oy, ox per image, in the
   spikes' layout. The taps are the outer loops and a row of outputs the inner one
   (channels for channels-last, columns for NCHW): compares and selects the compiler can
   vectorize, where a loop over each output's few taps was a quarter of a VGG's simulation. */
#define GATE_TAP(T, I)                                                                       \
    {                                                                                       \
        const int64_t i = (I);                                                              \
        const int better = e[i] > best[j];                                                  \
        best[j] = better ? e[i] : best[j];                                                  \
        row[j * step] = better ? s[i] : row[j * step];                                      \
    }
#define GATE_KERNEL(NAME, T)                                                                 \
void NAME(const T *spikes, T *estimate, T *out, int64_t steps, int64_t batch, int64_t C,    \
          int64_t H, int64_t W, int64_t sc, int64_t sy, int64_t sx, int64_t OH, int64_t OW, \
          int64_t oc, int64_t oy, int64_t ox, int64_t KH, int64_t KW, int64_t stride_y,     \
          int64_t stride_x, int64_t pad_y, int64_t pad_x, int rate, T keep, T take,         \
          int64_t b0, int64_t b1, int nthreads) {                                           \
    const int64_t n = C * H * W, m = C * OH * OW;                                           \
    const int last = sc == 1 && C > 1; /* channels-last: rows of channels */                \
    const int64_t len = last ? C : OW, step = last ? oc : ox;                               \
    _Pragma("omp parallel for schedule(static) num_threads(nthreads) if(nthreads > 1)")       \
    for (int64_t b = b0; b < b1; ++b) {                                                     \
        T *best = (T *)malloc(sizeof(T) * (size_t)len);                                     \
        T *restrict e = estimate + b * n;                                                   \
        for (int64_t k = 0; k < steps; ++k) {                                               \
            const T *restrict s = spikes + (k * batch + b) * n;                             \
            if (rate == 1) for (int64_t i = 0; i < n; ++i) e[i] = keep * e[i] + take * s[i]; \
            else if (rate == 2) memcpy(e, s, sizeof(T) * (size_t)n);                        \
            else for (int64_t i = 0; i < n; ++i) e[i] = e[i] + s[i];                        \
            T *o = out + (k * batch + b) * m;                                               \
            for (int64_t r0 = 0; r0 < (last ? OH * OW : C * OH); ++r0) {                    \
                const int64_t c = last ? 0 : r0 / OH;                                       \
                const int64_t py = last ? r0 / OW : r0 % OH, px = last ? r0 % OW : 0;       \
                T *row = o + (last ? py * oy + px * ox : c * oc + py * oy);                 \
                for (int64_t j = 0; j < len; ++j) { best[j] = -(T)INFINITY; row[j * step] = 0; } \
                for (int64_t dy = 0; dy < KH; ++dy) {                                       \
                    const int64_t y = py * stride_y - pad_y + dy;                           \
                    if (y < 0 || y >= H) continue;                                          \
                    for (int64_t dx = 0; dx < KW; ++dx) {                                   \
                        if (last) {                                                         \
                            const int64_t x = px * stride_x - pad_x + dx;                   \
                            if (x < 0 || x >= W) continue;                                  \
                            const int64_t at = y * sy + x * sx;                             \
                            for (int64_t j = 0; j < len; ++j) GATE_TAP(T, at + j)           \
                        } else { /* the columns whose tap x = j * stride_x - pad_x + dx is inside */ \
                            int64_t lo = pad_x - dx > 0 ? (pad_x - dx + stride_x - 1) / stride_x : 0; \
                            int64_t hi = (W - 1 + pad_x - dx) / stride_x + 1;               \
                            hi = hi < OW ? hi : OW;                                         \
                            const int64_t at = c * sc + y * sy + (dx - pad_x) * sx;         \
                            for (int64_t j = lo; j < hi; ++j) GATE_TAP(T, at + j * stride_x * sx) \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        free(best);                                                                         \
    }                                                                                       \
}
GATE_KERNEL(maxpool_gate_f32, float)
GATE_KERNEL(maxpool_gate_f64, double)
