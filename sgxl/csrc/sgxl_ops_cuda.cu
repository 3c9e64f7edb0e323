// sgxl fused ops, CUDA kernels. The arithmetic is sgxl_ops.h's (the CPU build runs the same functions);
// this file only maps it onto threads: one thread per output sample for bias_act and upfirdn2d, one block
// per output tile of one plane for filtered_lrelu, with the tile's intermediates in shared memory.
// No torch headers here (see sgxl_cuda.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "sgxl_cuda.h"

namespace sgxl {

// fp16 / bf16 storage, float arithmetic
template <> struct Convert<float, __half> {
    SGXL_HD static float load(__half v) { return __half2float(v); }
    SGXL_HD static __half store(float v) { return __float2half_rn(v); }
};
template <> struct Convert<float, __nv_bfloat16> {
    SGXL_HD static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
    SGXL_HD static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

static const int kThreads = 256;

static int grid_for(int64_t n) {
    int64_t blocks = (n + kThreads - 1) / kThreads;
    return (int)(blocks < 65536 * 8 ? (blocks > 0 ? blocks : 1) : 65536 * 8);   // grid-stride loops cover the rest
}

static const char* last_error() {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

// Call f with a typed null pointer of the storage type `dtype` names.
template <typename F> static const char* dispatch(int dtype, F f) {
    switch (dtype) {
        case DT_FLOAT: return f((float*)nullptr);
        case DT_DOUBLE: return f((double*)nullptr);
        case DT_HALF: return f((__half*)nullptr);
        case DT_BFLOAT16: return f((__nv_bfloat16*)nullptr);
        default: return "unsupported dtype (use float32, float64, float16 or bfloat16)";
    }
}

// ---- bias_act ------------------------------------------------------------------------------------------------
template <typename T>
__global__ void bias_act_kernel(int mode, BiasActParams p, const T* x, const T* b, const T* g, const T* gg, T* out,
                                int64_t n, int64_t C, int64_t inner) {
    using A = typename AccOf<T>::type;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const A v = load<A>(x, i) + (b ? load<A>(b, (i / inner) % C) : A(0));
        A y;
        if (mode == 0) y = bias_act_value<A>(p, v);
        else if (mode == 1) y = bias_act_grad<A>(p, load<A>(g, i), v);
        else y = bias_act_grad2<A>(p, load<A>(gg, i), load<A>(g, i), v);
        out[i] = Convert<A, T>::store(y);
    }
}

const char* launch_bias_act(int dtype, int mode, const BiasActParams& p, const void* x, const void* b, const void* g,
                            const void* gg, void* out, int64_t n, int64_t C, int64_t inner, cudaStream_t stream) {
    return dispatch(dtype, [&](auto* tag) -> const char* {
        using T = typename std::remove_pointer<decltype(tag)>::type;
        bias_act_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(mode, p, (const T*)x, (const T*)b, (const T*)g,
                                                                (const T*)gg, (T*)out, n, C, inner);
        return last_error();
    });
}

// ---- upfirdn2d -------------------------------------------------------------------------------------------------
// separable, pass 1: tmp[p][iy][ox] = sum_k c[k] x[p][iy][(ox*down + k - p0)/up]
template <typename T, typename A>
__global__ void upfirdn_x_kernel(const T* x, A* tmp, const float* c, int64_t rows, int W, int Wo, int K, int up,
                                 int down, int p0) {
    const int64_t n = rows * Wo;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = i / Wo;
        const int ox = (int)(i % Wo);
        tmp[i] = upfirdn1d_sample<A, T>(x + row * W, 1, W, c, K, up, p0, ox * down);
    }
}

// separable, pass 2: y[p][oy][ox] = gain * sum_k c[k] tmp[p][(oy*down + k - p0)/up][ox]
template <typename T, typename A>
__global__ void upfirdn_y_kernel(const A* tmp, T* y, const float* c, int64_t P, int H, int Ho, int Wo, int K, int up,
                                 int down, int p0, double gain) {
    const int64_t n = P * Ho * Wo;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int ox = (int)(i % Wo), oy = (int)((i / Wo) % Ho);
        const int64_t p = i / ((int64_t)Wo * Ho);
        const A s = upfirdn1d_sample<A, A>(tmp + p * H * Wo + ox, Wo, H, c, K, up, p0, oy * down);
        y[i] = Convert<A, T>::store(A(gain) * s);
    }
}

// 2-D taps: y[p][oy][ox] = gain * sum_{ky,kx} c[ky][kx] x[p][..][..]
template <typename T, typename A>
__global__ void upfirdn_2d_kernel(const T* x, T* y, const float* c, int64_t P, int H, int W, int Ho, int Wo, int kx,
                                  int ky, int upx, int upy, int dx, int dy, int px0, int py0, double gain) {
    const int64_t n = P * Ho * Wo;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int ox = (int)(i % Wo), oy = (int)((i / Wo) % Ho);
        const int64_t p = i / ((int64_t)Wo * Ho);
        const A s = upfirdn2d_sample<A, T>(x + p * H * W, H, W, c, kx, ky, upx, upy, px0, py0, oy * dy, ox * dx);
        y[i] = Convert<A, T>::store(A(gain) * s);
    }
}

