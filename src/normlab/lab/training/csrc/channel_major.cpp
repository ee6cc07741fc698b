// Fused norm + conv bias + affine + ReLU of the packed ConvNet's channel-major maps, forward and backward, float32
// on CPU; compiled on first use by normlab.lab.training.channel_major_kernel (torch.utils.cpp_extension).
//
// GroupNorm (group_forward / group_backward): x (G, S, N) contiguous, S = Cg * L (a group's Cg channels of L
// positions each, channel-major), N the batch, contiguous, as the vector lanes. Per (g, n), over the S values
// v = x + cb[c] (cb the conv's bias, c the row's channel), with the shift x0 = x[g, 0, n] + cb[c0] (c0 the group's
// first channel) so that x - x[g, 0, n] is exact and no sum sees |mean| >> std:
//
//   forward:  m    = sum(v - x0) / S         (saved: the mean less x0)
//             xc   = (x - x[g,0,n]) - (m - (cb[c] - cb[c0]))        (= v - mean, one rounding past the exact part)
//             var  = sum(xc^2) / S,   rstd = 1 / sqrt(var + eps)     (two passes: exact at any mean)
//             z    = xc * (w[c] * rstd) + b[c],   y = relu(z) (or z)
//   backward: dz   = dy * (z > 0)  (z recomputed with the forward's own operations: the same mask bit for bit)
//             s1   = sum_s dz * w[c],   s2 = sum_s dz * w[c] * xc        (per (g, n))
//             dx   = dz * (w[c] * rstd) - rstd * s1 / S - xc * (rstd^3 * s2 / S)
//             dw[c] = sum dz * xc * rstd,  db[c] = sum dz,  dcb[c] = sum dx  (over positions and the batch)
//
// Sums over a group run per channel first (L values), then over the channels: shorter float chains. Per-channel
// totals are added up in double. Forward: three passes over a group (sum, centered square, write), backward: two
// (sums, write) plus x, dy read again; a group (<= a few hundred KiB here) stays in cache between passes.
//
// BatchNorm rows (row_forward / row_backward): x (R, M) contiguous, statistics per row over its M values (each
// channel's positions and batch), the same formulas with N = 1 and the row's first value as the shift; the conv's
// bias cancels (the caller adds it to the running mean only). The vector lanes run along the row.
//
// Work items are groups (rows); each item's result is independent of the thread count (deterministic).

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t V = Vec::size();
constexpr int64_t kGrain = 16384;  // values per task: below this, one thread
constexpr int kLanes = 4;          // vectors of lanes held in registers at once (GroupNorm)

// Loads and stores of NV vectors of lanes; a partial chunk (one vector, count < V) zero-fills the rest, whose lanes
// then stay 0 in every sum below.
template <bool Partial>
struct Io {
  int64_t count;
  Vec ld(const float* p) const { return Partial ? Vec::loadu(p, count) : Vec::loadu(p); }
  // v with the lanes past count zeroed (a row's partial vector: no lane of another row in its sums)
  Vec keep(const Vec& v) const { return Partial ? Vec::set(Vec(0.f), v, count) : v; }
  void st(float* p, const Vec& v) const {
    if (Partial) {
      v.store(p, count);
    } else {
      v.store(p);
    }
  }
};

// the lanes' sum in a fixed order (deterministic)
double hsum(const Vec& v) {
  alignas(64) float a[V];
  v.store(a);
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += a[i];
  return s;
}

// z = xc * a + b, then the ReLU: one function for the forward and the backward's mask, so both round alike
inline Vec pre_activation(const Vec& xc, const Vec& a, const Vec& b) { return at::vec::fmadd(xc, a, b); }

struct GroupArgs {
  int64_t cg, length, n;
  const float *cb, *w, *b;
  float eps;
  bool relu;
};

