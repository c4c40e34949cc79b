/*
 * CPU decode engine for the NumPy backend: one call runs a whole token through
 * a Llama-family model (every layer, then the lm_head) on packed weights.
 *
 * Weights, per matrix ([N rows, K inputs], y = W x):
 *   KIND_F32: float32 rows (the NumPy backend's own arrays, norms folded in);
 *   KIND_Q4 : MLX affine 4-bit, repacked: for each block of 32 inputs, 16 bytes,
 *             byte j = code[j] | code[j + 16] << 4 (blocks left to right);
 *   KIND_Q8 : MLX affine 8-bit codes, one byte each (MLX's own byte order);
 *   scales/biases float32 [N, K / group], w = scale * code + bias.
 * Activations feeding a quantized matrix are quantized to int16 per block of
 * 32 (scale max|x| / 32767), so a block's dot product is an exact integer sum
 * (vpmaddwd on x86, vmlal on ARM); the bias term uses the float block sums.
 *
 * Threads: a pool of (threads - 1) workers plus the caller run the same
 * decode body (SPMD); each matrix's rows are split between them and a
 * spinning barrier separates the phases of a layer.  Workers spin briefly
 * after a token, then sleep on a condition variable.
 *
 * Prefill of a quantized model: syn_gemm multiplies a prompt's rows by a
 * matrix repacked into tiles of 16 rows (syn_pack_tiles), on the codes, with
 * 16-bit activations as two int8 planes (vpdpbusd on AVX-512 VNNI); see the
 * section at the end.  The attention, softmax, SiLU and RoPE of prefill stay
 * in NumPy with the helpers above it.
 *
 * Every kernel has a plain C version (SYNAPSE_GENERIC forces it); the x86
 * AVX-512BW / AVX2 and ARM NEON versions are chosen at compile time, the
 * library being compiled on the machine that runs it (-march=native).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(SYNAPSE_GENERIC)
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define USE_AVX512 1
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__)
#define USE_AVX2 1
#include <immintrin.h>
#elif defined(__ARM_NEON) && defined(__aarch64__)
#define USE_NEON 1
#include <arm_neon.h>
#endif
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define BLK 32
#define KIND_F32 0
#define KIND_Q4 1
#define KIND_Q8 2
#define ABI_VERSION 3

int syn_abi_version(void) { return ABI_VERSION; }

/* exp for x <= 0 (softmax, silu): x = n ln2 + r with n = rint(x / ln2) and ln2 split in two
   (Cody-Waite), so |r| <= ln2 / 2 exactly; e^r by its degree-7 Taylor polynomial; times 2^n.
   Relative error < 3e-7 down to x = -87 (below, the clamp: e^-87 ~ 1.6e-38); plain C that
   compilers vectorize. */
static inline float exp_neg(float x) {
    x = x < -87.f ? -87.f : x;
    float n = rintf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f; /* ln2 high part: 16 bits, so n * it is exact */
    r = r - n * 1.428606765330187e-06f;   /* ln2 low part */
    float p = 1.98412698e-4f;             /* 1/7! */
    p = p * r + 1.38888889e-3f;
    p = p * r + 8.33333333e-3f;
    p = p * r + 4.16666667e-2f;
    p = p * r + 1.66666667e-1f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } e;
    e.i = ((int32_t)n + 127) << 23;
    return p * e.f;
}

const char *syn_simd(void) {
#if defined(USE_AVX512) && defined(__AVX512VNNI__)
    return "avx512bw+vnni";
#elif defined(USE_AVX512)
    return "avx512bw";
#elif defined(USE_AVX2)
    return "avx2";
#elif defined(USE_NEON)
    return "neon";
#else
    return "generic";
#endif
}

/* ------------------------------------------------------------------ matrices */

typedef struct {
    int kind, N, K, gshift; /* gshift = log2(group / 32) */
    const void *w;          /* float rows, or packed codes */
    const float *s, *b;     /* [N, K / group] (quantized kinds) */
} Mat;

/* An activation vector in the forms the kernels read. */
typedef struct {
    const float *f; /* float values (K) */
    int16_t *q;     /* int16 codes (K) */
    float *d;       /* per block of 32: scale */
    float *sum;     /* per block of 32: sum of the float values */
} Act;

static void quantize_act(const float *x, int K, int16_t *q, float *d, float *sum) {
    for (int b = 0; b < K / BLK; b++) {
        const float *xb = x + b * BLK;
        float amax = 0.f, s = 0.f;
        for (int j = 0; j < BLK; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
            s += xb[j];
        }
        float dd = amax / 32767.f;
        /* a block this small is scaled up by 2^100 first (exact) so that 32767 / amax stays finite */
        float pre = amax < 1e-30f ? 0x1p100f : 1.f;
        float inv = amax > 0.f ? 32767.f / (amax * pre) : 0.f;
        for (int j = 0; j < BLK; j++) q[b * BLK + j] = (int16_t)lrintf(xb[j] * pre * inv);
        d[b] = dd;
        sum[b] = s;
    }
}

/* sum over groups of bias[g] * (float sum of x over group g) */
static inline float bias_term(const float *brow, const float *xsum, int nblk, int gshift) {
    float acc = 0.f;
    if (gshift == 0) {
        for (int b = 0; b < nblk; b++) acc += brow[b] * xsum[b];
    } else {
        for (int b = 0; b < nblk; b++) acc += brow[b >> gshift] * xsum[b];
    }
    return acc;
}

#if defined(USE_AVX2)
static inline float hsum256(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}
#endif

/* ---- int4 / int8 rows x int16 activations ---- */

static float dot_q4(const uint8_t *q, const float *s, int nblk, int gshift, const int16_t *x, const float *dx) {
#if defined(USE_AVX512)
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(0x0F);
    int b = 0;
    for (; b + 1 < nblk; b += 2) {
        __m256i p = _mm256_loadu_si256((const __m256i *)(q + 16 * b));
        __m256i lo = _mm256_and_si256(p, _mm256_set1_epi8(0x0F));
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), _mm256_set1_epi8(0x0F));
        __m256i w0 = _mm256_permute2x128_si256(lo, hi, 0x20);
        __m256i w1 = _mm256_permute2x128_si256(lo, hi, 0x31);
        __m512i p0 = _mm512_madd_epi16(_mm512_cvtepu8_epi16(w0), _mm512_loadu_si512(x + BLK * b));
        __m512i p1 = _mm512_madd_epi16(_mm512_cvtepu8_epi16(w1), _mm512_loadu_si512(x + BLK * (b + 1)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_set1_ps(s[b >> gshift] * dx[b]), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_set1_ps(s[(b + 1) >> gshift] * dx[b + 1]), acc1);
    }
    for (; b < nblk; b++) {
        __m128i p = _mm_loadu_si128((const __m128i *)(q + 16 * b));
        __m128i lo = _mm_and_si128(p, m4);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(p, 4), m4);
        __m256i w = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
        __m512i pr = _mm512_madd_epi16(_mm512_cvtepu8_epi16(w), _mm512_loadu_si512(x + BLK * b));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pr), _mm512_set1_ps(s[b >> gshift] * dx[b]), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(USE_AVX2)
    __m256 acc = _mm256_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (int b = 0; b < nblk; b++) {
        __m128i p = _mm_loadu_si128((const __m128i *)(q + 16 * b));
        __m128i lo = _mm_and_si128(p, m4);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(p, 4), m4);
        const __m256i *xb = (const __m256i *)(x + BLK * b);
        __m256i pr = _mm256_add_epi32(_mm256_madd_epi16(_mm256_cvtepu8_epi16(lo), _mm256_loadu_si256(xb)),
                                      _mm256_madd_epi16(_mm256_cvtepu8_epi16(hi), _mm256_loadu_si256(xb + 1)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pr), _mm256_set1_ps(s[b >> gshift] * dx[b]), acc);
    }
    return hsum256(acc);
#elif defined(USE_NEON)
    float32x4_t acc = vdupq_n_f32(0.f);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int b = 0; b < nblk; b++) {
        uint8x16_t p = vld1q_u8(q + 16 * b);
        int16x8_t w[4];
        uint8x16_t lo = vandq_u8(p, m4), hi = vshrq_n_u8(p, 4);
        w[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(lo)));
        w[1] = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(lo)));
        w[2] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(hi)));
        w[3] = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(hi)));
        int32x4_t sum = vdupq_n_s32(0);
        for (int i = 0; i < 4; i++) {
            int16x8_t xv = vld1q_s16(x + BLK * b + 8 * i);
            sum = vmlal_s16(sum, vget_low_s16(w[i]), vget_low_s16(xv));
            sum = vmlal_high_s16(sum, w[i], xv);
        }
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(sum), s[b >> gshift] * dx[b]);
    }
    return vaddvq_f32(acc);
#else
    float acc = 0.f;
    for (int b = 0; b < nblk; b++) {
        const uint8_t *qb = q + 16 * b;
        const int16_t *xb = x + BLK * b;
        int32_t sum = 0;
        for (int j = 0; j < 16; j++) sum += (int32_t)(qb[j] & 15) * xb[j] + (int32_t)(qb[j] >> 4) * xb[j + 16];
        acc += (float)sum * (s[b >> gshift] * dx[b]);
    }
    return acc;
#endif
}

