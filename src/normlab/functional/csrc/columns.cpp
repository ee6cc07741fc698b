// The channels_last kernel's per-column walkers (part of the extension whose entry points are in channels_last.cpp):
// InstanceNorm of N > 1 examples and GroupNorm. The memory of a channels_last (N, C, *spatial) tensor is
// (N, L, C), L the spatial positions; each (n, c) is a column of L values, stride C. GroupNorm (group_forward /
// group_backward, at the end) combines the (n, c) columns' statistics per group of channels.
//
// Over the L values of each (n, c), with acc the accumulation type (float for float32 / bfloat16 / float16,
// double for float64), statistics exact at any mean, on the values shifted by the first one, x0 = x[0] (x - x0 is
// exact in acc for values within a factor 2 of each other, so neither the sum nor the mean's own rounding at
// |mean| >> std costs digits): one pass for sum(d) and sum(d^2), d = x - x0, then the variance
// mean(d^2) - m^2, unless that cancels more than 6 bits (x0 more than 8 standard deviations from the mean), where
// a second, centered pass gives it:
//
//   forward:  m    = sum(x - x0) / L   (the mean less x0: what is saved, "mean" below is x0 + m)
//             var  = sum((x - x0)^2) / L - m^2, or sum(((x - x0) - m)^2) / L,  rstd = 1 / sqrt(var + eps)  (acc)
//             y    = ((x - x0) - m) * (rstd * w) + b                (w = 1, b = 0 without affine parameters)
//   backward: sdy = sum(dy),   sdyx = sum(dy * (x - mean))        (acc, per (n, c))
//             dx  = rstd * w * (dy - sdy / L) - (x - mean) * (w * rstd^3 * sdyx / L)
//             dw  = sum over n of sdyx * rstd,   db = sum over n of sdy   (in acc, summed over n in order)
//
// Work items here are (n, one vector of channels); each walks its L positions (stride C) with the vector in registers,
// so every item's result is independent of the thread count (deterministic). Channels past the last full vector
// run a scalar loop.

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>

#include "channels_last.h"

namespace normlab {
namespace {

// The phases of Forward and Backward: both passes in one (InstanceNorm, BatchNorm: the statistics are the
// column's own), or the first and the second apart (GroupNorm: the columns' statistics combined per group between).
constexpr int kFused = 0, kFirst = 1, kSecond = 2;

template <typename scalar_t>
struct Forward {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* x;
  const scalar_t* w;
  const scalar_t* b;
  scalar_t* y;
  acc_t* mean;
  acc_t* var;
  acc_t* rstd;
  int64_t L, C;
  double eps;
  int phase;  // kFused: statistics then output; kFirst: statistics (mean, var) only; kSecond: output given mean, rstd

  // channels [c0, c0 + V) of group n
  void vector(int64_t n, int64_t c0) const {
    using L_ = Lanes<scalar_t>;
    using aVec = typename L_::aVec;
    const scalar_t* xs = x + n * L * C + c0;
    const aVec x0 = L_::load(xs);
    const int64_t o = n * C + c0;
    aVec m, r;
    if (phase == kSecond) {
      m = aVec::loadu(mean + o);
      r = aVec::loadu(rstd + o);
    } else {
      stats(xs, x0, o, m, r);
      if (phase == kFirst) return;
    }
    const aVec scale = w == nullptr ? r : r * L_::load(w + c0);
    const aVec shift = b == nullptr ? aVec(acc_t(0)) : L_::load(b + c0);
    scalar_t* ys = y + n * L * C + c0;
    for (int64_t p = 0; p < L; ++p)
      L_::store(ys + p * C, at::vec::fmadd((L_::load(xs + p * C) - x0) - m, scale, shift));
  }

