// Training-mode BatchNorm of channels_last (NHWC) input on CPU, part of the channels_last kernel (its Python side is
// normlab.functional.channels_last). The memory of a channels_last (N, C, *spatial) tensor is an (R, C) matrix,
// R = N * positions rows; each channel is normalized over its R values. With acc the accumulation type (float for
// float32 / bfloat16 / float16, double for float64) and x0 the mean of the first kShiftRows rows rounded to acc
// (per channel, a fraction of a standard deviation from the mean):
//
//   forward:  S = sum(x - x0),  Q = sum((x - x0)^2)         per block of rows in acc, the blocks added in double
//             m = S / R (the mean less x0, double),  var = Q / R - m^2, or sum(((x - x0) - m)^2) / R by a
//             centered second pass where the first would cancel (m^2 > kCancel var: x0 far from the mean)
//             rstd = 1 / sqrt(var + eps)                     (double, saved in acc)
//             y = ((x - x0) - m) * (rstd * w) + b
//   backward: sdy = sum(dy),  sdyx = sum(dy * ((x - x0) - m))   per block in acc, the blocks added in double
//             dw = sdyx * rstd,  db = sdy                    (double, returned in acc)
//             dx = a * dy - (a * sdy / R) - ((x - x0) - m) * (a * rstd^2 * sdyx / R),  a = rstd * w
//
// The passes subtract m rounded to acc, m' = acc(m), and correct for its residual rho = m - m' in double, at no
// cost per element: (x - x0) - m = ((x - x0) - m') - rho, so the forward's shift is b - rho * rstd * w, sdyx is
// sum(dy * ((x - x0) - m')) - rho * sdy, and dx's constant term takes - rho * k. The forward saves x0, m' and rho
// for the backward.
//
// x - x0 is exact in acc for values within a factor 2 of each other, so the mean's size costs no digits (exact at
// mean 1e4 in float32), and the sums of x - x0 stay small: their rounding is a small part of a standard deviation
// (a single value as x0, a few standard deviations away, made sum(x - x0) large enough that its float32 rounding
// moved dw by 1e-5 where dy is not centered, more than torch's own module tests allow).
//
// The work items are blocks of B rows x all channels (B from C alone: about kBlockValues values), each writing its
// own partial sums: the parallel split is over rows, as ATen's, so every thread has work whatever C; the blocks are
// added in block order, so the result does not depend on the thread count (the same bits at one and two threads).
// Each block walks its channels kChunk vectors at a time, the accumulators and per-channel constants in registers
// (the block, about 64 KB in float32, stays in L2 between chunks); a channel tail shorter than a vector takes
// partial loads.

#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>

#include "channels_last.h"