static float dot_q8(const uint8_t *q, const float *s, int nblk, int gshift, const int16_t *x, const float *dx) {
#if defined(USE_AVX512)
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int b = 0;
    for (; b + 1 < nblk; b += 2) {
        __m512i p0 = _mm512_madd_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + BLK * b))),
                                       _mm512_loadu_si512(x + BLK * b));
        __m512i p1 = _mm512_madd_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + BLK * (b + 1)))),
                                       _mm512_loadu_si512(x + BLK * (b + 1)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_set1_ps(s[b >> gshift] * dx[b]), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_set1_ps(s[(b + 1) >> gshift] * dx[b + 1]), acc1);
    }
    for (; b < nblk; b++) {
        __m512i pr = _mm512_madd_epi16(_mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + BLK * b))),
                                       _mm512_loadu_si512(x + BLK * b));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pr), _mm512_set1_ps(s[b >> gshift] * dx[b]), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(USE_AVX2)
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nblk; b++) {
        const uint8_t *qb = q + BLK * b;
        const __m256i *xb = (const __m256i *)(x + BLK * b);
        __m256i pr = _mm256_add_epi32(
            _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)qb)), _mm256_loadu_si256(xb)),
            _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(qb + 16))),
                              _mm256_loadu_si256(xb + 1)));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pr), _mm256_set1_ps(s[b >> gshift] * dx[b]), acc);
    }
    return hsum256(acc);
#elif defined(USE_NEON)
    float32x4_t acc = vdupq_n_f32(0.f);
    for (int b = 0; b < nblk; b++) {
        int32x4_t sum = vdupq_n_s32(0);
        for (int i = 0; i < 2; i++) {
            uint8x16_t p = vld1q_u8(q + BLK * b + 16 * i);
            int16x8_t w0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(p)));
            int16x8_t w1 = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(p)));
            int16x8_t x0 = vld1q_s16(x + BLK * b + 16 * i), x1 = vld1q_s16(x + BLK * b + 16 * i + 8);
            sum = vmlal_s16(sum, vget_low_s16(w0), vget_low_s16(x0));
            sum = vmlal_high_s16(sum, w0, x0);
            sum = vmlal_s16(sum, vget_low_s16(w1), vget_low_s16(x1));
            sum = vmlal_high_s16(sum, w1, x1);
        }
        acc = vmlaq_n_f32(acc, vcvtq_f32_s32(sum), s[b >> gshift] * dx[b]);
    }
    return vaddvq_f32(acc);
#else
    float acc = 0.f;
    for (int b = 0; b < nblk; b++) {
        const uint8_t *qb = q + BLK * b;
        const int16_t *xb = x + BLK * b;
        int32_t sum = 0;
        for (int j = 0; j < BLK; j++) sum += (int32_t)qb[j] * xb[j];
        acc += (float)sum * (s[b >> gshift] * dx[b]);
    }
    return acc;
#endif
}

static float dot_f32(const float *w, const float *x, int K) {
#if defined(USE_AVX512)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    }
    float acc = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(USE_AVX2)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
    }
    float acc = hsum256(_mm256_add_ps(a0, a1));
#elif defined(USE_NEON)
    float32x4_t a0 = vdupq_n_f32(0.f), a1 = vdupq_n_f32(0.f);
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        a0 = vfmaq_f32(a0, vld1q_f32(w + k), vld1q_f32(x + k));
        a1 = vfmaq_f32(a1, vld1q_f32(w + k + 4), vld1q_f32(x + k + 4));
    }
    float acc = vaddvq_f32(vaddq_f32(a0, a1));
#else
    float acc = 0.f;
    int k = 0;
#endif
    for (; k < K; k++) acc += w[k] * x[k];
    return acc;
}

/* y[r - r0] = (W x)[r] for rows r0 <= r < r1 */
static void matvec_rows(const Mat *m, const Act *a, int r0, int r1, float *y) {
    const int K = m->K;
    if (m->kind == KIND_F32) {
        const float *w = (const float *)m->w;
        for (int r = r0; r < r1; r++) y[r - r0] = dot_f32(w + (size_t)r * K, a->f, K);
        return;
    }
    const int nblk = K / BLK, ng = nblk >> m->gshift;
    const uint8_t *w = (const uint8_t *)m->w;
    const size_t rb = m->kind == KIND_Q4 ? (size_t)K / 2 : (size_t)K;
    for (int r = r0; r < r1; r++) {
        const float *s = m->s + (size_t)r * ng, *b = m->b + (size_t)r * ng;
        float v = m->kind == KIND_Q4 ? dot_q4(w + r * rb, s, nblk, m->gshift, a->q, a->d)
                                     : dot_q8(w + r * rb, s, nblk, m->gshift, a->q, a->d);
        y[r - r0] = v + bias_term(b, a->sum, nblk, m->gshift);
    }
}

/* ---- the same dot products for several activation vectors (batched decode) ----
 * For each of n vectors, exactly the operations of dot_q4 / dot_q8 in the same order, so
 * each result is bit-identical to the single-vector kernel's; the weight block is loaded
 * and widened once for all n (the weights are read once per step, not once per sequence). */
#define MB 8 /* vectors per pass: 2 MB accumulators + the widened weights fit in 32 registers */

#if defined(USE_AVX512)
/* sd[i * ldsd + b]: vector i's block factor s[b >> gshift] * d_i[b], the very product dot_q4 forms */
static inline __attribute__((always_inline)) void dot_q4_n(const uint8_t *q, const float *sd, int ldsd, int nblk,
                                                          const Act *a, const int n, float *out) {
    __m512 acc0[MB], acc1[MB];
    for (int i = 0; i < n; i++) acc0[i] = acc1[i] = _mm512_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(0x0F);
    int b = 0;
    for (; b + 1 < nblk; b += 2) {
        __m256i p = _mm256_loadu_si256((const __m256i *)(q + 16 * b));
        __m256i lo = _mm256_and_si256(p, _mm256_set1_epi8(0x0F));
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), _mm256_set1_epi8(0x0F));
        __m512i e0 = _mm512_cvtepu8_epi16(_mm256_permute2x128_si256(lo, hi, 0x20));
        __m512i e1 = _mm512_cvtepu8_epi16(_mm256_permute2x128_si256(lo, hi, 0x31));
        for (int i = 0; i < n; i++) {
            __m512i p0 = _mm512_madd_epi16(e0, _mm512_loadu_si512(a[i].q + BLK * b));
            __m512i p1 = _mm512_madd_epi16(e1, _mm512_loadu_si512(a[i].q + BLK * (b + 1)));
            acc0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_set1_ps(sd[i * ldsd + b]), acc0[i]);
            acc1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_set1_ps(sd[i * ldsd + b + 1]), acc1[i]);
        }
    }
    for (; b < nblk; b++) {
        __m128i p = _mm_loadu_si128((const __m128i *)(q + 16 * b));
        __m128i lo = _mm_and_si128(p, m4);
        __m128i hi = _mm_and_si128(_mm_srli_epi16(p, 4), m4);
        __m512i e = _mm512_cvtepu8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
        for (int i = 0; i < n; i++) {
            __m512i pr = _mm512_madd_epi16(e, _mm512_loadu_si512(a[i].q + BLK * b));
            acc0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pr), _mm512_set1_ps(sd[i * ldsd + b]), acc0[i]);
        }
    }
    for (int i = 0; i < n; i++) out[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i]));
}

static inline __attribute__((always_inline)) void dot_q8_n(const uint8_t *q, const float *sd, int ldsd, int nblk,
                                                          const Act *a, const int n, float *out) {
    __m512 acc0[MB], acc1[MB];
    for (int i = 0; i < n; i++) acc0[i] = acc1[i] = _mm512_setzero_ps();
    int b = 0;
    for (; b + 1 < nblk; b += 2) {
        __m512i e0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + BLK * b)));
        __m512i e1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + BLK * (b + 1))));
        for (int i = 0; i < n; i++) {
            __m512i p0 = _mm512_madd_epi16(e0, _mm512_loadu_si512(a[i].q + BLK * b));
            __m512i p1 = _mm512_madd_epi16(e1, _mm512_loadu_si512(a[i].q + BLK * (b + 1)));
            acc0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), _mm512_set1_ps(sd[i * ldsd + b]), acc0[i]);
            acc1[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), _mm512_set1_ps(sd[i * ldsd + b + 1]), acc1[i]);
        }
    }
    for (; b < nblk; b++) {
        __m512i e = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(q + BLK * b)));
        for (int i = 0; i < n; i++) {
            __m512i pr = _mm512_madd_epi16(e, _mm512_loadu_si512(a[i].q + BLK * b));
            acc0[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pr), _mm512_set1_ps(sd[i * ldsd + b]), acc0[i]);
        }
    }
    for (int i = 0; i < n; i++) out[i] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[i], acc1[i]));
}

/* n (1..MB) vectors: a constant n per call site lets the compiler keep the accumulators in registers */
#define DOT_N(fn, q, sd, ldsd, nblk, a, n, out)                   \
    switch (n) {                                                   \
    case 1: fn(q, sd, ldsd, nblk, a, 1, out); break;               \
    case 2: fn(q, sd, ldsd, nblk, a, 2, out); break;               \
    case 3: fn(q, sd, ldsd, nblk, a, 3, out); break;               \
    case 4: fn(q, sd, ldsd, nblk, a, 4, out); break;               \
    case 5: fn(q, sd, ldsd, nblk, a, 5, out); break;               \
    case 6: fn(q, sd, ldsd, nblk, a, 6, out); break;               \
    case 7: fn(q, sd, ldsd, nblk, a, 7, out); break;               \
    default: fn(q, sd, ldsd, nblk, a, MB, out); break;             \
    }
#endif

/* y[i * ldy + r - r0] = (W x_i)[r] for the B vectors a[0..B) and rows r0 <= r < r1: for each
   row, every vector's dot product (the row stays in L1 between them); bit-identical to
   matvec_rows on each vector alone.  sd: room for (MB + 16) * (K / 32 + 1) floats (the block
   factors, then the block sums laid out vector-minor). */