// Forward of group g's lanes [n0, n0 + NV * V) (or one partial vector): y, and the saved m and rstd.
template <int NV, bool Partial>
void group_forward_chunk(const GroupArgs& p, const float* x, float* y, float* mean, float* rstd, int64_t g,
                         int64_t n0, int64_t count) {
  const Io<Partial> io{count};
  const int64_t cg = p.cg, L = p.length, N = p.n, S = cg * L;
  const float* cb = p.cb + g * cg;
  Vec x0[NV], sum[NV], sq[NV], m[NV], r[NV];
  for (int j = 0; j < NV; ++j) {
    x0[j] = io.ld(x + n0 + j * V);
    sum[j] = Vec(0.f);
    sq[j] = Vec(0.f);
  }
  for (int64_t c = 0; c < cg; ++c) {  // pass 1: sum(v - x0)
    Vec part[NV];
    for (int j = 0; j < NV; ++j) part[j] = Vec(0.f);
    for (int64_t l = 0; l < L; ++l) {
      const float* row = x + (c * L + l) * N + n0;
      for (int j = 0; j < NV; ++j) part[j] += io.ld(row + j * V) - x0[j];
    }
    const Vec bias_part(static_cast<float>(L) * (cb[c] - cb[0]));
    for (int j = 0; j < NV; ++j) sum[j] += part[j] + bias_part;
  }
  for (int j = 0; j < NV; ++j) m[j] = sum[j] / Vec(static_cast<float>(S));
  for (int64_t c = 0; c < cg; ++c) {  // pass 2: sum(xc^2)
    Vec part[NV], mc[NV];
    const Vec dcb(cb[c] - cb[0]);
    for (int j = 0; j < NV; ++j) {
      part[j] = Vec(0.f);
      mc[j] = m[j] - dcb;
    }
    for (int64_t l = 0; l < L; ++l) {
      const float* row = x + (c * L + l) * N + n0;
      for (int j = 0; j < NV; ++j) {
        const Vec xc = (io.ld(row + j * V) - x0[j]) - mc[j];
        part[j] = at::vec::fmadd(xc, xc, part[j]);
      }
    }
    for (int j = 0; j < NV; ++j) sq[j] += part[j];
  }
  for (int j = 0; j < NV; ++j) {
    r[j] = Vec(1.f) / (sq[j] / Vec(static_cast<float>(S)) + Vec(p.eps)).sqrt();
    io.st(mean + n0 + j * V, m[j]);
    io.st(rstd + n0 + j * V, r[j]);
  }
  const Vec zero(0.f);
  for (int64_t c = 0; c < cg; ++c) {  // pass 3: write
    const float w = p.w[g * cg + c];
    const Vec dcb(cb[c] - cb[0]), b(p.b[g * cg + c]);
    Vec mc[NV], a[NV];
    for (int j = 0; j < NV; ++j) {
      mc[j] = m[j] - dcb;
      a[j] = Vec(w) * r[j];
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t off = (c * L + l) * N + n0;
      for (int j = 0; j < NV; ++j) {
        const Vec z = pre_activation((io.ld(x + off + j * V) - x0[j]) - mc[j], a[j], b);
        io.st(y + off + j * V, p.relu ? at::vec::maximum(z, zero) : z);
      }
    }
  }
}