namespace normlab {
namespace {

constexpr int64_t kBlockValues = 16384;  // values per block of rows: its partial sums cost 2 / B of a pass
constexpr int64_t kMinBlockRows = 16, kMaxBlockRows = 512;  // at most 512 values per float32 partial sum
constexpr int kChunk = 4;  // channel vectors per walk over a block: 4 x 6 accumulators and constants in registers
constexpr int64_t kShiftRows = 32;  // rows whose mean is x0: within about std / sqrt(32) of the mean

int64_t block_rows(int64_t C) { return std::clamp<int64_t>(kBlockValues / C, kMinBlockRows, kMaxBlockRows); }

// K channel vectors, the last of them partial (n lanes) if P
template <int K_, bool P_>
struct Chunk {
  static constexpr int K = K_;
  static constexpr bool P = P_;
};

// f(Chunk<K, P>{}, c0, n) over the C channels: full vectors kChunk at a time, the rest of them, then the tail of
// n = C % V channels as one partial vector
template <typename F>
void for_chunks(int64_t C, int64_t V, const F& f) {
  int64_t c = 0;
  for (; c + kChunk * V <= C; c += kChunk * V) f(Chunk<kChunk, false>{}, c, V);
  const int64_t rest = (C - c) / V;
  if (rest == 3) f(Chunk<3, false>{}, c, V);
  if (rest == 2) f(Chunk<2, false>{}, c, V);
  if (rest == 1) f(Chunk<1, false>{}, c, V);
  c += rest * V;
  if (c < C) f(Chunk<1, true>{}, c, C - c);
}

template <typename scalar_t, bool P>
typename Lanes<scalar_t>::aVec load(const scalar_t* p, int64_t n) {
  if constexpr (P) {
    return Lanes<scalar_t>::load_n(p, n);
  } else {
    return Lanes<scalar_t>::load(p);
  }
}

template <typename scalar_t, bool P>
void store(scalar_t* p, const typename Lanes<scalar_t>::aVec& v, int64_t n) {
  if constexpr (P) {
    Lanes<scalar_t>::store_n(p, v, n);
  } else {
    Lanes<scalar_t>::store(p, v);
  }
}

// Over the rows of one block (x at its first row, channel c0), channels [c0, c0 + K V): s = sum(d), q = sum(d^2)
// with d = x - x0; Centered: q = sum((d - m)^2) only. Two rows per step, two accumulator sets: more independent
// additions in flight for small K. Stored at s + c0, q + c0 (arrays padded to whole vectors).
template <typename scalar_t, int K, bool P, bool Centered>
void stats_chunk(const scalar_t* x, int64_t rows, int64_t C, int64_t c0, int64_t n,
                 const at::opmath_type<scalar_t>* x0, const at::opmath_type<scalar_t>* m, at::opmath_type<scalar_t>* s,
                 at::opmath_type<scalar_t>* q) {
  using aVec = typename Lanes<scalar_t>::aVec;
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t V = aVec::size();
  aVec base[K], mv[K], s0[K], s1[K], q0[K], q1[K];
  for (int k = 0; k < K; ++k) {
    base[k] = aVec::loadu(x0 + c0 + k * V);
    mv[k] = Centered ? aVec::loadu(m + c0 + k * V) : aVec(acc_t(0));
    s0[k] = s1[k] = q0[k] = q1[k] = aVec(acc_t(0));
  }
  const scalar_t* p = x + c0;
  int64_t r = 0;
  for (; r + 1 < rows; r += 2, p += 2 * C) {
    for (int k = 0; k < K; ++k) {
      aVec d0 = load<scalar_t, P>(p + k * V, n) - base[k], d1 = load<scalar_t, P>(p + C + k * V, n) - base[k];
      if constexpr (Centered) {
        d0 = d0 - mv[k];
        d1 = d1 - mv[k];
      } else {
        s0[k] = s0[k] + d0;
        s1[k] = s1[k] + d1;
      }
      q0[k] = at::vec::fmadd(d0, d0, q0[k]);
      q1[k] = at::vec::fmadd(d1, d1, q1[k]);
    }
  }
  if (r < rows) {
    for (int k = 0; k < K; ++k) {
      aVec d0 = load<scalar_t, P>(p + k * V, n) - base[k];
      if constexpr (Centered) {
        d0 = d0 - mv[k];
      } else {
        s0[k] = s0[k] + d0;
      }
      q0[k] = at::vec::fmadd(d0, d0, q0[k]);
    }
  }
  for (int k = 0; k < K; ++k) {
    if constexpr (!Centered) (s0[k] + s1[k]).store(s + c0 + k * V);
    (q0[k] + q1[k]).store(q + c0 + k * V);
  }
}

// The backward's sums over one block: a = sum(dy), g = sum(dy * ((x - x0) - m)), as stats_chunk
template <typename scalar_t, int K, bool P>
void grad_sums_chunk(const scalar_t* dy, const scalar_t* x, int64_t rows, int64_t C, int64_t c0, int64_t n,
                     const at::opmath_type<scalar_t>* x0, const at::opmath_type<scalar_t>* m,
                     at::opmath_type<scalar_t>* a, at::opmath_type<scalar_t>* g) {
  using aVec = typename Lanes<scalar_t>::aVec;
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t V = aVec::size();
  aVec base[K], mv[K], a0[K], a1[K], g0[K], g1[K];
  for (int k = 0; k < K; ++k) {
    base[k] = aVec::loadu(x0 + c0 + k * V);
    mv[k] = aVec::loadu(m + c0 + k * V);
    a0[k] = a1[k] = g0[k] = g1[k] = aVec(acc_t(0));
  }
  const scalar_t* xp = x + c0;
  const scalar_t* dp = dy + c0;
  int64_t r = 0;
  for (; r + 1 < rows; r += 2, xp += 2 * C, dp += 2 * C) {
    for (int k = 0; k < K; ++k) {
      const aVec e0 = load<scalar_t, P>(dp + k * V, n), e1 = load<scalar_t, P>(dp + C + k * V, n);
      a0[k] = a0[k] + e0;
      a1[k] = a1[k] + e1;
      g0[k] = at::vec::fmadd(e0, (load<scalar_t, P>(xp + k * V, n) - base[k]) - mv[k], g0[k]);
      g1[k] = at::vec::fmadd(e1, (load<scalar_t, P>(xp + C + k * V, n) - base[k]) - mv[k], g1[k]);
    }
  }
  if (r < rows) {
    for (int k = 0; k < K; ++k) {
      const aVec e0 = load<scalar_t, P>(dp + k * V, n);
      a0[k] = a0[k] + e0;
      g0[k] = at::vec::fmadd(e0, (load<scalar_t, P>(xp + k * V, n) - base[k]) - mv[k], g0[k]);
    }
  }
  for (int k = 0; k < K; ++k) {
    (a0[k] + a1[k]).store(a + c0 + k * V);
    (g0[k] + g1[k]).store(g + c0 + k * V);
  }
}

// y = ((x - x0) - m) * scale + shift over one block's rows, channels [c0, c0 + K V)
template <typename scalar_t, int K, bool P>
void normalize_chunk(const scalar_t* x, scalar_t* y, int64_t rows, int64_t C, int64_t c0, int64_t n,
                     const at::opmath_type<scalar_t>* consts, int64_t Cp) {
  using aVec = typename Lanes<scalar_t>::aVec;
  constexpr int64_t V = aVec::size();
  aVec base[K], mv[K], scale[K], shift[K];
  for (int k = 0; k < K; ++k) {
    base[k] = aVec::loadu(consts + c0 + k * V);
    mv[k] = aVec::loadu(consts + Cp + c0 + k * V);
    scale[k] = aVec::loadu(consts + 2 * Cp + c0 + k * V);
    shift[k] = aVec::loadu(consts + 3 * Cp + c0 + k * V);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* xp = x + r * C + c0;
    scalar_t* yp = y + r * C + c0;
    for (int k = 0; k < K; ++k) {
      const auto d = (load<scalar_t, P>(xp + k * V, n) - base[k]) - mv[k];
      store<scalar_t, P>(yp + k * V, at::vec::fmadd(d, scale[k], shift[k]), n);
    }
  }
}

// dx = a * dy - (e + ((x - x0) - m) * k) over one block's rows, channels [c0, c0 + K V)
template <typename scalar_t, int K, bool P>
void grad_input_chunk(const scalar_t* dy, const scalar_t* x, scalar_t* dx, int64_t rows, int64_t C, int64_t c0,
                      int64_t n, const at::opmath_type<scalar_t>* consts, int64_t Cp) {
  using aVec = typename Lanes<scalar_t>::aVec;
  constexpr int64_t V = aVec::size();
  aVec base[K], mv[K], av[K], ev[K], kv[K];
  for (int k = 0; k < K; ++k) {
    base[k] = aVec::loadu(consts + c0 + k * V);
    mv[k] = aVec::loadu(consts + Cp + c0 + k * V);
    av[k] = aVec::loadu(consts + 2 * Cp + c0 + k * V);
    ev[k] = aVec::loadu(consts + 3 * Cp + c0 + k * V);
    kv[k] = aVec::loadu(consts + 4 * Cp + c0 + k * V);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * C + c0;
    for (int k = 0; k < K; ++k) {
      const aVec d = (load<scalar_t, P>(x + o + k * V, n) - base[k]) - mv[k];
      const aVec v = av[k] * load<scalar_t, P>(dy + o + k * V, n) - at::vec::fmadd(d, kv[k], ev[k]);
      store<scalar_t, P>(dx + o + k * V, v, n);
    }
  }
}

// The (R, C) matrix's row blocks: body(b, first row, rows) for each, in parallel; at least kGrain values a task
struct Blocks {
  int64_t R, C, B, count;
  Blocks(int64_t R_, int64_t C_) : R(R_), C(C_), B(block_rows(C_)), count((R_ + B - 1) / B) {}
  template <typename F>
  void run(const F& body) const {
    at::parallel_for(0, count, std::max<int64_t>(1, kGrain / (B * C)), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) body(b, b * B, std::min(B, R - b * B));
    });
  }
  // out[c] = sum over the blocks, in order, of part[b * Cp + c], in double
  template <typename acc_t>
  void add(const acc_t* part, int64_t Cp, std::vector<double>& out) const {
    out.assign(C, 0.0);
    for (int64_t b = 0; b < count; ++b) {
      for (int64_t c = 0; c < C; ++c) out[c] += double(part[b * Cp + c]);
    }
  }
};

}  // namespace