  // the statistics of the column at xs (first value x0): m, var (stored at o) and rstd (stored too when fused)
  void stats(const scalar_t* xs, const Vectorized<acc_t>& x0, int64_t o, Vectorized<acc_t>& m_out,
             Vectorized<acc_t>& r_out) const {
    using L_ = Lanes<scalar_t>;
    using aVec = typename L_::aVec;
    aVec s0(acc_t(0)), s1(acc_t(0)), q0(acc_t(0)), q1(acc_t(0));
    int64_t p = 0;
    for (; p + 1 < L; p += 2) {
      const aVec d0 = L_::load(xs + p * C) - x0, d1 = L_::load(xs + (p + 1) * C) - x0;
      s0 = s0 + d0;
      s1 = s1 + d1;
      q0 = at::vec::fmadd(d0, d0, q0);
      q1 = at::vec::fmadd(d1, d1, q1);
    }
    if (p < L) {
      const aVec d0 = L_::load(xs + p * C) - x0;
      s0 = s0 + d0;
      q0 = at::vec::fmadd(d0, d0, q0);
    }
    const aVec inv_l(acc_t(1) / acc_t(L));
    const aVec m = (s0 + s1) * inv_l;
    aVec v = (q0 + q1) * inv_l - m * m;
    if (needs_centered_pass(m, v)) {
      q0 = aVec(acc_t(0));
      q1 = aVec(acc_t(0));
      for (p = 0; p + 1 < L; p += 2) {
        const aVec d0 = (L_::load(xs + p * C) - x0) - m, d1 = (L_::load(xs + (p + 1) * C) - x0) - m;
        q0 = at::vec::fmadd(d0, d0, q0);
        q1 = at::vec::fmadd(d1, d1, q1);
      }
      if (p < L) {
        const aVec d0 = (L_::load(xs + p * C) - x0) - m;
        q0 = at::vec::fmadd(d0, d0, q0);
      }
      v = (q0 + q1) * inv_l;
    }
    const aVec r = aVec(acc_t(1)) / (v + aVec(acc_t(eps))).sqrt();
    m.store(mean + o);
    v.store(var + o);
    if (phase == kFused) r.store(rstd + o);
    m_out = m;
    r_out = r;
  }

  void scalar(int64_t n, int64_t c) const {
    const scalar_t* xs = x + n * L * C + c;
    const acc_t x0 = acc_t(xs[0]);
    const int64_t o = n * C + c;
    acc_t m, r;
    if (phase == kSecond) {
      m = mean[o];
      r = rstd[o];
    } else {
      scalar_stats(xs, x0, o, m, r);
      if (phase == kFirst) return;
    }
    const acc_t scale = w == nullptr ? r : r * acc_t(w[c]), shift = b == nullptr ? acc_t(0) : acc_t(b[c]);
    scalar_t* ys = y + n * L * C + c;
    for (int64_t p = 0; p < L; ++p) ys[p * C] = scalar_t(((acc_t(xs[p * C]) - x0) - m) * scale + shift);
  }

  void scalar_stats(const scalar_t* xs, acc_t x0, int64_t o, acc_t& m_out, acc_t& r_out) const {
    acc_t s = 0, q = 0;
    for (int64_t p = 0; p < L; ++p) {
      const acc_t d = acc_t(xs[p * C]) - x0;
      s += d;
      q += d * d;
    }
    const acc_t m = s / acc_t(L);
    acc_t v = q / acc_t(L) - m * m;
    if (!(m * m <= kCancel * v)) {  // as needs_centered_pass
      q = 0;
      for (int64_t p = 0; p < L; ++p) {
        const acc_t d = (acc_t(xs[p * C]) - x0) - m;
        q += d * d;
      }
      v = q / acc_t(L);
    }
    const acc_t r = acc_t(1) / std::sqrt(v + acc_t(eps));
    mean[o] = m;
    var[o] = v;
    if (phase == kFused) rstd[o] = r;
    m_out = m;
    r_out = r;
  }
};

template <typename scalar_t>
struct Backward {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* dy;
  const scalar_t* x;
  const acc_t* mean;
  const acc_t* rstd;
  const scalar_t* w;
  scalar_t* dx;       // null: not wanted
  acc_t* dw_part;     // (N, C): sdyx * rstd per (n, c); null: not wanted
  acc_t* db_part;     // (N, C): sdy per (n, c)
  int64_t L, C;
  int phase;             // kFused: sums then dx; kFirst: sums only; kSecond: dx given e and k
  const acc_t* e_arr;    // kSecond: dx = rstd * w * dy - e - (x - mean) * k, per (n, c)
  const acc_t* k_arr;

