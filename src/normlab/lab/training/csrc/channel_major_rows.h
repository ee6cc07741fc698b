// The channel-major BatchNorm row kernel (row_forward / row_backward, bound in channel_major.cpp; formulas at its
// top): rows (R, M) contiguous, each one channel's values over the batch and positions, statistics per row.
#pragma once

#include <array>

#include "channel_major_common.h"
#include "channel_major_small.h"

namespace {

// A row's vectors: the row is read as one contiguous run of M values, whatever the output layout (its L slots of
// N values are consecutive), V lanes a vector and the last one masked. The layout only changes where the output
// is written (runs of consecutive slots to consecutive rows, make_runs) and where dy is read (gathered into the
// input's layout first): at a small batch a slot is N < V values, and slot by slot most of each vector would idle.

// K sums over a row of n values: f(i, span, acc) adds the terms of the vector at offset i to acc[0..K) (dead lanes
// must add 0); float chains of 64 vectors at most, each chain's lanes added in double (Lanes::lane_sum, a fixed
// tree: deterministic).
template <int K, typename F>
std::array<double, K> row_sums(int64_t n, F&& f) {
  std::array<double, K> total{};
  std::array<Vec, K> acc;
  acc.fill(Vec(0.f));
  int64_t count = 0;
  along_run(n, V, [&](int64_t i, auto s) {
    f(i, s, acc);
    if (++count % 64 == 0)
      for (int k = 0; k < K; ++k) total[k] += Lanes::lane_sum(acc[k]), acc[k] = Vec(0.f);
  });
  for (int k = 0; k < K; ++k) total[k] += Lanes::lane_sum(acc[k]);
  return total;
}

void check_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat && x.size(1) > 0 && x.device().is_cpu(),
              "channel_major row kernel: x must be a contiguous float32 CPU tensor (R, M)");
  for (const at::Tensor* t : {&w, &b})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->numel() == x.size(0),
                "weight, bias: contiguous float32 of R values");
}

// The row kernels' shapes: R rows of M values, each L slots of N values (without a table one slot of M values, else
// dest's L slots of M / L), the output layout t and the MO values of an output row.
struct RowShape {
  int64_t R, M, L, N;
  Layout t;
  int64_t MO;
};

RowShape row_shape(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, const at::Tensor& dest,
                   int64_t out_rows) {
  check_rows(x, w, b);
  const int64_t M = x.size(1), L = dest.numel() == 0 ? 1 : dest.size(0);
  TORCH_CHECK(L > 0 && M % L == 0, "dest: M must be L slots of N values");
  Layout t = make_layout(dest, L, out_rows);
  const int64_t MO = t.rows * (M / L);
  return {x.size(0), M, L, M / L, std::move(t), MO};
}

// (y, stats): y (R, R_out * N) in the output layout of dest (empty: x's), written into `out` where given;
// stats (4, R): m (the mean less x[r, 0]), rstd, the mean and the biased variance
std::tuple<at::Tensor, at::Tensor> row_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                               double eps, bool relu, const at::Tensor& dest, int64_t out_rows,
                                               const std::optional<at::Tensor>& out) {
  const RowShape shape = row_shape(x, weight, bias, dest, out_rows);
  const int64_t R = shape.R, M = shape.M, L = shape.L, N = shape.N, MO = shape.MO;
  const Layout& t = shape.t;
  auto y = output_tensor(out, {R, MO}, x, "out");
  auto stats = at::empty({4, R}, x.options());
  const Runs runs = make_runs(t, L);
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *st = stats.data_ptr<float>();
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / M), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * M;
      const Vec x0(row[0]), zero(0.f);
      const float m = static_cast<float>(
          row_sums<1>(M, [&](int64_t i, auto s, auto& acc) { acc[0] += s.keep(s.ld(row + i) - x0); })[0] / M);
      const Vec mv(m);
      const double var = row_sums<1>(M, [&](int64_t i, auto s, auto& acc) {
                           const Vec xc = s.keep((s.ld(row + i) - x0) - mv);
                           acc[0] = at::vec::fmadd(xc, xc, acc[0]);
                         })[0] / M;
      const float rs = 1.f / std::sqrt(static_cast<float>(var) + static_cast<float>(eps));
      const Vec a(wp[r] * rs), b(bp[r]);
      float* yr = yp + r * MO;
      for (const std::vector<Run>* rl : {&runs.first, &runs.second})
        for (const Run& run : *rl) {
          const float* src = row + run.slot * N;
          float* dst = yr + run.row * N;
          along_run(run.count * N, V, [&](int64_t i, auto s) {
            const Vec z = pre_activation((s.ld(src + i) - x0) - mv, a, b);
            s.st(dst + i, relu ? at::vec::maximum(z, zero) : z);
          });
        }
      for (const Run& run : runs.zeros) std::fill(yr + run.row * N, yr + (run.row + run.count) * N, 0.f);
      st[r] = m, st[R + r] = rs, st[2 * R + r] = static_cast<float>(row[0] + static_cast<double>(m));
      st[3 * R + r] = static_cast<float>(var);
    }
  });
  return {y, stats};
}