const char* launch_upfirdn2d(int dtype, const void* x, void* y, void* tmp, const float* taps, int separable, int64_t P,
                             int H, int W, int Ho, int Wo, int kx, int ky, int upx, int upy, int downx, int downy,
                             int px0, int py0, double gain, cudaStream_t stream) {
    return dispatch(dtype, [&](auto* tag) -> const char* {
        using T = typename std::remove_pointer<decltype(tag)>::type;
        using A = typename AccOf<T>::type;
        if (separable) {
            upfirdn_x_kernel<T, A><<<grid_for(P * H * Wo), kThreads, 0, stream>>>((const T*)x, (A*)tmp, taps, P * H, W,
                                                                                  Wo, kx, upx, downx, px0);
            upfirdn_y_kernel<T, A><<<grid_for(P * Ho * Wo), kThreads, 0, stream>>>((const A*)tmp, (T*)y, taps, P, H, Ho,
                                                                                   Wo, ky, upy, downy, py0, gain);
        } else {
            upfirdn_2d_kernel<T, A><<<grid_for(P * Ho * Wo), kThreads, 0, stream>>>((const T*)x, (T*)y, taps, P, H, W, Ho,
                                                                                    Wo, kx, ky, upx, upy, downx, downy,
                                                                                    px0, py0, gain);
        }
        return last_error();
    });
}

// ---- filtered_lrelu: one block per (plane, output tile) ------------------------------------------------------------
template <typename T, typename A>
__global__ void filtered_lrelu_kernel(FusedGeom g, const T* x, const T* b, int64_t C, T* y, uint32_t* codes,
                                      int tiles_x, int tiles_y, int TH, int TW, int64_t words) {
    extern __shared__ unsigned char smem_raw[];
    const int64_t tiles = (int64_t)tiles_x * tiles_y;
    const int64_t p = blockIdx.x / tiles;
    const int tile = (int)(blockIdx.x % tiles), ty = tile / tiles_x, tx = tile % tiles_x;
    const Tile t = make_tile(g, ty * TH, imin((ty + 1) * TH, g.Ho), tx * TW, imin((tx + 1) * TW, g.Wo));
    A* tmp_a = reinterpret_cast<A*>(smem_raw);             // [iy][ux]
    A* u = tmp_a + (g.a.separable ? tile_tmp_a_size(t) : 0);  // [uy][ux]
    A* tmp_b = u + tile_u_size(t);                          // [uy][ox]
    const int tid = threadIdx.x, nt = blockDim.x;
    const T* xp = x + p * g.H * g.W;
    const A bias = b ? load<A>(b, p % C) : A(0);
    if (g.a.separable) {
        phase_a_rows<A, T>(g, t, xp, bias, tmp_a, tid, nt);
        __syncthreads();
        phase_a_cols<A>(g, t, tmp_a, u, tid, nt);
    } else {
        phase_a_2d<A, T>(g, t, xp, bias, u, tid, nt);
    }
    __syncthreads();
    phase_pointwise<A>(g, t, u, codes + p * words, tid, nt);
    __syncthreads();
    T* yp = y + p * g.Ho * g.Wo;
    if (g.b.separable) {
        phase_b_rows<A>(g, t, u, tmp_b, tid, nt);
        __syncthreads();
        phase_b_cols<A, T>(g, t, tmp_b, yp, tid, nt);
    } else {
        phase_b_2d<A, T>(g, t, u, yp, tid, nt);
    }
}

// Shared memory (in accumulation values) of the largest tile of a TH x TW tiling.
static int64_t tile_smem_values(const FusedGeom& g, int TH, int TW) {
    int max_iy = 0, max_uy = 0, max_ux = 0;
    for (int oy0 = 0; oy0 < g.Ho; oy0 += TH) {
        Tile t = make_tile(g, oy0, imin(oy0 + TH, g.Ho), 0, imin(TW, g.Wo));
        max_iy = imax(max_iy, t.iy1 - t.iy0);
        max_uy = imax(max_uy, t.uy1 - t.uy0);
    }
    for (int ox0 = 0; ox0 < g.Wo; ox0 += TW) {
        Tile t = make_tile(g, 0, imin(TH, g.Ho), ox0, imin(ox0 + TW, g.Wo));
        max_ux = imax(max_ux, t.ux1 - t.ux0);
    }
    return (g.a.separable ? (int64_t)max_iy * max_ux : 0) + (int64_t)max_uy * max_ux + (int64_t)max_uy * TW;
}

const char* launch_filtered_lrelu(int dtype, const FusedGeom& g, const void* x, const void* b, int64_t C, void* y,
                                  uint32_t* codes, int64_t P, cudaStream_t stream) {
    return dispatch(dtype, [&](auto* tag) -> const char* {
        using T = typename std::remove_pointer<decltype(tag)>::type;
        using A = typename AccOf<T>::type;
        int dev = 0, limit = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        // the largest square tile (32, 16, 8 or 4 outputs a side) whose intermediates fit in shared memory
        int TH = 32, TW = 32;
        int64_t bytes = tile_smem_values(g, TH, TW) * (int64_t)sizeof(A);
        while (bytes > limit && TH > 4) {
            TH /= 2; TW /= 2;
            bytes = tile_smem_values(g, TH, TW) * (int64_t)sizeof(A);
        }
        if (bytes > limit) return "filtered_lrelu: the filters are too large for the fused kernel's shared memory; use impl='ref'";
        auto kernel = filtered_lrelu_kernel<T, A>;
        if (bytes > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) != cudaSuccess)
            return last_error();
        const int tiles_x = (g.Wo + TW - 1) / TW, tiles_y = (g.Ho + TH - 1) / TH;
        const int64_t blocks = P * tiles_x * tiles_y;
        if (blocks > 0x7fffffff) return "filtered_lrelu: too many planes and tiles for one launch; split the batch";
        kernel<<<(unsigned)blocks, kThreads, (size_t)bytes, stream>>>(g, (const T*)x, (const T*)b, C, (T*)y, codes,
                                                                     tiles_x, tiles_y, TH, TW,
                                                                     code_words_per_plane(g.Hu, g.Wu));
        return last_error();
    });
}

}  // namespace sgxl