  void vector(int64_t n, int64_t c0) const {
    using L_ = Lanes<scalar_t>;
    using aVec = typename L_::aVec;
    const int64_t base = n * L * C + c0, o = n * C + c0;
    const scalar_t* xs = x + base;
    const scalar_t* ds = dy + base;
    const aVec x0 = L_::load(xs), m = aVec::loadu(mean + o), r = aVec::loadu(rstd + o);
    const aVec a = w == nullptr ? r : r * L_::load(w + c0);
    scalar_t* dxs = dx == nullptr ? nullptr : dx + base;
    if (phase == kSecond) {
      const aVec e = aVec::loadu(e_arr + o), k = aVec::loadu(k_arr + o);
      for (int64_t p = 0; p < L; ++p)
        L_::store(dxs + p * C, a * L_::load(ds + p * C) - e - ((L_::load(xs + p * C) - x0) - m) * k);
      return;
    }
    aVec a0(acc_t(0)), a1(acc_t(0)), g0(acc_t(0)), g1(acc_t(0));
    int64_t p = 0;
    for (; p + 1 < L; p += 2) {
      const aVec d0 = L_::load(ds + p * C), d1 = L_::load(ds + (p + 1) * C);
      a0 = a0 + d0;
      a1 = a1 + d1;
      g0 = at::vec::fmadd(d0, (L_::load(xs + p * C) - x0) - m, g0);
      g1 = at::vec::fmadd(d1, (L_::load(xs + (p + 1) * C) - x0) - m, g1);
    }
    if (p < L) {
      const aVec d0 = L_::load(ds + p * C);
      a0 = a0 + d0;
      g0 = at::vec::fmadd(d0, (L_::load(xs + p * C) - x0) - m, g0);
    }
    const aVec sdy = a0 + a1, sdyx = g0 + g1;
    if (dw_part != nullptr) {
      (sdyx * r).store(dw_part + o);
      sdy.store(db_part + o);
    }
    if (dx == nullptr || phase == kFirst) return;
    const aVec inv_l(acc_t(1) / acc_t(L));
    const aVec k = a * r * r * sdyx * inv_l, centre = sdy * inv_l;
    for (p = 0; p < L; ++p)
      L_::store(dxs + p * C, a * (L_::load(ds + p * C) - centre) - ((L_::load(xs + p * C) - x0) - m) * k);
  }

  void scalar(int64_t n, int64_t c) const {
    const int64_t base = n * L * C + c, o = n * C + c;
    const scalar_t* xs = x + base;
    const scalar_t* ds = dy + base;
    const acc_t x0 = acc_t(xs[0]), m = mean[o], r = rstd[o];
    const acc_t a = w == nullptr ? r : r * acc_t(w[c]);
    scalar_t* dxs = dx == nullptr ? nullptr : dx + base;
    if (phase == kSecond) {
      const acc_t e = e_arr[o], k = k_arr[o];
      for (int64_t p = 0; p < L; ++p)
        dxs[p * C] = scalar_t(a * acc_t(ds[p * C]) - e - ((acc_t(xs[p * C]) - x0) - m) * k);
      return;
    }
    acc_t sdy = 0, sdyx = 0;
    for (int64_t p = 0; p < L; ++p) {
      const acc_t d = acc_t(ds[p * C]);
      sdy += d;
      sdyx += d * ((acc_t(xs[p * C]) - x0) - m);
    }
    if (dw_part != nullptr) {
      dw_part[o] = sdyx * r;
      db_part[o] = sdy;
    }
    if (dx == nullptr || phase == kFirst) return;
    const acc_t k = a * r * r * sdyx / acc_t(L), centre = sdy / acc_t(L);
    for (int64_t p = 0; p < L; ++p)
      dxs[p * C] = scalar_t(a * (acc_t(ds[p * C]) - centre) - ((acc_t(xs[p * C]) - x0) - m) * k);
  }
};

// Run body.vector / body.scalar over every (n, vector of channels) item, in parallel.
template <typename scalar_t, typename Body>
void for_items(const Body& body, int64_t N, int64_t L, int64_t C) {
  const int64_t V = Lanes<scalar_t>::size(), full = C / V, per_n = full + (C % V != 0 ? 1 : 0);
  const int64_t items = N * per_n;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(L * V, 1));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / per_n, j = i % per_n;
      if (j < full) {
        body.vector(n, j * V);
      } else {
        for (int64_t c = full * V; c < C; ++c) body.scalar(n, c);
      }
    }
  });
}

}  // namespace

