/*
 * Fused one-pass reductions for GradientMonitor on CPU (loaded by diagnostics/native.py through ctypes).
 *
 * The pure-PyTorch path in diagnostics/stats.py spends one pass over a tensor per statistic (sum, dot, sign,
 * abs, amax). Here every statistic of a tensor comes from one read of it:
 *
 *   act_sums_*   x (n,)  -> out[4] = [Σx, Σx², #nonzero, #NaN/Inf]
 *   grad_sums_*  g (n,)  -> out[4] = [Σ|g|, Σg², max|g|, #NaN/Inf]   (max is NaN when g holds NaN, as amax)
 *   param_sums_* k pairs (g_i, w_i) of lengths n_i -> out[4k] = [Σ|g|, Σg², max|g|, Σw²] per pair
 *                (w_i may be NULL: its Σw² is then NaN)
 *   diff_sums_*  k pairs (a_i, b_i) of lengths n_i -> out[k] = ‖a_i - b_i‖² (the size of an optimizer step)
 *
 * A finite Σx² (Σg²) proves every element finite, so the NaN/Inf count costs a second pass only when it is not.
 *
 * Work is split into CHUNK-long items run by `#pragma omp parallel for`. native.py links this library
 * against the very libgomp PyTorch loaded, so the items run on PyTorch's own OpenMP threads instead of a
 * second pool that would fight them for the cores. Each item sums BLOCK elements at a time in the tensor's
 * precision over LANES independent accumulators (vectorised, no serial dependency), then adds the block into
 * double; items are combined in a fixed order, so results do not depend on the number of threads.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define CHUNK 16384
#define BLOCK 2048
#define LANES 32

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
/* One build runs on any x86-64 CPU: the loader picks the widest vector unit at run time. */
#define VECTORISED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTORISED
#endif

#define MIN(a, b) ((a) < (b) ? (a) : (b))

#define DEFINE_KERNELS(T, SUF, ABS, MAXV)                                                                         \
                                                                                                            \
VECTORISED static void act_chunk_##SUF(const T *p, int64_t m, double *out) {                              \
    double S = 0, Q = 0, Z = 0;                                                                             \
    for (int64_t b = 0; b < m; b += BLOCK) {                                                                \
        int64_t e = MIN(b + BLOCK, m), i = b;                                                               \
        T s[LANES] = {0}, q[LANES] = {0}, z[LANES] = {0};                                                   \
        for (; i + LANES <= e; i += LANES)                                                                  \
            for (int j = 0; j < LANES; j++) {                                                               \
                T v = p[i + j];                                                                             \
                s[j] += v; q[j] += v * v; z[j] += v != 0 ? (T)1 : (T)0;                                     \
            }                                                                                               \
        for (; i < e; i++) { T v = p[i]; s[0] += v; q[0] += v * v; z[0] += v != 0 ? (T)1 : (T)0; }          \
        for (int j = 0; j < LANES; j++) { S += s[j]; Q += q[j]; Z += z[j]; }                                \
    }                                                                                                       \
    out[0] = S; out[1] = Q; out[2] = Z;                                                                     \
}                                                                                                           \
                                                                                                            \
VECTORISED static void grad_chunk_##SUF(const T *p, int64_t m, double *out) {                             \
    double S = 0, Q = 0, M = 0;                                                                             \
    for (int64_t b = 0; b < m; b += BLOCK) {                                                                \
        int64_t e = MIN(b + BLOCK, m), i = b;                                                               \
        T s[LANES] = {0}, q[LANES] = {0}, x[LANES] = {0};                                                   \
        for (; i + LANES <= e; i += LANES)                                                                  \
            for (int j = 0; j < LANES; j++) {                                                               \
                T a = ABS(p[i + j]);                                                                        \
                s[j] += a; q[j] += a * a; x[j] = x[j] > a ? x[j] : a;                                       \
            }                                                                                               \
        for (; i < e; i++) { T a = ABS(p[i]); s[0] += a; q[0] += a * a; x[0] = x[0] > a ? x[0] : a; }       \
        for (int j = 0; j < LANES; j++) { S += s[j]; Q += q[j]; M = M > x[j] ? M : x[j]; }                  \
    }                                                                                                       \
    out[0] = S; out[1] = Q; out[2] = M;                                                                     \
}                                                                                                           \
                                                                                                            \
