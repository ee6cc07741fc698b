// Fused RMSNorm forward and backward for contiguous CPU rows, compiled on first use by normlab.functional._kernels.
//
// Over the K values of each of the R rows of x (an (R, K) contiguous matrix), with acc the accumulation type
// (float for float32 / bfloat16 / float16, double for float64):
//
//   forward:  rstd = 1 / sqrt(sum(x^2) / K + eps)             (acc)
//             y    = round(round(x * rstd) * w)               (x * rstd rounded to x's dtype, then times w: torch's
//                                                              rounding; y = round(x * rstd) without a weight)
//   backward: g    = dy * w                                   (acc; g = dy without a weight)
//             dx   = rstd * (g - xhat * sum(g * xhat) / K)    = rstd * g - x * (rstd^3 * sum(g * x) / K)
//             dw   = sum over rows of dy * xhat,   xhat = x * rstd (acc, not rounded)
//
// Rows are split over threads with at::parallel_for; the inner loops use at::vec::Vectorized (bf16/fp16 loaded
// to float). dw is summed per block of rows into an acc buffer, one block per thread, and the blocks are added in
// order: deterministic for a fixed thread count.

#include <ATen/Dispatch.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "common.h"

namespace {

using normlab::horizontal_sum;
using normlab::kGrain;
using normlab::Lanes;

template <typename scalar_t>
void forward_rows(const scalar_t* x, const scalar_t* w, scalar_t* y, at::opmath_type<scalar_t>* rstd, int64_t begin,
                  int64_t end, int64_t K, double eps) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using aVec = typename L::aVec;
  const int64_t V = L::size(), main = K - K % V;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* xr = x + r * K;
    scalar_t* yr = y + r * K;
    aVec acc(acc_t(0));
    for (int64_t k = 0; k < main; k += V) {
      aVec v = L::load(xr + k);
      acc = at::vec::fmadd(v, v, acc);
    }
    acc_t sq = horizontal_sum(acc);
    for (int64_t k = main; k < K; ++k) sq += acc_t(xr[k]) * acc_t(xr[k]);
    const acc_t s = acc_t(1) / std::sqrt(sq / acc_t(K) + acc_t(eps));
    rstd[r] = s;
    const aVec sv(s);
    if (w == nullptr) {
      for (int64_t k = 0; k < main; k += V) L::store(yr + k, L::load(xr + k) * sv);
      for (int64_t k = main; k < K; ++k) yr[k] = scalar_t(acc_t(xr[k]) * s);
    } else {
      for (int64_t k = 0; k < main; k += V) L::store(yr + k, L::round(L::load(xr + k) * sv) * L::load(w + k));
      for (int64_t k = main; k < K; ++k) yr[k] = scalar_t(acc_t(scalar_t(acc_t(xr[k]) * s)) * acc_t(w[k]));
    }
  }
}

// dx for rows [begin, end) (dx may be null) and dw summed over them into dw_acc (null: not wanted)
template <typename scalar_t>
void backward_rows(const scalar_t* dy, const scalar_t* x, const at::opmath_type<scalar_t>* rstd, const scalar_t* w,
                   scalar_t* dx, at::opmath_type<scalar_t>* dw_acc, int64_t begin, int64_t end, int64_t K) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using aVec = typename L::aVec;
  const int64_t V = L::size(), main = K - K % V;
  for (int64_t r = begin; r < end; ++r) {
    const scalar_t* xr = x + r * K;
    const scalar_t* dyr = dy + r * K;
    const acc_t s = rstd[r];
    const aVec sv(s);
    if (dx != nullptr) {
      scalar_t* dxr = dx + r * K;
      aVec acc(acc_t(0));  // sum(g * x)
      acc_t dot = 0;
      if (w == nullptr) {
        for (int64_t k = 0; k < main; k += V) acc = at::vec::fmadd(L::load(dyr + k), L::load(xr + k), acc);
        dot = horizontal_sum(acc);
        for (int64_t k = main; k < K; ++k) dot += acc_t(dyr[k]) * acc_t(xr[k]);
      } else {
        for (int64_t k = 0; k < main; k += V)
          acc = at::vec::fmadd(L::load(dyr + k) * L::load(w + k), L::load(xr + k), acc);
        dot = horizontal_sum(acc);
        for (int64_t k = main; k < K; ++k) dot += acc_t(dyr[k]) * acc_t(w[k]) * acc_t(xr[k]);
      }
      const acc_t c = s * s * s * dot / acc_t(K);
      const aVec cv(c);
      if (w == nullptr) {
        for (int64_t k = 0; k < main; k += V) L::store(dxr + k, sv * L::load(dyr + k) - cv * L::load(xr + k));
        for (int64_t k = main; k < K; ++k) dxr[k] = scalar_t(s * acc_t(dyr[k]) - c * acc_t(xr[k]));
      } else {
        for (int64_t k = 0; k < main; k += V)
          L::store(dxr + k, sv * (L::load(dyr + k) * L::load(w + k)) - cv * L::load(xr + k));
        for (int64_t k = main; k < K; ++k) dxr[k] = scalar_t(s * (acc_t(dyr[k]) * acc_t(w[k])) - c * acc_t(xr[k]));
      }
    }
    if (dw_acc != nullptr) {
      for (int64_t k = 0; k < main; k += V) {
        aVec d = aVec::loadu(dw_acc + k);
        at::vec::fmadd(L::load(dyr + k), L::load(xr + k) * sv, d).store(dw_acc + k);
      }
      for (int64_t k = main; k < K; ++k) dw_acc[k] += acc_t(dyr[k]) * (acc_t(xr[k]) * s);
    }
  }
}