std::vector<at::Tensor> column_forward(const at::Tensor& x, int64_t groups, const std::optional<at::Tensor>& weight,
                                       const std::optional<at::Tensor>& bias, double eps,
                                       const std::optional<at::Tensor>& running_mean,
                                       const std::optional<at::Tensor>& running_var, double momentum) {
  check_channels_last(x, "input");
  const int64_t C = x.size(1), G = groups, L = x.numel() / std::max<int64_t>(G * C, 1);
  TORCH_CHECK(G >= 1 && G * L * C == x.numel() && L >= 1, "channels_last kernel: bad groups");
  const at::Tensor w = optional_param(weight, x, true), b = optional_param(bias, x, true);
  const at::Tensor rm = optional_param(running_mean, x, false), rv = optional_param(running_var, x, false);
  at::Tensor y = at::empty_like(x);  // the input's layout
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor stats = at::empty({3, G, C}, x.options().dtype(acc_type));
  std::vector<double> mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "normlab_channels_last_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* sp = stats.mutable_data_ptr<acc_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const Forward<scalar_t> body{xp,
                                 w.defined() ? w.const_data_ptr<scalar_t>() : nullptr,
                                 b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                                 y.mutable_data_ptr<scalar_t>(),
                                 sp,
                                 sp + 2 * G * C,
                                 sp + G * C,
                                 L,
                                 C,
                                 eps,
                                 kFused};
    for_items<scalar_t>(body, G, L, C);
    if (rm.defined() || rv.defined()) {
      mean.assign(C, 0.0);
      var.assign(C, 0.0);
      for (int64_t g = 0; g < G; ++g) {
        for (int64_t c = 0; c < C; ++c) {
          mean[c] += double(xp[g * L * C + c]) + double(sp[g * C + c]);
          var[c] += double(sp[2 * G * C + g * C + c]);
        }
      }
      const double unbias = double(L) / double(std::max<int64_t>(L - 1, 1));
      for (int64_t c = 0; c < C; ++c) {
        mean[c] /= double(G);
        var[c] = var[c] / double(G) * unbias;
      }
    }
  });
  update_buffer(rm, mean, momentum);
  update_buffer(rv, var, momentum);
  return {y, stats[0], stats[1], stats[2]};
}

