// sgxl fused ops, CPU build: the fast separable kernels of upfirdn2d and filtered_lrelu (host only, no torch).
//
// sgxl_ops_cpu.cpp includes this file twice, inside two namespaces: once compiled for the baseline instruction
// set and once for AVX2 + FMA, and picks one at run time. So there is deliberately no include guard; everything
// it uses (sgxl_ops.h, <vector>, <algorithm>) is included before it.
//
// The idea: work on 8 planes at once. A "lane vector" V holds the same sample of 8 planes (8 channels), so every
// step below is the scalar upfirdn of sgxl_ops.h (tap_range, the same taps, the same polyphase skipping of the
// zero-inserted samples) with each multiply-add done on 8 planes in one vector instruction. Nothing depends on
// the row length or on the up/down factors for vectorisation, and the zero-inserted signal is never stored.
//
// A separable upfirdn runs as two 1-D passes: along x on each input row (hpass), then along y, where each output
// row is a weighted sum of a few x-filtered rows (vsum). The x-filtered rows live in a small ring buffer of the
// last few rows (RowRing) and are computed when a y-output first needs them, so a plane's intermediate images
// are never held whole: the working set is a few rows, which stays in the L1/L2 cache.
//
// filtered_lrelu chains two such stages with the nonlinearity between them, streaming one row of the upsampled
// signal U at a time:
//   x rows --hpass a--> ring A --vsum a--> U row --lrelu, codes--> U row --hpass b--> ring B --vsum b--> y rows
// The codes are the 2-bit codes of sgxl_ops.h (16 per 32-bit word, each plane on fresh words), in the same
// layout the tiled and CUDA paths write, so a backward pass may run on any of them.

// What both instruction sets share (defined once).
#ifndef SGXL_CPU_KERNELS_COMMON
#define SGXL_CPU_KERNELS_COMMON
constexpr int LANES = 8;   // planes per lane vector

// A separable upfirdn2d on planes [H, W] -> [Ho, Wo]: the same 1-D filter along x and y.
struct UpfirdnGeom {
    int H, W, Ho, Wo, K;
    int upx, upy, downx, downy, px0, py0;
    double gain;
    const float* taps;              // correlation taps
};
#endif

