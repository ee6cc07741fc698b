// Boilerplate shared by normlab's CPU kernels (rms_norm.cpp, channels_last.cpp, batch_norm.cpp): the vector of
// accumulation-type lanes every inner loop works on, and the parallel grain. Compiled with each kernel by
// normlab.functional._kernels, which hashes this header into the build's name with the sources.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

namespace normlab {

using at::vec::Vectorized;

constexpr int64_t kGrain = 16384;  // values per parallel task: below this, one thread

// One Vectorized<acc_t> worth of values, loaded in acc_t (float for float32 / bfloat16 / float16, double for
// float64); stored back rounded to scalar_t. The _n forms take the first n < size() values only (a row's or a
// channel vector's tail), without reading or writing past them.
template <typename scalar_t>
struct Lanes {
  using acc_t = at::opmath_type<scalar_t>;
  using aVec = Vectorized<acc_t>;
  static constexpr bool kSame = std::is_same_v<scalar_t, acc_t>;
  static constexpr int64_t size() { return aVec::size(); }
  static aVec load(const scalar_t* p) {
    if constexpr (kSame) {
      return aVec::loadu(p);
    } else {
      aVec out;
      at::vec::load_to_float<scalar_t>(p, out);
      return out;
    }
  }
  static aVec load_n(const scalar_t* p, int64_t n) {
    if constexpr (kSame) {
      return aVec::loadu(p, n);
    } else {
      return std::get<0>(at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(p, n)));
    }
  }
  static void store(scalar_t* p, const aVec& v) {
    if constexpr (kSame) {
      v.store(p);
    } else {
      at::vec::convert_from_float<scalar_t>(v, v).store(p, size());
    }
  }
  static void store_n(scalar_t* p, const aVec& v, int64_t n) {
    if constexpr (kSame) {
      v.store(p, n);
    } else {
      at::vec::convert_from_float<scalar_t>(v, v).store(p, n);
    }
  }
  // the value rounded to scalar_t, back in acc_t
  static aVec round(const aVec& v) {
    if constexpr (kSame) {
      return v;
    } else {
      return std::get<0>(at::vec::convert_to_float<scalar_t>(at::vec::convert_from_float<scalar_t>(v, v)));
    }
  }
};

template <typename acc_t>
acc_t horizontal_sum(const Vectorized<acc_t>& v) {
  alignas(64) acc_t buf[Vectorized<acc_t>::size()];
  v.store(buf);
  acc_t s = 0;
  for (int64_t i = 0; i < Vectorized<acc_t>::size(); ++i) s += buf[i];
  return s;
}

}  // namespace normlab