void check_rows(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.is_contiguous(), "rms_norm kernel: ", name,
              " must be a contiguous 2-d CPU tensor");
}

// (y, rstd) for the (R, K) rows x; weight None or of K values of x's dtype
std::vector<at::Tensor> rms_norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight, double eps) {
  check_rows(x, "input");
  const int64_t R = x.size(0), K = x.size(1);
  at::Tensor w;
  if (weight.has_value() && weight->defined()) {
    w = weight->contiguous();
    TORCH_CHECK(w.numel() == K && w.scalar_type() == x.scalar_type(), "rms_norm kernel: bad weight");
  }
  at::Tensor y = at::empty_like(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor rstd = at::empty({R}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "normlab_rms_norm_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    acc_t* rp = rstd.mutable_data_ptr<acc_t>();
    at::parallel_for(0, R, std::max<int64_t>(1, kGrain / std::max<int64_t>(K, 1)), [&](int64_t begin, int64_t end) {
      forward_rows<scalar_t>(xp, wp, yp, rp, begin, end, K, eps);
    });
  });
  return {y, rstd};
}

// (dx or undefined, dw or undefined) given the upstream gradient dy, the forward's x, rstd and weight
std::vector<at::Tensor> rms_norm_backward(const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& rstd,
                                          const std::optional<at::Tensor>& weight, bool need_input, bool need_weight) {
  check_rows(x, "input");
  const at::Tensor dy = dy_in.contiguous();
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "rms_norm kernel: bad grad_output");
  const int64_t R = x.size(0), K = x.size(1);
  at::Tensor w;
  if (weight.has_value() && weight->defined()) w = weight->contiguous();
  need_weight = need_weight && w.defined();
  at::Tensor dx = need_input ? at::empty_like(x) : at::Tensor();
  at::Tensor dw;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "normlab_rms_norm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    TORCH_CHECK(rstd.scalar_type() == c10::CppTypeToScalarType<acc_t>::value && rstd.numel() == R,
                "rms_norm kernel: bad rstd");
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* rp = rstd.const_data_ptr<acc_t>();
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* dxp = need_input ? dx.mutable_data_ptr<scalar_t>() : nullptr;
    // blocks of rows: one per thread (fewer for small inputs), fixed by the thread count and the shape
    const int64_t blocks =
        std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), R, R * K / kGrain}));
    at::Tensor partial;
    acc_t* pp = nullptr;
    if (need_weight) {
      partial = at::zeros({blocks, K}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      pp = partial.mutable_data_ptr<acc_t>();
    }
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t begin = R * b / blocks, end = R * (b + 1) / blocks;
        backward_rows<scalar_t>(dyp, xp, rp, wp, dxp, need_weight ? pp + b * K : nullptr, begin, end, K);
      }
    });
    if (need_weight) {
      for (int64_t b = 1; b < blocks; ++b) {
        for (int64_t k = 0; k < K; ++k) pp[k] += pp[b * K + k];
      }
      dw = partial[0].to(x.scalar_type());
    }
  });
  return {dx, dw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &rms_norm_forward, "RMSNorm forward over contiguous (R, K) rows: (y, rstd)", py::arg("input"),
        py::arg("weight"), py::arg("eps"));
  m.def("backward", &rms_norm_backward, "RMSNorm backward: (grad_input or None, grad_weight or None)",
        py::arg("grad_output"), py::arg("input"), py::arg("rstd"), py::arg("weight"), py::arg("need_input"),
        py::arg("need_weight"));
}
