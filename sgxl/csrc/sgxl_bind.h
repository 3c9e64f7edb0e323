// sgxl fused ops: the torch-facing glue shared by the CPU and the CUDA bindings -- argument checks and
// the translation of tensors and integers into the plain structs of sgxl_ops.h. Host only.
// It includes only the ATen and pybind11 headers it needs (not torch/extension.h), which halves compile time.
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <vector>

#include "sgxl_ops.h"

#define SGXL_STR_(x) #x
#define SGXL_STR(x) SGXL_STR_(x)

namespace sgxl {

inline at::Tensor opt(const std::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }

// A filter as one stage of a two-stage op: 1-D taps are separable, 2-D taps are [Ky, Kx].
inline Stage make_stage(const at::Tensor& taps, int up, int down, int px0, int py0, double gain) {
    TORCH_CHECK(taps.scalar_type() == at::kFloat && taps.is_contiguous() && (taps.dim() == 1 || taps.dim() == 2),
                "sgxl: filter taps must be a contiguous float32 1-D or 2-D tensor");
    Stage s;
    s.up = up; s.down = down; s.px0 = px0; s.py0 = py0;
    s.separable = taps.dim() == 1;
    s.kx = (int)taps.size(-1);
    s.ky = (int)taps.size(0);
    s.gain = gain;
    s.taps = taps.data_ptr<float>();
    return s;
}

// Geometry of filtered_lrelu (or its transpose): x is [N, C, H, W]; stage a pads by (ax0, ax1, ay0, ay1),
// stage b by (bx0, bx1, by0, by1). Sizes: Hu = H*up + ay0 + ay1 - Ky_a + 1, Ho = (Hu + by0 + by1 - Ky_b)/down + 1.
inline FusedGeom make_fused_geom(const at::Tensor& x, const at::Tensor& ta, const at::Tensor& tb,
                                 int64_t mode, int64_t up, std::vector<int64_t> pa, double gain_a, int64_t down,
                                 std::vector<int64_t> pb, double gain_b, double slope, double gain, double clamp) {
    TORCH_CHECK(x.dim() == 4, "sgxl: x must be [N, C, H, W]");
    TORCH_CHECK(pa.size() == 4 && pb.size() == 4, "sgxl: paddings must have 4 entries (x0, x1, y0, y1)");
    TORCH_CHECK(up >= 1 && down >= 1, "sgxl: up and down must be >= 1");
    FusedGeom g;
    g.H = (int)x.size(2); g.W = (int)x.size(3);
    g.a = make_stage(ta, (int)up, 1, (int)pa[0], (int)pa[2], gain_a);
    g.b = make_stage(tb, 1, (int)down, (int)pb[0], (int)pb[2], gain_b);
    g.Hu = g.H * g.a.up + (int)(pa[2] + pa[3]) - g.a.ky + 1;
    g.Wu = g.W * g.a.up + (int)(pa[0] + pa[1]) - g.a.kx + 1;
    TORCH_CHECK(g.Hu >= 1 && g.Wu >= 1, "sgxl: the upsampled signal would be empty");
    g.Ho = floor_div(g.Hu + (int)(pb[2] + pb[3]) - g.b.ky, g.b.down) + 1;
    g.Wo = floor_div(g.Wu + (int)(pb[0] + pb[1]) - g.b.kx, g.b.down) + 1;
    TORCH_CHECK(g.Ho >= 1 && g.Wo >= 1, "sgxl: the output would be empty");
    TORCH_CHECK(mode == 0 || mode == 1, "sgxl: mode must be 0 (lrelu) or 1 (masked)");
    g.mode = (int)mode;
    g.slope = slope; g.gain = gain; g.clamp = clamp;
    return g;
}

inline void check_plane_input(const at::Tensor& x, const char* what) {
    TORCH_CHECK(x.dim() == 4 && x.is_contiguous(), "sgxl: ", what, " must be a contiguous [N, C, H, W] tensor");
    TORCH_CHECK(x.numel() < (int64_t(1) << 40), "sgxl: ", what, " is too large");
}

// codes of the forward pass: 16 two-bit codes per int32 word, each plane on fresh words
inline at::Tensor new_codes(const at::Tensor& x, const FusedGeom& g) {
    return at::zeros({x.size(0) * x.size(1) * code_words_per_plane(g.Hu, g.Wu)}, x.options().dtype(at::kInt));
}

inline void check_codes(const at::Tensor& codes, const at::Tensor& x, const FusedGeom& g) {
    TORCH_CHECK(codes.defined() && codes.scalar_type() == at::kInt && codes.is_contiguous() &&
                codes.numel() == x.size(0) * x.size(1) * code_words_per_plane(g.Hu, g.Wu),
                "sgxl: codes do not match this geometry (they must come from the forward pass of the same call)");
}

// Output shape of upfirdn2d: floor((size*up + pad0 + pad1 - K) / down) + 1 per axis.
inline std::vector<int64_t> upfirdn_out_size(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy,
                                             int64_t downx, int64_t downy, std::vector<int64_t> pad) {
    TORCH_CHECK(pad.size() == 4, "sgxl: padding must have 4 entries (x0, x1, y0, y1)");
    const int64_t kx = f.size(-1), ky = f.size(0);
    const int64_t ho = floor_div((int)(x.size(2) * upy + pad[2] + pad[3] - ky), (int)downy) + 1;
    const int64_t wo = floor_div((int)(x.size(3) * upx + pad[0] + pad[1] - kx), (int)downx) + 1;
    TORCH_CHECK(ho >= 1 && wo >= 1, "sgxl: upfirdn2d output would be empty");
    return {x.size(0), x.size(1), ho, wo};
}

}  // namespace sgxl
