// Fused norm + conv bias + affine + ReLU of the packed ConvNet's channel-major maps, forward and backward, float32
// on CPU; compiled on first use by normlab.lab.training.channel_major_kernel (torch.utils.cpp_extension).
//
// GroupNorm (group_forward / group_backward): x (G, S, N) contiguous, S = Cg * L (a group's Cg channels of L
// positions each, channel-major), N the batch, contiguous, as the vector lanes (a small batch, 2 N <= V: the
// vectors run along a group's S * N values instead, see "Small batches" below). Per (g, n), over the S values
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
// BatchNorm rows (row_forward / row_backward, channel_major_rows.h): x (R, M) contiguous, statistics per row over
// its M values (each channel's positions and batch), the same formulas with N = 1 and the row's first value as the
// shift; the conv's bias cancels (the caller adds it to the running mean only). The vector lanes run along the
// whole row in any output layout (a row's L slots of N values are consecutive; written and read as runs of slots).
//
// Every kernel takes an optional `out`: its output (forward) or grad_x (backward) written there, in place (a mixed
// pack's parts writing their slices of one layer's tensor, with no concatenation after them).
//
// Output layout (both kernels): a channel's L input slots (positions, N values each) are written to its R output
// rows of N by a table dest (L, 2): slot l to rows dest[l][0] and dest[l][1] (-1: none), rows no slot names are
// zeros. Without a table, R = L and slot l goes to row l (the input's layout). With the table of
// conv_forms.tap_rows, the output is the next stride-2 conv's input taps (C, 3, L/2, N): tap 1 the even half, tap 2
// the odd half, tap 0 the odd half shifted one output position (row 0 of that tap zero), so the conv is one matmul
// in the weight's own layout. Backward reads the upstream gradient in the same layout, a slot's gradient the sum
// over its rows (tap 2 + tap 0 of an odd slot): dy above is that sum.
//
// Work items are groups (rows); each item's result is independent of the thread count (deterministic).

#include "channel_major_common.h"
#include "channel_major_rows.h"
#include "channel_major_small.h"