// (grad_x, grad_weight, grad_bias): BatchNorm's backward per row, the ReLU's mask from the recomputed z; grad in
// the output layout of dest (a slot's gradient the sum over its rows); grad_x written into `out` where given
std::tuple<at::Tensor, at::Tensor, at::Tensor> row_backward(const at::Tensor& grad, const at::Tensor& x,
                                                            const at::Tensor& weight, const at::Tensor& bias,
                                                            const at::Tensor& mean, const at::Tensor& rstd, bool relu,
                                                            const at::Tensor& dest, int64_t out_rows,
                                                            const std::optional<at::Tensor>& out) {
  const RowShape shape = row_shape(x, weight, bias, dest, out_rows);
  const int64_t R = shape.R, M = shape.M, L = shape.L, N = shape.N, MO = shape.MO;
  const Layout& t = shape.t;
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == R && grad.size(1) == MO && grad.is_contiguous() &&
                  grad.scalar_type() == at::kFloat,
              "grad: contiguous float32, the output's shape");
  TORCH_CHECK(mean.is_contiguous() && rstd.is_contiguous() && mean.numel() == R && rstd.numel() == R,
              "mean, rstd: R values");
  auto dx = output_tensor(out, {R, M}, x, "out");
  auto gw = at::empty({R}, x.options()), gb = at::empty({R}, x.options());
  const Runs runs = make_runs(t, L);
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  const float *bp = bias.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float *dxp = dx.data_ptr<float>(), *gwp = gw.data_ptr<float>(), *gbp = gb.data_ptr<float>();
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / M), [&](int64_t r0, int64_t r1) {
    std::vector<float> slots(runs.identity ? 0 : M);  // this task's scratch: a row's slot gradients
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * M;
      const float* dyr = gp + r * MO;
      if (!runs.identity) {  // dy gathered into the input's layout: first rows, plus second rows
        for (const Run& run : runs.first)
          std::copy_n(dyr + run.row * N, run.count * N, slots.data() + run.slot * N);
        for (const Run& run : runs.second) {
          const float* src = dyr + run.row * N;
          float* dst = slots.data() + run.slot * N;
          along_run(run.count * N, V, [&](int64_t i, auto s) { s.st(dst + i, s.ld(dst + i) + s.ld(src + i)); });
        }
        dyr = slots.data();
      }
      const float rs = rp[r];
      const Vec x0(row[0]), mv(mp[r]), a(wp[r] * rs), b(bp[r]), zero(0.f);
      // xc and dz at offset i (the forward's mask; dead lanes load dy as 0, so dz is 0 there)
      auto grad_at = [&](int64_t i, auto s, Vec& xc) {
        xc = (s.ld(row + i) - x0) - mv;
        const Vec d = s.ld(dyr + i);
        return relu ? (d & (pre_activation(xc, a, b) > zero)) : d;
      };
      const auto sums = row_sums<2>(M, [&](int64_t i, auto s, auto& acc) {
        Vec xc;
        const Vec dz = grad_at(i, s, xc);
        acc[0] += dz;
        acc[1] = at::vec::fmadd(dz, xc, acc[1]);
      });
      const double sdz = sums[0], sdzx = sums[1];
      gbp[r] = static_cast<float>(sdz);
      gwp[r] = static_cast<float>(sdzx * rs);
      const Vec k0(static_cast<float>(-rs * wp[r] * sdz / M));
      const Vec kx(static_cast<float>(-static_cast<double>(rs) * rs * rs * wp[r] * sdzx / M));
      float* dxr = dxp + r * M;
      along_run(M, V, [&](int64_t i, auto s) {
        Vec xc;
        const Vec dz = grad_at(i, s, xc);
        s.st(dxr + i, at::vec::fmadd(dz, a, at::vec::fmadd(xc, kx, k0)));
      });
    }
  });
  return {dx, gw, gb};
}

}  // namespace
