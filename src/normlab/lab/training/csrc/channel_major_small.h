// The channel-major GroupNorm kernel's small-batch path (2 N <= V), called by group_forward / group_backward in
// channel_major.cpp (formulas at its top).
#pragma once

#include "channel_major_common.h"

namespace {

// ---- Small batches (2 N <= V): the vectors run along a group's contiguous S * N values instead of across N.
// Across N, a small batch leaves most of each vector idle (N = 1, 2, 4: one masked vector of N lanes a slot, 3-4x
// slower a value than here). Here a channel's L slots are one run of L * N values, read in steps of w = (V / N) * N
// lanes: every vector starts at a slot boundary, so its lane l (< w) is always example l % N, and each per-example
// constant (x0, m, rstd, k0, kx) is a vector repeating the N examples. The same formulas and passes as above; sums
// run per lane (per channel, then over the channels; float), and an example's lanes are added at the end in a
// fixed tree (Lanes::totals). Lanes past w (N not dividing V) and past a run's end are masked off: loads
// zero-fill them, sums drop them. The output layout is written, and dy read, as runs of consecutive slots
// (make_runs). Deterministic as above; results equal the lane path's up to float rounding, not bit for bit.

// The vectors of a run: Full, V lanes; else `count` live lanes.
template <bool Full>
struct Span {
  int64_t count;
  Vec live;  // all bits set in the live lanes (unused when Full)
  Vec ld(const float* p) const { return Full ? Vec::loadu(p) : Vec::loadu(p, count); }
  Vec keep(const Vec& v) const { return Full ? v : v & live; }  // dead lanes zeroed, out of every sum
  void st(float* p, const Vec& v) const {
    if (Full) {
      v.store(p);
    } else {
      v.store(p, count);
    }
  }
};

Span<false> masked(int64_t count) {
  return {count, Vec::arange(0.f, 1.f) < Vec(static_cast<float>(count))};
}

// A run of n values (whole slots: n a multiple of N) in steps of w lanes (a multiple of N): fn(i, span) at each
// vector's offset i. A shorter last vector is whole slots too, so lane l is example l % N in every vector.
template <typename F>
void along_run(int64_t n, int64_t w, F&& fn) {
  int64_t i = 0;
  if (w == V) {
    for (; i + V <= n; i += V) fn(i, Span<true>{V, Vec()});
  } else {
    const Span<false> step = masked(w);
    for (; i + w <= n; i += w) fn(i, step);
  }
  if (i < n) fn(i, masked(n - i));
}

// 0..15 twice: from entry k on, the lane indices of a rotation by k (lane l takes lane (l + k) % V; the permutes
// read an index's low log2(V) bits)
alignas(64) constexpr int32_t kRotation[32] = {0, 1, 2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                                  0, 1, 2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15};
static_assert(V <= 16, "kRotation holds 16 lanes");

// The lanes of a call's batch of N: w = (V / N) * N live lanes a step, lane l example l % N (ex: computed once a
// call, a division per lane costing more than a small group's arithmetic).
struct Lanes {
  int64_t n, w;
  alignas(64) int32_t ex[V];
  explicit Lanes(int64_t N) : n(N), w(N > 0 ? V / N * N : 0) {
    for (int64_t l = 0; l < V; ++l) ex[l] = static_cast<int32_t>(N > 0 ? l % N : 0);
  }
  // the lane vector of per-example values v[0..N): lane l holds v[l % N] (one permute of v's N values)
  Vec per_lane(const float* v) const {
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_permutexvar_ps(_mm512_load_si512(ex), Vec::loadu(v, n));
#elif defined(CPU_CAPABILITY_AVX2)
    return _mm256_permutevar8x32_ps(Vec::loadu(v, n), _mm256_load_si256(reinterpret_cast<const __m256i*>(ex)));
#else
    alignas(64) float a[V];
    for (int64_t l = 0; l < V; ++l) a[l] = v[ex[l]];
    return Vec::loadu(a);
#endif
  }
  // Each lane l: the total of v's live lanes of example l % N, in float (the unit of the sums it ends). Every lane
  // of an example holds the same value bit for bit, so a statistic computed from it lane-wise is one value per
  // example, the one saved for the backward. With N dividing V on AVX2/AVX512: a butterfly, v plus v rotated by
  // V/2, V/4, ..., N lanes (lanes l and l + k add the same two values, a + b = b + a); else the same halving on
  // the scalars, blocks of N lanes folded onto the first, spread back with per_lane.
  Vec totals(const Vec& v) const {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
    if (w == V) {
      Vec t = v;
      for (int64_t k = V / 2; k >= n; k /= 2) t = t + rotate(t, k);
      return t;
    }
#endif
    alignas(64) float a[V];
    v.store(a);
    for (int64_t blocks = w / n; blocks > 1;) {
      const int64_t half = (blocks + 1) / 2;  // blocks [half, blocks) onto [0, blocks - half)
      for (int64_t i = 0; i < (blocks - half) * n; ++i) a[i] += a[i + half * n];
      blocks = half;
    }
    return per_lane(a);
  }
#if defined(CPU_CAPABILITY_AVX512)
  static Vec rotate(const Vec& v, int64_t k) {
    return _mm512_permutexvar_ps(_mm512_loadu_si512(kRotation + k), v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  static Vec rotate(const Vec& v, int64_t k) {
    return _mm256_permutevar8x32_ps(v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kRotation + k)));
  }
#endif
  // the sum of v's lanes in double (as hsum, in a fixed tree instead of a chain of V: a small group's backward does
  // three a channel)
  static double lane_sum(const Vec& v) {
#if defined(CPU_CAPABILITY_AVX512)
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), _mm512_cvtps_pd(hi)));
#elif defined(CPU_CAPABILITY_AVX2)
    const __m256d s =
        _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    const __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