namespace {

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
  for (int64_t c = 0; c < cg; ++c) {  // pass 3: write, to the rows of the output layout
    const float w = p.w[g * cg + c];
    const Vec dcb(cb[c] - cb[0]), b(p.b[g * cg + c]);
    Vec mc[NV], a[NV];
    for (int j = 0; j < NV; ++j) {
      mc[j] = m[j] - dcb;
      a[j] = Vec(w) * r[j];
    }
    float* yc = y + c * p.rows * N + n0;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t off = (c * L + l) * N + n0;
      float* y0 = yc + p.dest[2 * l] * N;
      float* y1 = p.dest[2 * l + 1] >= 0 ? yc + p.dest[2 * l + 1] * N : nullptr;
      for (int j = 0; j < NV; ++j) {
        const Vec z = pre_activation((io.ld(x + off + j * V) - x0[j]) - mc[j], a[j], b);
        const Vec out = p.relu ? at::vec::maximum(z, zero) : z;
        io.st(y0 + j * V, out);
        if (y1 != nullptr) io.st(y1 + j * V, out);
      }
    }
    for (int64_t i = 0; i < p.nzeros; ++i)
      for (int j = 0; j < NV; ++j) io.st(yc + p.zeros[i] * N + j * V, zero);
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
  // dz at slot l of channel c (input offset off), with the forward's mask; the channel's constants in mc and a.
  // dy in the output layout: the slot's gradient is the sum over its rows.
  auto grad_at = [&](int64_t c, int64_t l, int64_t off, int j, const Vec* mc, const Vec* a, const Vec& b, Vec& xc) {
    xc = (io.ld(x + off + j * V) - x0[j]) - mc[j];
    const float* dyc = dy + c * p.rows * N + n0 + j * V;
    Vec d = io.ld(dyc + p.dest[2 * l] * N);
    if (p.dest[2 * l + 1] >= 0) d += io.ld(dyc + p.dest[2 * l + 1] * N);
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
        const Vec dz = grad_at(c, l, off, j, mc, a, b, xc);
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
        const Vec dz = grad_at(c, l, off, j, mc, a, b, xc);
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

// (y, m, rstd): y (G, C/G * R, N) in the output layout of dest (see the top; empty: x's); m (the mean less the
// shift, see the top) and rstd (G, N)
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_forward(const at::Tensor& x, int64_t channels_per_group,
                                                             const at::Tensor& conv_bias, const at::Tensor& weight,
                                                             const at::Tensor& bias, double eps, bool relu,
                                                             const at::Tensor& dest, int64_t out_rows,
                                                             const std::optional<at::Tensor>& out) {
  check_group(x, channels_per_group, conv_bias, weight, bias);
  const int64_t G = x.size(0), S = x.size(1), N = x.size(2), L = S / channels_per_group;
  const Layout t = make_layout(dest, L, out_rows);
  const int64_t SO = channels_per_group * t.rows;  // output rows per group
  auto y = output_tensor(out, {G, SO, N}, x, "out");
  auto mean = at::empty({G, N}, x.options()), rstd = at::empty({G, N}, x.options());
  const GroupArgs p{channels_per_group, L,       N,
                    conv_bias.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(),
                    static_cast<float>(eps),     relu,    t.dest.data(),
                    t.zeros.data(),              static_cast<int64_t>(t.zeros.size()), t.rows};
  const float* xp = x.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  const bool small = N > 0 && 2 * N <= V;
  const Runs runs = small ? make_runs(t, L) : Runs{};
  const Lanes lanes(small ? N : 0);
  at::parallel_for(0, G, std::max<int64_t>(1, kGrain / std::max<int64_t>(S * N, 1)), [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      if (small) {
        group_forward_small(p, lanes, runs, xp + g * S * N, yp + g * SO * N, mp + g * N, rp + g * N, g);
        continue;
      }
      over_lanes(N, [&](auto nv, auto partial, int64_t n0, int64_t count) {
        group_forward_chunk<decltype(nv)::value, decltype(partial)::value>(p, xp + g * S * N, yp + g * SO * N,
                                                                            mp + g * N, rp + g * N, g, n0, count);
      });
    }
  });
  return {y, mean, rstd};
}

// (grad_x, grad_weight, grad_bias, grad_conv_bias)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> group_backward(
    const at::Tensor& grad, const at::Tensor& x, int64_t channels_per_group, const at::Tensor& conv_bias,
    const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd, bool relu,
    const at::Tensor& dest, int64_t out_rows, const std::optional<at::Tensor>& out) {
  check_group(x, channels_per_group, conv_bias, weight, bias);
  const int64_t G = x.size(0), S = x.size(1), N = x.size(2), C = G * channels_per_group;
  const Layout t = make_layout(dest, S / channels_per_group, out_rows);
  const int64_t SO = channels_per_group * t.rows;
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == G && grad.size(1) == SO && grad.size(2) == N &&
                  grad.is_contiguous() && grad.scalar_type() == at::kFloat,
              "grad: contiguous float32, the output's shape");
  TORCH_CHECK(mean.is_contiguous() && rstd.is_contiguous() && mean.numel() == G * N && rstd.numel() == G * N,
              "mean, rstd: contiguous (G, N)");
  auto dx = output_tensor(out, {G, S, N}, x, "out");
  auto sums = at::zeros({3, C}, x.options().dtype(at::kDouble));  // gw, gb, gcb
  const GroupArgs p{channels_per_group, S / channels_per_group, N,
                    conv_bias.data_ptr<float>(), weight.data_ptr<float>(), bias.data_ptr<float>(),
                    0.f,                relu,     t.dest.data(),
                    t.zeros.data(),     static_cast<int64_t>(t.zeros.size()), t.rows};
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>();
  const float *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();
  double* sp = sums.data_ptr<double>();
  const bool small = N > 0 && 2 * N <= V;
  const Runs runs = small ? make_runs(t, S / channels_per_group) : Runs{};
  const Lanes lanes(small ? N : 0);
  at::parallel_for(0, G, std::max<int64_t>(1, kGrain / std::max<int64_t>(S * N, 1)), [&](int64_t g0, int64_t g1) {
    std::vector<float> slots(small && !runs.identity ? S * N : 0);  // this task's scratch: a group's slot gradients
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t o = g * S * N;
      if (small) {
        group_backward_small(p, lanes, runs, gp + g * SO * N, xp + o, mp + g * N, rp + g * N, dxp + o, sp, sp + C,
                             sp + 2 * C, g, slots.data());
        continue;
      }
      over_lanes(N, [&](auto nv, auto partial, int64_t n0, int64_t count) {
        group_backward_chunk<decltype(nv)::value, decltype(partial)::value>(
            p, gp + g * SO * N, xp + o, mp + g * N, rp + g * N, dxp + o, sp, sp + C, sp + 2 * C, g, n0, count);
      });
    }
  });
  auto f = sums.to(at::kFloat);
  return {dx, f[0], f[1], f[2]};
}