static void matvec_rows_multi(const Mat *m, const Act *a, int B, int r0, int r1, float *y, size_t ldy, float *sd) {
    const int K = m->K;
    if (m->kind == KIND_F32) {
        const float *w = (const float *)m->w;
        for (int r = r0; r < r1; r++)
            for (int i = 0; i < B; i++) y[i * ldy + (r - r0)] = dot_f32(w + (size_t)r * K, a[i].f, K);
        return;
    }
    const int nblk = K / BLK, ng = nblk >> m->gshift;
    const uint8_t *w = (const uint8_t *)m->w;
    const size_t rb = m->kind == KIND_Q4 ? (size_t)K / 2 : (size_t)K;
    float v[MB];
#if defined(USE_AVX512)
    /* bias_term's sums, MB vectors side by side per block, so that one 8-lane multiply and add per
       block runs MB running sums at once, each in bias_term's order (a multiply, then an add) */
    float *sumT = sd + (size_t)MB * (nblk + 1); /* (chunk, block, MB) */
    for (int i0 = 0; i0 < B; i0 += MB)
        for (int k = 0; k < nblk; k++)
            for (int i = 0; i < MB; i++)
                sumT[((size_t)(i0 / MB) * nblk + k) * MB + i] = i0 + i < B ? a[i0 + i].sum[k] : 0.f;
    float bt[4][2 * MB]; /* the bias terms of 4 rows, for up to 16 vectors */
    for (int r = r0; r < r1; r++) {
        const float *s = m->s + (size_t)r * ng, *b = m->b + (size_t)r * ng; /* b: rows r.. for the chains */
        if ((r - r0) % 4 == 0) { /* 4 rows' chains at once: independent adds, no waiting on each one's latency */
            const int nr = r1 - r < 4 ? r1 - r : 4;
            for (int i0 = 0; i0 < B; i0 += MB) {
                const float *st = sumT + (size_t)(i0 / MB) * nblk * MB;
                __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
                for (int k = 0; k < nblk; k++) {
                    const __m256 sk = _mm256_loadu_ps(st + k * MB);
                    for (int j = 0; j < nr; j++)
                        acc[j] = _mm256_add_ps(acc[j], _mm256_mul_ps(_mm256_set1_ps(b[(size_t)j * ng + (k >> m->gshift)]), sk));
                }
                for (int j = 0; j < nr; j++) _mm256_storeu_ps(&bt[j][i0], acc[j]);
            }
        }
        /* the next rows' codes on their way while this row's products run */
        if (r + 2 < r1)
            for (size_t off = 0; off < rb; off += 64) _mm_prefetch((const char *)(w + (r + 2) * rb + off), _MM_HINT_T0);
        for (int i0 = 0; i0 < B; i0 += MB) {
            const int n = B - i0 < MB ? B - i0 : MB;
            for (int i = 0; i < n; i++) {
                const float *dx = a[i0 + i].d;
                float *o = sd + (size_t)i * nblk;
                if (m->gshift == 0)
                    for (int k = 0; k < nblk; k++) o[k] = s[k] * dx[k];
                else
                    for (int k = 0; k < nblk; k++) o[k] = s[k >> m->gshift] * dx[k];
            }
            if (m->kind == KIND_Q4) {
                DOT_N(dot_q4_n, w + r * rb, sd, nblk, nblk, a + i0, n, v)
            } else {
                DOT_N(dot_q8_n, w + r * rb, sd, nblk, nblk, a + i0, n, v)
            }
            for (int i = 0; i < n; i++) y[(i0 + i) * ldy + (r - r0)] = v[i] + bt[(r - r0) % 4][i0 + i];
        }
    }
    return;
#endif
    for (int r = r0; r < r1; r++) {
        const float *s = m->s + (size_t)r * ng, *b = m->b + (size_t)r * ng;
        for (int i0 = 0; i0 < B; i0 += MB) {
            const int n = B - i0 < MB ? B - i0 : MB;
#if defined(USE_AVX512)
            for (int i = 0; i < n; i++) {
                const float *dx = a[i0 + i].d;
                float *o = sd + (size_t)i * nblk;
                if (m->gshift == 0)
                    for (int k = 0; k < nblk; k++) o[k] = s[k] * dx[k];
                else
                    for (int k = 0; k < nblk; k++) o[k] = s[k >> m->gshift] * dx[k];
            }
            if (m->kind == KIND_Q4) {
                DOT_N(dot_q4_n, w + r * rb, sd, nblk, nblk, a + i0, n, v)
            } else {
                DOT_N(dot_q8_n, w + r * rb, sd, nblk, nblk, a + i0, n, v)
            }
#else
            (void)sd;
            for (int i = 0; i < n; i++)
                v[i] = m->kind == KIND_Q4 ? dot_q4(w + r * rb, s, nblk, m->gshift, a[i0 + i].q, a[i0 + i].d)
                                          : dot_q8(w + r * rb, s, nblk, m->gshift, a[i0 + i].q, a[i0 + i].d);
#endif
            for (int i = 0; i < n; i++)
                y[(i0 + i) * ldy + (r - r0)] = v[i] + bias_term(b, a[i0 + i].sum, nblk, m->gshift);
        }
    }
}

/* --------------------------------------------------------------- thread pool */

typedef void (*job_fn)(void *ctx, int tid, int nth);

typedef struct {
    int n; /* threads including the caller */
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int gen, done, stop, sleepers;
    atomic_int bar_count, bar_sense;
    job_fn fn;
    void *ctx;
    int spin;              /* pause iterations a worker spins before sleeping ... */
    atomic_int spin_next;  /* ... after the current job: 0 when the caller goes on to BLAS work */
} Pool;

typedef struct {
    Pool *p;
    int tid;
} WorkerArg;

