// sgxl fused ops: the per-element and per-tile arithmetic, shared by the CPU build (sgxl_ops_cpu.cpp) and the
// CUDA kernels (sgxl_cuda_kernels.cu). Every function here is plain C++ marked SGXL_HD, which is
// `__host__ __device__` under nvcc and `inline` otherwise, so the CPU build runs -- and the tests check --
// exactly the arithmetic the GPU runs. No torch headers: this file must compile as fast CUDA.
//
// Conventions (see nbs/01_ops.ipynb for the maths):
//  * A is the accumulation type (float for fp32/fp16/bf16 storage, double for fp64), T the storage type.
//  * Filters arrive as *correlation* taps c[k] (the Python side flips them for a true convolution), float32.
//  * One upfirdn step along an axis of length L: zero-insert by `up`, pad by p0 in front, correlate with c
//    (K taps), keep every `down`-th output: out[j] = sum_k c[k] * z[j*down + k - p0], where z[m] = x[m/up]
//    if m is a multiple of up and 0 <= m/up < L, else 0.
#pragma once
#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SGXL_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define SGXL_HD inline __attribute__((always_inline))   // inlined into the CPU loops, whatever instruction set they target
#else
#define SGXL_HD inline
#endif

namespace sgxl {

// ---------------------------------------------------------------------------------------------------------
// small integer helpers (b > 0)
SGXL_HD int floor_div(int a, int b) { int q = a / b; return (a % b != 0 && a < 0) ? q - 1 : q; }
SGXL_HD int ceil_div(int a, int b) { return -floor_div(-a, b); }
SGXL_HD int pos_mod(int a, int b) { int r = a % b; return r < 0 ? r + b : r; }
SGXL_HD int imin(int a, int b) { return a < b ? a : b; }
SGXL_HD int imax(int a, int b) { return a > b ? a : b; }

// float/double overloads of the libm functions (each has a host and a device version under nvcc)
SGXL_HD float exp_(float x) { return expf(x); }
SGXL_HD double exp_(double x) { return exp(x); }
SGXL_HD float expm1_(float x) { return expm1f(x); }
SGXL_HD double expm1_(double x) { return expm1(x); }
SGXL_HD float log1p_(float x) { return log1pf(x); }
SGXL_HD double log1p_(double x) { return log1p(x); }
SGXL_HD float tanh_(float x) { return tanhf(x); }
SGXL_HD double tanh_(double x) { return tanh(x); }

// Storage <-> accumulation conversions. The CUDA file specialises Convert for __half and __nv_bfloat16
// (torch builds extensions with the implicit half conversions switched off).
template <typename A, typename T> struct Convert {
    SGXL_HD static A load(T v) { return A(v); }
    SGXL_HD static T store(A v) { return T(v); }
};
template <typename A, typename T> SGXL_HD A load(const T* p, int64_t i) { return Convert<A, T>::load(p[i]); }

// ---------------------------------------------------------------------------------------------------------
// bias_act: y = clamp(gain * phi(x + b)). The codes match sgxl.ops.ACTIVATIONS.
enum Act : int { ACT_LINEAR = 0, ACT_RELU, ACT_LRELU, ACT_TANH, ACT_SIGMOID, ACT_ELU, ACT_SELU, ACT_SOFTPLUS, ACT_SWISH };
#define SGXL_SELU_ALPHA 1.6732632423543772848170429916717
#define SGXL_SELU_SCALE 1.0507009873554804934193349852946
#define SGXL_SOFTPLUS_THRESHOLD 20   // softplus(x) = x above this (as torch)

template <typename A> SGXL_HD A sigmoid_(A x) { return A(1) / (A(1) + exp_(-x)); }

// phi(x)
template <typename A> SGXL_HD A act_value(int act, A x, A alpha) {
    switch (act) {
        case ACT_RELU: return x > A(0) ? x : A(0);
        case ACT_LRELU: return x > A(0) ? x : x * alpha;
        case ACT_TANH: return tanh_(x);
        case ACT_SIGMOID: return sigmoid_(x);
        case ACT_ELU: return x > A(0) ? x : alpha * expm1_(x);
        case ACT_SELU: return A(SGXL_SELU_SCALE) * (x > A(0) ? x : A(SGXL_SELU_ALPHA) * expm1_(x));
        case ACT_SOFTPLUS: return x > A(SGXL_SOFTPLUS_THRESHOLD) ? x : log1p_(exp_(x));
        case ACT_SWISH: return x * sigmoid_(x);
        default: return x;
    }
}

// phi'(x). At a kink the value is the left one, as torch's backward: relu'(0) = 0, lrelu'(0) = alpha, elu'(0) = alpha.
template <typename A> SGXL_HD A act_d1(int act, A x, A alpha) {
    switch (act) {
        case ACT_RELU: return x > A(0) ? A(1) : A(0);
        case ACT_LRELU: return x > A(0) ? A(1) : alpha;
        case ACT_TANH: { A t = tanh_(x); return A(1) - t * t; }
        case ACT_SIGMOID: { A s = sigmoid_(x); return s * (A(1) - s); }
        case ACT_ELU: return x > A(0) ? A(1) : alpha * exp_(x);
        case ACT_SELU: return A(SGXL_SELU_SCALE) * (x > A(0) ? A(1) : A(SGXL_SELU_ALPHA) * exp_(x));
        case ACT_SOFTPLUS: return x > A(SGXL_SOFTPLUS_THRESHOLD) ? A(1) : sigmoid_(x);
        case ACT_SWISH: { A s = sigmoid_(x); return s * (A(1) + x * (A(1) - s)); }
        default: return A(1);
    }
}

// phi''(x)
template <typename A> SGXL_HD A act_d2(int act, A x, A alpha) {
    switch (act) {
        case ACT_TANH: { A t = tanh_(x); return A(-2) * t * (A(1) - t * t); }
        case ACT_SIGMOID: { A s = sigmoid_(x); return s * (A(1) - s) * (A(1) - A(2) * s); }
        case ACT_ELU: return x > A(0) ? A(0) : alpha * exp_(x);
        case ACT_SELU: return x > A(0) ? A(0) : A(SGXL_SELU_SCALE) * A(SGXL_SELU_ALPHA) * exp_(x);
        case ACT_SOFTPLUS: { if (x > A(SGXL_SOFTPLUS_THRESHOLD)) return A(0); A s = sigmoid_(x); return s * (A(1) - s); }
        case ACT_SWISH: { A s = sigmoid_(x); return s * (A(1) - s) * (A(2) + x * (A(1) - A(2) * s)); }
        default: return A(0);   // linear, relu, lrelu: piecewise linear
    }
}

struct BiasActParams {
    int act;        // Act
    double alpha;   // lrelu slope / elu alpha
    double gain;    // g
    double clamp;   // c; < 0: no clamp
};

// 1 where clamp(g * phi(v)) lets the gradient through: -c < g phi(v) < c strictly, as torch.clamp's
// backward (a value exactly at the boundary gets no gradient).
template <typename A> SGXL_HD A clamp_pass(const BiasActParams& p, A v) {
    if (p.clamp < 0) return A(1);
    A y = A(p.gain) * act_value<A>(p.act, v, A(p.alpha));
    return (y >= A(p.clamp) || y <= -A(p.clamp)) ? A(0) : A(1);
}

// y = clamp(g * phi(v)), v = x + b
template <typename A> SGXL_HD A bias_act_value(const BiasActParams& p, A v) {
    A y = A(p.gain) * act_value<A>(p.act, v, A(p.alpha));
    if (p.clamp >= 0) y = y > A(p.clamp) ? A(p.clamp) : (y < -A(p.clamp) ? -A(p.clamp) : y);
    return y;
}

// dL/dx = gy * g * phi'(v) * pass(v)
template <typename A> SGXL_HD A bias_act_grad(const BiasActParams& p, A gy, A v) {
    return gy * A(p.gain) * act_d1<A>(p.act, v, A(p.alpha)) * clamp_pass<A>(p, v);
}

// d(dL/dx)/dx contracted with ggx: ggx * gy * g * phi''(v) * pass(v)  (the clamp mask is piecewise constant)
template <typename A> SGXL_HD A bias_act_grad2(const BiasActParams& p, A ggx, A gy, A v) {
    return ggx * gy * A(p.gain) * act_d2<A>(p.act, v, A(p.alpha)) * clamp_pass<A>(p, v);
}

// ---------------------------------------------------------------------------------------------------------
// upfirdn along one axis: the taps k that reach a real input sample for output position r = j*down.
// z index m = r + k - p0 must be a multiple of up with 0 <= m/up < L, and 0 <= k < K. The valid k form
// an arithmetic progression k_begin, k_begin + up, ... < k_end; the input index is (r + k - p0) / up.
struct TapRange { int begin, end; };
SGXL_HD TapRange tap_range(int r, int p0, int up, int L, int K) {
    int first = p0 - r;                                  // k at which m = 0
    TapRange t;
    t.begin = first >= 0 ? first : pos_mod(first, up);   // smallest k >= max(0, first) with m % up == 0
    t.end = imin(K, first + L * up);                     // m < L * up
    return t;
}

// One output sample of a 1-D upfirdn: sum_k c[k] * x[(r + k - p0)/up], reading x with a stride.
template <typename A, typename T>
SGXL_HD A upfirdn1d_sample(const T* x, int64_t stride, int L, const float* c, int K, int up, int p0, int r) {
    const TapRange t = tap_range(r, p0, up, L, K);
    const T* src = x + (int64_t)((r + t.begin - p0) / up) * stride;   // consecutive taps read consecutive samples
    A acc = A(0);
    for (int k = t.begin; k < t.end; k += up, src += stride) acc += A(c[k]) * Convert<A, T>::load(*src);
    return acc;
}

// One output sample of a 2-D (non-separable) upfirdn: c is [Ky][Kx] in correlation order.
template <typename A, typename T>
SGXL_HD A upfirdn2d_sample(const T* x, int H, int W, const float* c, int Kx, int Ky, int upx, int upy,
                           int px0, int py0, int ry, int rx) {
    const TapRange ty = tap_range(ry, py0, upy, H, Ky), tx = tap_range(rx, px0, upx, W, Kx);
    const T* row = x + (int64_t)((ry + ty.begin - py0) / upy) * W + (rx + tx.begin - px0) / upx;
    A acc = A(0);
    for (int ky = ty.begin; ky < ty.end; ky += upy, row += W) {
        const T* src = row;
        for (int kx = tx.begin; kx < tx.end; kx += upx, ++src) acc += A(c[ky * Kx + kx]) * Convert<A, T>::load(*src);
    }
    return acc;
}

// ---------------------------------------------------------------------------------------------------------
// filtered_lrelu: two upfirdn stages with a pointwise step between them, on one [H, W] plane.
//   stage a: zero-insert by a.up, pad, filter  ->  intermediate U [Hu, Wu]   (a.down == 1)
//   pointwise on U: mode 0: v = clamp(gain * lrelu(u)), recording a 2-bit code per sample,
//                   mode 1: v = u * (dv/du from the stored code)  (the linear map of the backward pass)
//   stage b: pad, filter, keep every b.down-th sample  ->  output [Ho, Wo]  (b.up == 1)
// The forward pass is mode 0; the backward pass is mode 1 with both stages transposed; the double backward
// is mode 1 with the forward geometry. Codes: 0 = u > 0 (slope 1), 1 = u <= 0 (slope `slope`),
// 2 = clamped (slope 0), stored 16 per 32-bit word; each plane starts on a fresh word.
enum Code : uint32_t { CODE_POS = 0, CODE_NEG = 1, CODE_CLAMPED = 2 };

struct Stage {
    int up, down;        // factors (the same along x and y)
    int px0, py0;        // leading padding (negative: crop)
    int kx, ky;          // taps along x and y
    int separable;       // 1: taps[k] along x then y (kx == ky); 0: taps[ky][kx]
    double gain;         // multiplies the stage's output
    const float* taps;   // correlation taps
};

struct FusedGeom {
    int H, W;            // input plane
    int Hu, Wu;          // intermediate plane
    int Ho, Wo;          // output plane
    Stage a, b;
    int mode;            // 0: lrelu and write codes; 1: multiply by the stored slope
    double slope, gain, clamp;  // clamp < 0: none
};

SGXL_HD int64_t code_words_per_plane(int Hu, int Wu) { return ((int64_t)Hu * Wu + 15) / 16; }
SGXL_HD uint32_t get_code(const uint32_t* words, int64_t i) { return (words[i >> 4] >> ((i & 15) * 2)) & 3u; }
SGXL_HD void put_code(uint32_t* words, int64_t i, uint32_t code) {
    if (!code) return;                                   // words start zeroed; 0 = CODE_POS
#if defined(__CUDA_ARCH__)
    atomicOr(words + (i >> 4), code << ((i & 15) * 2));  // tiles of one plane may share a word
#else
    words[i >> 4] |= code << ((i & 15) * 2);             // the CPU build gives each plane to one thread
#endif
}

// v = clamp(g * lrelu(u)) and its code. The comparisons are those of torch's backward passes: lrelu'(0) is
// the slope (u > 0 tests the positive side), and clamp passes no gradient at or beyond +-c.
template <typename A> SGXL_HD A lrelu_forward(A u, A slope, A gain, A clamp, uint32_t& code) {
    A v = (u > A(0) ? u : u * slope) * gain;
    code = u > A(0) ? CODE_POS : CODE_NEG;
    if (clamp >= A(0) && (v >= clamp || v <= -clamp)) {
        v = v > clamp ? clamp : (v < -clamp ? -clamp : v);
        code = CODE_CLAMPED;
    }
    return v;
}
// dv/du from a code
template <typename A> SGXL_HD A lrelu_slope(uint32_t code, A slope, A gain) {
    return code == CODE_POS ? gain : (code == CODE_NEG ? gain * slope : A(0));
}

// The part of the planes one tile touches. Output tile [oy0, oy1) x [ox0, ox1) reads U rows [uy0, uy1) and
// columns [ux0, ux1), which read input rows [iy0, iy1) (all clipped to the planes).
struct Tile { int oy0, oy1, ox0, ox1, uy0, uy1, ux0, ux1, iy0, iy1; };

SGXL_HD Tile make_tile(const FusedGeom& g, int oy0, int oy1, int ox0, int ox1) {
    Tile t;
    t.oy0 = oy0; t.oy1 = oy1; t.ox0 = ox0; t.ox1 = ox1;
    // stage b reads padded positions [o0*down, (o1-1)*down + K); U index = position - pad
    t.uy0 = imax(oy0 * g.b.down - g.b.py0, 0); t.uy1 = imin((oy1 - 1) * g.b.down + g.b.ky - g.b.py0, g.Hu);
    t.ux0 = imax(ox0 * g.b.down - g.b.px0, 0); t.ux1 = imin((ox1 - 1) * g.b.down + g.b.kx - g.b.px0, g.Wu);
    if (t.uy1 < t.uy0) t.uy1 = t.uy0;
    if (t.ux1 < t.ux0) t.ux1 = t.ux0;
    // stage a: U row u reads input rows (u + k - pad) / up for k in [0, K)
    t.iy0 = imax(ceil_div(t.uy0 - g.a.py0, g.a.up), 0);
    t.iy1 = imin(floor_div(t.uy1 - 1 + g.a.ky - 1 - g.a.py0, g.a.up) + 1, g.H);
    if (t.iy1 < t.iy0) t.iy1 = t.iy0;
    return t;
}
// workspace sizes (in A elements) of a tile: tmp_a [iy][ux], u [uy][ux], tmp_b [uy][ox]
SGXL_HD int tile_tmp_a_size(const Tile& t) { return (t.iy1 - t.iy0) * (t.ux1 - t.ux0); }
SGXL_HD int tile_u_size(const Tile& t) { return (t.uy1 - t.uy0) * (t.ux1 - t.ux0); }
SGXL_HD int tile_tmp_b_size(const Tile& t) { return (t.uy1 - t.uy0) * (t.ox1 - t.ox0); }

// Each phase below is split over `nt` workers; worker `tid` takes every nt-th element. The CPU calls a
// phase with (0, 1); a CUDA block with (threadIdx.x, blockDim.x) and a __syncthreads() between phases.

// stage a, separable, along x: tmp_a[iy][ux] = sum_k c[k] * (x[iy][(ux + k - px0)/up] + bias)
// (the taps that reach a real sample are k = r.begin + j*up, reading input i0 + j)
template <typename A, typename T>
SGXL_HD void phase_a_rows(const FusedGeom& g, const Tile& t, const T* x, A bias, A* tmp_a, int tid, int nt) {
    const int w = t.ux1 - t.ux0, n = (t.iy1 - t.iy0) * w;
    for (int i = tid; i < n; i += nt) {
        const int iy = t.iy0 + i / w, ux = t.ux0 + i % w;
        const TapRange r = tap_range(ux, g.a.px0, g.a.up, g.W, g.a.kx);
        const T* src = x + (int64_t)iy * g.W + (ux + r.begin - g.a.px0) / g.a.up;
        A acc = A(0);
        for (int k = r.begin; k < r.end; k += g.a.up, ++src)
            acc += A(g.a.taps[k]) * (Convert<A, T>::load(*src) + bias);
        tmp_a[i] = acc;
    }
}

// stage a, separable, along y: u[uy][ux] = gain_a * sum_k c[k] * tmp_a[(uy + k - py0)/up][ux]
template <typename A>
SGXL_HD void phase_a_cols(const FusedGeom& g, const Tile& t, const A* tmp_a, A* u, int tid, int nt) {
    const int w = t.ux1 - t.ux0, n = (t.uy1 - t.uy0) * w;
    for (int i = tid; i < n; i += nt) {
        const int uy = t.uy0 + i / w, col = i % w;
        const TapRange r = tap_range(uy, g.a.py0, g.a.up, g.H, g.a.ky);
        const A* src = tmp_a + ((uy + r.begin - g.a.py0) / g.a.up - t.iy0) * w + col;
        A acc = A(0);
        for (int k = r.begin; k < r.end; k += g.a.up, src += w)
            acc += A(g.a.taps[k]) * *src;
        u[i] = A(g.a.gain) * acc;
    }
}

// stage a, 2-D filter: u[uy][ux] = gain_a * sum_{ky,kx} c[ky][kx] * (x[..][..] + bias)
template <typename A, typename T>
SGXL_HD void phase_a_2d(const FusedGeom& g, const Tile& t, const T* x, A bias, A* u, int tid, int nt) {
    const int w = t.ux1 - t.ux0, n = (t.uy1 - t.uy0) * w;
    for (int i = tid; i < n; i += nt) {
        const int uy = t.uy0 + i / w, ux = t.ux0 + i % w;
        TapRange ry = tap_range(uy, g.a.py0, g.a.up, g.H, g.a.ky), rx = tap_range(ux, g.a.px0, g.a.up, g.W, g.a.kx);
        A acc = A(0);
        for (int ky = ry.begin; ky < ry.end; ky += g.a.up) {
            const T* row = x + (int64_t)((uy + ky - g.a.py0) / g.a.up) * g.W;
            for (int kx = rx.begin; kx < rx.end; kx += g.a.up)
                acc += A(g.a.taps[ky * g.a.kx + kx]) * (load<A>(row, (ux + kx - g.a.px0) / g.a.up) + bias);
        }
        u[i] = A(g.a.gain) * acc;
    }
}

// The U row a forward output row owns for writing codes: min(floor((u + pad) / down), n_out - 1).
SGXL_HD int code_owner(int u, int pad, int down, int n_out) { return imin(floor_div(u + pad, down), n_out - 1); }

// pointwise on the tile's U. Mode 0 writes the codes of the samples this tile owns (every U sample that some
// output reads is owned by exactly one tile), mode 1 reads them. `codes` points at this plane's words.
template <typename A>
SGXL_HD void phase_pointwise(const FusedGeom& g, const Tile& t, A* u, uint32_t* codes, int tid, int nt) {
    const int w = t.ux1 - t.ux0, n = (t.uy1 - t.uy0) * w;
    const A slope = A(g.slope), gain = A(g.gain), clamp = A(g.clamp);
    for (int i = tid; i < n; i += nt) {
        const int uy = t.uy0 + i / w, ux = t.ux0 + i % w;
        const int64_t ci = (int64_t)uy * g.Wu + ux;
        if (g.mode == 0) {
            uint32_t code;
            u[i] = lrelu_forward<A>(u[i], slope, gain, clamp, code);
            const int oy = code_owner(uy, g.b.py0, g.b.down, g.Ho), ox = code_owner(ux, g.b.px0, g.b.down, g.Wo);
            if (oy >= t.oy0 && oy < t.oy1 && ox >= t.ox0 && ox < t.ox1) put_code(codes, ci, code);
        } else {
            u[i] = u[i] * lrelu_slope<A>(get_code(codes, ci), slope, gain);
        }
    }
}

// stage b, separable, along x: tmp_b[uy][ox] = sum_k c[k] * u[uy][ox*down + k - px0]
template <typename A>
SGXL_HD void phase_b_rows(const FusedGeom& g, const Tile& t, const A* u, A* tmp_b, int tid, int nt) {
    const int wu = t.ux1 - t.ux0, w = t.ox1 - t.ox0, n = (t.uy1 - t.uy0) * w;
    for (int i = tid; i < n; i += nt) {
        const int row = i / w, ox = t.ox0 + i % w;
        const int base = ox * g.b.down - g.b.px0;           // U column of tap 0
        const int k0 = imax(0, t.ux0 - base), k1 = imin(g.b.kx, t.ux1 - base);
        const A* src = u + row * wu + (base - t.ux0);
        A acc = A(0);
        for (int k = k0; k < k1; ++k) acc += A(g.b.taps[k]) * src[k];
        tmp_b[i] = acc;
    }
}

// stage b, separable, along y: y[oy][ox] = gain_b * sum_k c[k] * tmp_b[oy*down + k - py0][ox]
template <typename A, typename T>
SGXL_HD void phase_b_cols(const FusedGeom& g, const Tile& t, const A* tmp_b, T* y, int tid, int nt) {
    const int w = t.ox1 - t.ox0, n = (t.oy1 - t.oy0) * w;
    for (int i = tid; i < n; i += nt) {
        const int oy = t.oy0 + i / w, col = i % w;
        const int base = oy * g.b.down - g.b.py0;
        const int k0 = imax(0, t.uy0 - base), k1 = imin(g.b.ky, t.uy1 - base);
        const A* src = tmp_b + (base + k0 - t.uy0) * w + col;
        A acc = A(0);
        for (int k = k0; k < k1; ++k, src += w) acc += A(g.b.taps[k]) * *src;
        y[(int64_t)oy * g.Wo + t.ox0 + col] = Convert<A, T>::store(A(g.b.gain) * acc);
    }
}

// stage b, 2-D filter: y[oy][ox] = gain_b * sum_{ky,kx} c[ky][kx] * u[oy*down + ky - py0][ox*down + kx - px0]
template <typename A, typename T>
SGXL_HD void phase_b_2d(const FusedGeom& g, const Tile& t, const A* u, T* y, int tid, int nt) {
    const int wu = t.ux1 - t.ux0, w = t.ox1 - t.ox0, n = (t.oy1 - t.oy0) * w;
    for (int i = tid; i < n; i += nt) {
        const int oy = t.oy0 + i / w, ox = t.ox0 + i % w;
        const int by = oy * g.b.down - g.b.py0, bx = ox * g.b.down - g.b.px0;
        const int ky0 = imax(0, t.uy0 - by), ky1 = imin(g.b.ky, t.uy1 - by);
        const int kx0 = imax(0, t.ux0 - bx), kx1 = imin(g.b.kx, t.ux1 - bx);
        A acc = A(0);
        for (int ky = ky0; ky < ky1; ++ky) {
            const A* src = u + (by + ky - t.uy0) * wu + (bx - t.ux0);
            for (int kx = kx0; kx < kx1; ++kx) acc += A(g.b.taps[ky * g.b.kx + kx]) * src[kx];
        }
        y[(int64_t)oy * g.Wo + ox] = Convert<A, T>::store(A(g.b.gain) * acc);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Row-wise versions of the four separable phases, for the CPU build (host only). They compute the same
// sums as the per-sample phases above -- the same taps, added in the same order starting from 0 -- but with
// the loop over taps outside the loop over a row, so the compiler can vectorise along the row. Results are
// bitwise equal to the per-sample phases (without FMA contraction); the tests check both against the
// reference, the per-sample ones through the CPU build's tiled mode.

// stage a along x: for each tap k the columns it feeds are ux = ux_start + m*up, reading input i0 + m
template <typename A, typename T>
inline void rows_a_rows(const FusedGeom& g, const Tile& t, const T* x, A bias, A* tmp_a) {
    const int w = t.ux1 - t.ux0, up = g.a.up;
    for (int iy = t.iy0; iy < t.iy1; ++iy) {
        A* out = tmp_a + (iy - t.iy0) * w;
        const T* row = x + (int64_t)iy * g.W;
        for (int c = 0; c < w; ++c) out[c] = A(0);
        for (int k = 0; k < g.a.kx; ++k) {
            // columns ux in [ux0, ux1) with (ux + k - px0) % up == 0 and 0 <= (ux + k - px0)/up < W
            const int lo = imax(t.ux0, g.a.px0 - k), hi = imin(t.ux1, g.W * up + g.a.px0 - k);
            const int start = lo + pos_mod(g.a.px0 - k - lo, up);
            const A ck = A(g.a.taps[k]);
            for (int ux = start, i = (start + k - g.a.px0) / up; ux < hi; ux += up, ++i)
                out[ux - t.ux0] += ck * (Convert<A, T>::load(row[i]) + bias);
        }
    }
}

// stage a along y: u[uy][:] = gain * sum_k c[k] tmp_a[(uy + k - py0)/up][:]
template <typename A>
inline void rows_a_cols(const FusedGeom& g, const Tile& t, const A* tmp_a, A* u) {
    const int w = t.ux1 - t.ux0;
    for (int uy = t.uy0; uy < t.uy1; ++uy) {
        A* out = u + (uy - t.uy0) * w;
        const TapRange r = tap_range(uy, g.a.py0, g.a.up, g.H, g.a.ky);
        const A* src = tmp_a + ((uy + r.begin - g.a.py0) / g.a.up - t.iy0) * w;
        for (int c = 0; c < w; ++c) out[c] = A(0);
        for (int k = r.begin; k < r.end; k += g.a.up, src += w) {
            const A ck = A(g.a.taps[k]);
            for (int c = 0; c < w; ++c) out[c] += ck * src[c];
        }
        for (int c = 0; c < w; ++c) out[c] = A(g.a.gain) * out[c];
    }
}

// stage b along x: tmp_b[uy][ox] = sum_k c[k] u[uy][ox*down + k - px0], k in the range where that column exists
template <typename A>
inline void rows_b_rows(const FusedGeom& g, const Tile& t, const A* u, A* tmp_b) {
    const int wu = t.ux1 - t.ux0, w = t.ox1 - t.ox0, down = g.b.down;
    for (int row = 0; row < t.uy1 - t.uy0; ++row) {
        A* out = tmp_b + row * w;
        const A* src = u + row * wu;
        for (int c = 0; c < w; ++c) out[c] = A(0);
        for (int k = 0; k < g.b.kx; ++k) {
            // outputs ox whose column ox*down + k - px0 lies in [ux0, ux1)
            const int lo = imax(t.ox0, ceil_div(t.ux0 - k + g.b.px0, down));
            const int hi = imin(t.ox1, ceil_div(t.ux1 - k + g.b.px0, down));
            const A ck = A(g.b.taps[k]);
            for (int ox = lo; ox < hi; ++ox) out[ox - t.ox0] += ck * src[ox * down + k - g.b.px0 - t.ux0];
        }
    }
}

// stage b along y: y[oy][:] = gain * sum_k c[k] tmp_b[oy*down + k - py0][:]; `acc` is one row of scratch
template <typename A, typename T>
inline void rows_b_cols(const FusedGeom& g, const Tile& t, const A* tmp_b, T* y, A* acc) {
    const int w = t.ox1 - t.ox0;
    for (int oy = t.oy0; oy < t.oy1; ++oy) {
        const int base = oy * g.b.down - g.b.py0;
        const int k0 = imax(0, t.uy0 - base), k1 = imin(g.b.ky, t.uy1 - base);
        const A* src = tmp_b + (base + k0 - t.uy0) * w;
        for (int c = 0; c < w; ++c) acc[c] = A(0);
        for (int k = k0; k < k1; ++k, src += w) {
            const A ck = A(g.b.taps[k]);
            for (int c = 0; c < w; ++c) acc[c] += ck * src[c];
        }
        T* out = y + (int64_t)oy * g.Wo + t.ox0;
        for (int c = 0; c < w; ++c) out[c] = Convert<A, T>::store(A(g.b.gain) * acc[c]);
    }
}

}  // namespace sgxl