std::vector<at::Tensor> column_backward(const at::Tensor& dy_in, const at::Tensor& x, int64_t groups,
                                        const at::Tensor& shifted_mean, const at::Tensor& rstd,
                                        const std::optional<at::Tensor>& weight, bool need_input, bool need_affine) {
  check_channels_last(x, "input");
  const at::Tensor dy = dy_in.contiguous(x.suggest_memory_format());
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "channels_last kernel: bad grad_output");
  const int64_t C = x.size(1), G = groups, L = x.numel() / std::max<int64_t>(G * C, 1);
  const at::Tensor w = optional_param(weight, x, true);
  const at::Tensor& m = shifted_mean;
  const at::Tensor& r = rstd;
  at::Tensor dx = need_input ? at::empty_like(x) : at::Tensor();
  at::Tensor dw, db;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "normlab_channels_last_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    TORCH_CHECK(m.scalar_type() == acc_type && r.scalar_type() == acc_type && m.numel() == G * C &&
                    r.numel() == G * C && m.is_contiguous() && r.is_contiguous(),
                "channels_last kernel: bad statistics");
    at::Tensor part;
    acc_t* pp = nullptr;
    if (need_affine) {
      part = at::empty({2, G, C}, x.options().dtype(acc_type));
      pp = part.mutable_data_ptr<acc_t>();
    }
    const Backward<scalar_t> body{dy.const_data_ptr<scalar_t>(),
                                  x.const_data_ptr<scalar_t>(),
                                  m.const_data_ptr<acc_t>(),
                                  r.const_data_ptr<acc_t>(),
                                  w.defined() ? w.const_data_ptr<scalar_t>() : nullptr,
                                  need_input ? dx.mutable_data_ptr<scalar_t>() : nullptr,
                                  pp,
                                  need_affine ? pp + G * C : nullptr,
                                  L,
                                  C,
                                  kFused,
                                  nullptr,
                                  nullptr};
    for_items<scalar_t>(body, G, L, C);
    if (need_affine) {
      for (int64_t k = 0; k < 2; ++k) {
        acc_t* q = pp + k * G * C;
        for (int64_t g = 1; g < G; ++g) {
          for (int64_t c = 0; c < C; ++c) q[c] += q[g * C + c];
        }
      }
      dw = part[0][0];
      db = part[1][0];
    }
  });
  return {dx, dw, db};
}

// GroupNorm: (y, m, rstd) for channels_last input (N, C, *spatial) in G groups of K = C / G channels, each
// (n, group) normalized over its K channels' L positions. The first pass takes each (n, c) column's statistics
// (on its values less its first one, as above); they combine per (n, group) in double, relative to the group's
// first column's first value r0: d_c = (x0_c - r0) + m_c, mean = r0 + avg(d_c), var = avg(var_c) +
// avg((d_c - avg(d))^2); the second pass writes y. m and rstd are per (n, c), m the group's mean less the
// column's first value, rstd the group's: what the backward takes.
std::vector<at::Tensor> group_forward(const at::Tensor& x, int64_t num_groups, const std::optional<at::Tensor>& weight,
                                      const std::optional<at::Tensor>& bias, double eps) {
  check_channels_last(x, "input");
  const int64_t N = x.size(0), C = x.size(1), G = num_groups;
  TORCH_CHECK(G >= 1 && C % G == 0 && N * C > 0, "channels_last kernel: bad groups");
  const int64_t K = C / G, L = x.numel() / (N * C);
  const at::Tensor w = optional_param(weight, x, true), b = optional_param(bias, x, true);
  at::Tensor y = at::empty_like(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor stats = at::empty({3, N, C}, x.options().dtype(acc_type));  // m, rstd, var
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "normlab_group_norm_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    acc_t* sp = stats.mutable_data_ptr<acc_t>();
    acc_t *m = sp, *r = sp + N * C, *v = sp + 2 * N * C;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    Forward<scalar_t> body{xp,
                           w.defined() ? w.const_data_ptr<scalar_t>() : nullptr,
                           b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                           y.mutable_data_ptr<scalar_t>(),
                           m,
                           v,
                           r,
                           L,
                           C,
                           eps,
                           kFirst};
    for_items<scalar_t>(body, N, L, C);
    at::parallel_for(0, N * G, std::max<int64_t>(1, kGrain / std::max<int64_t>(K * 8, 1)), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = i / G, c0 = (i % G) * K;
        const double r0 = double(xp[n * L * C + c0]);
        double sum_d = 0, sum_v = 0;
        for (int64_t c = c0; c < c0 + K; ++c) {
          sum_d += (double(xp[n * L * C + c]) - r0) + double(m[n * C + c]);
          sum_v += double(v[n * C + c]);
        }
        const double mean_d = sum_d / double(K);
        double spread = 0;
        for (int64_t c = c0; c < c0 + K; ++c) {
          const double d = (double(xp[n * L * C + c]) - r0) + double(m[n * C + c]) - mean_d;
          spread += d * d;
        }
        const double var = (sum_v + spread) / double(K);
        const acc_t rstd = acc_t(1.0 / std::sqrt(var + eps));
        for (int64_t c = c0; c < c0 + K; ++c) {
          m[n * C + c] = acc_t(mean_d - (double(xp[n * L * C + c]) - r0));  // the group's mean less x0_c
          r[n * C + c] = rstd;
        }
      }
    });
    body.phase = kSecond;
    for_items<scalar_t>(body, N, L, C);
  });
  return {y, stats[0], stats[1]};
}