std::vector<at::Tensor> batch_norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                           const std::optional<at::Tensor>& bias, double eps,
                                           const std::optional<at::Tensor>& running_mean,
                                           const std::optional<at::Tensor>& running_var, double momentum) {
  check_channels_last(x, "input");
  const int64_t C = x.size(1), R = x.numel() / std::max<int64_t>(C, 1);
  TORCH_CHECK(C >= 1 && R >= 1, "channels_last kernel: empty input");
  const at::Tensor w = optional_param(weight, x, true), b = optional_param(bias, x, true);
  const at::Tensor rm = optional_param(running_mean, x, false), rv = optional_param(running_var, x, false);
  at::Tensor y = at::empty_like(x);
  const auto acc_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor stats = at::empty({5, C}, x.options().dtype(acc_type));  // x0, m', rho (saved together), rstd, var
  std::vector<double> mean, var;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "normlab_batch_norm_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t V = Lanes<scalar_t>::size(), Cp = (C + V - 1) / V * V;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const Blocks blocks(R, C);
    std::vector<acc_t> consts(4 * Cp, acc_t(0));  // x0, m, scale, shift (padded with zeros)
    acc_t *x0 = consts.data(), *m = x0 + Cp;
    {
      const int64_t P = std::min(R, kShiftRows);
      std::vector<double> first(C, 0.0);
      for (int64_t r = 0; r < P; ++r) {
        for (int64_t c = 0; c < C; ++c) first[c] += double(xp[r * C + c]);
      }
      for (int64_t c = 0; c < C; ++c) x0[c] = acc_t(first[c] / double(P));
    }
    std::vector<acc_t> part(2 * blocks.count * Cp);
    acc_t *ps = part.data(), *pq = ps + blocks.count * Cp;
    blocks.run([&](int64_t blk, int64_t r0, int64_t rows) {
      for_chunks(C, V, [&](auto ch, int64_t c0, int64_t n) {
        using Ch = decltype(ch);
        stats_chunk<scalar_t, Ch::K, Ch::P, false>(xp + r0 * C, rows, C, c0, n, x0, m, ps + blk * Cp, pq + blk * Cp);
      });
    });
    std::vector<double> S, Q;
    blocks.add(ps, Cp, S);
    blocks.add(pq, Cp, Q);
    mean.resize(C);
    var.resize(C);
    bool centered = false;
    for (int64_t c = 0; c < C; ++c) {
      mean[c] = S[c] / double(R);
      var[c] = Q[c] / double(R) - mean[c] * mean[c];
      centered = centered || !(mean[c] * mean[c] <= kCancel * var[c]);  // (a NaN too)
      m[c] = acc_t(mean[c]);
    }
    if (centered) {  // sum((d - acc(m))^2) / R = var + (m - acc(m))^2
      blocks.run([&](int64_t blk, int64_t r0, int64_t rows) {
        for_chunks(C, V, [&](auto ch, int64_t c0, int64_t n) {
          using Ch = decltype(ch);
          stats_chunk<scalar_t, Ch::K, Ch::P, true>(xp + r0 * C, rows, C, c0, n, x0, m, ps + blk * Cp, pq + blk * Cp);
        });
      });
      blocks.add(pq, Cp, Q);
      for (int64_t c = 0; c < C; ++c) {
        const double rho = mean[c] - double(m[c]);
        var[c] = std::max(Q[c] / double(R) - rho * rho, 0.0);
      }
    }
    acc_t* sp = stats.mutable_data_ptr<acc_t>();
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    for (int64_t c = 0; c < C; ++c) {
      const double rstd = 1.0 / std::sqrt(var[c] + eps), rho = mean[c] - double(m[c]);
      const double scale = wp == nullptr ? rstd : rstd * double(wp[c]);
      sp[c] = x0[c];
      sp[C + c] = m[c];
      sp[2 * C + c] = acc_t(rho);
      sp[3 * C + c] = acc_t(rstd);
      sp[4 * C + c] = acc_t(var[c]);
      consts[2 * Cp + c] = acc_t(scale);
      consts[3 * Cp + c] = acc_t((bp == nullptr ? 0.0 : double(bp[c])) - rho * scale);
      mean[c] += double(x0[c]);  // the running buffers': the mean itself, the unbiased variance
      var[c] *= double(R) / double(std::max<int64_t>(R - 1, 1));
    }
    blocks.run([&](int64_t, int64_t r0, int64_t rows) {
      for_chunks(C, V, [&](auto ch, int64_t c0, int64_t n) {
        using Ch = decltype(ch);
        normalize_chunk<scalar_t, Ch::K, Ch::P>(xp + r0 * C, yp + r0 * C, rows, C, c0, n, consts.data(), Cp);
      });
    });
  });
  update_buffer(rm, mean, momentum);
  update_buffer(rv, var, momentum);
  return {y, stats.narrow(0, 0, 3), stats[3], stats[4]};
}