// The checks split_forward and split_backward share: y contiguous (K, C, L * N), runs adding up to K, groups one per
// part, params two per part; returns the number of parts.
int64_t check_split(const char* name, const at::Tensor& y, int64_t n, const std::vector<int64_t>& runs,
                    const std::vector<int64_t>& groups, const std::vector<at::Tensor>& params) {
  const int64_t P = static_cast<int64_t>(runs.size());
  TORCH_CHECK(y.dim() == 3 && y.is_contiguous() && n > 0 && y.size(2) % n == 0, name,
              ": y must be contiguous (K, C, L * N)");
  TORCH_CHECK(static_cast<int64_t>(groups.size()) == P && static_cast<int64_t>(params.size()) == 2 * P, name,
              ": runs, groups: one per part; params: two per part");
  int64_t total = 0;
  for (const int64_t r : runs) total += r;
  TORCH_CHECK(total == y.size(0), name, ": runs must add up to K (y's first dim)");
  return P;
}

// A mixed pack's norm layer in one call (SplitNormReLU): y (K, C, M) contiguous, M = L * N, its runs in parts of
// runs[i] consecutive runs each; part i a BatchNorm row part (groups[i] == 0: row_forward of its runs * C rows) or
// a GroupNorm part (groups[i] groups: group_forward of (groups, S, N)), weight and bias params[2 i], params[2 i + 1],
// each writing its slice of one output (K, C * R * N). (out, saved: two per part, the backward's statistics; stats:
// the mean and biased variance of each row part, for its running statistics.)
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> split_forward(
    const at::Tensor& y, const at::Tensor& conv_bias, int64_t n, const std::vector<int64_t>& runs,
    const std::vector<int64_t>& groups, const std::vector<double>& eps, const std::vector<at::Tensor>& params,
    bool relu, const at::Tensor& dest, int64_t out_rows) {
  const int64_t P = check_split("split_forward", y, n, runs, groups, params);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // the parts' slices: plain views, no autograd metadata
  TORCH_CHECK(static_cast<int64_t>(eps.size()) == P, "split_forward: eps: one per part");
  const int64_t K = y.size(0), C = y.size(1), M = y.size(2), rows = (dest.numel() == 0 ? M / n : out_rows);
  auto out = at::empty({K, C * rows * n}, y.options());
  std::vector<at::Tensor> saved, stats;
  int64_t k0 = 0;
  for (int64_t i = 0; i < P; ++i) {
    const int64_t r = runs[i];
    const at::Tensor x = y.narrow(0, k0, r), o = out.narrow(0, k0, r);
    const at::Tensor &w = params[2 * i], &b = params[2 * i + 1];
    if (groups[i] == 0) {
      auto [_, st] = row_forward(x.view({r * C, M}), w, b, eps[i], relu, dest, out_rows, o);
      saved.insert(saved.end(), {st[0], st[1]});
      stats.insert(stats.end(), {st[2], st[3]});
    } else {
      TORCH_CHECK(groups[i] > 0 && (r * C) % groups[i] == 0, "split_forward: groups must divide a part's channels");
      auto [_, mean, rstd] = group_forward(x.view({groups[i], -1, n}), r * C / groups[i],
                                           conv_bias.narrow(0, k0 * C, r * C), w, b, eps[i], relu, dest, out_rows, o);
      saved.insert(saved.end(), {mean, rstd});
    }
    k0 += r;
  }
  return {out, saved, stats};
}