/* NaN/Inf count: a second pass, only for the rare tensors whose Σx² is not finite. */                      \
static double nonfinite_##SUF(const T *x, int64_t n) {                                                     \
    int64_t count = 0;                                                                                      \
    _Pragma("omp parallel for schedule(static) reduction(+:count) if(n > CHUNK)")                           \
    for (int64_t i = 0; i < n; i++) count += ABS(x[i]) <= MAXV ? 0 : 1;    /* NaN fails every comparison */ \
    return (double)count;                                                                                   \
}                                                                                                           \
                                                                                                            \
VECTORISED static double sq_chunk_##SUF(const T *p, int64_t m) {                                          \
    double Q = 0;                                                                                           \
    for (int64_t b = 0; b < m; b += BLOCK) {                                                                \
        int64_t e = MIN(b + BLOCK, m), i = b;                                                               \
        T q[LANES] = {0};                                                                                   \
        for (; i + LANES <= e; i += LANES)                                                                  \
            for (int j = 0; j < LANES; j++) { T v = p[i + j]; q[j] += v * v; }                              \
        for (; i < e; i++) { T v = p[i]; q[0] += v * v; }                                                   \
        for (int j = 0; j < LANES; j++) Q += q[j];                                                          \
    }                                                                                                       \
    return Q;                                                                                               \
}                                                                                                           \
                                                                                                            \
/* Reduce n elements chunk by chunk (in parallel when there are several) and combine in chunk order. */     \
static void reduce_##SUF(const T *x, int64_t n, double *out, int is_grad) {                                \
    int64_t chunks = (n + CHUNK - 1) / CHUNK;                                                               \
    double local[4 * 64];                                                                                   \
    double *part = chunks <= 64 ? local : (double *)malloc(sizeof(double) * 4 * (size_t)chunks);            \
    if (part == NULL) { out[0] = out[1] = out[2] = out[3] = NAN; return; }                                  \
    _Pragma("omp parallel for schedule(static) if(chunks > 1)")                                             \
    for (int64_t c = 0; c < chunks; c++) {                                                                  \
        int64_t m = MIN((int64_t)CHUNK, n - c * CHUNK);                                                     \
        if (is_grad) grad_chunk_##SUF(x + c * CHUNK, m, part + 4 * c);                                      \
        else act_chunk_##SUF(x + c * CHUNK, m, part + 4 * c);                                               \
    }                                                                                                       \
    double a = 0, b = 0, z = 0;                                                                             \
    for (int64_t c = 0; c < chunks; c++) {                                                                  \
        const double *p = part + 4 * c;                                                                     \
        a += p[0]; b += p[1];                                                                               \
        z = is_grad ? (z > p[2] ? z : p[2]) : z + p[2];                                                     \
    }                                                                                                       \
    if (part != local) free(part);                                                                          \
    if (is_grad && isnan(b)) z = NAN;                                                                       \
    out[0] = a; out[1] = b; out[2] = z; out[3] = isfinite(b) ? 0 : nonfinite_##SUF(x, n);                   \
}                                                                                                           \
                                                                                                            \
void act_sums_##SUF(const T *x, int64_t n, double *out) { reduce_##SUF(x, n, out, 0); }                    \
void grad_sums_##SUF(const T *x, int64_t n, double *out) { reduce_##SUF(x, n, out, 1); }                   \
                                                                                                            \
/* All parameters of a step in one parallel loop over (parameter, chunk) items: out[4k] = [Σ|g|, Σg², max|g|, \
   Σw²] per pair. Returns 0, or -1 when out of memory (out is then untouched). */                           \