// Backward of group g's lanes [n0, n0 + NV * V): dx, and the per-channel sums added to gw, gb, gcb (double).
template <int NV, bool Partial>
void group_backward_chunk(const GroupArgs& p, const float* dy, const float* x, const float* mean, const float* rstd,
                          float* dx, double* gw, double* gb, double* gcb, int64_t g, int64_t n0, int64_t count) {
  const Io<Partial> io{count};
  const int64_t cg = p.cg, L = p.length, N = p.n, S = cg * L;
  const float* cb = p.cb + g * cg;
  const Vec zero(0.f);
  Vec x0[NV], m[NV], r[NV], s1[NV], s2[NV], k0[NV], kx[NV];
  for (int j = 0; j < NV; ++j) {
    x0[j] = io.ld(x + n0 + j * V);
    m[j] = io.ld(mean + n0 + j * V);
    r[j] = io.ld(rstd + n0 + j * V);
    s1[j] = zero;
    s2[j] = zero;
  }
  // dz, with the forward's mask; the channel's constants in mc and a
  auto grad_at = [&](int64_t off, int j, const Vec* mc, const Vec* a, const Vec& b, Vec& xc) {
    xc = (io.ld(x + off + j * V) - x0[j]) - mc[j];
    const Vec d = io.ld(dy + off + j * V);
    return p.relu ? (d & (pre_activation(xc, a[j], b) > zero)) : d;
  };
  for (int64_t c = 0; c < cg; ++c) {  // pass 1: the sums
    const float w = p.w[g * cg + c];
    const Vec dcb(cb[c] - cb[0]), b(p.b[g * cg + c]);
    Vec mc[NV], a[NV], sdz[NV], sdzx[NV];
    for (int j = 0; j < NV; ++j) {
      mc[j] = m[j] - dcb;
      a[j] = Vec(w) * r[j];
      sdz[j] = zero;
      sdzx[j] = zero;
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t off = (c * L + l) * N + n0;
      for (int j = 0; j < NV; ++j) {
        Vec xc;
        const Vec dz = grad_at(off, j, mc, a, b, xc);
        sdz[j] += dz;
        sdzx[j] = at::vec::fmadd(dz, xc, sdzx[j]);
      }
    }
    Vec tz = zero, tzx = zero;
    for (int j = 0; j < NV; ++j) {
      tz += sdz[j];
      tzx += sdzx[j] * r[j];
      s1[j] = at::vec::fmadd(sdz[j], Vec(w), s1[j]);
      s2[j] = at::vec::fmadd(sdzx[j], Vec(w), s2[j]);
    }
    gb[g * cg + c] += hsum(tz);
    gw[g * cg + c] += hsum(tzx);
  }
  const Vec inv_s(1.f / static_cast<float>(S));
  for (int j = 0; j < NV; ++j) {
    k0[j] = zero - r[j] * s1[j] * inv_s;
    kx[j] = zero - r[j] * r[j] * r[j] * s2[j] * inv_s;
  }
  for (int64_t c = 0; c < cg; ++c) {  // pass 2: dx
    const float w = p.w[g * cg + c];
    const Vec dcb(cb[c] - cb[0]), b(p.b[g * cg + c]);
    Vec mc[NV], a[NV], sdx[NV];
    for (int j = 0; j < NV; ++j) {
      mc[j] = m[j] - dcb;
      a[j] = Vec(w) * r[j];
      sdx[j] = zero;
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t off = (c * L + l) * N + n0;
      for (int j = 0; j < NV; ++j) {
        Vec xc;
        const Vec dz = grad_at(off, j, mc, a, b, xc);
        const Vec d = at::vec::fmadd(dz, a[j], at::vec::fmadd(xc, kx[j], k0[j]));
        io.st(dx + off + j * V, d);
        sdx[j] += d;
      }
    }
    Vec t = zero;
    for (int j = 0; j < NV; ++j) t += sdx[j];
    gcb[g * cg + c] += hsum(t);
  }
}

// Group g's lanes in chunks: kLanes vectors at a time, the remaining whole vectors, then one partial vector.
template <typename F>
void over_lanes(int64_t N, F&& run) {
  int64_t n0 = 0;
  for (; n0 + kLanes * V <= N; n0 += kLanes * V) run(std::integral_constant<int, kLanes>{}, std::false_type{}, n0, V);
  const int64_t whole = (N - n0) / V;
  if (whole == 3) run(std::integral_constant<int, 3>{}, std::false_type{}, n0, V);
  if (whole == 2) run(std::integral_constant<int, 2>{}, std::false_type{}, n0, V);
  if (whole == 1) run(std::integral_constant<int, 1>{}, std::false_type{}, n0, V);
  n0 += whole * V;
  if (n0 < N) run(std::integral_constant<int, 1>{}, std::true_type{}, n0, N - n0);
}

void check_group(const at::Tensor& x, int64_t channels_per_group, const at::Tensor& cb, const at::Tensor& w,
                 const at::Tensor& b) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "channel_major group kernel: x must be a contiguous float32 CPU tensor (G, S, N)");
  TORCH_CHECK(channels_per_group > 0 && x.size(1) % channels_per_group == 0, "S must be channels_per_group * L");
  const int64_t C = x.size(0) * channels_per_group;
  for (const at::Tensor* t : {&cb, &w, &b})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->numel() == C,
                "conv bias, weight, bias: contiguous float32 of G * channels_per_group values");
}