std::vector<at::Tensor> batch_norm_backward(const at::Tensor& dy_in, const at::Tensor& x,
                                            const at::Tensor& shifted_mean, const at::Tensor& rstd,
                                            const std::optional<at::Tensor>& weight, bool need_input,
                                            bool need_affine) {
  check_channels_last(x, "input");
  const at::Tensor dy = dy_in.contiguous(x.suggest_memory_format());
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "channels_last kernel: bad grad_output");
  const int64_t C = x.size(1), R = x.numel() / std::max<int64_t>(C, 1);
  const at::Tensor w = optional_param(weight, x, true);
  at::Tensor dx = need_input ? at::empty_like(x) : at::Tensor();
  at::Tensor dw, db;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "normlab_batch_norm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    TORCH_CHECK(shifted_mean.scalar_type() == acc_type && rstd.scalar_type() == acc_type &&
                    shifted_mean.numel() == 3 * C && rstd.numel() == C && shifted_mean.is_contiguous() &&
                    rstd.is_contiguous(),
                "channels_last kernel: bad statistics");
    const int64_t V = Lanes<scalar_t>::size(), Cp = (C + V - 1) / V * V;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* dyp = dy.const_data_ptr<scalar_t>();
    const acc_t* mp = shifted_mean.const_data_ptr<acc_t>();
    const acc_t* rp = rstd.const_data_ptr<acc_t>();
    const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
    const Blocks blocks(R, C);
    std::vector<acc_t> consts(5 * Cp, acc_t(0));  // x0, m, a, e, k (padded with zeros)
    acc_t *x0 = consts.data(), *m = x0 + Cp;
    for (int64_t c = 0; c < C; ++c) {
      x0[c] = mp[c];
      m[c] = mp[C + c];
    }
    std::vector<acc_t> part(2 * blocks.count * Cp);
    acc_t *pa = part.data(), *pg = pa + blocks.count * Cp;
    blocks.run([&](int64_t blk, int64_t r0, int64_t rows) {
      for_chunks(C, V, [&](auto ch, int64_t c0, int64_t n) {
        using Ch = decltype(ch);
        grad_sums_chunk<scalar_t, Ch::K, Ch::P>(dyp + r0 * C, xp + r0 * C, rows, C, c0, n, x0, m, pa + blk * Cp,
                                                pg + blk * Cp);
      });
    });
    std::vector<double> sdy, sdyx;
    blocks.add(pa, Cp, sdy);
    blocks.add(pg, Cp, sdyx);
    const acc_t* rho = mp + 2 * C;
    for (int64_t c = 0; c < C; ++c) sdyx[c] -= double(rho[c]) * sdy[c];  // for the exact m: - rho * sdy
    if (need_affine) {
      dw = at::empty({C}, x.options().dtype(acc_type));
      db = at::empty({C}, x.options().dtype(acc_type));
      acc_t *dwp = dw.mutable_data_ptr<acc_t>(), *dbp = db.mutable_data_ptr<acc_t>();
      for (int64_t c = 0; c < C; ++c) {
        dwp[c] = acc_t(sdyx[c] * double(rp[c]));
        dbp[c] = acc_t(sdy[c]);
      }
    }
    if (need_input) {
      for (int64_t c = 0; c < C; ++c) {
        const double r = double(rp[c]), a = wp == nullptr ? r : r * double(wp[c]);
        consts[2 * Cp + c] = acc_t(a);
        const double k = a * r * r * sdyx[c] / double(R);
        consts[3 * Cp + c] = acc_t(a * sdy[c] / double(R) - double(rho[c]) * k);
        consts[4 * Cp + c] = acc_t(k);
      }
      scalar_t* dxp = dx.mutable_data_ptr<scalar_t>();
      blocks.run([&](int64_t, int64_t r0, int64_t rows) {
        for_chunks(C, V, [&](auto ch, int64_t c0, int64_t n) {
          using Ch = decltype(ch);
          grad_input_chunk<scalar_t, Ch::K, Ch::P>(dyp + r0 * C, xp + r0 * C, dxp + r0 * C, rows, C, c0, n,
                                                   consts.data(), Cp);
        });
      });
    }
  });
  return {dx, dw, db};
}

}  // namespace normlab