namespace SGXL_ISA_NS {

using sgxl::AccOf;
using sgxl::Convert;
using sgxl::FusedGeom;
using sgxl::Tile;
using sgxl::TapRange;
using sgxl::tap_range;
using sgxl::pos_mod;

// 8 values of the accumulation type A, and the integer vector of its comparisons.
template <typename A> struct Lanes;
template <> struct Lanes<float> {
    typedef float V __attribute__((vector_size(LANES * sizeof(float))));
    typedef int32_t M __attribute__((vector_size(LANES * sizeof(int32_t))));
};
template <> struct Lanes<double> {
    typedef double V __attribute__((vector_size(LANES * sizeof(double))));
    typedef int64_t M __attribute__((vector_size(LANES * sizeof(int64_t))));
};
typedef uint32_t Words __attribute__((vector_size(LANES * sizeof(uint32_t))));   // one code word per plane

template <typename V, typename A> inline V splat(A a) { return V{} + a; }

// ---- 1-D passes ------------------------------------------------------------------------------------------------
// The taps of one upfirdn along a row of n_in samples, for outputs j in [j0, j1):
//   out[j] = sum_k c[k] * in[(j*down + k - p0) / up]
// over the taps k that reach a real sample: tap_range gives the first, and they step by `up` (the inserted zeros
// are skipped). The same for every row and every plane, so computed once per call.
struct PassTaps {
    std::vector<int> tap, src, count;   // per output: first tap, the input sample it reads, how many taps
    int up = 1;
    void build(int n_in, int j0, int j1, int up_, int down, int p0, int K) {
        up = up_;
        tap.resize(std::max(j1 - j0, 0)); src.resize(tap.size()); count.resize(tap.size());
        for (int j = j0; j < j1; ++j) {
            const TapRange r = tap_range(j * down, p0, up, n_in, K);
            tap[j - j0] = r.begin;
            src[j - j0] = r.begin < r.end ? (j * down + r.begin - p0) / up : 0;
            count[j - j0] = r.begin < r.end ? (r.end - r.begin + up - 1) / up : 0;
        }
    }
};

// out[j] = sum_t c[tap_j + t*up] * in[src_j + t] for every output of pt. Four outputs at a time where they have
// as many taps (everywhere but near the edges): four independent sums keep the multiply-add units busy, where
// one sum would wait for each of its additions in turn.
template <typename A, typename V>
inline void hpass(const V* in, V* out, const PassTaps& pt, const float* c) {
    const int n = (int)pt.tap.size(), up = pt.up;
    const int *tap = pt.tap.data(), *src = pt.src.data(), *count = pt.count.data();
    for (int j = 0; j < n;) {
        const int m = count[j];
        if (j + 4 <= n && count[j + 1] == m && count[j + 2] == m && count[j + 3] == m) {
            const float *c0 = c + tap[j], *c1 = c + tap[j + 1], *c2 = c + tap[j + 2], *c3 = c + tap[j + 3];
            const V *s0 = in + src[j], *s1 = in + src[j + 1], *s2 = in + src[j + 2], *s3 = in + src[j + 3];
            V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
            for (int t = 0; t < m; ++t) {
                a0 += A(c0[t * up]) * s0[t]; a1 += A(c1[t * up]) * s1[t];
                a2 += A(c2[t * up]) * s2[t]; a3 += A(c3[t * up]) * s3[t];
            }
            out[j] = a0; out[j + 1] = a1; out[j + 2] = a2; out[j + 3] = a3;
            j += 4;
        } else {                                                        // near an edge: one output
            const float* cj = c + tap[j];
            const V* sj = in + src[j];
            V acc = V{};
            for (int t = 0; t < m; ++t) acc += A(cj[t * up]) * sj[t];
            out[j] = acc;
            ++j;
        }
    }
}

// out[e] = gain * sum_t w[t] * rows[t][e] for e < n: one output row of the pass along y. Four columns at a
// time, so that four independent sums hide the latency of the multiply-adds.
template <typename A, typename V>
inline void vsum(V* out, int n, const V* const* rows, const A* w, int nt, A gain) {
    int e = 0;
    for (; e + 4 <= n; e += 4) {
        V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
        for (int t = 0; t < nt; ++t) {
            const V* r = rows[t] + e;
            const A wt = w[t];
            a0 += wt * r[0]; a1 += wt * r[1]; a2 += wt * r[2]; a3 += wt * r[3];
        }
        out[e] = gain * a0; out[e + 1] = gain * a1; out[e + 2] = gain * a2; out[e + 3] = gain * a3;
    }
    for (; e < n; ++e) {
        V a = V{};
        for (int t = 0; t < nt; ++t) a += w[t] * rows[t][e];
        out[e] = gain * a;
    }
}

// Scratch space for n lane vectors, aligned for vector loads and stores (std::vector does not promise it).
template <typename V> struct Buffer {
    std::vector<unsigned char> raw;
    V* data = nullptr;
    V* reserve(size_t n) {
        if (raw.size() < n * sizeof(V) + 64) {
            raw.resize(n * sizeof(V) + 64);
            data = reinterpret_cast<V*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t(63));
        }
        return data;
    }
};

// The last `count` rows of `width` lane vectors produced by a pass; row i lives in slot i mod count.
template <typename V> struct RowRing {
    Buffer<V> buf;
    int width = 0, count = 0;
    void reset(int w, int c) { width = w; count = c; buf.reserve((size_t)w * c); }
    V* row(int i) { return buf.data + (size_t)pos_mod(i, count) * width; }
};

// The rows and weights of one output row j of the pass along y: rows i = (j*down + k - p0)/up of [0, n_rows).
struct RowTaps {
    int first, last;   // input rows read (first > last: none)
    TapRange k;        // taps
};
inline RowTaps row_taps(int j, int n_rows, int up, int down, int p0, int K) {
    RowTaps t;
    t.k = tap_range(j * down, p0, up, n_rows, K);
    t.first = (j * down + t.k.begin - p0) / up;
    t.last = t.k.begin < t.k.end ? (j * down + t.k.begin + (t.k.end - 1 - t.k.begin) / up * up - p0) / up : t.first - 1;
    return t;
}

// ---- 8 planes in, 8 planes out -----------------------------------------------------------------------------------
// The planes of one lane vector: plane p0 + l for lane l < nl (the last block of a tensor may have fewer).
template <typename T> struct PlaneBlock {
    const T* in[LANES];
    T* out[LANES];
    uint32_t* codes[LANES];
    int nl;
};

