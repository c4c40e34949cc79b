/*
 * Test driver for the CPU engine at the C level, for builds that Python cannot
 * load: the aarch64 (NEON) build cross-compiled on x86 and run under
 * qemu-aarch64 (tests/test_engine_arm.py).  It includes the engine's source, so
 * one compile gives one program per target and flag set.
 *
 *   test_engine_main IN OUT
 *
 * IN is a stream of cases written by the test, each an int32 op followed by its
 * arguments (int32s, float32s, raw arrays, little-endian); OUT receives each
 * case's float32 outputs in order.  Ops:
 *
 *   1 MATVEC  threads kind N K group | w, [s, b], x            -> y (N)
 *   2 QACT    K | x                                            -> codes (as float), d, sums
 *   3 GEMM    threads kind N K group T flags | w, s, b, x (T, K), norm (K)
 *                                                              -> y (T, N)
 *   4 DECODE  threads nl H nh nkv d inter V steps B eps |
 *             per layer: ln1 (H), ln2 (H), b_qkv (nqkv), 4 matrices (qkv, o, gu, down);
 *             head matrix, final norm (H), embed (V, H), perm (d, int32),
 *             tokens (B, steps, int32), cos (steps, d), sin (steps, d)
 *             -> logits (steps, V) of syn_decode on tokens[0], then (steps, B, V) of
 *                syn_decode_batch on all B sequences at once (each its own caches)
 *   a matrix: kind group | w, [s, b]  (w: float32 rows, 4-bit packed K/2 bytes a row, or 8-bit K bytes)
 *
 * Exit status 0 on success; a short message on stderr otherwise.
 */
#include "synapse_cpu.c"

#include <stdio.h>

static FILE *fin, *fout;

static void die(const char *msg) {
    fprintf(stderr, "test_engine_main: %s\n", msg);
    exit(2);
}

static int rd_i32(void) {
    int32_t v;
    if (fread(&v, 4, 1, fin) != 1) die("short read");
    return v;
}

static float rd_f32(void) {
    float v;
    if (fread(&v, 4, 1, fin) != 1) die("short read");
    return v;
}

static void *rd_buf(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) die("out of memory");
    if (n && fread(p, 1, n, fin) != n) die("short read");
    return p;
}

static void wr(const float *y, size_t n) {
    if (fwrite(y, sizeof(float), n, fout) != n) die("short write");
}

static size_t w_bytes(int kind, int N, int K) {
    return kind == KIND_Q4 ? (size_t)N * K / 2 : kind == KIND_Q8 ? (size_t)N * K : (size_t)N * K * sizeof(float);
}

typedef struct {
    int kind, group;
    void *w;
    float *s, *b;
} InMat;

static InMat rd_mat(int N, int K) {
    InMat m = {0};
    m.kind = rd_i32();
    m.group = rd_i32();
    m.w = rd_buf(w_bytes(m.kind, N, K));
    if (m.kind != KIND_F32) {
        size_t ng = (size_t)N * (K / m.group);
        m.s = (float *)rd_buf(ng * sizeof(float));
        m.b = (float *)rd_buf(ng * sizeof(float));
    }
    return m;
}

static void free_mat(InMat *m) { free(m->w), free(m->s), free(m->b); }

static Model *ctx_for(int threads) {
    Model *m = syn_new(1, 32, 1, 1, 32, 32, 32, 1e-5f, threads, 2000);
    if (!m || syn_threads(m) != threads) die("syn_new failed");
    return m;
}

static void op_matvec(void) {
    const int threads = rd_i32(), kind = rd_i32(), N = rd_i32(), K = rd_i32(), group = rd_i32();
    void *w = rd_buf(w_bytes(kind, N, K));
    float *s = NULL, *b = NULL;
    if (kind != KIND_F32) {
        s = (float *)rd_buf((size_t)N * (K / group) * sizeof(float));
        b = (float *)rd_buf((size_t)N * (K / group) * sizeof(float));
    }
    float *x = (float *)rd_buf((size_t)K * sizeof(float)), *y = (float *)calloc((size_t)N, sizeof(float));
    Model *m = ctx_for(threads);
    if (!y || syn_matvec(m, kind, N, K, group, w, s, b, x, y) != 0) die("syn_matvec failed");
    wr(y, (size_t)N);
    syn_free(m);
    free(w), free(s), free(b), free(x), free(y);
}