static void *worker_main(void *arg) {
    WorkerArg *wa = (WorkerArg *)arg;
    Pool *p = wa->p;
    int tid = wa->tid;
    free(wa);
    int seen = 0; /* gen starts at 0; a job posted before this thread runs is still seen as new */
    for (;;) {
        int g = seen, spin = atomic_load_explicit(&p->spin_next, memory_order_relaxed);
        for (int i = 0; i < spin; i++) {
            g = atomic_load_explicit(&p->gen, memory_order_acquire);
            if (g != seen || atomic_load_explicit(&p->stop, memory_order_relaxed)) break;
            cpu_relax();
        }
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->sleepers, 1);
            while ((g = atomic_load(&p->gen)) == seen && !atomic_load(&p->stop)) pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        p->fn(p->ctx, tid, p->n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static Pool *pool_new(int n, int spin) {
    Pool *p = (Pool *)calloc(1, sizeof(Pool));
    if (!p) return NULL;
    p->n = n < 1 ? 1 : n;
    p->spin = spin;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->th = (pthread_t *)calloc((size_t)p->n, sizeof(pthread_t));
    for (int i = 1; i < p->n; i++) {
        WorkerArg *wa = (WorkerArg *)malloc(sizeof(WorkerArg));
        wa->p = p;
        wa->tid = i;
        if (pthread_create(&p->th[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n = i; /* run with the threads we got */
            break;
        }
    }
    return p;
}

static void pool_free(Pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->th);
    free(p);
}

/* Run fn on every thread; `spin`: whether workers should wait spinning for the next
   job (decode steps follow each other) or sleep at once (the caller's BLAS needs the cores). */
static void pool_run(Pool *p, job_fn fn, void *ctx, int spin) {
    if (p->n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->spin_next, spin ? p->spin : 0, memory_order_relaxed);
    atomic_store(&p->done, 0);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    if (atomic_load(&p->sleepers)) pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, 0, p->n);
    while (atomic_load_explicit(&p->done, memory_order_acquire) != p->n - 1) cpu_relax();
}

/* sense-reversing barrier; *sense is the thread's own copy */
static void barrier(Pool *p, int *sense) {
    if (p->n == 1) return;
    int s = !*sense;
    *sense = s;
    if (atomic_fetch_add_explicit(&p->bar_count, 1, memory_order_acq_rel) == p->n - 1) {
        atomic_store_explicit(&p->bar_count, 0, memory_order_relaxed);
        atomic_store_explicit(&p->bar_sense, s, memory_order_release);
    } else {
        while (atomic_load_explicit(&p->bar_sense, memory_order_acquire) != s) cpu_relax();
    }
}

/* rows [r0, r1) of n for thread tid of nth, in multiples of `align` */
static void split(int n, int tid, int nth, int align, int *r0, int *r1) {
    int units = (n + align - 1) / align;
    int a = (int)((long)units * tid / nth), b = (int)((long)units * (tid + 1) / nth);
    *r0 = a * align < n ? a * align : n;
    *r1 = b * align < n ? b * align : n;
}

/* -------------------------------------------------------------------- model */

typedef struct {
    Mat qkv, o, gu, down;
    const float *b_qkv, *b_o, *b_gu, *b_down; /* may be NULL */
    const float *ln1, *ln2;                   /* NULL when folded into the float weights */
    const float *qk_norm;                     /* (nh + nkv, d) or NULL */
    float *kc, *vc;                           /* (nkv, cap, d) */
    int cap;
    /* LoRA beside qkv, o, gu, down: y += B (A x), A (r, K) rows, B (N, r) rows, scale folded in */
    int lr[4];
    const float *la[4], *lb[4];
} Layer;

typedef struct {
    float *xn;  /* H or inter: normalised / activation input (float form) */
    int16_t *q; /* its int16 codes */
    float *d, *sum;
    float *tmp;    /* 2 * chunk of gate/up rows */
    float *lt;     /* LoRA: A x, lt_cap floats */
    int lt_cap;
    float *scores; /* attention scores, cap */
    int scores_cap;
    /* batched decode: per sequence its own xn / codes / block scales and sums; tmp for B rows */
    float *bxn, *bd, *bsum, *btmp, *bsd;
    int16_t *bq;
} Scratch;

typedef struct {
    int nl, H, nh, nkv, d, inter, V;
    float eps;
    Layer *layers;
    Mat head;
    const float *norm;
    const float *embed; /* (V, H) float rows */
    const int32_t *perm; /* rope: the partner index of each of the d dims */
    float *x, *qkv, *att, *act;
    Scratch *scr; /* one per thread */
    int8_t *pq;   /* prefill: int8 codes of the GEMM input, grown as needed */
    float *pd, *psum;
    size_t pq_cap;
    Pool *pool;
    int nth;
    /* per call */
    int token, slot, T;
    const float *cos, *sin;
    float *logits;
    /* batched decode (syn_decode_batch): B rows of x, qkv, att, act, grown to bcap */
    int bcap;
    float *bx, *bqkv, *batt, *bact;
    int B;
    const int32_t *btok, *bslot, *bT, *bcapk; /* (B), (B), (B), (B, nl) */
    const float *bcos, *bsin;                 /* (B, d) */
    float *const *bkv;                        /* (B, nl, 2): each sequence's key and value buffers */
    float *blogits;                           /* (B, V) */
} Model;

void syn_free(Model *m);

Model *syn_new(int nl, int H, int nh, int nkv, int d, int inter, int V, float eps, int threads, int spin) {
    Model *m = (Model *)calloc(1, sizeof(Model));
    if (!m) return NULL;
    m->nl = nl, m->H = H, m->nh = nh, m->nkv = nkv, m->d = d, m->inter = inter, m->V = V, m->eps = eps;
    m->layers = (Layer *)calloc((size_t)nl, sizeof(Layer));
    int nqkv = (nh + 2 * nkv) * d, big = H > inter ? H : inter;
    if (nh * d > big) big = nh * d;
    m->x = (float *)calloc((size_t)H, sizeof(float));
    m->qkv = (float *)calloc((size_t)nqkv, sizeof(float));
    m->att = (float *)calloc((size_t)nh * d, sizeof(float));
    m->act = (float *)calloc((size_t)inter, sizeof(float));
    m->pool = pool_new(threads, spin);
    m->nth = m->pool ? m->pool->n : 0;
    m->scr = (Scratch *)calloc((size_t)(m->nth > 0 ? m->nth : 1), sizeof(Scratch));
    int bad = !m->layers || !m->x || !m->qkv || !m->att || !m->act || !m->pool || !m->scr;
    for (int t = 0; !bad && t < m->nth; t++) {
        Scratch *s = &m->scr[t];
        s->xn = (float *)calloc((size_t)big, sizeof(float));
        s->q = (int16_t *)calloc((size_t)big, sizeof(int16_t));
        s->d = (float *)calloc((size_t)big / BLK + 1, sizeof(float));
        s->sum = (float *)calloc((size_t)big / BLK + 1, sizeof(float));
        s->tmp = (float *)calloc((size_t)2 * big, sizeof(float));
        bad = !s->xn || !s->q || !s->d || !s->sum || !s->tmp;
    }
    if (bad) {
        syn_free(m);
        return NULL;
    }
    return m;
}

int syn_threads(Model *m) { return m->nth; }

void syn_free(Model *m) {
    if (!m) return;
    pool_free(m->pool);
    for (int t = 0; m->scr && t < m->nth; t++) {
        Scratch *s = &m->scr[t];
        free(s->xn), free(s->q), free(s->d), free(s->sum), free(s->tmp), free(s->scores), free(s->lt);
        free(s->bxn), free(s->bq), free(s->bd), free(s->bsum), free(s->btmp), free(s->bsd);
    }
    free(m->bx), free(m->bqkv), free(m->batt), free(m->bact);
    free(m->pq), free(m->pd), free(m->psum);
    free(m->scr), free(m->layers), free(m->x), free(m->qkv), free(m->att), free(m->act);
    free(m);
}

static void set_mat(Mat *m, int kind, int N, int K, int group, const void *w, const float *s, const float *b) {
    int gshift = 0;
    while ((BLK << gshift) < group) gshift++;
    m->kind = kind, m->N = N, m->K = K, m->gshift = gshift, m->w = w, m->s = s, m->b = b;
}

/* mats: kinds/groups for qkv, o, gu, down; w/s/b pointers in the same order */
void syn_set_layer(Model *m, int i, const int *kinds, const int *groups, const void **w, const float **s,
                   const float **b, const float **vec) {
    Layer *L = &m->layers[i];
    int H = m->H, nqkv = (m->nh + 2 * m->nkv) * m->d, nq = m->nh * m->d;
    set_mat(&L->qkv, kinds[0], nqkv, H, groups[0], w[0], s[0], b[0]);
    set_mat(&L->o, kinds[1], H, nq, groups[1], w[1], s[1], b[1]);
    set_mat(&L->gu, kinds[2], 2 * m->inter, H, groups[2], w[2], s[2], b[2]);
    set_mat(&L->down, kinds[3], H, m->inter, groups[3], w[3], s[3], b[3]);
    L->b_qkv = vec[0], L->b_o = vec[1], L->b_gu = vec[2], L->b_down = vec[3];
    L->ln1 = vec[4], L->ln2 = vec[5], L->qk_norm = vec[6];
}

/* lm_head matrix, final norm weight (NULL when folded), float embedding rows (V, H),
   rope partner index per head dim */
void syn_set_head(Model *m, int kind, int group, const void *w, const float *s, const float *b, const float *norm,
                  const float *embed, const int32_t *perm) {
    set_mat(&m->head, kind, m->V, m->H, group, w, s, b);
    m->norm = norm;
    m->embed = embed;
    m->perm = perm;
}

int syn_set_cache(Model *m, int i, float *kc, float *vc, int cap) {
    Layer *L = &m->layers[i];
    L->kc = kc, L->vc = vc, L->cap = cap;
    for (int t = 0; t < m->nth; t++) {
        Scratch *s = &m->scr[t];
        if (s->scores_cap < cap) {
            float *n = (float *)realloc(s->scores, (size_t)cap * sizeof(float));
            if (!n) return -1;
            s->scores = n;
            s->scores_cap = cap;
        }
    }
    return 0;
}

/* LoRA of layer i's matrix `which` (0 qkv, 1 o, 2 gu, 3 down): rank r (0: none), A (r, K) and
   B (N, r) float rows with the scale folded into B; the arrays must outlive the engine's use. */
int syn_set_lora(Model *m, int i, int which, int r, const float *a, const float *b) {
    if (i < 0 || i >= m->nl || which < 0 || which > 3 || r < 0) return -1;
    Layer *L = &m->layers[i];
    L->lr[which] = a && b ? r : 0, L->la[which] = a, L->lb[which] = b;
    for (int t = 0; t < m->nth; t++) {
        Scratch *s = &m->scr[t];
        if (s->lt_cap < r) {
            float *n = (float *)realloc(s->lt, (size_t)r * sizeof(float));
            if (!n) return -2;
            s->lt = n;
            s->lt_cap = r;
        }
    }
    return 0;
}

/* y[r - r0] += (B (A x))[r] for rows r0 <= r < r1 of matrix `which`; every thread forms A x itself
   (r * K flops, small beside its share of the matvec) so no barrier is needed */
static void lora_rows(const Layer *L, int which, int K, const float *x, Scratch *s, int r0, int r1, float *y) {
    const int r = L->lr[which];
    if (!r) return;
    const float *A = L->la[which], *B = L->lb[which];
    for (int k = 0; k < r; k++) s->lt[k] = dot_f32(A + (size_t)k * K, x, K);
    for (int n = r0; n < r1; n++) y[n - r0] += dot_f32(B + (size_t)n * r, s->lt, r);
}

static void rms_to(const float *x, const float *w, int n, float eps, float *out) {
    float ss = 0.f;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float r = 1.f / sqrtf(ss / (float)n + eps);
    if (w)
        for (int i = 0; i < n; i++) out[i] = x[i] * r * w[i];
    else
        for (int i = 0; i < n; i++) out[i] = x[i] * r;
}

/* make `a` (in thread scratch) the activation form of float vector v for matrix kind */
static void prep(Scratch *s, const float *v, int n, int kind, Act *a) {
    if (v != s->xn) memcpy(s->xn, v, (size_t)n * sizeof(float));
    a->f = s->xn;
    if (kind != KIND_F32) quantize_act(s->xn, n, s->q, s->d, s->sum);
    a->q = s->q, a->d = s->d, a->sum = s->sum;
}

static void rope(float *v, const float *cos, const float *sin, const int32_t *perm, int d, float *tmp) {
    for (int i = 0; i < d; i++) tmp[i] = v[i] * cos[i] + v[perm[i]] * sin[i];
    memcpy(v, tmp, (size_t)d * sizeof(float));
}

static void head_norm(float *v, const float *w, int d, float eps) {
    float ss = 0.f;
    for (int i = 0; i < d; i++) ss += v[i] * v[i];
    float r = 1.f / sqrtf(ss / (float)d + eps);
    for (int i = 0; i < d; i++) v[i] = v[i] * r * w[i];
}

/* kv head h of one sequence: its key (rotated) and value stored at `slot` of the layer's cache
   kc/vc (nkv, cap, d), then each of its query heads attends over slots [0, T) into att */
static void attend_head(const Model *m, const Layer *L, float *qkv, float *att, float *kc0, float *vc0, int cap,
                        int slot, int T, const float *cos, const float *sin, int h, Scratch *s) {
    const int d = m->d, nh = m->nh, nkv = m->nkv, g = nh / nkv;
    float rtmp[512];
    float *k = qkv + (size_t)(nh + h) * d, *v = qkv + (size_t)(nh + nkv + h) * d;
    if (L->qk_norm) head_norm(k, L->qk_norm + (size_t)(nh + h) * d, d, m->eps);
    rope(k, cos, sin, m->perm, d, rtmp);
    float *kc = kc0 + (size_t)h * cap * d, *vc = vc0 + (size_t)h * cap * d;
    memcpy(kc + (size_t)slot * d, k, (size_t)d * sizeof(float));
    memcpy(vc + (size_t)slot * d, v, (size_t)d * sizeof(float));
    for (int j = 0; j < g; j++) {
        int qh = h * g + j;
        float *q = qkv + (size_t)qh * d;
        if (L->qk_norm) head_norm(q, L->qk_norm + (size_t)qh * d, d, m->eps);
        rope(q, cos, sin, m->perm, d, rtmp);
        float *sc = s->scores, mx = -INFINITY;
        for (int t = 0; t < T; t++) {
            float v2 = dot_f32(kc + (size_t)t * d, q, d);
            sc[t] = v2;
            mx = v2 > mx ? v2 : mx;
        }
        float den = 0.f;
#pragma omp simd reduction(+ : den)
        for (int t = 0; t < T; t++) {
            sc[t] = exp_neg(sc[t] - mx);
            den += sc[t];
        }
        float *o = att + (size_t)qh * d;
        for (int i = 0; i < d; i++) o[i] = 0.f;
        for (int t = 0; t < T; t++) {
            const float *vr = vc + (size_t)t * d;
            float p = sc[t];
            for (int i = 0; i < d; i++) o[i] += p * vr[i];
        }
        float inv = 1.f / den;
        for (int i = 0; i < d; i++) o[i] *= inv;
    }
}

static void attend(Model *m, Layer *L, int tid, int nth, Scratch *s) {
    int h0, h1;
    split(m->nkv, tid, nth, 1, &h0, &h1);
    for (int h = h0; h < h1; h++)
        attend_head(m, L, m->qkv, m->att, L->kc, L->vc, L->cap, m->slot, m->T, m->cos, m->sin, h, s);
}

/* g * sigmoid(g) with one exp of -|g| (never overflows) */
static inline float silu(float g) {
    float e = exp_neg(g < 0.f ? g : -g);
    return g * (g < 0.f ? e : 1.f) / (1.f + e);
}

static void decode_body(void *ctx, int tid, int nth) {
    Model *m = (Model *)ctx;
    Pool *p = m->pool;
    Scratch *s = &m->scr[tid];
    int sense = atomic_load(&p->bar_sense);
    const int H = m->H, I = m->inter, d = m->d;
    Act a;
    int r0, r1;

    if (tid == 0) memcpy(m->x, m->embed + (size_t)m->token * H, (size_t)H * sizeof(float));
    barrier(p, &sense);

    for (int l = 0; l < m->nl; l++) {
        Layer *L = &m->layers[l];
        /* qkv */
        rms_to(m->x, L->ln1, H, m->eps, s->xn);
        prep(s, s->xn, H, L->qkv.kind, &a);
        split(L->qkv.N, tid, nth, 16, &r0, &r1);
        matvec_rows(&L->qkv, &a, r0, r1, m->qkv + r0);
        lora_rows(L, 0, H, a.f, s, r0, r1, m->qkv + r0);
        if (L->b_qkv)
            for (int r = r0; r < r1; r++) m->qkv[r] += L->b_qkv[r];
        barrier(p, &sense);
        attend(m, L, tid, nth, s);
        barrier(p, &sense);
        /* o + residual */
        prep(s, m->att, m->nh * d, L->o.kind, &a);
        split(H, tid, nth, 16, &r0, &r1);
        matvec_rows(&L->o, &a, r0, r1, s->tmp);
        lora_rows(L, 1, m->nh * d, a.f, s, r0, r1, s->tmp);
        for (int r = r0; r < r1; r++) m->x[r] += s->tmp[r - r0] + (L->b_o ? L->b_o[r] : 0.f);
        barrier(p, &sense);
        /* gate|up -> silu(gate) * up */
        rms_to(m->x, L->ln2, H, m->eps, s->xn);
        prep(s, s->xn, H, L->gu.kind, &a);
        split(I, tid, nth, BLK, &r0, &r1);
        matvec_rows(&L->gu, &a, r0, r1, s->tmp);
        matvec_rows(&L->gu, &a, I + r0, I + r1, s->tmp + (r1 - r0));
        lora_rows(L, 2, H, a.f, s, r0, r1, s->tmp);
        lora_rows(L, 2, H, a.f, s, I + r0, I + r1, s->tmp + (r1 - r0));
        for (int r = r0; r < r1; r++) {
            float gt = s->tmp[r - r0], up = s->tmp[r1 - r0 + r - r0];
            if (L->b_gu) gt += L->b_gu[r], up += L->b_gu[I + r];
            m->act[r] = silu(gt) * up;
        }
        barrier(p, &sense);
        /* down + residual */
        prep(s, m->act, I, L->down.kind, &a);
        split(H, tid, nth, 16, &r0, &r1);
        matvec_rows(&L->down, &a, r0, r1, s->tmp);
        lora_rows(L, 3, I, a.f, s, r0, r1, s->tmp);
        for (int r = r0; r < r1; r++) m->x[r] += s->tmp[r - r0] + (L->b_down ? L->b_down[r] : 0.f);
        barrier(p, &sense);
    }
    if (!m->logits) return;
    rms_to(m->x, m->norm, H, m->eps, s->xn);
    prep(s, s->xn, H, m->head.kind, &a);
    split(m->V, tid, nth, 64, &r0, &r1);
    matvec_rows(&m->head, &a, r0, r1, m->logits + r0);
}

/* One token through the model: writes its keys/values at `slot` of every
   layer's cache, attends over slots [0, T), fills logits (V) unless NULL. */
int syn_decode(Model *m, int token, int slot, int T, const float *cos, const float *sin, float *logits) {
    if (token < 0 || token >= m->V || slot < 0 || T < 1) return -1;
    for (int l = 0; l < m->nl; l++)
        if (!m->layers[l].kc || slot >= m->layers[l].cap || T > m->layers[l].cap) return -2;
    m->token = token, m->slot = slot, m->T = T, m->cos = cos, m->sin = sin, m->logits = logits;
    pool_run(m->pool, decode_body, m, 1);
    return 0;
}

/* ------------------------------------------------------------ batched decode
 * One step of B sequences, each its own token, position and KV cache: every matrix
 * is read once for all of them (matvec_rows_multi), attention runs per sequence over
 * its own cache (units of (sequence, kv head) split between threads).  Each
 * sequence's arithmetic is exactly decode_body's, so its logits are bit-identical to
 * syn_decode's for that sequence alone. */

static int bigdim(const Model *m) {
    int big = m->H > m->inter ? m->H : m->inter;
    return m->nh * m->d > big ? m->nh * m->d : big;
}

/* grow the batch buffers to B sequences; 0 or -3 */
static int batch_reserve(Model *m, int B) {
    if (B <= m->bcap) return 0;
    const int H = m->H, big = bigdim(m), nqkv = (m->nh + 2 * m->nkv) * m->d, nb = big / BLK + 1;
    free(m->bx), free(m->bqkv), free(m->batt), free(m->bact);
    m->bx = (float *)calloc((size_t)B * H, sizeof(float));
    m->bqkv = (float *)calloc((size_t)B * nqkv, sizeof(float));
    m->batt = (float *)calloc((size_t)B * m->nh * m->d, sizeof(float));
    m->bact = (float *)calloc((size_t)B * m->inter, sizeof(float));
    int bad = !m->bx || !m->bqkv || !m->batt || !m->bact;
    for (int t = 0; t < m->nth; t++) {
        Scratch *s = &m->scr[t];
        free(s->bxn), free(s->bq), free(s->bd), free(s->bsum), free(s->btmp), free(s->bsd);
        s->bsd = (float *)calloc((size_t)(MB + 16) * (nb + 1), sizeof(float)); /* sd, then 16 vectors' sums */
        s->bxn = (float *)calloc((size_t)B * big, sizeof(float));
        s->bq = (int16_t *)calloc((size_t)B * big, sizeof(int16_t));
        s->bd = (float *)calloc((size_t)B * nb, sizeof(float));
        s->bsum = (float *)calloc((size_t)B * nb, sizeof(float));
        s->btmp = (float *)calloc((size_t)B * 2 * big, sizeof(float));
        bad |= !s->bxn || !s->bq || !s->bd || !s->bsum || !s->btmp || !s->bsd;
    }
    m->bcap = bad ? 0 : B;
    return bad ? -3 : 0;
}

/* sequence i's activation form of v (n floats) in thread scratch, as prep does */
static void prep_b(const Model *m, Scratch *s, int i, const float *v, int n, int kind, Act *a) {
    const int big = bigdim(m), nb = big / BLK + 1;
    float *xn = s->bxn + (size_t)i * big;
    if (v != xn) memcpy(xn, v, (size_t)n * sizeof(float));
    a->f = xn;
    a->q = s->bq + (size_t)i * big, a->d = s->bd + (size_t)i * nb, a->sum = s->bsum + (size_t)i * nb;
    if (kind != KIND_F32) quantize_act(xn, n, a->q, a->d, a->sum);
}

static void decode_batch_body(void *ctx, int tid, int nth) {
    Model *m = (Model *)ctx;
    Pool *p = m->pool;
    Scratch *s = &m->scr[tid];
    int sense = atomic_load(&p->bar_sense);
    const int H = m->H, I = m->inter, d = m->d, B = m->B, nl = m->nl, big = bigdim(m);
    const int nqkv = (m->nh + 2 * m->nkv) * d, natt = m->nh * d;
    Act a[16];
    int r0, r1;

    if (tid == 0)
        for (int i = 0; i < B; i++) memcpy(m->bx + (size_t)i * H, m->embed + (size_t)m->btok[i] * H, (size_t)H * sizeof(float));
    barrier(p, &sense);

    for (int l = 0; l < nl; l++) {
        Layer *L = &m->layers[l];
        /* qkv */
        split(L->qkv.N, tid, nth, 16, &r0, &r1);
        for (int i = 0; i < B; i++) {
            float *xn = s->bxn + (size_t)i * big;
            rms_to(m->bx + (size_t)i * H, L->ln1, H, m->eps, xn);
            prep_b(m, s, i, xn, H, L->qkv.kind, &a[i]);
        }
        matvec_rows_multi(&L->qkv, a, B, r0, r1, m->bqkv + r0, (size_t)nqkv, s->bsd);
        for (int i = 0; i < B; i++) {
            float *y = m->bqkv + (size_t)i * nqkv;
            lora_rows(L, 0, H, a[i].f, s, r0, r1, y + r0);
            if (L->b_qkv)
                for (int r = r0; r < r1; r++) y[r] += L->b_qkv[r];
        }
        barrier(p, &sense);
        /* attention: (sequence, kv head) units */
        split(B * m->nkv, tid, nth, 1, &r0, &r1);
        for (int u = r0; u < r1; u++) {
            const int i = u / m->nkv, h = u % m->nkv;
            float *const *kv = m->bkv + ((size_t)i * nl + l) * 2;
            attend_head(m, L, m->bqkv + (size_t)i * nqkv, m->batt + (size_t)i * natt, kv[0], kv[1],
                        m->bcapk[(size_t)i * nl + l], m->bslot[i], m->bT[i], m->bcos + (size_t)i * d,
                        m->bsin + (size_t)i * d, h, s);
        }
        barrier(p, &sense);
        /* o + residual */
        split(H, tid, nth, 16, &r0, &r1);
        for (int i = 0; i < B; i++) prep_b(m, s, i, m->batt + (size_t)i * natt, natt, L->o.kind, &a[i]);
        matvec_rows_multi(&L->o, a, B, r0, r1, s->btmp, (size_t)2 * big, s->bsd);
        for (int i = 0; i < B; i++) {
            float *t = s->btmp + (size_t)i * 2 * big, *x = m->bx + (size_t)i * H;
            lora_rows(L, 1, natt, a[i].f, s, r0, r1, t);
            for (int r = r0; r < r1; r++) x[r] += t[r - r0] + (L->b_o ? L->b_o[r] : 0.f);
        }
        barrier(p, &sense);
        /* gate|up -> silu(gate) * up */
        split(I, tid, nth, BLK, &r0, &r1);
        for (int i = 0; i < B; i++) {
            float *xn = s->bxn + (size_t)i * big;
            rms_to(m->bx + (size_t)i * H, L->ln2, H, m->eps, xn);
            prep_b(m, s, i, xn, H, L->gu.kind, &a[i]);
        }
        matvec_rows_multi(&L->gu, a, B, r0, r1, s->btmp, (size_t)2 * big, s->bsd);
        matvec_rows_multi(&L->gu, a, B, I + r0, I + r1, s->btmp + (r1 - r0), (size_t)2 * big, s->bsd);
        for (int i = 0; i < B; i++) {
            float *t = s->btmp + (size_t)i * 2 * big, *act = m->bact + (size_t)i * I;
            lora_rows(L, 2, H, a[i].f, s, r0, r1, t);
            lora_rows(L, 2, H, a[i].f, s, I + r0, I + r1, t + (r1 - r0));
            for (int r = r0; r < r1; r++) {
                float gt = t[r - r0], up = t[r1 - r0 + r - r0];
                if (L->b_gu) gt += L->b_gu[r], up += L->b_gu[I + r];
                act[r] = silu(gt) * up;
            }
        }
        barrier(p, &sense);
        /* down + residual */
        split(H, tid, nth, 16, &r0, &r1);
        for (int i = 0; i < B; i++) prep_b(m, s, i, m->bact + (size_t)i * I, I, L->down.kind, &a[i]);
        matvec_rows_multi(&L->down, a, B, r0, r1, s->btmp, (size_t)2 * big, s->bsd);
        for (int i = 0; i < B; i++) {
            float *t = s->btmp + (size_t)i * 2 * big, *x = m->bx + (size_t)i * H;
            lora_rows(L, 3, I, a[i].f, s, r0, r1, t);
            for (int r = r0; r < r1; r++) x[r] += t[r - r0] + (L->b_down ? L->b_down[r] : 0.f);
        }
        barrier(p, &sense);
    }
    for (int i = 0; i < B; i++) {
        float *xn = s->bxn + (size_t)i * big;
        rms_to(m->bx + (size_t)i * H, m->norm, H, m->eps, xn);
        prep_b(m, s, i, xn, H, m->head.kind, &a[i]);
    }
    split(m->V, tid, nth, 64, &r0, &r1);
    matvec_rows_multi(&m->head, a, B, r0, r1, m->blogits + r0, (size_t)m->V, s->bsd);
}

/* One decode step of B (1..16) sequences: sequence i runs tokens[i], writes its keys/values
   at slots[i] of its own caches kv[i][layer] = (keys, values), each (nkv, caps[i][layer], d),
   attends over slots [0, Ts[i]) with rope tables cos/sin row i (d each), and its logits land
   in row i of logits (B, V).  Returns 0; -1 bad arguments, -2 a bad cache, -3 out of memory. */
int syn_decode_batch(Model *m, int B, const int32_t *tokens, const int32_t *slots, const int32_t *Ts,
                     const float *cos, const float *sin, float *const *kv, const int32_t *caps, float *logits) {
    if (B < 1 || B > 16 || !tokens || !slots || !Ts || !cos || !sin || !kv || !caps || !logits) return -1;
    int maxcap = 0;
    for (int i = 0; i < B; i++) {
        if (tokens[i] < 0 || tokens[i] >= m->V || slots[i] < 0 || Ts[i] < 1) return -1;
        for (int l = 0; l < m->nl; l++) {
            const int cap = caps[(size_t)i * m->nl + l];
            if (!kv[((size_t)i * m->nl + l) * 2] || !kv[((size_t)i * m->nl + l) * 2 + 1] || slots[i] >= cap ||
                Ts[i] > cap)
                return -2;
            maxcap = cap > maxcap ? cap : maxcap;
        }
    }
    if (batch_reserve(m, B)) return -3;
    for (int t = 0; t < m->nth; t++) {
        Scratch *s = &m->scr[t];
        if (s->scores_cap < maxcap) {
            float *n = (float *)realloc(s->scores, (size_t)maxcap * sizeof(float));
            if (!n) return -3;
            s->scores = n;
            s->scores_cap = maxcap;
        }
    }
    m->B = B, m->btok = tokens, m->bslot = slots, m->bT = Ts, m->bcos = cos, m->bsin = sin, m->bkv = kv;
    m->bcapk = caps, m->blogits = logits;
    pool_run(m->pool, decode_batch_body, m, 1);
    return 0;
}

/* ------------------------------------------------ kernels exposed for tests */

typedef struct {
    const Mat *m;
    Act a;
    float *y;
} MvJob;

static void mv_body(void *ctx, int tid, int nth) {
    MvJob *j = (MvJob *)ctx;
    int r0, r1;
    split(j->m->N, tid, nth, 16, &r0, &r1);
    matvec_rows(j->m, &j->a, r0, r1, j->y + r0);
}

/* y = W x for one matrix, on the model's threads (m may be any engine) */
int syn_matvec(Model *m, int kind, int N, int K, int group, const void *w, const float *s, const float *b,
               const float *x, float *y) {
    if (K % BLK && kind != KIND_F32) return -1;
    Mat mat;
    set_mat(&mat, kind, N, K, group, w, s, b);
    int nb = K / BLK + 1;
    int16_t *q = (int16_t *)malloc((size_t)K * sizeof(int16_t) + 1);
    float *d = (float *)malloc((size_t)nb * sizeof(float)), *sum = (float *)malloc((size_t)nb * sizeof(float));
    if (!q || !d || !sum) {
        free(q), free(d), free(sum);
        return -3;
    }
    MvJob j = {&mat, {x, q, d, sum}, y};
    if (kind != KIND_F32) quantize_act(x, K, q, d, sum);
    pool_run(m->pool, mv_body, &j, 1);
    free(q), free(d), free(sum);
    return 0;
}

/* The int16 activation codes the kernels use (for tests). */
void syn_quantize_act(const float *x, int K, int16_t *q, float *d, float *sum) { quantize_act(x, K, q, d, sum); }

/* ------------------------------------------------ memory read bandwidth probe */

typedef struct {
    const uint32_t *buf;
    size_t n;
    uint64_t part[256];
} ReadJob;

static void read_body(void *ctx, int tid, int nth) {
    ReadJob *j = (ReadJob *)ctx;
    size_t a = j->n * (size_t)tid / (size_t)nth, b = j->n * (size_t)(tid + 1) / (size_t)nth;
    uint64_t s = 0;
    for (size_t i = a; i < b; i++) s += j->buf[i];
    j->part[tid & 255] = s;
}

/* Read n words on the engine's threads (each its share); returns their sum so
   the reads cannot be optimised away.  Timed by the caller. */
uint64_t syn_read_words(Model *m, const uint32_t *buf, size_t n) {
    ReadJob j;
    memset(&j, 0, sizeof(j));
    j.buf = buf, j.n = n;
    pool_run(m->pool, read_body, &j, 0);
    uint64_t s = 0;
    for (int t = 0; t < 256; t++) s += j.part[t];
    return s;
}

/* ------------------------------------------------ prefill helpers (NumPy path) */

typedef struct {
    float *s;
    int rows, T, n, base;
    const float *gu;
    float *out;
    int inter;
} RowJob;

static void softmax_body(void *ctx, int tid, int nth) {
    RowJob *j = (RowJob *)ctx;
    int r0, r1;
    split(j->rows, tid, nth, 1, &r0, &r1);
    const int T = j->T, n = j->n, base = j->base;
    for (int r = r0; r < r1; r++) {
        float *restrict row = j->s + (size_t)r * T;
        int lim = base + r % n + 1;
        if (lim > T) lim = T;
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int t = 0; t < lim; t++) mx = row[t] > mx ? row[t] : mx;
        float den = 0.f;
#pragma omp simd reduction(+ : den)
        for (int t = 0; t < lim; t++) {
            row[t] = exp_neg(row[t] - mx);
            den += row[t];
        }
        float inv = 1.f / den;
#pragma omp simd
        for (int t = 0; t < lim; t++) row[t] *= inv;
        for (int t = lim; t < T; t++) row[t] = 0.f;
    }
}

/* In place, for scores s (rows, T) whose row r is query (r mod n) at absolute position
   base + (r mod n), keys being positions 0..T-1: causal softmax (zero past the query). */
void syn_softmax_causal(Model *m, float *s, int rows, int T, int n, int base) {
    RowJob j = {s, rows, T, n, base, NULL, NULL, 0};
    (void)m; /* on the caller's thread: BLAS's own threads hold the other cores between products */
    softmax_body(&j, 0, 1);
}

static void silu_mul_row(const float *restrict g, const float *restrict u, float *restrict o, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) {
        float gi = g[i], e = exp_neg(gi < 0.f ? gi : -gi);
        o[i] = gi * (gi < 0.f ? e : 1.f) / (1.f + e) * u[i];
    }
}