// The 8 x 8 block transpose: r[l][c] -> r[c][l] (three rounds of two-input shuffles).
typedef int32_t Idx8 __attribute__((vector_size(8 * sizeof(int32_t))));
template <typename V> inline void transpose8(V* r) {
    V t[8], s[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shuffle(r[i], r[i + 1], Idx8{0, 8, 1, 9, 4, 12, 5, 13});
        t[i + 1] = __builtin_shuffle(r[i], r[i + 1], Idx8{2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int i = 0; i < 8; i += 4)
        for (int h = 0; h < 2; ++h) {
            s[i + 2 * h] = __builtin_shuffle(t[i + h], t[i + h + 2], Idx8{0, 1, 8, 9, 4, 5, 12, 13});
            s[i + 2 * h + 1] = __builtin_shuffle(t[i + h], t[i + h + 2], Idx8{2, 3, 10, 11, 6, 7, 14, 15});
        }
    for (int c = 0; c < 4; ++c) {
        r[c] = __builtin_shuffle(s[c], s[c + 4], Idx8{0, 1, 2, 3, 8, 9, 10, 11});
        r[c + 4] = __builtin_shuffle(s[c], s[c + 4], Idx8{4, 5, 6, 7, 12, 13, 14, 15});
    }
}

// 8 consecutive samples of storage type T as floats, and back (the block transposes run on float vectors).
template <typename T> struct Load8;
template <> struct Load8<float> {
    typedef Lanes<float>::V V;
    static V load(const float* p) { V v; __builtin_memcpy(&v, p, sizeof(v)); return v; }
    static void store(float* p, V v) { __builtin_memcpy(p, &v, sizeof(v)); }
};

// row[i][l] = planes.in[l][offset + i] + bias[l] (lanes past nl get 0)
template <typename A, typename V, typename T>
inline void gather_row(const PlaneBlock<T>& pb, int64_t offset, int n, const A* bias, V* row) {
    int i0 = 0;
    if constexpr (std::is_same<T, float>::value && std::is_same<A, float>::value) {
        if (pb.nl == LANES) {                                          // 8 x 8 blocks through the transpose
            V b;
            for (int l = 0; l < LANES; ++l) b[l] = bias[l];
            for (; i0 + 8 <= n; i0 += 8) {
                V r[8];
                for (int l = 0; l < LANES; ++l) r[l] = Load8<T>::load(pb.in[l] + offset + i0);
                transpose8(r);
                for (int c = 0; c < 8; ++c) row[i0 + c] = r[c] + b;
            }
        }
    }
    for (int l = 0; l < LANES; ++l) {
        if (l < pb.nl) {
            const T* src = pb.in[l] + offset;
            for (int i = i0; i < n; ++i) row[i][l] = Convert<A, T>::load(src[i]) + bias[l];
        } else {
            for (int i = i0; i < n; ++i) row[i][l] = A(0);
        }
    }
}

// planes.out[l][offset + i] = row[i][l]
template <typename A, typename V, typename T>
inline void scatter_row(const PlaneBlock<T>& pb, int64_t offset, int n, const V* row) {
    int i0 = 0;
    if constexpr (std::is_same<T, float>::value && std::is_same<A, float>::value) {
        if (pb.nl == LANES) {
            for (; i0 + 8 <= n; i0 += 8) {
                V r[8];
                for (int c = 0; c < 8; ++c) r[c] = row[i0 + c];
                transpose8(r);
                for (int l = 0; l < LANES; ++l) Load8<T>::store(pb.out[l] + offset + i0, r[l]);
            }
        }
    }
    for (int l = 0; l < pb.nl; ++l) {
        T* dst = pb.out[l] + offset;
        for (int i = i0; i < n; ++i) dst[i] = Convert<A, T>::store(row[i][l]);
    }
}

// ---- upfirdn2d, separable ------------------------------------------------------------------------------------------
template <typename T, typename A> struct UpfirdnBlock {
    typedef typename Lanes<A>::V V;
    Buffer<V> xrow, orow;
    RowRing<V> ring;                // x-filtered input rows
    std::vector<const V*> rows;
    std::vector<A> w;
    PassTaps px;                    // the pass along x

    explicit UpfirdnBlock(const UpfirdnGeom& g) { px.build(g.W, 0, g.Wo, g.upx, g.downx, g.px0, g.K); }

    void run(const UpfirdnGeom& g, const PlaneBlock<T>& pb) {
        const A zero[LANES] = {};
        V* const xr = xrow.reserve(g.W);
        V* const orr = orow.reserve(g.Wo);
        rows.resize(g.K); w.resize(g.K);
        ring.reset(g.Wo, (g.K + g.upy - 1) / g.upy + 1);
        int next = 0;                                                  // next input row to filter along x
        for (int oy = 0; oy < g.Ho; ++oy) {
            const RowTaps rt = row_taps(oy, g.H, g.upy, g.downy, g.py0, g.K);
            next = std::max(next, rt.first);                            // rows before are read by no later output
            for (; next <= rt.last; ++next) {
                gather_row<A, V, T>(pb, (int64_t)next * g.W, g.W, zero, xr);
                hpass<A, V>(xr, ring.row(next), px, g.taps);
            }
            int nt = 0;
            for (int k = rt.k.begin, i = rt.first; k < rt.k.end; k += g.upy, ++i, ++nt) {
                rows[nt] = ring.row(i);
                w[nt] = A(g.taps[k]);
            }
            vsum<A, V>(orr, g.Wo, rows.data(), w.data(), nt, A(g.gain));
            scatter_row<A, V, T>(pb, (int64_t)oy * g.Wo, g.Wo, orr);
        }
    }
};

// ---- filtered_lrelu, both stages separable ----------------------------------------------------------------------
// The pointwise step on one U row of 8 planes. u[e] is U sample (uy, ux0 + e), canonical code index i0 + e.
// mode 0: v = clamp(gain * lrelu(u)), the same comparisons as lrelu_forward in sgxl_ops.h, and the code
//         (0 positive, 1 negative, 2 clamped) OR-ed into the planes' words;
// mode 1: v = u * dv/du, the slope the stored code names (lrelu_slope in sgxl_ops.h).
template <typename A, typename V, typename T>
inline void pointwise_row(const FusedGeom& g, const PlaneBlock<T>& pb, V* u, int n, int64_t i0) {
    typedef typename Lanes<A>::M M;
    const A slope = A(g.slope), gain = A(g.gain), clamp = A(g.clamp);
    const V vclamp = splat<V>(clamp), vzero = V{}, vgain = splat<V>(gain), vneg = splat<V>(gain * slope);
    for (int64_t i = i0, end = i0 + n; i < end;) {
        const int64_t w = i >> 4, stop = std::min(end, (w + 1) << 4);   // the samples of one code word
        Words word = Words{};
        if (g.mode == 0) {
            for (; i < stop; ++i) {
                V& x = u[i - i0];
                const M pos = x > vzero;
                V v = (pos ? x : x * slope) * gain;
                Words code = __builtin_convertvector(pos + 1, Words);       // -1 + 1 = 0 (positive), 0 + 1 = 1
                if (clamp >= A(0)) {
                    const M hit = (v >= vclamp) | (v <= -vclamp);
                    v = v > vclamp ? vclamp : v;
                    v = v < -vclamp ? -vclamp : v;
                    const Words h = __builtin_convertvector(hit, Words);    // all ones where clamped
                    code = (code & ~h) | (h & 2u);
                }
                x = v;
                word |= code << (2 * (int)(i & 15));
            }
            for (int l = 0; l < pb.nl; ++l) pb.codes[l][w] |= word[l];
        } else {
            for (int l = 0; l < pb.nl; ++l) word[l] = pb.codes[l][w];
            for (; i < stop; ++i) {
                const M code = __builtin_convertvector((word >> (2 * (int)(i & 15))) & 3u, M);
                const V d = code == M{} ? vgain : (code == (M{} + 1) ? vneg : vzero);
                u[i - i0] *= d;
            }
        }
    }
}

template <typename T, typename A> struct FusedBlock {
    typedef typename Lanes<A>::V V;
    Buffer<V> xrow, urow, orow;
    RowRing<V> ring_a, ring_b;        // x-filtered input rows; x-filtered U rows
    std::vector<const V*> rows;
    std::vector<A> w;
    PassTaps pa, pb_;                 // the passes along x of stage a (to U columns [ux0, ux1)) and stage b

    FusedBlock(const FusedGeom& g, const Tile& t) {
        pa.build(g.W, t.ux0, t.ux1, g.a.up, 1, g.a.px0, g.a.kx);
        pb_.build(t.ux1 - t.ux0, 0, g.Wo, 1, g.b.down, g.b.px0 + t.ux0, g.b.kx);
    }

    // 8 planes of the forward (mode 0) or masked (mode 1) map. t is the whole-plane tile of make_tile: U rows
    // [uy0, uy1) and columns [ux0, ux1) are the samples some output reads, input rows [iy0, iy1) what they read.
    void run(const FusedGeom& g, const Tile& t, const PlaneBlock<T>& pb, const A* bias) {
        const int wu = t.ux1 - t.ux0, hu = t.uy1 - t.uy0;
        V* const xr = xrow.reserve(g.W);
        V* const ur = urow.reserve(std::max(wu, 1));
        orow.reserve(g.Wo);
        rows.resize(std::max(g.a.ky, g.b.ky)); w.resize(rows.size());
        ring_a.reset(std::max(wu, 1), (g.a.ky + g.a.up - 1) / g.a.up + 1);
        ring_b.reset(g.Wo, g.b.ky + 1);
        int next_a = t.iy0, next_o = 0;
        for (int uy = t.uy0; uy < t.uy1; ++uy) {
            // stage a along y: U row uy from the x-upsampled input rows (computed when first needed)
            const RowTaps ra = row_taps(uy, g.H, g.a.up, 1, g.a.py0, g.a.ky);
            next_a = std::max(next_a, ra.first);
            for (; next_a <= ra.last; ++next_a) {
                gather_row<A, V, T>(pb, (int64_t)next_a * g.W, g.W, bias, xr);
                hpass<A, V>(xr, ring_a.row(next_a), pa, g.a.taps);
            }
            int nt = 0;
            for (int k = ra.k.begin, i = ra.first; k < ra.k.end; k += g.a.up, ++i, ++nt) {
                rows[nt] = ring_a.row(i);
                w[nt] = A(g.a.taps[k]);
            }
            vsum<A, V>(ur, wu, rows.data(), w.data(), nt, A(g.a.gain));
            // the nonlinearity (or the stored slopes), then stage b along x into ring b
            pointwise_row<A, V, T>(g, pb, ur, wu, (int64_t)uy * g.Wu + t.ux0);
            hpass<A, V>(ur, ring_b.row(uy - t.uy0), pb_, g.b.taps);
            next_o = emit_rows(g, t, pb, next_o, uy - t.uy0);
        }
        emit_rows(g, t, pb, next_o, hu);
    }

    // Stage b along y: every output row from next_o on whose U rows (local to the tile) are all done
    // (<= done; rows outside the tile are padding). Returns the next output row still to compute.
    int emit_rows(const FusedGeom& g, const Tile& t, const PlaneBlock<T>& pb, int next_o, int done) {
        const int hu = t.uy1 - t.uy0;
        for (; next_o < g.Ho; ++next_o) {
            const RowTaps rb = row_taps(next_o, hu, 1, g.b.down, g.b.py0 + t.uy0, g.b.ky);
            if (rb.k.begin < rb.k.end && rb.last > done) break;       // (no taps: a row of zeros, now)
            int nt = 0;
            for (int k = rb.k.begin, i = rb.first; k < rb.k.end; ++k, ++i, ++nt) {
                rows[nt] = ring_b.row(i);
                w[nt] = A(g.b.taps[k]);
            }
            vsum<A, V>(orow.data, g.Wo, rows.data(), w.data(), nt, A(g.b.gain));
            scatter_row<A, V, T>(pb, (int64_t)next_o * g.Wo, g.Wo, orow.data);
        }
        return next_o;
    }
};

// ---- bias_act ------------------------------------------------------------------------------------------------------
// Elements [i0, i1) of x (any shape, flattened) with b [C] along a dim with `inner` elements after it, through the
// shared functions of sgxl_ops.h: mode 0 value, 1 gradient, 2 second-order term. ACT is a compile-time constant in
// a local copy of the parameters, so the activation's switch folds away and the compiler vectorises the loops over
// a run of elements with one bias value (inner > 1), or over one row of channels (inner == 1).
template <int ACT, typename T>
void bias_act_range(int mode, const sgxl::BiasActParams& params, const T* x, const T* b, const T* g, const T* gg,
                    T* out, int64_t i0, int64_t i1, int64_t C, int64_t inner) {
    typedef typename AccOf<T>::type A;
    const sgxl::BiasActParams p{ACT, params.alpha, params.gain, params.clamp};
    // elements [i, end) with bias bias_at(j) (a constant, or one per element)
    auto run = [&](int64_t i, int64_t end, auto bias_at) {
        auto v = [&](int64_t j) { return Convert<A, T>::load(x[j]) + bias_at(j); };
        if (mode == 0)
            for (int64_t j = i; j < end; ++j) out[j] = Convert<A, T>::store(sgxl::bias_act_value<A>(p, v(j)));
        else if (mode == 1)
            for (int64_t j = i; j < end; ++j) out[j] = Convert<A, T>::store(sgxl::bias_act_grad<A>(p, Convert<A, T>::load(g[j]), v(j)));
        else
            for (int64_t j = i; j < end; ++j)
                out[j] = Convert<A, T>::store(sgxl::bias_act_grad2<A>(p, Convert<A, T>::load(gg[j]), Convert<A, T>::load(g[j]), v(j)));
    };
    for (int64_t i = i0; i < i1;) {
        if (inner == 1 && b) {                                           // a row of channels: bias b[c], c = j mod C
            const int64_t c = i % C, end = std::min(i1, i - c + C);
            const T* bc = b + c - i;
            run(i, end, [&](int64_t j) { return Convert<A, T>::load(bc[j]); });
            i = end;
        } else {                                                         // a run with one bias value
            const int64_t end = b ? std::min(i1, (i / inner + 1) * inner) : i1;
            const A bias = b ? Convert<A, T>::load(b[(i / inner) % C]) : A(0);
            run(i, end, [&](int64_t) { return bias; });
            i = end;
        }
    }
}

template <typename T>
void bias_act_elements(int mode, const sgxl::BiasActParams& p, const T* x, const T* b, const T* g, const T* gg, T* out,
                       int64_t i0, int64_t i1, int64_t C, int64_t inner) {
    using namespace sgxl;
    switch (p.act) {
        case ACT_RELU: return bias_act_range<ACT_RELU, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
        case ACT_LRELU: return bias_act_range<ACT_LRELU, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
        case ACT_TANH: return bias_act_range<ACT_TANH, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
        case ACT_SIGMOID: return bias_act_range<ACT_SIGMOID, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
        case ACT_ELU: return bias_act_range<ACT_ELU, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
        case ACT_SELU: return bias_act_range<ACT_SELU, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
        case ACT_SOFTPLUS: return bias_act_range<ACT_SOFTPLUS, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
        case ACT_SWISH: return bias_act_range<ACT_SWISH, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
        default: return bias_act_range<ACT_LINEAR, T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
    }
}

// ---- the loops over blocks of 8 planes (the caller splits [b0, b1) over threads) ------------------------------------
template <typename T> PlaneBlock<T> plane_block(const T* x, int64_t in_size, T* y, int64_t out_size, uint32_t* codes,
                                                int64_t words, int64_t P, int64_t block) {
    PlaneBlock<T> pb;
    const int64_t p0 = block * LANES;
    pb.nl = (int)std::min<int64_t>(LANES, P - p0);
    for (int l = 0; l < LANES; ++l) {
        const int64_t p = p0 + std::min(l, pb.nl - 1);                  // lanes past nl repeat the last plane, unused
        pb.in[l] = x + p * in_size;
        pb.out[l] = y + p * out_size;
        pb.codes[l] = codes ? codes + p * words : nullptr;
    }
    return pb;
}

template <typename T>
void upfirdn_blocks(const UpfirdnGeom& g, const T* x, T* y, int64_t P, int64_t b0, int64_t b1) {
    UpfirdnBlock<T, typename AccOf<T>::type> work(g);
    for (int64_t bi = b0; bi < b1; ++bi)
        work.run(g, plane_block<T>(x, (int64_t)g.H * g.W, y, (int64_t)g.Ho * g.Wo, nullptr, 0, P, bi));
}

template <typename T>
void fused_blocks(const FusedGeom& g, const Tile& t, const T* x, const T* b, int64_t C, T* y, uint32_t* codes,
                  int64_t P, int64_t b0, int64_t b1) {
    typedef typename AccOf<T>::type A;
    FusedBlock<T, A> work(g, t);
    const int64_t words = sgxl::code_words_per_plane(g.Hu, g.Wu);
    for (int64_t bi = b0; bi < b1; ++bi) {
        const PlaneBlock<T> pb = plane_block<T>(x, (int64_t)g.H * g.W, y, (int64_t)g.Ho * g.Wo, codes, words, P, bi);
        A bias[LANES] = {};
        for (int l = 0; l < pb.nl && b; ++l) bias[l] = Convert<A, T>::load(b[(bi * LANES + l) % C]);
        work.run(g, t, pb, bias);
    }
}

}  // namespace SGXL_ISA_NS
