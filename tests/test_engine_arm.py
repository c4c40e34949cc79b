"""The CPU engine's ARM (aarch64 NEON) build, compiled and run on an x86 machine.

Python for aarch64 is not at hand, so the test runs at the C level: the driver
kernels/csrc/test_engine_main.c (which includes the engine's source) is built

* natively with ``-DSYNAPSE_GENERIC`` (the plain-C kernels, the reference build),
* natively with ``-march=native`` (this machine's SIMD kernels), and
* with Debian's ``aarch64-linux-gnu-gcc`` for ``-march=armv8.2-a+dotprod`` (NEON;
  plain ``armv8-a`` where the compiler lacks dotprod), run under
  ``qemu-aarch64 -L /usr/aarch64-linux-gnu`` (Debian's qemu-user),

and every build runs the same seeded cases, written to one input file: 4-/8-bit
and float32 matvecs on 1 and 2 threads, the int16 activation codes, the prefill
GEMM on packed tiles, and whole-token decode of two tiny random models (float32,
and 4-/8-bit mixed) over several positions.  Each build's outputs are held to a
float64 NumPy reference and to the plain-C build:

* integer data (power-of-two scales, integer codes, activations whose block
  maximum makes the int16 scale exactly 1): every partial sum is an exact
  float, so all builds must equal the reference and each other bit for bit;
* activation codes: exactly the reference's (one float multiply and a
  round-to-nearest-even per element, identical on both ISAs);
* 4/8-bit matvec and GEMM: (nblk + 40) u of the reference's magnitude
  (u = 2**-24; one rounding per block's integer product times its scale, plus
  the bias sums and the final adds, in any order), as in test_native_engine.py;
* float32 matvec: (K + 4) u sum |w||x|, the bound for a float32 dot product in
  any summation order (NEON sums 8 lanes, the plain C one);
* decode: the float model within 1e-4 abs + 1e-4 rel of the float64 forward;
  the quantized one within 2.5e-3 of the largest |logit| (the int16 activation
  rounding, which the reference does not model; see test_native_engine.py); and
  the builds within the same bounds of each other (they differ only in the
  summation order of float dot products).

This tests correctness only: speed on ARM is not measured here.  Skips when the
cross compiler or qemu is missing.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlx_synapse.kernels import native
from mlx_synapse.kernels.native import KIND_F32, KIND_Q4, KIND_Q8

DRIVER = native.SOURCE.with_name("test_engine_main.c")
CROSS = os.environ.get("MLX_SYNAPSE_AARCH64_CC", "aarch64-linux-gnu-gcc")
QEMU = "qemu-aarch64"
SYSROOT = "/usr/aarch64-linux-gnu"
U = 2.0**-24
BLOCK = native.BLOCK

if shutil.which(CROSS) is None or shutil.which(QEMU) is None or not Path(SYSROOT, "lib").is_dir():
    pytest.skip(
        f"ARM build test needs {CROSS}, {QEMU} and {SYSROOT} (Debian: apt-get install gcc-aarch64-linux-gnu qemu-user)",
        allow_module_level=True,
    )

# the engine library's own flags, without -fPIC / -march
BASE = ["-O3", "-pthread", "-std=c11", "-fno-trapping-math", "-fno-math-errno", "-fopenmp-simd", "-Wall"]


def _cc(cc, flags, out: Path):
    cmd = [cc, *BASE, *flags, "-o", str(out), str(DRIVER), "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return r.returncode == 0, f"{' '.join(cmd)}:\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """name -> command prefix that runs the driver: generic, native, arm."""
    d = tmp_path_factory.mktemp("arm")
    cc = native._compiler()
    if cc is None:
        pytest.skip("no native C compiler")
    out = {}
    for name, flags in (("generic", ["-DSYNAPSE_GENERIC"]), ("native", ["-march=native"])):
        ok, err = _cc(cc, flags, d / name)
        assert ok, err
        out[name] = [str(d / name)]
    ok, err = _cc(CROSS, ["-march=armv8.2-a+dotprod"], d / "arm")
    if not ok:  # an older cross compiler: NEON alone
        ok, err = _cc(CROSS, ["-march=armv8-a"], d / "arm")
    assert ok, err
    out["arm"] = [QEMU, "-L", SYSROOT, str(d / "arm")]
    simd = {n: subprocess.run(c + ["--simd"], capture_output=True, text=True, timeout=60).stdout.split()
            for n, c in out.items()}
    assert simd["generic"][0] == "generic"
    assert simd["arm"][0] == "neon", f"the aarch64 build did not take the NEON branches: {simd['arm']}"
    return out


# ------------------------------------------------------------------ input file


class Cases:
    """Builds the driver's input stream and, per case, what to check."""

    def __init__(self):
        self.buf = bytearray()
        self.checks = []  # (label, n_out, check(y_by_build))

    def i32(self, *v):
        self.buf += struct.pack(f"<{len(v)}i", *v)

    def f32(self, v):
        self.buf += struct.pack("<f", v)

    def arr(self, a, dtype):
        self.buf += np.ascontiguousarray(a, dtype).astype(np.dtype(dtype).newbyteorder("<")).tobytes()

    def mat(self, kind, group, codes_or_w, s=None, b=None):
        self.i32(kind, group)
        self.weights(kind, codes_or_w, s, b)

    def weights(self, kind, codes_or_w, s, b):
        if kind == KIND_F32:
            self.arr(codes_or_w, np.float32)
            return
        self.arr(pack(kind, codes_or_w), np.uint8)
        self.arr(s, np.float32)
        self.arr(b, np.float32)