static void silu_body(void *ctx, int tid, int nth) {
    RowJob *j = (RowJob *)ctx;
    int r0, r1;
    split(j->rows, tid, nth, 1, &r0, &r1);
    const int I = j->inter;
    for (int r = r0; r < r1; r++) {
        const float *g = j->gu + (size_t)r * 2 * I;
        silu_mul_row(g, g + I, j->out + (size_t)r * I, I);
    }
}

/* out (rows, inter) = silu(gate) * up for gu = [gate | up] (rows, 2 inter) */
void syn_silu_mul(Model *m, const float *gu, int rows, int inter, float *out) {
    RowJob j = {NULL, rows, 0, 1, 0, gu, out, inter};
    (void)m;
    silu_body(&j, 0, 1);
}

/* RoPE in place on x (L tokens, `heads` heads of d, token rows `stride` floats apart),
   with cos/sin (L, d) rows of the tokens' positions and the model's partner index. */
void syn_rope(Model *m, float *x, int L, int heads, int stride, const float *cos, const float *sin) {
    const int d = m->d;
    const int32_t *perm = m->perm;
    float tmp[512];
    for (int i = 0; i < L; i++) {
        const float *c = cos + (size_t)i * d, *s = sin + (size_t)i * d;
        for (int h = 0; h < heads; h++) {
            float *v = x + (size_t)i * stride + (size_t)h * d;
            for (int k = 0; k < d; k++) tmp[k] = v[k] * c[k] + v[perm[k]] * s[k];
            memcpy(v, tmp, (size_t)d * sizeof(float));
        }
    }
}