static void op_qact(void) {
    const int K = rd_i32(), nb = K / BLK;
    float *x = (float *)rd_buf((size_t)K * sizeof(float));
    int16_t *q = (int16_t *)malloc((size_t)K * sizeof(int16_t));
    float *out = (float *)malloc((size_t)(K + 2 * nb) * sizeof(float));
    if (!q || !out) die("out of memory");
    syn_quantize_act(x, K, q, out + K, out + K + nb);
    for (int i = 0; i < K; i++) out[i] = (float)q[i];
    wr(out, (size_t)K + 2 * nb);
    free(x), free(q), free(out);
}

static void op_gemm(void) {
    const int threads = rd_i32(), kind = rd_i32(), N = rd_i32(), K = rd_i32(), group = rd_i32(), T = rd_i32(),
              flags = rd_i32();
    uint8_t *w = (uint8_t *)rd_buf(w_bytes(kind, N, K));
    const size_t ng = (size_t)N * (K / group);
    float *s = (float *)rd_buf(ng * sizeof(float)), *b = (float *)rd_buf(ng * sizeof(float));
    float *x = (float *)rd_buf((size_t)T * K * sizeof(float)), *norm = (float *)rd_buf((size_t)K * sizeof(float));
    const size_t tiles = (size_t)(N + TROWS - 1) / TROWS * (K / BLK) * syn_tile_bytes(kind);
    uint8_t *t = (uint8_t *)malloc(tiles);
    float *y = (float *)calloc((size_t)T * N, sizeof(float));
    if (!t || !y) die("out of memory");
    if (syn_pack_tiles(kind, N, K, group, w, s, b, t) != 0) die("syn_pack_tiles failed");
    Model *m = ctx_for(threads);
    if (syn_gemm(m, kind, N, K, t, x, K, T, y, N, flags, (flags & 2) ? norm : NULL, NULL) != 0) die("syn_gemm failed");
    wr(y, (size_t)T * N);
    syn_free(m);
    free(w), free(s), free(b), free(x), free(norm), free(t), free(y);
}