#else
    return hsum(v);
#endif
  }
  // the first N lanes of v (a per-example statistic) to out[0..N)
  void save(const Vec& v, float* out) const {
    alignas(64) float a[V];
    v.store(a);
    std::copy_n(a, n, out);
  }
};

// The output layout as runs of consecutive slots to consecutive rows, which the kernels write as streams: first,
// each slot's first row (every slot has one); second, the second rows; zeros, the rows no slot writes (slot unused).
struct Run {
  int64_t slot, row, count;
};
struct Runs {
  std::vector<Run> first, second, zeros;
  bool identity;  // slot l to row l only: the input's own layout (dy needs no gathering)
};

Runs make_runs(const Layout& t, int64_t L) {
  Runs r;
  auto extend = [](std::vector<Run>& runs, int64_t slot, int64_t row) {
    if (!runs.empty() && runs.back().slot + runs.back().count == slot && runs.back().row + runs.back().count == row)
      ++runs.back().count;
    else
      runs.push_back({slot, row, 1});
  };
  for (int64_t k = 0; k < 2; ++k)
    for (int64_t l = 0; l < L; ++l)
      if (t.dest[2 * l + k] >= 0) extend(k == 0 ? r.first : r.second, l, t.dest[2 * l + k]);
  for (const int64_t row : t.zeros) extend(r.zeros, row, row);
  r.identity = t.rows == L && r.second.empty() && r.first.size() == 1 && r.first[0].row == 0;
  return r;
}

// Forward of group g (see group_forward_chunk; the same formulas, three passes): y, and the saved m and rstd.
void group_forward_small(const GroupArgs& p, const Lanes& lanes, const Runs& runs, const float* x, float* y,
                         float* mean, float* rstd, int64_t g) {
  const int64_t cg = p.cg, L = p.length, N = p.n, S = cg * L, CN = L * N, w = lanes.w;
  const float* cb = p.cb + g * cg;
  const Vec x0 = lanes.per_lane(x), inv_s(1.f / static_cast<float>(S)), zero(0.f);
  Vec sum(0.f);
  float bias_sum = 0;  // the sum over the group of cb[c] - cb[c0], the same for every example
  for (int64_t c = 0; c < cg; ++c) {  // pass 1: sum(v - x0)
    Vec part(0.f);
    along_run(CN, w, [&](int64_t i, auto s) { part += s.keep(s.ld(x + c * CN + i) - x0); });
    sum += part;
    bias_sum += static_cast<float>(L) * (cb[c] - cb[0]);
  }
  // times 1/S, not / S: a division is the longest step of the chain from one pass to the next
  const Vec m = (lanes.totals(sum) + Vec(bias_sum)) * inv_s;
  Vec sq(0.f);
  for (int64_t c = 0; c < cg; ++c) {  // pass 2: sum(xc^2)
    const Vec mc = m - Vec(cb[c] - cb[0]);
    Vec part(0.f);
    along_run(CN, w, [&](int64_t i, auto s) {
      const Vec xc = s.keep((s.ld(x + c * CN + i) - x0) - mc);
      part = at::vec::fmadd(xc, xc, part);
    });
    sq += part;
  }
  const Vec r = Vec(1.f) / at::vec::fmadd(lanes.totals(sq), inv_s, Vec(p.eps)).sqrt();
  lanes.save(m, mean);
  lanes.save(r, rstd);
  for (int64_t c = 0; c < cg; ++c) {  // pass 3: write, run by run of the output layout
    const Vec mc = m - Vec(cb[c] - cb[0]), a = Vec(p.w[g * cg + c]) * r, b(p.b[g * cg + c]);
    float* yc = y + c * p.rows * N;
    for (const std::vector<Run>* rs : {&runs.first, &runs.second})
      for (const Run& run : *rs) {
        const float* src = x + c * CN + run.slot * N;
        float* dst = yc + run.row * N;
        along_run(run.count * N, w, [&](int64_t i, auto s) {
          const Vec z = pre_activation((s.ld(src + i) - x0) - mc, a, b);
          s.st(dst + i, p.relu ? at::vec::maximum(z, zero) : z);
        });
      }
    for (const Run& run : runs.zeros) std::fill(yc + run.row * N, yc + (run.row + run.count) * N, 0.f);
  }
}