/* --------------------------------------------------- prefill: GEMM on packed codes
 *
 * Y (T, N) [+]= X (T, K) W^T for a quantized W, X optionally RMS-normalised per
 * row and multiplied by a norm weight first.  X is quantized per block of 32 to
 * 16-bit integers q (|q| <= 127 * 257, scale max|x| / 32639) held as two int8
 * planes, q = 256 hi + lo (|hi| <= 127, -128 <= lo <= 127), so a block's products are
 * exact integer sums made of u8 x s8 products (vpdpbusd): 8-bit activations
 * alone moved the model's greedy output off the float one within a few tokens.
 *
 * Weights are repacked once into tiles of 16 rows: for each (row tile, block
 * of 32 inputs), in order, the codes then 16 float scales and 16 float biases
 * (one per row; a group wider than 32 repeats its scale in each block):
 *   4-bit: 4 chunks of 64 bytes; in chunk c, byte 4r + j holds code
 *          (r, 4c + j) in its low nibble and (r, 16 + 4c + j) in its high one;
 *   8-bit: 8 chunks of 64 bytes; in chunk c, byte 4r + j is code (r, 4c + j).
 * So one 64-byte load feeds 16 rows x 4 inputs of a vpdpbusd against 4 bytes
 * of one token's plane broadcast, and a register tile of TT tokens x 16 rows
 * reuses each load 2 TT times.  Rows past N are zero codes and scales.
 */
