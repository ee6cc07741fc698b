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
// BatchNorm rows (row_forward / row_backward): x (R, M) contiguous, statistics per row over its M values (each
// channel's positions and batch), the same formulas with N = 1 and the row's first value as the shift; the conv's
// bias cancels (the caller adds it to the running mean only). The vector lanes run along the row.
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

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

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
  const int64_t* dest;   // (L, 2): the output rows of each input slot (see the top)
  const int64_t* zeros;  // the output rows no slot writes
  int64_t nzeros, rows;  // rows: R, the output rows per channel
};

// The output layout: dest (L, 2) int64 (empty: the input's own, R = L) and the rows it leaves zero.
struct Layout {
  int64_t rows;
  std::vector<int64_t> dest, zeros;
};

Layout make_layout(const at::Tensor& dest, int64_t L, int64_t out_rows) {
  Layout t{L, std::vector<int64_t>(2 * L, -1), {}};
  if (dest.numel() == 0) {
    for (int64_t l = 0; l < L; ++l) t.dest[2 * l] = l;
    return t;
  }
  TORCH_CHECK(dest.dim() == 2 && dest.size(0) == L && dest.size(1) == 2 && dest.scalar_type() == at::kLong &&
                  dest.is_contiguous() && dest.device().is_cpu(),
              "dest: a contiguous int64 CPU tensor (L, 2), L the positions per channel");
  TORCH_CHECK(out_rows > 0, "out_rows must be positive");
  t.rows = out_rows;
  std::vector<bool> used(out_rows, false);
  const int64_t* d = dest.data_ptr<int64_t>();
  for (int64_t i = 0; i < 2 * L; ++i) {
    TORCH_CHECK(d[i] < out_rows && (d[i] >= 0 || (i % 2 == 1 && d[i] == -1)),
                "dest: each slot's first row in [0, out_rows), its second there or -1");
    TORCH_CHECK(d[i] < 0 || !used[d[i]], "dest: every output row written at most once");
    if (d[i] >= 0) used[d[i]] = true;
    t.dest[i] = d[i];
  }
  for (int64_t r = 0; r < out_rows; ++r)
    if (!used[r]) t.zeros.push_back(r);
  return t;
}

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
                                                             const at::Tensor& dest, int64_t out_rows) {
  check_group(x, channels_per_group, conv_bias, weight, bias);
  const int64_t G = x.size(0), S = x.size(1), N = x.size(2), L = S / channels_per_group;
  const Layout t = make_layout(dest, L, out_rows);
  const int64_t SO = channels_per_group * t.rows;  // output rows per group
  auto y = at::empty({G, SO, N}, x.options());
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
    const at::Tensor& dest, int64_t out_rows) {
  check_group(x, channels_per_group, conv_bias, weight, bias);
  const int64_t G = x.size(0), S = x.size(1), N = x.size(2), C = G * channels_per_group;
  const Layout t = make_layout(dest, S / channels_per_group, out_rows);
  const int64_t SO = channels_per_group * t.rows;
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == G && grad.size(1) == SO && grad.size(2) == N &&
                  grad.is_contiguous() && grad.scalar_type() == at::kFloat,
              "grad: contiguous float32, the output's shape");
  TORCH_CHECK(mean.is_contiguous() && rstd.is_contiguous() && mean.numel() == G * N && rstd.numel() == G * N,
              "mean, rstd: contiguous (G, N)");
  auto dx = at::empty_like(x);
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

// A row of L slots of N values, V lanes at a time along each slot: fn(l, j, io), j the offset in slot l, the last
// vector of a slot partial (with L = 1, N = M: the whole row in vectors).
template <typename F>
void along_slots(int64_t L, int64_t N, F&& fn) {
  for (int64_t l = 0; l < L; ++l) {
    int64_t j = 0;
    for (; j + V <= N; j += V) fn(l, j, Io<false>{V});
    if (j < N) fn(l, j, Io<true>{N - j});
  }
}

