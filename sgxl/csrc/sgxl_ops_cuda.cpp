// sgxl fused ops, CUDA build: the torch binding. It checks the tensors, builds the plain structs of sgxl_ops.h
// and calls the launchers of sgxl_ops_cuda.cu on the current stream. The same functions as the CPU build,
// with the same signatures, so sgxl.ops calls either module the same way.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "sgxl_bind.h"
#include "sgxl_cuda.h"

namespace sgxl {

static int dtype_code(const at::Tensor& x) {
    switch (x.scalar_type()) {
        case at::kFloat: return DT_FLOAT;
        case at::kDouble: return DT_DOUBLE;
        case at::kHalf: return DT_HALF;
        case at::kBFloat16: return DT_BFLOAT16;
        default: TORCH_CHECK(false, "sgxl: the CUDA ops take float32, float64, float16 or bfloat16, got ", x.scalar_type());
    }
    return -1;
}

static void check_cuda(const at::Tensor& t, const at::Tensor& x, const char* what) {
    if (!t.defined()) return;
    TORCH_CHECK(t.is_cuda() && t.device() == x.device(), "sgxl: ", what, " must be on ", x.device());
}

static void check_launch(const char* err) { TORCH_CHECK(err == nullptr, "sgxl CUDA: ", err ? err : ""); }

at::Tensor bias_act(int64_t mode, at::Tensor x, std::optional<at::Tensor> b_, std::optional<at::Tensor> g_,
                       std::optional<at::Tensor> gg_, int64_t C, int64_t inner, int64_t act, double alpha, double gain,
                       double clamp) {
    at::Tensor b = opt(b_), g = opt(g_), gg = opt(gg_);
    TORCH_CHECK(x.is_cuda() && x.is_contiguous(), "sgxl: x must be a contiguous CUDA tensor");
    for (auto* t : {&b, &g, &gg}) {
        check_cuda(*t, x, "every tensor");
        TORCH_CHECK(!t->defined() || (t->is_contiguous() && t->scalar_type() == x.scalar_type()), "sgxl: bias_act needs contiguous tensors of x's dtype");
    }
    TORCH_CHECK(mode == 0 || (g.defined() && g.sizes() == x.sizes()), "sgxl: bad gradient");
    TORCH_CHECK(mode != 2 || (gg.defined() && gg.sizes() == x.sizes()), "sgxl: bad gradient");
    c10::cuda::CUDAGuard guard(x.device());
    auto out = at::empty_like(x);
    BiasActParams p{(int)act, alpha, gain, clamp};
    check_launch(launch_bias_act(dtype_code(x), (int)mode, p, x.data_ptr(), b.defined() ? b.data_ptr() : nullptr,
                                 g.defined() ? g.data_ptr() : nullptr, gg.defined() ? gg.data_ptr() : nullptr,
                                 out.data_ptr(), x.numel(), C, inner, c10::cuda::getCurrentCUDAStream()));
    return out;
}

at::Tensor upfirdn2d(at::Tensor x, at::Tensor f, int64_t upx, int64_t upy, int64_t downx, int64_t downy,
                        std::vector<int64_t> pad, double gain) {
    check_plane_input(x, "x");
    TORCH_CHECK(x.is_cuda(), "sgxl: x must be a CUDA tensor");
    check_cuda(f, x, "the filter");
    TORCH_CHECK(f.scalar_type() == at::kFloat && f.is_contiguous() && (f.dim() == 1 || f.dim() == 2), "sgxl: bad filter");
    c10::cuda::CUDAGuard guard(x.device());
    auto shape = upfirdn_out_size(x, f, upx, upy, downx, downy, pad);
    auto y = at::empty(shape, x.options());
    const int64_t P = x.size(0) * x.size(1);
    at::Tensor tmp;
    if (f.dim() == 1)
        tmp = at::empty({P, x.size(2), shape[3]}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
    check_launch(launch_upfirdn2d(dtype_code(x), x.data_ptr(), y.data_ptr(), tmp.defined() ? tmp.data_ptr() : nullptr,
                                  f.data_ptr<float>(), f.dim() == 1, P, (int)x.size(2), (int)x.size(3), (int)shape[2],
                                  (int)shape[3], (int)f.size(-1), (int)f.size(0), (int)upx, (int)upy, (int)downx,
                                  (int)downy, (int)pad[0], (int)pad[2], gain, c10::cuda::getCurrentCUDAStream()));
    return y;
}

std::vector<at::Tensor> filtered_lrelu(at::Tensor x, std::optional<at::Tensor> b_, at::Tensor ta,
                                          at::Tensor tb, std::optional<at::Tensor> codes_, int64_t mode, int64_t up,
                                          std::vector<int64_t> pa, double gain_a, int64_t down, std::vector<int64_t> pb,
                                          double gain_b, double slope, double gain, double clamp, int64_t tile) {
    at::Tensor b = opt(b_), codes = opt(codes_);
    (void)tile;                                        // the CUDA launcher picks its tile size itself
    check_plane_input(x, "x");
    TORCH_CHECK(x.is_cuda(), "sgxl: x must be a CUDA tensor");
    for (auto* t : {&b, &ta, &tb, &codes}) check_cuda(*t, x, "every tensor");
    c10::cuda::CUDAGuard guard(x.device());
    FusedGeom g = make_fused_geom(x, ta, tb, mode, up, pa, gain_a, down, pb, gain_b, slope, gain, clamp);
    if (mode == 0) codes = new_codes(x, g);
    check_codes(codes, x, g);
    TORCH_CHECK(!b.defined() || (b.is_contiguous() && b.numel() == x.size(1) && b.scalar_type() == x.scalar_type()), "sgxl: bad bias");
    auto y = at::empty({x.size(0), x.size(1), g.Ho, g.Wo}, x.options());
    check_launch(launch_filtered_lrelu(dtype_code(x), g, x.data_ptr(), b.defined() ? b.data_ptr() : nullptr, x.size(1),
                                       y.data_ptr(), reinterpret_cast<uint32_t*>(codes.data_ptr<int32_t>()),
                                       x.size(0) * x.size(1), c10::cuda::getCurrentCUDAStream()));
    return {y, codes};
}

}  // namespace sgxl

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &sgxl::bias_act, "bias_act (mode 0 value, 1 grad, 2 second-order term)");
    m.def("upfirdn2d", &sgxl::upfirdn2d, "upfirdn2d with correlation taps");
    m.def("filtered_lrelu", &sgxl::filtered_lrelu, "filtered_lrelu tiles (mode 0 lrelu, 1 masked)");
    m.attr("device") = "cuda";
#ifdef SGXL_SOURCE_HASH
    m.attr("source_hash") = SGXL_STR(SGXL_SOURCE_HASH);   // which sources it was built from (sgxl.ops_build.built_id)
#endif
}