#define TROWS 16
#ifndef TT
#define TT 6
#endif
#define QMAX 32639.f /* 127 * 257: hi = (q + 128) >> 8 stays within [-127, 127] */

int syn_tile_bytes(int kind) { return kind == KIND_Q4 ? 256 + 128 : kind == KIND_Q8 ? 512 + 128 : 0; }

/* From the decode format (q4 16-byte blocks / q8 bytes, scales [N, K / group]) to tiles. */
int syn_pack_tiles(int kind, int N, int K, int group, const uint8_t *w, const float *s, const float *b,
                   uint8_t *out) {
    const int tb = syn_tile_bytes(kind), KB = K / BLK;
    if (!tb || K % BLK || N < 1) return -1;
    int gshift = 0;
    while ((BLK << gshift) < group) gshift++;
    const int ng = K / group, nt = (N + TROWS - 1) / TROWS;
    memset(out, 0, (size_t)nt * KB * tb);
    for (int n = 0; n < N; n++) {
        const int r = n % TROWS;
        for (int kb = 0; kb < KB; kb++) {
            uint8_t *t = out + ((size_t)(n / TROWS) * KB + kb) * tb;
            uint8_t code[BLK];
            if (kind == KIND_Q4) {
                const uint8_t *src = w + (size_t)n * (K / 2) + (size_t)kb * 16;
                for (int j = 0; j < 16; j++) code[j] = src[j] & 15, code[j + 16] = src[j] >> 4;
                for (int c = 0; c < 4; c++)
                    for (int j = 0; j < 4; j++)
                        t[64 * c + 4 * r + j] = (uint8_t)(code[4 * c + j] | code[16 + 4 * c + j] << 4);
            } else {
                memcpy(code, w + (size_t)n * K + (size_t)kb * BLK, BLK);
                for (int c = 0; c < 8; c++)
                    for (int j = 0; j < 4; j++) t[64 * c + 4 * r + j] = code[4 * c + j];
            }
            float *ts = (float *)(t + tb - 128);
            ts[r] = s[(size_t)n * ng + (kb >> gshift)];
            ts[TROWS + r] = b[(size_t)n * ng + (kb >> gshift)];
        }
    }
    return 0;
}

/* One token row to 16-bit codes per block, as two planes (hi: q[0..K), lo: q[K..2K)):
   v = x (* rms factor) (* norm); d = max|v| / QMAX; c = rint(v / d), hi = (c + 128) >> 8 (floor),
   lo = c - 256 hi; sum = float sum of v (the bias term). */
static void quantize_row16(const float *x, int K, int rms, float eps, const float *norm, int8_t *q, float *d,
                           float *sum) {
    float r = 1.f;
    if (rms) {
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < K; i++) ss += x[i] * x[i];
        r = 1.f / sqrtf(ss / (float)K + eps);
    }
    for (int kb = 0; kb < K / BLK; kb++) {
        const float *xb = x + kb * BLK;
#if defined(USE_AVX512)
        const __m512 rv = _mm512_set1_ps(r);
        __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(xb), rv), v1 = _mm512_mul_ps(_mm512_loadu_ps(xb + 16), rv);
        if (norm) {
            v0 = _mm512_mul_ps(v0, _mm512_loadu_ps(norm + kb * BLK));
            v1 = _mm512_mul_ps(v1, _mm512_loadu_ps(norm + kb * BLK + 16));
        }
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        float sm = 0.f, vv[BLK];
        _mm512_storeu_ps(vv, v0), _mm512_storeu_ps(vv + 16, v1);
        for (int j = 0; j < BLK; j++) sm += vv[j]; /* in order, as the plain C below */
        const float pre = amax < 1e-30f ? 0x1p100f : 1.f; /* as quantize_act: keeps QMAX / amax finite */
        const __m512 inv = _mm512_set1_ps(amax > 0.f ? QMAX / (amax * pre) : 0.f), pv = _mm512_set1_ps(pre);
        const __m512i c128 = _mm512_set1_epi32(128);
        for (int h = 0; h < 2; h++) {
            __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_mul_ps(h ? v1 : v0, pv), inv));
            __m512i hi = _mm512_srai_epi32(_mm512_add_epi32(c, c128), 8);
            __m512i lo = _mm512_sub_epi32(c, _mm512_slli_epi32(hi, 8));
            _mm_storeu_si128((__m128i *)(void *)(q + kb * BLK + 16 * h), _mm512_cvtepi32_epi8(hi));
            _mm_storeu_si128((__m128i *)(void *)(q + K + kb * BLK + 16 * h), _mm512_cvtepi32_epi8(lo));
        }