// Sum of f(l, j, io) over a row: float lanes in chains of 64 vectors at most, the chains added in double.
template <typename F>
double row_sum(int64_t L, int64_t N, F&& f) {
  double total = 0;
  Vec acc(0.f);
  int64_t count = 0;
  along_slots(L, N, [&](int64_t l, int64_t j, auto io) {
    acc += io.keep(f(l, j, io));
    if (++count % 64 == 0) total += hsum(acc), acc = Vec(0.f);
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

// A row's slots: without a table one slot of M values, else dest's L slots of M / L.
Layout row_layout(const at::Tensor& dest, int64_t M, int64_t out_rows, int64_t& L, int64_t& N) {
  L = dest.numel() == 0 ? 1 : dest.size(0);
  TORCH_CHECK(L > 0 && M % L == 0, "dest: M must be L slots of N values");
  N = M / L;
  return make_layout(dest, L, out_rows);
}

// (y, stats): y (R, R_out * N) in the output layout of dest (empty: x's); stats (4, R): m (the mean less x[r, 0]),
// rstd, the mean and the biased variance
std::tuple<at::Tensor, at::Tensor> row_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                               double eps, bool relu, const at::Tensor& dest, int64_t out_rows) {
  check_rows(x, weight, bias);
  const int64_t R = x.size(0), M = x.size(1);
  int64_t L, N;
  const Layout t = row_layout(dest, M, out_rows, L, N);
  const int64_t MO = t.rows * N;
  auto y = at::empty({R, MO}, x.options());
  auto stats = at::empty({4, R}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>(), *bp = bias.data_ptr<float>();
  float *yp = y.data_ptr<float>(), *st = stats.data_ptr<float>();
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / M), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * M;
      const Vec x0(row[0]), zero(0.f);
      // the statistics along the whole row (one slot of M), in any layout: the same sums, the same output
      const float m = static_cast<float>(row_sum(1, M, [&](int64_t, int64_t j, auto io) { return io.ld(row + j) - x0; }) / M);
      const Vec mv(m);
      const double var = row_sum(1, M, [&](int64_t, int64_t j, auto io) {
                           const Vec xc = (io.ld(row + j) - x0) - mv;
                           return xc * xc;
                         }) / M;
      const float rs = 1.f / std::sqrt(static_cast<float>(var) + static_cast<float>(eps));
      const Vec a(wp[r] * rs), b(bp[r]);
      float* out = yp + r * MO;
      along_slots(L, N, [&](int64_t l, int64_t j, auto io) {
        const Vec z = pre_activation((io.ld(row + l * N + j) - x0) - mv, a, b);
        const Vec v = relu ? at::vec::maximum(z, zero) : z;
        io.st(out + t.dest[2 * l] * N + j, v);
        if (t.dest[2 * l + 1] >= 0) io.st(out + t.dest[2 * l + 1] * N + j, v);
      });
      for (const int64_t zr : t.zeros)
        along_slots(1, N, [&](int64_t, int64_t j, auto io) { io.st(out + zr * N + j, zero); });
      st[r] = m, st[R + r] = rs, st[2 * R + r] = static_cast<float>(row[0] + static_cast<double>(m));
      st[3 * R + r] = static_cast<float>(var);
    }
  });
  return {y, stats};
}

