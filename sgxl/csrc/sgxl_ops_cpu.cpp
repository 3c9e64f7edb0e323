// sgxl fused ops, CPU build. Two kinds of loops call the shared arithmetic of sgxl_ops.h:
//  * the fast path (the default): separable upfirdn2d and filtered_lrelu on blocks of 8 planes, one lane vector
//    per sample (sgxl_cpu_kernels.h), compiled for the baseline instruction set and for AVX2 + FMA, chosen at
//    run time (SGXL_CPU_ISA=base forces the baseline);
//  * the tile path: the CUDA kernel's tiles and per-sample phases with a single worker (tid 0 of 1), which the
//    tests run (ops.CPU_TILE > 0) to check the GPU's arithmetic on the CPU; it also takes 2-D (non-separable)
//    filters.
// float32, float64, float16 and bfloat16 tensors; half types are computed in float32.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "sgxl_bind.h"

namespace sgxl {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

#define SGXL_ISA_NS isa_base
#include "sgxl_cpu_kernels.h"
#undef SGXL_ISA_NS

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SGXL_HAVE_AVX2 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define SGXL_ISA_NS isa_avx2
#include "sgxl_cpu_kernels.h"
#undef SGXL_ISA_NS
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

// The instruction set the fast path runs: "avx2" where the CPU has AVX2 and FMA, else "base";
// the environment variable SGXL_CPU_ISA=base forces the baseline (the tests run both).
static const char* cpu_isa() {
    const char* force = std::getenv("SGXL_CPU_ISA");
    if (force && std::strcmp(force, "base") == 0) return "base";
#ifdef SGXL_HAVE_AVX2
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2) return "avx2";
#endif
    return "base";
}

static bool use_avx2() { return std::strcmp(cpu_isa(), "avx2") == 0; }

// the dtypes of every CPU op
#define SGXL_DISPATCH(TYPE, NAME, ...) AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// ---- bias_act: mode 0 value, 1 gradient, 2 second-order term -----------------------------------------------
template <typename T>
void bias_act_dispatch(int mode, const BiasActParams& p, const T* x, const T* b, const T* g, const T* gg, T* out,
                       int64_t n, int64_t C, int64_t inner) {
    const bool avx2 = use_avx2();
    at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
#ifdef SGXL_HAVE_AVX2
        if (avx2) return isa_avx2::bias_act_elements<T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
#endif
        (void)avx2;
        isa_base::bias_act_elements<T>(mode, p, x, b, g, gg, out, i0, i1, C, inner);
    });
}

// x: contiguous, any shape; b: [C] or undefined; C = x.size(dim), inner = prod(x.shape[dim+1:]).
at::Tensor bias_act(int64_t mode, at::Tensor x, std::optional<at::Tensor> b_, std::optional<at::Tensor> g_,
                       std::optional<at::Tensor> gg_, int64_t C, int64_t inner, int64_t act, double alpha, double gain,
                       double clamp) {
    at::Tensor b = opt(b_), g = opt(g_), gg = opt(gg_);
    TORCH_CHECK(x.is_contiguous() && (!b.defined() || b.is_contiguous()), "sgxl: bias_act needs contiguous tensors");
    TORCH_CHECK(mode == 0 || (g.defined() && g.sizes() == x.sizes() && g.is_contiguous()), "sgxl: bad gradient");
    TORCH_CHECK(mode != 2 || (gg.defined() && gg.sizes() == x.sizes() && gg.is_contiguous()), "sgxl: bad gradient");
    BiasActParams p{(int)act, alpha, gain, clamp};
    auto out = at::empty_like(x);
    SGXL_DISPATCH(x.scalar_type(), "sgxl_bias_act", [&] {
        bias_act_dispatch<scalar_t>((int)mode, p, x.data_ptr<scalar_t>(), b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                                g.defined() ? g.data_ptr<scalar_t>() : nullptr, gg.defined() ? gg.data_ptr<scalar_t>() : nullptr,
                                out.data_ptr<scalar_t>(), x.numel(), C, inner);
    });
    return out;
}

// ---- upfirdn2d -----------------------------------------------------------------------------------------------
// 2-D (non-separable) filters: one output sample at a time (upfirdn2d_sample of sgxl_ops.h)
template <typename T>
void upfirdn2d_2d_loop(const T* x, T* y, const float* c, int64_t P, int H, int W, int Ho, int Wo, int kx, int ky,
                       int upx, int upy, int dx, int dy, int px0, int py0, double gain) {
    using A = typename AccOf<T>::type;
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
            const T* xp = x + p * H * W;
            T* yp = y + p * Ho * Wo;
            for (int oy = 0; oy < Ho; ++oy)
                for (int ox = 0; ox < Wo; ++ox)
                    yp[(int64_t)oy * Wo + ox] = T(A(gain) * upfirdn2d_sample<A, T>(xp, H, W, c, kx, ky, upx, upy, px0, py0, oy * dy, ox * dx));
        }
    });
}