def pack(kind, codes):
    """codes uint8 (N, K) -> the engine's bytes (4-bit: byte j of a block = code j | code j+16 << 4)."""
    if kind == KIND_Q8:
        return codes.astype(np.uint8)
    N, K = codes.shape
    c = codes.reshape(N, K // BLOCK, BLOCK).astype(np.uint8)
    return (c[..., :16] | (c[..., 16:] << 4)).reshape(N, K // 2)


def dequant(codes, s, b, group):
    return codes * np.repeat(s, group, 1).astype(np.float64) + np.repeat(b, group, 1).astype(np.float64)


def quant_matrix(rng, kind, N, K, group, center=False, scale=0.05):
    top = 15 if kind == KIND_Q4 else 255
    codes = rng.integers(0, top + 1, (N, K), dtype=np.uint8)
    s = (rng.standard_normal((N, K // group)) * scale).astype(np.float32)
    b = (rng.standard_normal((N, K // group)) * 0.3).astype(np.float32)
    if center:  # weights of both signs around zero, as a real model's
        s = np.abs(s)
        b = (-s * top / 2 + rng.standard_normal(s.shape).astype(np.float32) * s).astype(np.float32)
    return codes, s, b


def quant_reference(codes, s, b, group, x):
    """The kernels' math in float64 (activations as their int16 codes) and its magnitude."""
    N, K = codes.shape
    nb, rep = K // BLOCK, group // BLOCK
    q, d, _ = native.quantize_act_reference(x)
    q = q.reshape(nb, BLOCK).astype(np.int64)
    c = codes.reshape(N, nb, BLOCK).astype(np.int64)
    sb = np.repeat(s.astype(np.float64), rep, axis=1)
    bb = np.repeat(b.astype(np.float64), rep, axis=1)
    xb = x.astype(np.float64).reshape(nb, BLOCK)
    d64 = d.astype(np.float64)
    ref = (sb * d64 * np.einsum("nbj,bj->nb", c, q)).sum(1) + bb @ xb.sum(1)
    mag = (np.abs(sb) * d64 * np.einsum("nbj,bj->nb", c, np.abs(q))).sum(1) + np.abs(bb) @ np.abs(xb).sum(1)
    return ref, mag


def within(ref, tol):
    def check(label, y):
        err = np.abs(y.astype(np.float64) - ref)
        bad = np.nonzero(~(err <= tol))[0]
        assert bad.size == 0, f"{label}: at {bad[:5]} got {y[bad[:5]]} want {ref[bad[:5]]} (tol {np.broadcast_to(tol, ref.shape)[bad[:5]]})"
        return float((err / np.maximum(tol, 1e-300)).max()) if err.size else 0.0

    return check


def exact(ref):
    def check(label, y):
        np.testing.assert_array_equal(y, ref.astype(np.float32), err_msg=label)
        return 0.0

    return check


def add_matvec(cs: Cases, rng, kind, N, K, group, threads, x, w, s=None, b=None, check=None, label=""):
    cs.i32(1, threads, kind, N, K, group)
    cs.weights(kind, w, s, b)
    cs.arr(x, np.float32)
    cs.checks.append((f"matvec {label} kind={kind} N={N} K={K} group={group} t{threads}", N, check))


def make_cases(seed=20):
    rng = np.random.default_rng(seed)
    cs = Cases()
    # 4/8-bit matvec against the float64 reference of the kernels' math
    for kind in (KIND_Q4, KIND_Q8):
        for N, nblk, group in ((37, 1, 32), (70, 3, 32), (5, 4, 64), (64, 12, 128), (33, 33, 32), (16, 8, 256)):
            K = BLOCK * nblk
            codes, s, b = quant_matrix(rng, kind, N, K, group)
            x = rng.standard_normal(K).astype(np.float32)
            if nblk > 2:  # blocks of very different magnitudes, one of them zero
                x *= np.repeat(10.0 ** rng.uniform(-3, 4, nblk) * (np.arange(nblk) != 1), BLOCK).astype(np.float32)
            ref, mag = quant_reference(codes, s, b, group, x)
            for threads in (1, 2):
                add_matvec(cs, rng, kind, N, K, group, threads, x, codes, s, b,
                           within(ref, (nblk + 40) * U * mag), "random")
        # integer data: every partial sum exact, so every build equals the reference bit for bit
        for nblk, group in ((1, 32), (5, 32), (4, 64), (12, 128)):
            N, K = 37, BLOCK * nblk
            top = 15 if kind == KIND_Q4 else 255
            codes = rng.integers(0, top + 1, (N, K), dtype=np.uint8)
            s = (2.0 ** rng.integers(-1, 2, (N, K // group))).astype(np.float32)
            b = rng.integers(-3, 4, (N, K // group)).astype(np.float32)
            x = rng.integers(-8, 9, K).astype(np.float32)
            x[::BLOCK] = 32767 * rng.choice([-1, 1], nblk)
            codes[:, ::BLOCK] &= 1
            want = dequant(codes, s, b, group) @ x.astype(np.float64)
            assert np.abs(want).max() < 2**22
            add_matvec(cs, rng, kind, N, K, group, 2, x, codes, s, b, exact(want), "integer")
    # float32 rows
    for K in (1, 7, 8, 9, 16, 31, 33, 100, 257, 1000):
        N = 23
        w = rng.standard_normal((N, K)).astype(np.float32)
        x = rng.standard_normal(K).astype(np.float32)
        ref = w.astype(np.float64) @ x.astype(np.float64)
        tol = (K + 4) * U * (np.abs(w).astype(np.float64) @ np.abs(x).astype(np.float64))
        add_matvec(cs, rng, KIND_F32, N, K, 0, 1 + K % 2, x, w, check=within(ref, tol), label="random")
        wi, xi = rng.integers(-8, 9, (N, K)).astype(np.float32), rng.integers(-8, 9, K).astype(np.float32)
        add_matvec(cs, rng, KIND_F32, N, K, 0, 2, xi, wi, check=exact(wi.astype(np.int64) @ xi.astype(np.int64)),
                   label="integer")
    # activation codes
    for nblk in (1, 3, 9):
        K = BLOCK * nblk
        x = (rng.standard_normal(K) * 10.0 ** rng.uniform(-30, 3)).astype(np.float32)
        q, d, sums = native.quantize_act_reference(x)
        cs.i32(2, K)
        cs.arr(x, np.float32)
        absum = np.abs(x.astype(np.float64)).reshape(nblk, BLOCK).sum(1)

        def check(label, y, q=q, d=d, sums=sums, K=K, nblk=nblk, absum=absum):
            np.testing.assert_array_equal(y[:K], q.astype(np.float32), err_msg=label)
            np.testing.assert_array_equal(y[K:K + nblk], d, err_msg=label)
            assert (np.abs(y[K + nblk:].astype(np.float64) - sums) <= 1e-6 * absum).all(), label
            return 0.0

        cs.checks.append((f"quantize_act K={K}", K + 2 * nblk, check))
    # prefill GEMM on tiles (the plain-C GEMM on both ISAs here; VNNI only where present)
    for kind in (KIND_Q4, KIND_Q8):
        for N, nblk, group, T in ((37, 3, 32, 7), (16, 4, 64, 13)):
            K = BLOCK * nblk
            codes, s, b = quant_matrix(rng, kind, N, K, group)
            x = rng.standard_normal((T, K)).astype(np.float32)
            ref = np.empty((T, N))
            mag = np.empty((T, N))
            sb = np.repeat(s.astype(np.float64), group // BLOCK, 1)
            bb = np.repeat(b.astype(np.float64), group // BLOCK, 1)
            cb = codes.reshape(N, nblk, BLOCK).astype(np.int64)
            for t in range(T):
                c, d, _, _ = native.quantize_planes_reference(x[t])
                c = c.reshape(nblk, BLOCK)
                xb = x[t].astype(np.float64).reshape(nblk, BLOCK)
                ref[t] = (sb * d * np.einsum("nbj,bj->nb", cb, c)).sum(1) + bb @ xb.sum(1)
                mag[t] = (np.abs(sb) * d * np.einsum("nbj,bj->nb", cb, np.abs(c))).sum(1) + np.abs(bb) @ np.abs(xb).sum(1)
            cs.i32(3, 2, kind, N, K, group, T, 0)
            cs.arr(pack(kind, codes), np.uint8)
            cs.arr(s, np.float32)
            cs.arr(b, np.float32)
            cs.arr(x, np.float32)
            cs.arr(np.ones(K), np.float32)
            tol = (nblk + 40) * U * mag
            cs.checks.append((f"gemm kind={kind} N={N} K={K} group={group} T={T}", T * N, within(ref.ravel(), tol.ravel())))
    # whole-token decode of tiny models
    for quant in ("f32", "mixed"):
        for threads in (1, 2):
            add_decode(cs, np.random.default_rng(7), quant, threads)
    return cs


# ------------------------------------------------------------------ decode


def add_decode(cs: Cases, rng, quant, threads):
    nl, H, nh, nkv, d, inter, V, steps, B, eps = 2, 64, 4, 2, 16, 96, 50, 5, 3, 1e-5
    nqkv = (nh + 2 * nkv) * d
    shapes = [(nqkv, H), (H, nh * d), (2 * inter, H), (H, inter)]
    # mixed: qkv 4-bit group 64, o 8-bit, gate/up 4-bit, down 8-bit; head 4-bit
    qkinds = [(KIND_Q4, 64), (KIND_Q8, 32), (KIND_Q4, 32), (KIND_Q8, 32)]
    cs.i32(4, threads, nl, H, nh, nkv, d, inter, V, steps, B)
    cs.f32(eps)

    def matrix(N, K, kind, group, scale):
        if quant == "f32":
            w = (rng.standard_normal((N, K)) * scale).astype(np.float32)
            cs.mat(KIND_F32, 0, w)
            return w.astype(np.float64)
        top = 15 if kind == KIND_Q4 else 255
        codes, s, b = quant_matrix(rng, kind, N, K, group, center=True, scale=2 * scale / top * 1.7)
        cs.mat(kind, group, codes, s, b)
        return dequant(codes, s, b, group)

    layers = []
    for _ in range(nl):
        ln1 = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
        ln2 = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
        bq = (0.1 * rng.standard_normal(nqkv)).astype(np.float32)
        cs.arr(ln1, np.float32), cs.arr(ln2, np.float32), cs.arr(bq, np.float32)
        ws = [matrix(N, K, *qkinds[j], 1 / np.sqrt(K)) for j, (N, K) in enumerate(shapes)]
        layers.append((ln1, ln2, bq, ws))
    head = matrix(V, H, KIND_Q4, 32, 2 / np.sqrt(H))
    norm = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    embed = rng.standard_normal((V, H)).astype(np.float32)
    half = d // 2
    perm = np.concatenate([np.arange(half, d), np.arange(half)]).astype(np.int32)
    tokens = rng.integers(0, V, (B, steps)).astype(np.int32)
    inv = 10000.0 ** (-np.arange(half) / half)
    ang = np.arange(steps)[:, None] * np.concatenate([inv, inv])[None]
    cos = np.cos(ang).astype(np.float32)
    sin = (np.sin(ang) * np.concatenate([-np.ones(half), np.ones(half)])).astype(np.float32)
    for a, t in ((norm, np.float32), (embed, np.float32), (perm, np.int32), (tokens, np.int32), (cos, np.float32),
                 (sin, np.float32)):
        cs.arr(a, t)

    # float64 forward of the engine's math
    def rms(x, w):
        return x / np.sqrt((x * x).mean() + eps) * w

    def rope(v, t):
        return v * cos[t] + v[..., perm] * sin[t]

    def forward(tokens):
        kc = [np.zeros((nkv, 0, d)) for _ in range(nl)]
        vc = [np.zeros((nkv, 0, d)) for _ in range(nl)]
        out = []
        for t in range(steps):
            out.append(step(tokens[t], t, kc, vc))
        return np.stack(out)  # (steps, V)

    def step(token, t, kc, vc):
        x = embed[token].astype(np.float64)
        for l, (ln1, ln2, bq, (wqkv, wo, wgu, wd)) in enumerate(layers):
            qkv = wqkv @ rms(x, ln1) + bq
            q = rope(qkv[: nh * d].reshape(nh, d), t)
            k = rope(qkv[nh * d: (nh + nkv) * d].reshape(nkv, d), t)
            v = qkv[(nh + nkv) * d:].reshape(nkv, d)
            kc[l] = np.concatenate([kc[l], k[:, None]], 1)
            vc[l] = np.concatenate([vc[l], v[:, None]], 1)
            att = np.empty((nh, d))
            for h in range(nh):
                sc = kc[l][h // (nh // nkv)] @ q[h]
                p = np.exp(sc - sc.max())
                att[h] = p @ vc[l][h // (nh // nkv)] / p.sum()
            x = x + wo @ att.ravel()
            gu = wgu @ rms(x, ln2)
            g, up = gu[:inter], gu[inter:]
            x = x + wd @ (g / (1 + np.exp(-g)) * up)
        return head @ rms(x, norm)

    refs = np.stack([forward(tokens[i]) for i in range(B)], 1)  # (steps, B, V)
    # syn_decode's logits on sequence 0, then syn_decode_batch's on all B
    ref = np.concatenate([refs[:, 0].ravel(), refs.ravel()])
    if quant == "f32":
        tol = 1e-4 + 1e-4 * np.abs(ref)
    else:
        tol = np.full_like(ref, 2.5e-3 * np.abs(ref).max())
    assert 1 < np.abs(ref).max() < 100, np.abs(ref).max()  # logits of a sensible scale
    near = within(ref, tol)

    def check(label, y):
        worst = near(label, y)
        single, batch = y[: steps * V].reshape(steps, V), y[steps * V:].reshape(steps, B, V)
        # each sequence of a batched step runs exactly syn_decode's arithmetic
        np.testing.assert_array_equal(batch[:, 0], single, err_msg=f"{label}: batched != single decode")
        return worst

    cs.checks.append((f"decode {quant} t{threads} B={B}", steps * V * (B + 1), check, tol))


# ------------------------------------------------------------------ the test


def _run(cmd, inp: Path, outp: Path):
    r = subprocess.run(cmd + [str(inp), str(outp)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-2000:]}"
    return np.fromfile(outp, "<f4")


@pytest.fixture(scope="module")
def results(builds, tmp_path_factory):
    """(cases, build name -> its outputs): every build run once on the same input file."""
    d = tmp_path_factory.mktemp("arm_run")
    cs = make_cases()
    inp = d / "in.bin"
    inp.write_bytes(bytes(cs.buf))
    total = sum(c[1] for c in cs.checks)
    outs = {}
    for name, cmd in builds.items():
        y = _run(cmd, inp, d / f"{name}.out")
        assert y.size == total, f"{name}: {y.size} floats, want {total}"
        outs[name] = y
    return cs, outs


@pytest.mark.parametrize("op", ["matvec", "quantize_act", "gemm", "decode"])
def test_arm_build_matches_reference_and_x86(results, op):
    cs, outs = results
    off, worst, n_cases = 0, {}, 0
    for entry in cs.checks:
        label, n, check = entry[:3]
        if label.split()[0] == op:
            n_cases += 1
            for name, y in outs.items():
                part = y[off: off + n]
                assert np.isfinite(part).all(), f"{name} {label}: non-finite output"
                worst[name] = max(worst.get(name, 0.0), check(f"{name} {label}", part))
            if len(entry) > 3:  # the ARM build within the same bound of the plain-C build too
                arm, gen = (outs[k][off: off + n].astype(np.float64) for k in ("arm", "generic"))
                assert (np.abs(arm - gen) <= entry[3]).all(), f"arm vs generic {label}: max diff {np.abs(arm - gen).max()}"
        off += n
    assert n_cases > 0
    print(f"{op}: {n_cases} cases; worst error / tolerance per build:", {k: round(v, 3) for k, v in worst.items()})