// Backward of group g (see group_backward_chunk; two passes): dx, and the per-channel sums added to gw, gb, gcb.
// dy: the output layout's gradient; unless that is the input's layout, first summed per slot into `slots`
// (S * N, the input's layout), which both passes then read.
void group_backward_small(const GroupArgs& p, const Lanes& lanes, const Runs& runs, const float* dy, const float* x,
                          const float* mean, const float* rstd, float* dx, double* gw, double* gb, double* gcb,
                          int64_t g, float* slots) {
  const int64_t cg = p.cg, N = p.n, S = cg * p.length, CN = p.length * N, w = lanes.w;
  const float* cb = p.cb + g * cg;
  const Vec x0 = lanes.per_lane(x), m = lanes.per_lane(mean), r = lanes.per_lane(rstd), zero(0.f);
  if (!runs.identity) {
    for (int64_t c = 0; c < cg; ++c) {
      const float* dyc = dy + c * p.rows * N;
      float* out = slots + c * CN;
      for (const Run& run : runs.first) {  // a loop of vectors, not copy_n: runs of tens of values
        const float* src = dyc + run.row * N;
        float* dst = out + run.slot * N;
        along_run(run.count * N, w, [&](int64_t i, auto s) { s.st(dst + i, s.ld(src + i)); });
      }
      for (const Run& run : runs.second) {
        const float* src = dyc + run.row * N;
        float* dst = out + run.slot * N;
        along_run(run.count * N, w, [&](int64_t i, auto s) { s.st(dst + i, s.ld(dst + i) + s.ld(src + i)); });
      }
    }
    dy = slots;
  }
  // xc and dz at offset o (the forward's mask; dead lanes load dy as 0, so dz is 0 there)
  auto grad_at = [&](int64_t o, auto s, const Vec& mc, const Vec& a, const Vec& b, Vec& xc) {
    xc = (s.ld(x + o) - x0) - mc;
    const Vec d = s.ld(dy + o);
    return p.relu ? (d & (pre_activation(xc, a, b) > zero)) : d;
  };
  Vec s1(0.f), s2(0.f);
  for (int64_t c = 0; c < cg; ++c) {  // pass 1: the sums
    const float wc = p.w[g * cg + c];
    const Vec mc = m - Vec(cb[c] - cb[0]), a = Vec(wc) * r, b(p.b[g * cg + c]);
    Vec sdz(0.f), sdzx(0.f);
    along_run(CN, w, [&](int64_t i, auto s) {
      Vec xc;
      const Vec dz = grad_at(c * CN + i, s, mc, a, b, xc);
      sdz += dz;
      sdzx = at::vec::fmadd(dz, xc, sdzx);
    });
    gb[g * cg + c] += Lanes::lane_sum(sdz);
    gw[g * cg + c] += Lanes::lane_sum(sdzx * r);
    s1 = at::vec::fmadd(sdz, Vec(wc), s1);
    s2 = at::vec::fmadd(sdzx, Vec(wc), s2);
  }
  const Vec inv_s(1.f / static_cast<float>(S));
  const Vec k0 = zero - r * lanes.totals(s1) * inv_s, kx = zero - r * r * r * lanes.totals(s2) * inv_s;
  for (int64_t c = 0; c < cg; ++c) {  // pass 2: dx
    const Vec mc = m - Vec(cb[c] - cb[0]), a = Vec(p.w[g * cg + c]) * r, b(p.b[g * cg + c]);
    Vec sdx(0.f);
    along_run(CN, w, [&](int64_t i, auto s) {
      Vec xc;
      const int64_t o = c * CN + i;
      const Vec dz = grad_at(o, s, mc, a, b, xc);
      const Vec d = at::vec::fmadd(dz, a, at::vec::fmadd(xc, kx, k0));
      s.st(dx + o, d);
      sdx += s.keep(d);
    });
    gcb[g * cg + c] += Lanes::lane_sum(sdx);
  }
}

}  // namespace