// separable filters: the fast path, blocks of 8 planes split over threads
template <typename T>
void upfirdn2d_fast(const UpfirdnGeom& g, const T* x, T* y, int64_t P) {
    const bool avx2 = use_avx2();
    at::parallel_for(0, (P + LANES - 1) / LANES, 1, [&](int64_t b0, int64_t b1) {
#ifdef SGXL_HAVE_AVX2
        if (avx2) return isa_avx2::upfirdn_blocks<T>(g, x, y, P, b0, b1);
#endif
        (void)avx2;
        isa_base::upfirdn_blocks<T>(g, x, y, P, b0, b1);
    });
}

// f: correlation taps (1-D separable or 2-D [Ky, Kx]); pad = (x0, x1, y0, y1)
at::Tensor upfirdn2d(at::Tensor x, at::Tensor f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
                        std::vector<int64_t> pad, double gain) {
    check_plane_input(x, "x");
    TORCH_CHECK(f.scalar_type() == at::kFloat && f.is_contiguous() && (f.dim() == 1 || f.dim() == 2), "sgxl: bad filter");
    auto shape = upfirdn_out_size(x, f, upx, upy, downx, downy, pad);
    auto y = at::empty(shape, x.options());
    const int64_t P = x.size(0) * x.size(1);
    const int H = (int)x.size(2), W = (int)x.size(3), Ho = (int)shape[2], Wo = (int)shape[3];
    SGXL_DISPATCH(x.scalar_type(), "sgxl_upfirdn2d", [&] {
        if (f.dim() == 1) {
            const UpfirdnGeom g{H, W, Ho, Wo, (int)f.size(0), (int)upx, (int)upy, (int)downx, (int)downy,
                                          (int)pad[0], (int)pad[2], gain, f.data_ptr<float>()};
            upfirdn2d_fast<scalar_t>(g, x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), P);
        } else {
            upfirdn2d_2d_loop<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), f.data_ptr<float>(), P, H, W, Ho,
                                        Wo, (int)f.size(1), (int)f.size(0), (int)upx, (int)upy, (int)downx, (int)downy,
                                        (int)pad[0], (int)pad[2], gain);
        }
    });
    return y;
}

// ---- filtered_lrelu: the tile phases, one plane per tile ----------------------------------------------------------
// One tile of one plane. rows = true: the row-wise phases (fast; the default, one tile per plane);
// false: the per-sample phases the CUDA kernel runs, with one worker.
template <typename A, typename T>
void fused_tile(const FusedGeom& g, const Tile& t, const T* xp, A bias, T* yp, uint32_t* codes, bool rows,
                std::vector<A>& tmp_a, std::vector<A>& u, std::vector<A>& tmp_b) {
    tmp_a.resize(tile_tmp_a_size(t)); u.resize(tile_u_size(t)); tmp_b.resize(tile_tmp_b_size(t) + (t.ox1 - t.ox0));
    if (g.a.separable && rows) {
        rows_a_rows<A, T>(g, t, xp, bias, tmp_a.data());
        rows_a_cols<A>(g, t, tmp_a.data(), u.data());
    } else if (g.a.separable) {
        phase_a_rows<A, T>(g, t, xp, bias, tmp_a.data(), 0, 1);
        phase_a_cols<A>(g, t, tmp_a.data(), u.data(), 0, 1);
    } else {
        phase_a_2d<A, T>(g, t, xp, bias, u.data(), 0, 1);
    }
    phase_pointwise<A>(g, t, u.data(), codes, 0, 1);
    if (g.b.separable && rows) {
        rows_b_rows<A>(g, t, u.data(), tmp_b.data());
        rows_b_cols<A, T>(g, t, tmp_b.data(), yp, tmp_b.data() + tile_tmp_b_size(t));
    } else if (g.b.separable) {
        phase_b_rows<A>(g, t, u.data(), tmp_b.data(), 0, 1);
        phase_b_cols<A, T>(g, t, tmp_b.data(), yp, 0, 1);
    } else {
        phase_b_2d<A, T>(g, t, u.data(), yp, 0, 1);
    }
}