#else
        float v[BLK], amax = 0.f, sm = 0.f;
        for (int j = 0; j < BLK; j++) {
            float t = xb[j] * r;
            if (norm) t *= norm[kb * BLK + j];
            v[j] = t;
            float a = fabsf(t);
            amax = a > amax ? a : amax;
            sm += t;
        }
        const float pre = amax < 1e-30f ? 0x1p100f : 1.f;
        const float inv = amax > 0.f ? QMAX / (amax * pre) : 0.f;
        for (int j = 0; j < BLK; j++) {
            int c = (int)lrintf(v[j] * pre * inv), hi = (c + 128) >> 8;
            q[kb * BLK + j] = (int8_t)hi;
            q[K + kb * BLK + j] = (int8_t)(c - 256 * hi);
        }
#endif
        d[kb] = amax / QMAX;
        sum[kb] = sm;
    }
}

/* out[t][r] = sum over blocks of s[r] d[t] (codes . q) + b[r] sum[t], for TT tokens x 16 rows.
   q: TT rows of 2K int8 (hi plane, lo plane); d, sum: TT rows of KB floats. */
static void tile_gemm(int kind, const uint8_t *w, int KB, const int8_t *q, int K, const float *d,
                      const float *sum, float *out) {
    const int tb = syn_tile_bytes(kind);
    const size_t ld = 2 * (size_t)K;
#if defined(USE_AVX512) && defined(__AVX512VNNI__)
    __m512 f[TT];
    for (int t = 0; t < TT; t++) f[t] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    for (int kb = 0; kb < KB; kb++, w += tb) {
        __m512i ah[TT], al[TT];
        for (int t = 0; t < TT; t++) ah[t] = al[t] = _mm512_setzero_si512();
        const int8_t *qb = q + kb * BLK;
#define BCST(p) _mm512_set1_epi32(*(const int32_t *)(const void *)(p))
        if (kind == KIND_Q4) {
            for (int c = 0; c < 4; c++) {
                __m512i v = _mm512_loadu_si512((const void *)(w + 64 * c));
                __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                for (int t = 0; t < TT; t++) {
                    const int8_t *p = qb + t * ld + 4 * c;
                    ah[t] = _mm512_dpbusd_epi32(ah[t], lo, BCST(p));
                    al[t] = _mm512_dpbusd_epi32(al[t], lo, BCST(p + K));
                    ah[t] = _mm512_dpbusd_epi32(ah[t], hi, BCST(p + 16));
                    al[t] = _mm512_dpbusd_epi32(al[t], hi, BCST(p + K + 16));
                }
            }
        } else {
            for (int c = 0; c < 8; c++) {
                __m512i v = _mm512_loadu_si512((const void *)(w + 64 * c));
                for (int t = 0; t < TT; t++) {
                    const int8_t *p = qb + t * ld + 4 * c;
                    ah[t] = _mm512_dpbusd_epi32(ah[t], v, BCST(p));
                    al[t] = _mm512_dpbusd_epi32(al[t], v, BCST(p + K));
                }
            }
        }
#undef BCST
        const __m512 s = _mm512_loadu_ps((const float *)(w + tb - 128));
        const __m512 b = _mm512_loadu_ps((const float *)(w + tb - 64));
        for (int t = 0; t < TT; t++) {
            __m512i a = _mm512_add_epi32(_mm512_slli_epi32(ah[t], 8), al[t]);
            f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(s, _mm512_set1_ps(d[t * KB + kb])), f[t]);
            f[t] = _mm512_fmadd_ps(b, _mm512_set1_ps(sum[t * KB + kb]), f[t]);
        }
    }
    for (int t = 0; t < TT; t++) _mm512_storeu_ps(out + t * TROWS, f[t]);
#else
    for (int i = 0; i < TT * TROWS; i++) out[i] = 0.f;
    for (int kb = 0; kb < KB; kb++, w += tb) {
        const float *s = (const float *)(w + tb - 128), *b = (const float *)(w + tb - 64);
        for (int t = 0; t < TT; t++) {
            const int8_t *qh = q + t * ld + kb * BLK, *ql = qh + K;
            int32_t acc[TROWS] = {0};
            if (kind == KIND_Q4) {
                for (int c = 0; c < 4; c++)
                    for (int r = 0; r < TROWS; r++)
                        for (int j = 0; j < 4; j++) {
                            const uint8_t v = w[64 * c + 4 * r + j];
                            const int k0 = 4 * c + j, k1 = 16 + 4 * c + j;
                            acc[r] += (int32_t)(v & 15) * (256 * qh[k0] + ql[k0]) + (int32_t)(v >> 4) * (256 * qh[k1] + ql[k1]);
                        }
            } else {
                for (int c = 0; c < 8; c++)
                    for (int r = 0; r < TROWS; r++)
                        for (int j = 0; j < 4; j++) {
                            const int k = 4 * c + j;
                            acc[r] += (int32_t)w[64 * c + 4 * r + j] * (256 * qh[k] + ql[k]);
                        }
            }
            const float dt = d[t * KB + kb], st = sum[t * KB + kb];
            for (int r = 0; r < TROWS; r++) out[t * TROWS + r] += (float)acc[r] * (s[r] * dt) + b[r] * st;
        }
    }
#endif
}

typedef struct {
    Pool *pool;
    int kind, N, K, T, Tp, rms, acc, ldx, ldy;
    const uint8_t *w;
    const float *x, *norm, *bias;
    float eps;
    float *y;
    int8_t *q;
    float *d, *sum;
} GemmJob;

static void gemm_body(void *ctx, int tid, int nth) {
    GemmJob *j = (GemmJob *)ctx;
    int sense = atomic_load(&j->pool->bar_sense);
    const int K = j->K, KB = K / BLK, tb = syn_tile_bytes(j->kind), N = j->N;
    int r0, r1;
    split(j->T, tid, nth, 1, &r0, &r1);
    for (int t = r0; t < r1; t++)
        quantize_row16(j->x + (size_t)t * j->ldx, K, j->rms, j->eps, j->norm, j->q + (size_t)t * 2 * K,
                      j->d + (size_t)t * KB, j->sum + (size_t)t * KB);
    barrier(j->pool, &sense);
    /* row tiles split between threads; each tile's weights stay in L1 across the token tiles */
    const int ntile = (N + TROWS - 1) / TROWS;
    split(ntile, tid, nth, 1, &r0, &r1);
    float out[TT * TROWS];
    for (int rt = r0; rt < r1; rt++) {
        const uint8_t *w = j->w + (size_t)rt * KB * tb;
        const int n0 = rt * TROWS, nr = N - n0 < TROWS ? N - n0 : TROWS;
        for (int t0 = 0; t0 < j->T; t0 += TT) {
            tile_gemm(j->kind, w, KB, j->q + (size_t)t0 * 2 * K, K, j->d + (size_t)t0 * KB, j->sum + (size_t)t0 * KB, out);
            const int nt = j->T - t0 < TT ? j->T - t0 : TT;
            for (int t = 0; t < nt; t++) {
                float *y = j->y + (size_t)(t0 + t) * j->ldy + n0;
                const float *o = out + t * TROWS;
                if (j->acc)
                    for (int r = 0; r < nr; r++) y[r] += o[r] + (j->bias ? j->bias[n0 + r] : 0.f);
                else
                    for (int r = 0; r < nr; r++) y[r] = o[r] + (j->bias ? j->bias[n0 + r] : 0.f);
            }
        }
    }
}

/* Whether this build's prefill GEMM beats float32 BLAS (vpdpbusd); elsewhere it is the plain-C reference. */
int syn_gemm_fast(void) {
#if defined(USE_AVX512) && defined(__AVX512VNNI__)
    return 1;
#else
    return 0;
#endif
}

/* y (T rows, ldy apart) = or += (rms-normalised, norm-weighted when asked) x (T rows, ldx apart) W^T + bias,
   W (N, K) in tiles (syn_pack_tiles).  flags: 1 accumulate into y, 2 RMS-normalise x's rows first. */
int syn_gemm(Model *m, int kind, int N, int K, const uint8_t *w, const float *x, int ldx, int T, float *y, int ldy,
             int flags, const float *norm, const float *bias) {
    if (!syn_tile_bytes(kind) || K % BLK || N < 1 || T < 1) return -1;
    const int Tp = (T + TT - 1) / TT * TT, KB = K / BLK;
    if ((size_t)Tp * K > m->pq_cap) {
        free(m->pq), free(m->pd), free(m->psum);
        m->pq = (int8_t *)calloc((size_t)Tp * 2 * K, 1);
        m->pd = (float *)calloc((size_t)Tp * KB, sizeof(float));
        m->psum = (float *)calloc((size_t)Tp * KB, sizeof(float));
        m->pq_cap = (m->pq && m->pd && m->psum) ? (size_t)Tp * K : 0;
        if (!m->pq_cap) {
            free(m->pq), free(m->pd), free(m->psum);
            m->pq = NULL, m->pd = m->psum = NULL;
            return -3;
        }
    }
    /* rows T..Tp-1 of the codes are read by the last token tile: zero scales make them contribute nothing */
    memset(m->pd + (size_t)T * KB, 0, (size_t)(Tp - T) * KB * sizeof(float));
    memset(m->psum + (size_t)T * KB, 0, (size_t)(Tp - T) * KB * sizeof(float));
    GemmJob j = {m->pool, kind, N, K, T, Tp, (flags & 2) != 0, flags & 1, ldx, ldy, w, x, norm, bias, m->eps, y,
                 m->pq, m->pd, m->psum};
    pool_run(m->pool, gemm_body, &j, 0);
    return 0;
}