// GroupNorm's backward given the forward's m and rstd per (n, c): with A = sum over the group of w * dy and
// B = sum over the group of w * dy * (x - mean) (per column in the first pass, added per group),
// dx = rstd * w * dy - rstd * A / (K L) - (x - mean) * rstd^3 * B / (K L); dw = sum over n of the column's
// sum(dy * (x - mean)) * rstd, db = sum over n of sum(dy).
std::vector<at::Tensor> group_backward(const at::Tensor& dy_in, const at::Tensor& x, int64_t num_groups,
                                       const at::Tensor& m, const at::Tensor& r,
                                       const std::optional<at::Tensor>& weight, bool need_input, bool need_affine) {
  check_channels_last(x, "input");
  const at::Tensor dy = dy_in.contiguous(x.suggest_memory_format());
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "channels_last kernel: bad grad_output");
  const int64_t N = x.size(0), C = x.size(1), G = num_groups, K = C / G, L = x.numel() / (N * C);
  const at::Tensor w = optional_param(weight, x, true);
  at::Tensor dx = need_input ? at::empty_like(x) : at::Tensor();
  at::Tensor dw, db;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "normlab_group_norm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    TORCH_CHECK(m.scalar_type() == acc_type && r.scalar_type() == acc_type && m.numel() == N * C &&
                    r.numel() == N * C && m.is_contiguous() && r.is_contiguous(),
                "channels_last kernel: bad statistics");
    at::Tensor part = at::empty({4, N, C}, x.options().dtype(acc_type));  // dw, db per (n, c); e, k
    acc_t* pp = part.mutable_data_ptr<acc_t>();
    const acc_t* rp = r.const_data_ptr<acc_t>();
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    Backward<scalar_t> body{dy.const_data_ptr<scalar_t>(),
                            x.const_data_ptr<scalar_t>(),
                            m.const_data_ptr<acc_t>(),
                            rp,
                            wp,
                            need_input ? dx.mutable_data_ptr<scalar_t>() : nullptr,
                            pp,
                            pp + N * C,
                            L,
                            C,
                            kFirst,
                            pp + 2 * N * C,
                            pp + 3 * N * C};
    for_items<scalar_t>(body, N, L, C);
    if (need_input) {
      acc_t *e = pp + 2 * N * C, *k = pp + 3 * N * C;
      const acc_t inv = acc_t(1) / acc_t(K * L);
      for (int64_t i = 0; i < N * G; ++i) {
        const int64_t n = i / G, c0 = (i % G) * K, o = n * C + c0;
        acc_t A = 0, Bw = 0;  // sum of w * sdy; sum of w * sdyx * rstd
        for (int64_t c = 0; c < K; ++c) {
          const acc_t wc = wp == nullptr ? acc_t(1) : acc_t(wp[c0 + c]);
          A += wc * pp[N * C + o + c];
          Bw += wc * pp[o + c];
        }
        const acc_t rs = rp[o], ev = rs * A * inv, kv = rs * rs * Bw * inv;
        for (int64_t c = 0; c < K; ++c) {
          e[o + c] = ev;
          k[o + c] = kv;
        }
      }
      body.phase = kSecond;
      for_items<scalar_t>(body, N, L, C);
    }
    if (need_affine) {
      for (int64_t q = 0; q < 2; ++q) {
        acc_t* s = pp + q * N * C;
        for (int64_t n = 1; n < N; ++n) {
          for (int64_t c = 0; c < C; ++c) s[c] += s[n * C + c];
        }
      }
      dw = part[0][0];
      db = part[1][0];
    }
  });
  return {dx, dw, db};
}

}  // namespace normlab
