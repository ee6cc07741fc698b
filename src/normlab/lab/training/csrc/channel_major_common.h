// The definitions the channel-major kernels share (channel_major.cpp, channel_major_small.h): vectors, loads and
// stores of lanes, the group kernels' arguments and the output layout. See channel_major.cpp's top for the
// formulas and layouts.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <optional>
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


// The kernel's output tensor of `shape`: `out` where given (a contiguous float32 CPU tensor of that many values,
// written in place: a part of a mixed pack writing its slice of the layer's output), else a new one. `out` must not
// overlap `input` (read while the output is written).
at::Tensor output_tensor(const std::optional<at::Tensor>& out, at::IntArrayRef shape, const at::Tensor& input,
                         const char* name) {
  if (!out.has_value()) return at::empty(shape, input.options());
  const at::Tensor& o = *out;
  int64_t numel = 1;
  for (const int64_t d : shape) numel *= d;
  TORCH_CHECK(o.is_contiguous() && o.scalar_type() == at::kFloat && o.device().is_cpu() && o.numel() == numel, name,
              ": must be a contiguous float32 CPU tensor of ", numel, " values (the output's shape ", shape, ")");
  const char *ob = static_cast<const char*>(o.data_ptr()), *ib = static_cast<const char*>(input.data_ptr());
  TORCH_CHECK(ob + o.nbytes() <= ib || ib + input.nbytes() <= ob, name, ": must not overlap the input");
  return o.view(shape);
}

}  // namespace
