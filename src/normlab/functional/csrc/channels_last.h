// Shared by the channels_last kernel's sources: channels_last.cpp (the Python module's entry points and the autograd
// Function), columns.cpp (per-(n, channel) columns: InstanceNorm of several examples, GroupNorm) and batch_norm.cpp
// (one group over blocks of rows: training-mode BatchNorm, InstanceNorm of one example).
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

#include "common.h"

namespace normlab {

// The one-pass statistics sum d = x - x0 and d^2 (x0 a first value); var = mean(d^2) - mean(d)^2 loses about
// log2(1 + m^2 / var) bits to cancellation (m = mean(d): how far x0 lies from the mean, in practice a few standard
// deviations). Above kCancel (6 bits) a centered second pass runs instead, so the variance keeps at least 17 of
// float32's 23.
constexpr double kCancel = 64.0;

// Whether any lane needs the centered pass: m^2 > kCancel * v, or a NaN (the comparison is false).
template <typename acc_t>
bool needs_centered_pass(const Vectorized<acc_t>& m, const Vectorized<acc_t>& v) {
  alignas(64) acc_t mm[Vectorized<acc_t>::size()], vv[Vectorized<acc_t>::size()];
  (m * m).store(mm);
  v.store(vv);
  for (int64_t i = 0; i < Vectorized<acc_t>::size(); ++i) {
    if (!(mm[i] <= acc_t(kCancel) * vv[i])) return true;
  }
  return false;
}

// Whether t is a channels_last (4-d) or channels_last_3d (5-d) dense tensor: its memory is (N, positions, C).
inline void check_channels_last(const at::Tensor& t, const char* name) {
  const auto fmt = t.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
  TORCH_CHECK(t.device().is_cpu() && (t.dim() == 4 || t.dim() == 5) && t.is_contiguous(fmt), "channels_last kernel: ",
              name, " must be a channels_last 4-d or channels_last_3d 5-d CPU tensor");
}

inline at::Tensor optional_param(const std::optional<at::Tensor>& t, const at::Tensor& x, bool same_dtype) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  const at::Tensor& out = *t;
  TORCH_CHECK(out.is_contiguous() && out.numel() == x.size(1) && (!same_dtype || out.scalar_type() == x.scalar_type()),
              "channels_last kernel: bad parameter or buffer");
  return out;
}

// r <- (1 - momentum) r + momentum v, in double, for a buffer of any floating dtype
inline void update_buffer(const at::Tensor& buffer, const std::vector<double>& value, double momentum) {
  if (!buffer.defined()) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, buffer.scalar_type(), "normlab_channels_last_update", [&] {
    scalar_t* p = buffer.mutable_data_ptr<scalar_t>();
    for (size_t c = 0; c < value.size(); ++c) p[c] = scalar_t((1 - momentum) * double(p[c]) + momentum * value[c]);
  });
}

// columns.cpp: (y, m, rstd, var) for input (N, C, *spatial) in channels_last, normalized per (n, channel) over its
// L positions (groups = N > 1). m = mean - the column's first value, rstd, var (N, C) in acc; y channels_last. The
// running buffers (each optional) are updated with the average over the N examples of the mean and the unbiased
// variance, in double.
std::vector<at::Tensor> column_forward(const at::Tensor& x, int64_t groups, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double eps,
                                       const std::optional<at::Tensor>& running_mean,
                                       const std::optional<at::Tensor>& running_var, double momentum);

// Its backward: (dx or undefined, dw or undefined, db or undefined); dx in x's layout, dw and db (C,) in acc.
std::vector<at::Tensor> column_backward(const at::Tensor& dy, const at::Tensor& x, int64_t groups,
                                        const at::Tensor& shifted_mean, const at::Tensor& rstd,
                                        const std::optional<at::Tensor>& weight, bool need_input, bool need_affine);

// columns.cpp: GroupNorm of channels_last x in num_groups groups of channels: (y, m, rstd) per (n, c).
std::vector<at::Tensor> group_forward(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& bias, double eps);

// Its backward: (dx or undefined, dw or undefined, db or undefined).
std::vector<at::Tensor> group_backward(const at::Tensor& dy, const at::Tensor& x, int64_t num_groups,
                                       const at::Tensor& m, const at::Tensor& r,
                                       const std::optional<at::Tensor>& weight, bool need_input, bool need_affine);

// batch_norm.cpp: training-mode BatchNorm of channels_last x, statistics per channel over all N * positions rows.
// (y, saved, rstd, var): saved (3, C) the shift x0, the mean less x0 rounded to acc, m', and its residual rho (what
// the backward takes as shifted_mean), rstd and var (C,) in acc; the running buffers updated as ATen does.
std::vector<at::Tensor> batch_norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& bias, double eps,
                                           const std::optional<at::Tensor>& running_mean,
                                           const std::optional<at::Tensor>& running_var, double momentum);

// Its backward: (dx or undefined, dw or undefined, db or undefined); dw, db (C,) in acc.
std::vector<at::Tensor> batch_norm_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& shifted_mean,
                                            const at::Tensor& rstd, const std::optional<at::Tensor>& weight,
                                            bool need_input, bool need_affine);

}  // namespace normlab