// tile 0: each plane is one tile, row-wise phases (filters that are not both separable). tile > 0: tile x tile output tiles with the per-sample
// phases, exactly the CUDA kernel's decomposition (the tests use it to check that code on the CPU).
template <typename T>
void fused_loop(const FusedGeom& g, const T* x, const T* b, int64_t C, T* y, uint32_t* codes, int64_t P, int tile) {
    using A = typename AccOf<T>::type;
    const int64_t words = code_words_per_plane(g.Hu, g.Wu);
    const int TH = tile > 0 ? tile : g.Ho, TW = tile > 0 ? tile : g.Wo;
    at::parallel_for(0, P, 1, [&](int64_t p0, int64_t p1) {
        std::vector<A> tmp_a, u, tmp_b;
        for (int64_t p = p0; p < p1; ++p) {
            const A bias = b ? A(b[p % C]) : A(0);
            for (int oy0 = 0; oy0 < g.Ho; oy0 += TH)
                for (int ox0 = 0; ox0 < g.Wo; ox0 += TW) {
                    const Tile t = make_tile(g, oy0, imin(oy0 + TH, g.Ho), ox0, imin(ox0 + TW, g.Wo));
                    fused_tile<A, T>(g, t, x + p * g.H * g.W, bias, y + p * g.Ho * g.Wo, codes + p * words, tile == 0,
                                     tmp_a, u, tmp_b);
                }
        }
    });
}

// The fast path: both filters separable, each plane one tile, blocks of 8 planes split over threads.
template <typename T>
void fused_fast(const FusedGeom& g, const T* x, const T* b, int64_t C, T* y, uint32_t* codes, int64_t P) {
    const Tile t = make_tile(g, 0, g.Ho, 0, g.Wo);
    const bool avx2 = use_avx2();
    at::parallel_for(0, (P + LANES - 1) / LANES, 1, [&](int64_t b0, int64_t b1) {
#ifdef SGXL_HAVE_AVX2
        if (avx2) return isa_avx2::fused_blocks<T>(g, t, x, b, C, y, codes, P, b0, b1);
#endif
        (void)avx2;
        isa_base::fused_blocks<T>(g, t, x, b, C, y, codes, P, b0, b1);
    });
}

// mode 0: y, codes = filtered_lrelu(x + b); mode 1: y = masked linear map of x with the given codes.
// tile 0 with separable filters runs the fast path; tile > 0 splits each plane into tile x tile output tiles exactly as the CUDA kernel does (tests use it).
std::vector<at::Tensor> filtered_lrelu(at::Tensor x, std::optional<at::Tensor> b_, at::Tensor ta,
                                          at::Tensor tb, std::optional<at::Tensor> codes_, int64_t mode, int64_t up, std::vector<int64_t> pa,
                                          double gain_a, int64_t down, std::vector<int64_t> pb, double gain_b,
                                          double slope, double gain, double clamp, int64_t tile) {
    at::Tensor b = opt(b_), codes = opt(codes_);
    check_plane_input(x, "x");
    FusedGeom g = make_fused_geom(x, ta, tb, mode, up, pa, gain_a, down, pb, gain_b, slope, gain, clamp);
    if (mode == 0) codes = new_codes(x, g);
    check_codes(codes, x, g);
    TORCH_CHECK(!b.defined() || (b.is_contiguous() && b.numel() == x.size(1) && b.scalar_type() == x.scalar_type()), "sgxl: bad bias");
    auto y = at::empty({x.size(0), x.size(1), g.Ho, g.Wo}, x.options());
    const bool fast = tile == 0 && g.a.separable && g.b.separable;
    SGXL_DISPATCH(x.scalar_type(), "sgxl_filtered_lrelu", [&] {
        const scalar_t* bp = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
        uint32_t* cp = reinterpret_cast<uint32_t*>(codes.data_ptr<int32_t>());
        if (fast) fused_fast<scalar_t>(g, x.data_ptr<scalar_t>(), bp, x.size(1), y.data_ptr<scalar_t>(), cp, x.size(0) * x.size(1));
        else fused_loop<scalar_t>(g, x.data_ptr<scalar_t>(), bp, x.size(1), y.data_ptr<scalar_t>(), cp, x.size(0) * x.size(1), (int)tile);
    });
    return {y, codes};
}

}  // namespace sgxl

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &sgxl::bias_act, "bias_act (mode 0 value, 1 grad, 2 second-order term)");
    m.def("upfirdn2d", &sgxl::upfirdn2d, "upfirdn2d with correlation taps");
    m.def("filtered_lrelu", &sgxl::filtered_lrelu, "filtered_lrelu tile arithmetic (mode 0 lrelu, 1 masked)");
    m.def("cpu_isa", &sgxl::cpu_isa, "the instruction set of the fast path: 'avx2' or 'base' (SGXL_CPU_ISA=base forces it)");
    m.attr("device") = "cpu";
#ifdef SGXL_SOURCE_HASH
    m.attr("source_hash") = SGXL_STR(SGXL_SOURCE_HASH);   // which sources it was built from (sgxl.ops_build.built_id)
#endif
}
