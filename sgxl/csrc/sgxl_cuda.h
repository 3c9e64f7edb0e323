// sgxl fused ops: the launchers of the CUDA kernels (sgxl_ops_cuda.cu), declared without torch so the .cu
// file compiles in seconds. The torch binding (sgxl_ops_cuda.cpp) calls these with raw pointers and the
// current stream. Each returns nullptr on success, or a message saying what failed.
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "sgxl_ops.h"

namespace sgxl {

enum DType : int { DT_FLOAT = 0, DT_DOUBLE = 1, DT_HALF = 2, DT_BFLOAT16 = 3 };

// out[i] = bias_act value (mode 0), gradient (1) or second-order term (2); x, b, g, gg, out of `dtype`, b may be null.
const char* launch_bias_act(int dtype, int mode, const BiasActParams& p, const void* x, const void* b, const void* g,
                            const void* gg, void* out, int64_t n, int64_t C, int64_t inner, cudaStream_t stream);

// upfirdn2d on P planes [H, W] -> [Ho, Wo]. Separable taps use `tmp`, a workspace of P*H*Wo accumulation values
// (float, or double for DT_DOUBLE); 2-D taps ([ky][kx]) ignore it.
const char* launch_upfirdn2d(int dtype, const void* x, void* y, void* tmp, const float* taps, int separable, int64_t P,
                             int H, int W, int Ho, int Wo, int kx, int ky, int upx, int upy, int downx, int downy,
                             int px0, int py0, double gain, cudaStream_t stream);

// filtered_lrelu (mode 0) or its masked linear map (mode 1) on P planes; b (per channel, C channels) may be null.
// `codes` holds code_words_per_plane(Hu, Wu) words per plane, zeroed before a mode-0 call.
const char* launch_filtered_lrelu(int dtype, const FusedGeom& g, const void* x, const void* b, int64_t C, void* y,
                                  uint32_t* codes, int64_t P, cudaStream_t stream);

}  // namespace sgxl