// (y, m, rstd): y like x; m (the mean less the shift, see the top) and rstd (G, N)
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_forward(const at::Tensor& x, int64_t channels_per_group,
                                                             const at::Tensor& conv_bias, const at::Tensor& weight,
                                                             const at::Tensor& bias, double eps, bool relu) {
  check_group(x, channels_per_group, conv_bias, weight, bias);
  const int64_t G = x.size(0), S = x.size(1), N = x.size(2);
  auto y = at::empty_like(x);
  auto mean = at::empty({G, N}, x.options()), rstd = at::empty({G, N}, x.options());
  const GroupArgs p{channels_per_group, S / channels_per_group, N, conv_bias.data_ptr<float>(),
                    weight.data_ptr<float>(), bias.data_ptr<float>(), static_cast<float>(eps), relu};
  const float* xp = x.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  at::parallel_for(0, G, std::max<int64_t>(1, kGrain / std::max<int64_t>(S * N, 1)), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      over_lanes(N, [&](auto nv, auto partial, int64_t n0, int64_t count) {
        group_forward_chunk<decltype(nv)::value, decltype(partial)::value>(p, xp + g * S * N, yp + g * S * N,
                                                                            mp + g * N, rp + g * N, g, n0, count);
      });
    }
  });
  return {y, mean, rstd};
}

// (grad_x, grad_weight, grad_bias, grad_conv_bias)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_backward(
    const at::Tensor& grad, const at::Tensor& x, int64_t channels_per_group, const at::Tensor& conv_bias,
    const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, bool relu) {
  check_group(x, channels_per_group, conv_bias, weight, bias);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous() && grad.scalar_type() == at::kFloat,
              "grad: contiguous float32, x's shape");
  const int64_t G = x.size(0), S = x.size(1), N = x.size(2), C = G * channels_per_group;
  TORCH_CHECK(mean.is_contiguous() && rstd.is_contiguous() && mean.numel() == G * N && rstd.numel() == G * N,
              "mean, rstd: contiguous (G, N)");
  auto dx = at::empty_like(x);
  auto sums = at::zeros({3, C}, x.options().dtype(at::kDouble));  // gw, gb, gcb
  const GroupArgs p{channels_per_group, S / channels_per_group, N, conv_bias.data_ptr<float>(),
                    weight.data_ptr<float>(), bias.data_ptr<float>(), 0.f, relu};
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>();
  const float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  double* sp = sums.data_ptr<double>();
  at::parallel_for(0, G, std::max<int64_t>(1, kGrain / std::max<int64_t>(S * N, 1)), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t o = g * S * N;
      over_lanes(N, [&](auto nv, auto partial, int64_t n0, int64_t count) {
        group_backward_chunk<decltype(nv)::value, decltype(partial)::value>(
            p, gp + o, xp + o, mp + g * N, rp + g * N, dxp + o, sp, sp + C, sp + 2 * C, g, n0, count);
      });
    }
  });
  auto f = sums.to(at::kFloat);
  return {dx, f[0], f[1], f[2]};
}

// Row of M values, V lanes at a time along it: fn(offset, io) for every vector, the last one partial.
template <typename F>
void along_row(int64_t M, F&& fn) {
  int64_t i = 0;
  for (; i + V <= M; i += V) fn(i, Io<false>{V});
  if (i < M) fn(i, Io<true>{M - i});
}

// Sum of f(i, io) over a row: float lanes in chains of 64 vectors at most, the chains added in double.
template <typename F>
double row_sum(int64_t M, F&& f) {
  double total = 0;
  Vec acc(0.f);
  along_row(M, [&](int64_t i, auto io) {
    acc += io.keep(f(i, io));
    if ((i / V) % 64 == 63) total += hsum(acc), acc = Vec(0.f);
  });
  return total + hsum(acc);
}

void check_rows(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat && x.size(1) > 0 && x.device().is_cpu(),
              "channel_major row kernel: x must be a contiguous float32 CPU tensor (R, M)");
  for (const at::Tensor* t : {&w, &b})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kFloat && t->numel() == x.size(0),
                "weight, bias: contiguous float32 of R values");
}