// (grad_x, grad_weight, grad_bias): BatchNorm's backward per row, the ReLU's mask from the recomputed z; grad in
// the output layout of dest
std::tuple<at::Tensor, at::Tensor, at::Tensor> row_backward(const at::Tensor& grad, const at::Tensor& x,
                                                            const at::Tensor& weight, const at::Tensor& bias,
                                                            const at::Tensor& mean, const at::Tensor& rstd, bool relu,
                                                            const at::Tensor& dest, int64_t out_rows) {
  check_rows(x, weight, bias);
  const int64_t R = x.size(0), M = x.size(1);
  int64_t L, N;
  const Layout t = row_layout(dest, M, out_rows, L, N);
  const int64_t MO = t.rows * N;
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == R && grad.size(1) == MO && grad.is_contiguous() &&
                  grad.scalar_type() == at::kFloat,
              "grad: contiguous float32, the output's shape");
  TORCH_CHECK(mean.is_contiguous() && rstd.is_contiguous() && mean.numel() == R && rstd.numel() == R,
              "mean, rstd: R values");
  auto dx = at::empty_like(x);
  auto gw = at::empty({R}, x.options()), gb = at::empty({R}, x.options());
  const float *gp = grad.data_ptr<float>(), *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  const float *bp = bias.data_ptr<float>(), *mp = mean.data_ptr<float>(), *rp = rstd.data_ptr<float>();
  float *dxp = dx.data_ptr<float>(), *gwp = gw.data_ptr<float>(), *gbp = gb.data_ptr<float>();
  at::parallel_for(0, R, std::max<int64_t>(1, kGrain / M), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *row = xp + r * M, *dyr = gp + r * MO;
      const float rs = rp[r];
      const Vec x0(row[0]), mv(mp[r]), a(wp[r] * rs), b(bp[r]), zero(0.f);
      // dz at slot l, offset j: the slot's gradient (the sum over its output rows), masked as the forward's ReLU
      auto dz_at = [&](int64_t l, int64_t j, auto io, const Vec& xc) {
        Vec d = io.ld(dyr + t.dest[2 * l] * N + j);
        if (t.dest[2 * l + 1] >= 0) d += io.ld(dyr + t.dest[2 * l + 1] * N + j);
        return relu ? (d & (pre_activation(xc, a, b) > zero)) : d;
      };
      auto xc_at = [&](int64_t l, int64_t j, auto io) { return (io.ld(row + l * N + j) - x0) - mv; };
      const double sdz =
          row_sum(L, N, [&](int64_t l, int64_t j, auto io) { return dz_at(l, j, io, xc_at(l, j, io)); });
      const double sdzx = row_sum(L, N, [&](int64_t l, int64_t j, auto io) {
        const Vec xc = xc_at(l, j, io);
        return dz_at(l, j, io, xc) * xc;
      });
      gbp[r] = static_cast<float>(sdz);
      gwp[r] = static_cast<float>(sdzx * rs);
      const Vec k0(static_cast<float>(-rs * wp[r] * sdz / M));
      const Vec kx(static_cast<float>(-static_cast<double>(rs) * rs * rs * wp[r] * sdzx / M));
      float* out = dxp + r * M;
      along_slots(L, N, [&](int64_t l, int64_t j, auto io) {
        const Vec xc = xc_at(l, j, io);
        io.st(out + l * N + j, at::vec::fmadd(dz_at(l, j, io, xc), a, at::vec::fmadd(xc, kx, k0)));
      });
    }
  });
  return {dx, gw, gb};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("group_forward", &group_forward, "GroupNorm + conv bias + affine (+ ReLU) of (G, S, N): (y, m, rstd)",
        py::arg("x"), py::arg("channels_per_group"), py::arg("conv_bias"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("relu"), py::arg("dest"), py::arg("out_rows"));
  m.def("group_backward", &group_backward, "its backward: (grad_x, grad_weight, grad_bias, grad_conv_bias)",
        py::arg("grad"), py::arg("x"), py::arg("channels_per_group"), py::arg("conv_bias"), py::arg("weight"),
        py::arg("bias"), py::arg("mean"), py::arg("rstd"), py::arg("relu"), py::arg("dest"),
        py::arg("out_rows"));
  m.def("row_forward", &row_forward, "BatchNorm + affine (+ ReLU) of (R, M) rows: (y, stats (m, rstd, mean, var))",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("relu"), py::arg("dest"),
        py::arg("out_rows"));
  m.def("row_backward", &row_backward, "its backward: (grad_x, grad_weight, grad_bias)", py::arg("grad"),
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("mean"), py::arg("rstd"), py::arg("relu"),
        py::arg("dest"), py::arg("out_rows"));
}