// Its backward: (grad_y, grad_conv_bias, grad_params: weight and bias per part), each part's grad_y written into
// its slice; a row part's conv-bias gradient is 0 (the bias cancels in BatchNorm).
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> split_backward(
    const at::Tensor& grad, const at::Tensor& y, const at::Tensor& conv_bias, int64_t n,
    const std::vector<int64_t>& runs, const std::vector<int64_t>& groups, const std::vector<at::Tensor>& params,
    const std::vector<at::Tensor>& saved, bool relu, const at::Tensor& dest, int64_t out_rows) {
  const int64_t P = check_split("split_backward", y, n, runs, groups, params);
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // the parts' slices: plain views, no autograd metadata
  TORCH_CHECK(static_cast<int64_t>(saved.size()) == 2 * P, "split_backward: saved: two per part");
  const int64_t K = y.size(0), C = y.size(1), M = y.size(2);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == K && grad.is_contiguous(), "grad: contiguous (K, C * R * N)");
  auto grad_y = at::empty_like(y);
  auto grad_cb = at::zeros({K * C}, y.options());
  std::vector<at::Tensor> grad_params;
  int64_t k0 = 0;
  for (int64_t i = 0; i < P; ++i) {
    const int64_t r = runs[i];
    const at::Tensor x = y.narrow(0, k0, r), g = grad.narrow(0, k0, r), gx = grad_y.narrow(0, k0, r);
    const at::Tensor &w = params[2 * i], &b = params[2 * i + 1];
    if (groups[i] == 0) {
      auto [_, gw, gb] = row_backward(g.view({r * C, -1}), x.view({r * C, M}), w, b, saved[2 * i], saved[2 * i + 1],
                                      relu, dest, out_rows, gx);
      grad_params.insert(grad_params.end(), {gw, gb});
    } else {
      auto [_, gw, gb, gcb] = group_backward(g.view({groups[i], -1, n}), x.view({groups[i], -1, n}),
                                             r * C / groups[i], conv_bias.narrow(0, k0 * C, r * C), w, b, saved[2 * i],
                                             saved[2 * i + 1], relu, dest, out_rows, gx);
      grad_cb.narrow(0, k0 * C, r * C).copy_(gcb);
      grad_params.insert(grad_params.end(), {gw, gb});
    }
    k0 += r;
  }
  return {grad_y, grad_cb, grad_params};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("group_forward", &group_forward, "GroupNorm + conv bias + affine (+ ReLU) of (G, S, N): (y, m, rstd)",
        py::arg("x"), py::arg("channels_per_group"), py::arg("conv_bias"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("relu"), py::arg("dest"), py::arg("out_rows"), py::arg("out") = py::none());
  m.def("group_backward", &group_backward, "its backward: (grad_x, grad_weight, grad_bias, grad_conv_bias)",
        py::arg("grad"), py::arg("x"), py::arg("channels_per_group"), py::arg("conv_bias"), py::arg("weight"),
        py::arg("bias"), py::arg("mean"), py::arg("rstd"), py::arg("relu"), py::arg("dest"), py::arg("out_rows"),
        py::arg("out") = py::none());
  m.def("row_forward", &row_forward, "BatchNorm + affine (+ ReLU) of (R, M) rows: (y, stats (m, rstd, mean, var))",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("relu"), py::arg("dest"),
        py::arg("out_rows"), py::arg("out") = py::none());
  m.def("row_backward", &row_backward, "its backward: (grad_x, grad_weight, grad_bias)", py::arg("grad"),
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("mean"), py::arg("rstd"), py::arg("relu"),
        py::arg("dest"), py::arg("out_rows"), py::arg("out") = py::none());
  m.def("split_forward", &split_forward, "a mixed pack's norm layer, each part into its slice: (out, saved, stats)",
        py::arg("y"), py::arg("conv_bias"), py::arg("n"), py::arg("runs"), py::arg("groups"), py::arg("eps"),
        py::arg("params"), py::arg("relu"), py::arg("dest"), py::arg("out_rows"));
  m.def("split_backward", &split_backward, "its backward: (grad_y, grad_conv_bias, grad_params)", py::arg("grad"),
        py::arg("y"), py::arg("conv_bias"), py::arg("n"), py::arg("runs"), py::arg("groups"), py::arg("params"),
        py::arg("saved"), py::arg("relu"), py::arg("dest"), py::arg("out_rows"));
}