static void op_decode(void) {
    const int threads = rd_i32(), nl = rd_i32(), H = rd_i32(), nh = rd_i32(), nkv = rd_i32(), d = rd_i32(),
              inter = rd_i32(), V = rd_i32(), steps = rd_i32(), B = rd_i32();
    const float eps = rd_f32();
    const int nqkv = (nh + 2 * nkv) * d;
    Model *m = syn_new(nl, H, nh, nkv, d, inter, V, eps, threads, 2000);
    if (!m) die("syn_new failed");
    float **vecs = (float **)calloc((size_t)nl * 3, sizeof(float *));
    InMat *mats = (InMat *)calloc((size_t)nl * 4 + 1, sizeof(InMat));
    /* caches[(i * nl + l) * 2 + c]: sequence i's keys (c = 0) / values of layer l; i = B: syn_decode's */
    float **caches = (float **)calloc((size_t)(B + 1) * nl * 2, sizeof(float *));
    int32_t *caps = (int32_t *)malloc((size_t)B * nl * sizeof(int32_t));
    if (!vecs || !mats || !caches || !caps) die("out of memory");
    for (int i = 0; i < (B + 1) * nl * 2; i++)
        if (!(caches[i] = (float *)calloc((size_t)nkv * steps * d, sizeof(float)))) die("out of memory");
    for (int i = 0; i < B * nl; i++) caps[i] = steps;
    const int NK[4][2] = {{nqkv, H}, {H, nh * d}, {2 * inter, H}, {H, inter}};
    for (int l = 0; l < nl; l++) {
        vecs[3 * l] = (float *)rd_buf((size_t)H * sizeof(float));
        vecs[3 * l + 1] = (float *)rd_buf((size_t)H * sizeof(float));
        vecs[3 * l + 2] = (float *)rd_buf((size_t)nqkv * sizeof(float));
        int kinds[4], groups[4];
        const void *w[4];
        const float *s[4], *b[4];
        for (int j = 0; j < 4; j++) {
            InMat *im = &mats[4 * l + j];
            *im = rd_mat(NK[j][0], NK[j][1]);
            kinds[j] = im->kind, groups[j] = im->group, w[j] = im->w, s[j] = im->s, b[j] = im->b;
        }
        const float *vec[7] = {vecs[3 * l + 2], NULL, NULL, NULL, vecs[3 * l], vecs[3 * l + 1], NULL};
        syn_set_layer(m, l, kinds, groups, w, s, b, vec);
        float **own = caches + (size_t)B * nl * 2;
        if (syn_set_cache(m, l, own[2 * l], own[2 * l + 1], steps) != 0) die("syn_set_cache failed");
    }
    InMat *head = &mats[4 * nl];
    *head = rd_mat(V, H);
    float *norm = (float *)rd_buf((size_t)H * sizeof(float));
    float *embed = (float *)rd_buf((size_t)V * H * sizeof(float));
    int32_t *perm = (int32_t *)rd_buf((size_t)d * sizeof(int32_t));
    int32_t *tokens = (int32_t *)rd_buf((size_t)B * steps * sizeof(int32_t));
    float *cos = (float *)rd_buf((size_t)steps * d * sizeof(float)), *sin = (float *)rd_buf((size_t)steps * d * sizeof(float));
    syn_set_head(m, head->kind, head->group, head->w, head->s, head->b, norm, embed, perm);
    float *logits = (float *)calloc((size_t)B * V, sizeof(float)), *bcos = (float *)malloc((size_t)B * d * 4),
          *bsin = (float *)malloc((size_t)B * d * 4);
    int32_t *btok = (int32_t *)malloc((size_t)B * 4), *slots = (int32_t *)malloc((size_t)B * 4),
            *Ts = (int32_t *)malloc((size_t)B * 4);
    if (!logits || !bcos || !bsin || !btok || !slots || !Ts) die("out of memory");
    for (int t = 0; t < steps; t++) {
        if (syn_decode(m, tokens[t], t, t + 1, cos + (size_t)t * d, sin + (size_t)t * d, logits) != 0)
            die("syn_decode failed");
        wr(logits, (size_t)V);
    }
    for (int t = 0; t < steps; t++) {
        for (int i = 0; i < B; i++) {
            btok[i] = tokens[(size_t)i * steps + t], slots[i] = t, Ts[i] = t + 1;
            memcpy(bcos + (size_t)i * d, cos + (size_t)t * d, (size_t)d * 4);
            memcpy(bsin + (size_t)i * d, sin + (size_t)t * d, (size_t)d * 4);
        }
        if (syn_decode_batch(m, B, btok, slots, Ts, bcos, bsin, caches, caps, logits) != 0)
            die("syn_decode_batch failed");
        wr(logits, (size_t)B * V);
    }
    free(bcos), free(bsin), free(btok), free(slots), free(Ts), free(caps);
    syn_free(m);
    for (int i = 0; i < 4 * nl + 1; i++) free_mat(&mats[i]);
    for (int i = 0; i < 3 * nl; i++) free(vecs[i]);
    for (int i = 0; i < (B + 1) * nl * 2; i++) free(caches[i]);
    free(mats), free(vecs), free(caches), free(norm), free(embed), free(perm), free(tokens), free(cos), free(sin),
        free(logits);
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "--simd")) {
        printf("%s %d\n", syn_simd(), syn_gemm_fast());
        return 0;
    }
    if (argc != 3) die("usage: test_engine_main IN OUT | --simd");
    fin = fopen(argv[1], "rb");
    fout = fopen(argv[2], "wb");
    if (!fin || !fout) die("cannot open the input or output file");
    int32_t op;
    while (fread(&op, 4, 1, fin) == 1) {
        switch (op) {
        case 1: op_matvec(); break;
        case 2: op_qact(); break;
        case 3: op_gemm(); break;
        case 4: op_decode(); break;
        default: die("unknown op");
        }
    }
    if (fclose(fout) != 0) die("cannot write the output file");
    fclose(fin);
    return 0;
}