int param_sums_##SUF(int64_t k, const T *const *g, const T *const *w, const int64_t *n, double *out) {     \
    int64_t items = 0;                                                                                      \
    for (int64_t i = 0; i < k; i++) items += n[i] > 0 ? (n[i] + CHUNK - 1) / CHUNK : 0;                     \
    int64_t *owner = (int64_t *)malloc(sizeof(int64_t) * 2 * (size_t)(items + 1));                          \
    double *part = (double *)malloc(sizeof(double) * 5 * (size_t)(items + 1));                              \
    if (owner == NULL || part == NULL) { free(owner); free(part); return -1; }                              \
    int64_t t = 0;                                                                                          \
    for (int64_t i = 0; i < k; i++)                                                                         \
        for (int64_t s = 0; s < n[i]; s += CHUNK) { owner[2 * t] = i; owner[2 * t + 1] = s; t++; }          \
    _Pragma("omp parallel for schedule(static) if(items > 1)")                                              \
    for (int64_t it = 0; it < items; it++) {                                                                \
        int64_t i = owner[2 * it], s = owner[2 * it + 1], m = MIN((int64_t)CHUNK, n[i] - s);                \
        grad_chunk_##SUF(g[i] + s, m, part + 5 * it);                                                       \
        part[5 * it + 4] = w[i] != NULL ? sq_chunk_##SUF(w[i] + s, m) : NAN;                                \
    }                                                                                                       \
    for (int64_t i = 0; i < k; i++) { out[4 * i] = 0; out[4 * i + 1] = 0; out[4 * i + 2] = 0;              \
                                      out[4 * i + 3] = w[i] != NULL ? 0 : NAN; }                           \
    for (int64_t it = 0; it < items; it++) {                                                                \
        double *o = out + 4 * owner[2 * it], *p = part + 5 * it;                                            \
        o[0] += p[0]; o[1] += p[1]; o[2] = o[2] > p[2] ? o[2] : p[2]; o[3] += p[4];                         \
    }                                                                                                       \
    for (int64_t i = 0; i < k; i++) if (isnan(out[4 * i + 1])) out[4 * i + 2] = NAN;                        \
    free(owner); free(part);                                                                                \
    return 0;                                                                                               \
}                                                                                                           \
                                                                                                            \
VECTORISED static double diff_chunk_##SUF(const T *a, const T *b, int64_t m) {                            \
    double Q = 0;                                                                                           \
    for (int64_t o = 0; o < m; o += BLOCK) {                                                                \
        int64_t e = MIN(o + BLOCK, m), i = o;                                                               \
        T q[LANES] = {0};                                                                                   \
        for (; i + LANES <= e; i += LANES)                                                                  \
            for (int j = 0; j < LANES; j++) { T d = a[i + j] - b[i + j]; q[j] += d * d; }                   \
        for (; i < e; i++) { T d = a[i] - b[i]; q[0] += d * d; }                                            \
        for (int j = 0; j < LANES; j++) Q += q[j];                                                          \
    }                                                                                                       \
    return Q;                                                                                               \
}                                                                                                           \
                                                                                                            \
/* ‖a_i - b_i‖² of k pairs (e.g. weights after and before an optimizer step) without writing a - b. */       \
int diff_sums_##SUF(int64_t k, const T *const *a, const T *const *b, const int64_t *n, double *out) {      \
    int64_t items = 0;                                                                                      \
    for (int64_t i = 0; i < k; i++) items += n[i] > 0 ? (n[i] + CHUNK - 1) / CHUNK : 0;                     \
    int64_t *owner = (int64_t *)malloc(sizeof(int64_t) * 2 * (size_t)(items + 1));                          \
    double *part = (double *)malloc(sizeof(double) * (size_t)(items + 1));                                  \
    if (owner == NULL || part == NULL) { free(owner); free(part); return -1; }                              \
    int64_t t = 0;                                                                                          \
    for (int64_t i = 0; i < k; i++)                                                                         \
        for (int64_t s = 0; s < n[i]; s += CHUNK) { owner[2 * t] = i; owner[2 * t + 1] = s; t++; }          \
    _Pragma("omp parallel for schedule(static) if(items > 1)")                                              \
    for (int64_t it = 0; it < items; it++) {                                                                \
        int64_t i = owner[2 * it], s = owner[2 * it + 1];                                                   \
        part[it] = diff_chunk_##SUF(a[i] + s, b[i] + s, MIN((int64_t)CHUNK, n[i] - s));                     \
    }                                                                                                       \
    for (int64_t i = 0; i < k; i++) out[i] = 0;                                                             \
    for (int64_t it = 0; it < items; it++) out[owner[2 * it]] += part[it];                                  \
    free(owner); free(part);                                                                                \
    return 0;                                                                                               \
}

DEFINE_KERNELS(float, f32, fabsf, FLT_MAX)
DEFINE_KERNELS(double, f64, fabs, DBL_MAX)