// (y, stats): y like x; stats (4, R): m (the mean less x[r, 0]), rstd, the mean and the biased variance
std::tuple<at::Tensor, at::Tensor> row_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                               double eps, bool relu) {
  check_rows(x, weight, bias);
  const int64_t R = x.size(0), M = x.size(1);
  auto y = at::empty_like(x);
  auto stats = at::empty({4, R}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *st = stats.data_ptr<float>();
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / M), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * M;
      const Vec x0(row[0]), zero(0.f);
      const float m = static_cast<float>(row_sum(M, [&](int64_t i, auto io) { return io.ld(row + i) - x0; }) / M);
      const Vec mv(m);
      const double var = row_sum(M, [&](int64_t i, auto io) {
                           const Vec xc = (io.ld(row + i) - x0) - mv;
                           return xc * xc;
                         }) / M;
      const float rs = 1.f / std::sqrt(static_cast<float>(var) + static_cast<float>(eps));
      const Vec a(wp[r] * rs), b(bp[r]);
      float* out = yp + r * M;
      along_row(M, [&](int64_t i, auto io) {
        const Vec z = pre_activation((io.ld(row + i) - x0) - mv, a, b);
        io.st(out + i, relu ? at::vec::maximum(z, zero) : z);
      });
      st[r] = m, st[R + r] = rs, st[2 * R + r] = static_cast<float>(row[0] + static_cast<double>(m));
      st[3 * R + r] = static_cast<float>(var);
    }
  });
  return {y, stats};
}

// (grad_x, grad_weight, grad_bias): BatchNorm's backward per row, the ReLU's mask from the recomputed z
std::tuple<at::Tensor, at::Tensor, at::Tensor> row_backward(const at::Tensor& grad, const at::Tensor& x,
                                                            const at::Tensor& weight, const at::Tensor& bias,
                                                            const at::Tensor& mean, const at::Tensor& rstd,
                                                            bool relu) {
  check_rows(x, weight, bias);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous() && grad.scalar_type() == at::kFloat,
              "grad: contiguous float32, x's shape");
  const int64_t R = x.size(0), M = x.size(1);
  TORCH_CHECK(mean.is_contiguous() && rstd.is_contiguous() && mean.numel() == R && rstd.numel() == R,
              "mean, rstd: R values");
  auto dx = at::empty_like(x);
  auto gw = at::empty({R}, x.options()), gb = at::empty({R}, x.options());
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  const float *bp = bias.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float *dxp = dx.data_ptr<float>(), *gwp = gw.data_ptr<float>(), *gbp = gb.data_ptr<float>();
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / M), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *row = xp + r * M, *dyr = gp + r * M;
      const float rs = rp[r];
      const Vec x0(row[0]), mv(mp[r]), a(wp[r] * rs), b(bp[r]), zero(0.f);
      auto dz_at = [&](int64_t i, auto io, const Vec& xc) {
        const Vec d = io.ld(dyr + i);
        return relu ? (d & (pre_activation(xc, a, b) > zero)) : d;
      };
      const double sdz = row_sum(M, [&](int64_t i, auto io) { return dz_at(i, io, (io.ld(row + i) - x0) - mv); });
      const double sdzx = row_sum(M, [&](int64_t i, auto io) {
        const Vec xc = (io.ld(row + i) - x0) - mv;
        return dz_at(i, io, xc) * xc;
      });
      gbp[r] = static_cast<float>(sdz);
      gwp[r] = static_cast<float>(sdzx * rs);
      const Vec k0(static_cast<float>(-rs * wp[r] * sdz / M));
      const Vec kx(static_cast<float>(-static_cast<double>(rs) * rs * rs * wp[r] * sdzx / M));
      float* out = dxp + r * M;
      along_row(M, [&](int64_t i, auto io) {
        const Vec xc = (io.ld(row + i) - x0) - mv;
        io.st(out + i, at::vec::fmadd(dz_at(i, io, xc), a, at::vec::fmadd(xc, kx, k0)));
      });
    }
  });
  return {dx, gw, gb};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("group_forward", &group_forward, "GroupNorm + conv bias + affine (+ ReLU) of (G, S, N): (y, m, rstd)",
        py::arg("x"), py::arg("channels_per_group"), py::arg("conv_bias"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("relu"));
  m.def("group_backward", &group_backward, "its backward: (grad_x, grad_weight, grad_bias, grad_conv_bias)",
        py::arg("grad"), py::arg("x"), py::arg("channels_per_group"), py::arg("conv_bias"), py::arg("weight"),
        py::arg("bias"), py::arg("mean"), py::arg("rstd"), py::arg("relu"));
  m.def("row_forward", &row_forward, "BatchNorm + affine (+ ReLU) of (R, M) rows: (y, stats (m, rstd, mean, var))",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("relu"));
  m.def("row_backward", &row_backward, "its backward: (grad_x, grad_weight, grad_bias)", py::arg("grad"),
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("mean"), py::arg("rstd"), py::arg("relu"));
}
