// Causal self-attention computed directly on the packed real tokens of variable-length sequences, forward and
// backward, float32 and float64 on CPU; compiled on first use by normlab.lab.training.attention_kernel
// (torch.utils.cpp_extension). It replaces, for the lab's character-level transformer, a scatter of the tokens into
// a zero-padded (N, T) batch, scaled_dot_product_attention(is_causal=True) there, and a gather back.
//
// Layout: qkv (R, 3D) contiguous, the fused in-projection of R packed tokens as nn.MultiheadAttention lays it out,
// [q | k | v], each D columns; head h owns columns h*dh .. (h+1)*dh - 1 of each of q, k, v, dh = D / heads.
// offsets (N+1) int64: sequence i is rows offsets[i] .. offsets[i+1] - 1 (its positions 0 .. L_i - 1, in order;
// offsets[0] = 0, nondecreasing, offsets[N] = R). A query at position j sees the keys at positions 0 .. j of its own
// sequence, or, with key counts K_i (keys (N,), 1 <= K_i <= L_i), the keys 0 .. min(j, K_i - 1): right-padded
// sequences of length L_i whose first K_i tokens are real, every query (padding's too) seeing only real keys, as
// a causal mask and a key padding mask give. out (R, D): the heads' outputs side by side (head h in columns
// h*dh ..); lse (R, heads) saved. The gradients of the keys and values past K_i are 0.
//
// Per sequence and head, scale = 1 / sqrt(dh), s_jk for the keys k <= min(j, K - 1) only:
//
//   forward:  s_jk   = (scale q_j) . k_k          (q scaled first: the backward recomputes s bit for bit)
//             m_j    = max_k s_jk,   l_j = sum_k exp(s_jk - m_j)
//             o_j    = sum_k exp(s_jk - m_j) v_k / l_j,        lse_j = m_j + log(l_j)   (saved)
//   backward: p_jk   = exp(s_jk - lse_j)           (the probabilities recomputed, flash style)
//             delta_j = do_j . o_j
//             dp_jk  = do_j . v_k,    ds_jk = p_jk (dp_jk - delta_j)
//             dq_j   = scale sum_k ds_jk k_k,    dk_k = sum_j ds_jk (scale q_j),    dv_k = sum_j p_jk do_j
//
// A sequence's operands are staged once for all its heads (its rows are one contiguous block of qkv, prefetched
// while the task's previous sequence computes): keys (and values) transposed to (D, Lp) scratch, the scaled queries
// (and do) copied to (Lq, D), zero past L (Lq, Lp: L rounded up to whole blocks of QB queries, and to whole
// vectors). Scores and dp are products of a block of QB queries with the transposed keys (values), vectors along
// the keys, a query's keys past j masked to -inf (p exactly 0); the softmax runs along each query's scores; o, dq,
// dk and dv are sums of weighted rows (of v, k, the scaled queries, do), vectors along the head dim (a scalar tail
// where dh is not a whole number of vectors): any dh >= 1, any length (a task's scratch is O(longest^2 + longest D)).
// Every sum runs in a fixed order in the input's type (float32: float32 sums of at most L terms); exp is ATen's
// Vectorized exp_u20 (float32: a polynomial within 20 ulp, cheaper than exp; float64: exp itself).
//
// Work items are (sequence, head) pairs (at::parallel_for); each owns its rows of out and lse and its rows and
// head's columns of grad_qkv, so there are no atomics and every result is independent of the thread count (a task
// stages each sequence it meets; staging only copies).

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <tuple>
#include <utility>
#include <vector>

namespace {

template <typename T>
using Vec = at::vec::Vectorized<T>;

constexpr int64_t QB = 8;          // queries (or keys) a block: their sums side by side in registers
constexpr int64_t kGrain = 16384;  // multiply-adds per work item: below this, items are grouped (fewer tasks)

// A length rounded up to whole vectors and whole blocks (both powers of two: a multiple of each).
template <typename T>
int64_t padded_length(int64_t L) {
  const int64_t m = std::max<int64_t>(Vec<T>::size(), QB);
  return (L + m - 1) / m * m;
}

// max(a, b) without maximum's NaN checks (a NaN score makes a NaN probability all the same)
template <typename T>
inline Vec<T> vmax(const Vec<T>& a, const Vec<T>& b) {
  return at::vec::clamp_min(a, b);
}

template <typename T>
T hmax(const Vec<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return vmax(a, b); }, v);
}

template <typename T>
T hsum(const Vec<T>& v) {
  return at::vec::vec_reduce_all<T>([](Vec<T>& a, Vec<T>& b) { return a + b; }, v);
}

// a . b over n values: vectors, their lanes added (a fixed tree), then the scalar tail
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  V acc(T(0));
  int64_t d = 0;
  for (; d + W <= n; d += W) acc = at::vec::fmadd(V::loadu(a + d), V::loadu(b + d), acc);
  T sum = hsum(acc);
  for (; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// A task's scratch, sized for the longest sequence (Lp its padded length): one sequence's keys and values
// transposed (D, Lp), its scaled queries and do (Lp, D); one head's scores or probabilities and ds (Lp, Lp) and its
// row sums (Lp). Nothing is read before it is written in the same call. The memory is the thread's, kept between
// calls up to kKeepBytes (not a zeroed allocation each call: a memset, and page faults where the allocator has
// given the memory back to the system); larger scratch is allocated for the call. The arrays' starts are staggered
// by a few cache lines: arrays a multiple of 4 KiB apart would make loads from one wait on stores to another (4K
// aliasing).
constexpr size_t kKeepBytes = size_t(4) << 20;

template <typename T>
struct Scratch {
  std::unique_ptr<T[]> own;
  T *kt, *vt, *qs, *go, *s, *ds, *row;
  Scratch(int64_t D, int64_t Lp, bool backward) {
    constexpr int64_t line = 64 / sizeof(T);
    const int64_t sizes[] = {D * Lp, backward ? D * Lp : 0, Lp * D, backward ? Lp * D : 0, Lp * Lp,
                             backward ? Lp * Lp : 0, Lp};
    int64_t total = line;
    for (int a = 0; a < 7; ++a) total += (sizes[a] + line - 1) / line * line + (a + 1) * 5 * line;
    static thread_local std::vector<T> kept;
    T* base;
    if (size_t(total) * sizeof(T) <= kKeepBytes) {
      if (int64_t(kept.size()) < total) kept.resize(total);
      base = kept.data();
    } else {
      own.reset(new T[total]);
      base = own.get();
    }
    T* p = base + (line - reinterpret_cast<uintptr_t>(base) / sizeof(T) % line) % line;
    T** arrays[] = {&kt, &vt, &qs, &go, &s, &ds, &row};
    for (int a = 0; a < 7; ++a) {
      p += (a + 1) * 5 * line;
      *arrays[a] = p;
      p += (sizes[a] + line - 1) / line * line;
    }
  }
};

// One sequence: its first row of qkv (q; k at + D, v at + 2D), the row stride 3D, D, the head dim, its length,
// the length rounded up to whole blocks (Lq) and to whole vectors and blocks (Lp: the scratch's row length), its
// keys (K <= L: the first K rows).
template <typename T>
struct Seq {
  const T* x;
  int64_t ld, D, dh, L, Lq, Lp, K;
};

template <typename T>
Seq<T> make_seq(const T* x, int64_t D, int64_t dh, int64_t b, int64_t L, int64_t K) {
  return {x + b * 3 * D, 3 * D, D, dh, L, (L + QB - 1) / QB * QB, padded_length<T>(L), K};
}

// dst (cols, Lp) = src's L rows (stride ld) of `cols` values transposed, the columns past L zero.
template <typename T>
void transpose_in(const T* src, int64_t ld, int64_t cols, int64_t L, int64_t Lp, T* dst) {
  constexpr int64_t W = Vec<T>::size();
  at::vec::transpose_mxn<T>(src, ld, dst, Lp, static_cast<int>(L), static_cast<int>(cols));
  for (int64_t d = 0; d < cols; ++d)  // a vector store or two a row (Lp - L < 2 W), not a call to memset
    for (int64_t k = L; k < Lp; k += W) Vec<T>(T(0)).store(dst + d * Lp + k, std::min(W, Lp - k));
}

// dst (Lq, cols) = src's L rows (stride ld) times f, the rows past L zero.
template <typename T>
void rows_in(const T* src, int64_t ld, int64_t cols, int64_t L, int64_t Lq, T f, T* dst) {
  for (int64_t j = 0; j < L; ++j)
    for (int64_t d = 0; d < cols; ++d) dst[j * cols + d] = src[j * ld + d] * f;
  std::fill(dst + L * cols, dst + Lq * cols, T(0));
}

// acc[i] = sum_d a[i, d] bt[d, c W ..] for the QB rows of a block (a stride lda) and the keys of vector c (bt
// stride Lp): the rows side by side, one chain per value over d in order (the same bits wherever it is called).
template <typename T>
inline void products(const T* a, int64_t lda, int64_t dh, const T* bt, int64_t Lp, int64_t c, Vec<T> (&acc)[QB]) {
  using V = Vec<T>;
  for (int64_t i = 0; i < QB; ++i) acc[i] = V(T(0));
  for (int64_t d = 0; d < dh; ++d) {
    const V b = V::loadu(bt + d * Lp + c * V::size());
    for (int64_t i = 0; i < QB; ++i) acc[i] = at::vec::fmadd(V(a[i * lda + d]), b, acc[i]);
  }
}

// out[i, k] = sum_d a[i, d] bt[d, k] for the QB rows of a block (out stride Lp) and the keys of the first nc vectors.
template <typename T>
void block_products(const T* a, int64_t lda, int64_t dh, const T* bt, int64_t Lp, int64_t nc, T* out) {
  constexpr int64_t W = Vec<T>::size();
  for (int64_t c = 0; c < nc; ++c) {
    Vec<T> acc[QB];
    products(a, lda, dh, bt, Lp, c, acc);
    for (int64_t i = 0; i < QB; ++i) acc[i].store(out + i * Lp + c * W);
  }
}

// The scores of the queries j0 .. j0 + QB - 1 in s (Lp, Lp): qs (stride lda) times kt, for the keys of the block's
// first nc vectors, -inf past each query's last key min(j, K - 1) (masked before they are stored), and with Max each
// query's largest score in m. Returns nc.
template <bool Max, typename T>
int64_t block_scores(const T* qs, int64_t lda, const T* kt, int64_t dh, int64_t Lp, int64_t K, int64_t j0, T* s,
                     T* m) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t nc = std::min(std::min(j0 + QB - 1, K - 1) / W + 1, Lp / W);
  const V ninf(-std::numeric_limits<T>::infinity()), iota = V::arange(T(0), T(1));
  V mx[QB];
  for (int64_t i = 0; i < QB; ++i) mx[i] = ninf;
  for (int64_t c = 0; c < nc; ++c) {
    V acc[QB];
    products(qs + j0 * lda, lda, dh, kt, Lp, c, acc);
    const bool edge = (c + 1) * W > std::min(j0, K - 1);  // a vector with keys past some query's last key
    const V key = iota + V(T(c * W));                      // the vector's key positions
    for (int64_t i = 0; i < QB; ++i) {
      if (edge) acc[i] = V::blendv(acc[i], ninf, key > V(T(std::min(j0 + i, K - 1))));
      if (Max) mx[i] = vmax(mx[i], acc[i]);
      acc[i].store(s + (j0 + i) * Lp + c * W);
    }
  }
  if (Max)
    for (int64_t i = 0; i < QB; ++i) m[i] = hmax(mx[i]);
  return nc;
}

// out[i] = finish(i, sum_{k = k0 .. k1 - 1} w[i * wi + k * wk] rows[k]) for the first `valid` of QB output rows
// (rows stride ld, out stride ldo): one chain per value over k in order, along vectors of the head dim and then its
// scalar tail; finish takes a vector or a scalar. A row's weights past the causal limit must be 0.
template <typename T, typename F>
void block_weighted_rows(const T* w, int64_t wi, int64_t wk, const T* rows, int64_t ld, int64_t k0, int64_t k1,
                         int64_t dh, int64_t valid, T* out, int64_t ldo, const F& finish) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  int64_t d = 0;
  for (; d + W <= dh; d += W) {
    V acc[QB];
    for (int64_t i = 0; i < QB; ++i) acc[i] = V(T(0));
    for (int64_t k = k0; k < k1; ++k) {
      const V r = V::loadu(rows + k * ld + d);
      const T* wk_row = w + k * wk;
      for (int64_t i = 0; i < QB; ++i) acc[i] = at::vec::fmadd(V(wk_row[i * wi]), r, acc[i]);
    }
    for (int64_t i = 0; i < QB; ++i)  // i constant once unrolled: the sums stay in registers
      if (i < valid) finish(i, acc[i]).store(out + i * ldo + d);
  }
  for (; d < dh; ++d) {  // the scalar tail
    for (int64_t i = 0; i < valid; ++i) {
      T acc = 0;
      for (int64_t k = k0; k < k1; ++k) acc += w[i * wi + k * wk] * rows[k * ld + d];
      out[i * ldo + d] = finish(i, acc);
    }
  }
}

// Forward staging of a sequence: its keys transposed, its queries scaled.
template <typename T>
void stage_forward(const Seq<T>& q, T scale, Scratch<T>& w) {
  transpose_in(q.x + q.D, q.ld, q.D, q.K, q.Lp, w.kt);
  rows_in(q.x, q.ld, q.D, q.L, q.Lq, scale, w.qs);
}

// Forward of head h of a staged sequence: its rows of out (stride D, at the head's column) and of lse (stride
// heads).
template <typename T>
void forward_head(const Seq<T>& q, int64_t h, T* out, T* lse, int64_t heads, Scratch<T>& w) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t dh = q.dh, Lp = q.Lp, D = q.D;
  const T *qs = w.qs + h * dh, *kt = w.kt + h * dh * Lp, *v = q.x + 2 * D + h * dh;
  T *s = w.s, *l = w.row, mrow[QB];
  for (int64_t j0 = 0; j0 < q.L; j0 += QB) {
    const int64_t nc = block_scores<true>(qs, D, kt, dh, Lp, q.K, j0, s, mrow);
    const int64_t valid = std::min(QB, q.L - j0);
    for (int64_t i = 0; i < valid; ++i) {  // p = exp(s - m) in place, l = sum p
      T* r = s + (j0 + i) * Lp;
      const V m(mrow[i]);
      V sum(T(0));
      for (int64_t c = 0; c < nc; ++c) {
        const V p = (V::loadu(r + c * W) - m).exp_u20();
        p.store(r + c * W);
        sum += p;
      }
      l[i] = hsum(sum);
    }
    for (int64_t i0 = 0; i0 < valid; i0 += W) {  // lse = m + log l, the logs a vector at a time
      const int64_t count = std::min(W, valid - i0);
      alignas(64) T logs[W];
      V::loadu(l + i0, count).log().store(logs);
      for (int64_t i = 0; i < count; ++i) lse[(j0 + i0 + i) * heads] = mrow[i0 + i] + logs[i];
    }
    block_weighted_rows(s + j0 * Lp, Lp, 1, v, q.ld, 0, std::min(j0 + valid, q.K), dh, valid, out + j0 * D, D,
                        [&](int64_t i, auto x) { return x / decltype(x)(l[i]); });
  }
}

// Backward staging of a sequence: its keys and values transposed, its queries scaled, its do (stride D) copied.
template <typename T>
void stage_backward(const Seq<T>& q, T scale, const T* dout, Scratch<T>& w) {
  transpose_in(q.x + q.D, q.ld, q.D, q.K, q.Lp, w.kt);
  transpose_in(q.x + 2 * q.D, q.ld, q.D, q.K, q.Lp, w.vt);
  rows_in(q.x, q.ld, q.D, q.L, q.Lq, scale, w.qs);
  rows_in(dout, q.D, q.D, q.L, q.Lq, T(1), w.go);
}

// Backward of head h of a staged sequence: its rows and head's columns of grad_qkv (stride 3D, at the head's q
// column; k, v at + D, + 2D), from do and o (stride D, at the head's column) and lse (stride heads).
template <typename T>
void backward_head(const Seq<T>& q, int64_t h, T scale, const T* dout, const T* o, const T* lse, int64_t heads,
                   T* grad, Scratch<T>& w) {
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  const int64_t dh = q.dh, Lp = q.Lp, L = q.L, D = q.D;
  const T *qs = w.qs + h * dh, *go = w.go + h * dh, *k = q.x + D + h * dh;
  const T *kt = w.kt + h * dh * Lp, *vt = w.vt + h * dh * Lp;
  T *s = w.s, *ds = w.ds;
  for (int64_t j0 = 0; j0 < L; j0 += QB) {  // p, ds and dq of a block of queries
    const int64_t nc = block_scores<false>(qs, D, kt, dh, Lp, q.K, j0, s, static_cast<T*>(nullptr));
    block_products(go + j0 * D, D, dh, vt, Lp, nc, ds + j0 * Lp);  // dp
    const int64_t valid = std::min(QB, L - j0);
    for (int64_t i = 0; i < valid; ++i) {
      const int64_t j = j0 + i;
      const V lse_j(lse[j * heads]), delta_j(dot(dout + j * D, o + j * D, dh));
      T *pr = s + j * Lp, *dr = ds + j * Lp;
      for (int64_t c = 0; c < nc; ++c) {
        const V p = (V::loadu(pr + c * W) - lse_j).exp_u20();  // 0 past key j (s = -inf)
        p.store(pr + c * W);
        (p * (V::loadu(dr + c * W) - delta_j)).store(dr + c * W);
      }
    }
    block_weighted_rows(ds + j0 * Lp, Lp, 1, k, q.ld, 0, std::min(j0 + valid, q.K), dh, valid, grad + j0 * q.ld, q.ld,
                        [&](int64_t, auto x) { return x * decltype(x)(scale); });  // dq = scale ds k
  }
  const auto same = [](int64_t, auto x) { return x; };
  for (int64_t k0 = 0; k0 < q.K; k0 += QB) {  // dk and dv of a block of keys: the queries at or past them
    const int64_t valid = std::min(QB, q.K - k0);
    T* g = grad + k0 * q.ld;
    block_weighted_rows(ds + k0, 1, Lp, qs, D, k0, L, dh, valid, g + D, q.ld, same);     // dk = ds^T (scale q)
    block_weighted_rows(s + k0, 1, Lp, go, D, k0, L, dh, valid, g + 2 * D, q.ld, same);  // dv = p^T do
  }
  for (int64_t r = q.K; r < L; ++r) {  // rows past the keys: no query sees them
    std::fill(grad + r * q.ld + D, grad + r * q.ld + D + dh, T(0));
    std::fill(grad + r * q.ld + 2 * D, grad + r * q.ld + 2 * D + dh, T(0));
  }
}

// The arguments' checks (ValueError naming the argument); returns the longest sequence. keys: empty (every
// sequence's keys are its tokens), or (N,) int64 key counts, 1 <= K_i <= L_i (0 for an empty sequence).
int64_t check(const at::Tensor& qkv, const at::Tensor& offsets, const at::Tensor& keys, int64_t heads,
              const char* fn) {
  TORCH_CHECK_VALUE(heads >= 1, fn, ": heads must be at least 1, got ", heads);
  TORCH_CHECK_VALUE(qkv.dim() == 2, fn, ": qkv must be 2-D (R, 3D), got ", qkv.dim(), " dims");
  TORCH_CHECK_VALUE(qkv.size(1) > 0 && qkv.size(1) % (3 * heads) == 0, fn, ": qkv's columns (", qkv.size(1),
                    ") must be 3 * D with D a positive multiple of heads (", heads, ")");
  TORCH_CHECK_VALUE(qkv.scalar_type() == at::kFloat || qkv.scalar_type() == at::kDouble, fn,
                    ": qkv must be float32 or float64, got ", qkv.scalar_type());
  TORCH_CHECK_VALUE(qkv.device().is_cpu() && qkv.is_contiguous(), fn, ": qkv must be a contiguous CPU tensor");
  TORCH_CHECK_VALUE(offsets.scalar_type() == at::kLong, fn, ": offsets must be int64, got ", offsets.scalar_type());
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.numel() >= 1, fn,
                    ": offsets must be 1-D (N+1,) with at least one entry, got shape ", offsets.sizes());
  TORCH_CHECK_VALUE(offsets.device().is_cpu(), fn, ": offsets must be on qkv's device (cpu), got ",
                    offsets.device());
  const at::Tensor off = offsets.contiguous();
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t n = off.numel() - 1, R = qkv.size(0);
  TORCH_CHECK_VALUE(o[0] == 0, fn, ": offsets[0] must be 0, got ", o[0]);
  int64_t longest = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(o[i + 1] >= o[i], fn, ": offsets must be nondecreasing, offsets[", i + 1, "] = ", o[i + 1],
                      " < offsets[", i, "] = ", o[i]);
    longest = std::max(longest, o[i + 1] - o[i]);
  }
  TORCH_CHECK_VALUE(o[n] == R, fn, ": offsets[-1] must be qkv's rows R = ", R, ", got ", o[n]);
  if (keys.numel() == 0) return longest;
  TORCH_CHECK_VALUE(keys.scalar_type() == at::kLong && keys.dim() == 1 && keys.numel() == n && keys.device().is_cpu()
                        && keys.is_contiguous(),
                    fn, ": keys must be a contiguous int64 (N,) CPU tensor (N = ", n, " sequences), got ",
                    keys.scalar_type(), " of shape ", keys.sizes());
  const int64_t* k = keys.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t L = o[i + 1] - o[i];
    TORCH_CHECK_VALUE((L == 0 && k[i] == 0) || (k[i] >= 1 && k[i] <= L), fn, ": keys[", i,
                      "] must be between 1 and the sequence's length ", L, ", got ", k[i]);
  }
  return longest;
}

// (sequence, head) items in at::parallel_for, one scratch per task: stage(seq, first row, scratch) once for each
// sequence a task meets, then f(seq, head, first row, scratch). streams: the tensors a sequence reads, (data, values
// a row); a share of the next sequence's rows is prefetched before each head.
template <typename T, typename S, typename F>
void over_items(const T* x, const at::Tensor& offsets, const at::Tensor& keys, int64_t D, int64_t heads,
                int64_t longest, bool backward, const std::vector<std::pair<const T*, int64_t>>& streams, S&& stage,
                F&& f) {
  const int64_t n = offsets.numel() - 1, dh = D / heads, Lp = padded_length<T>(longest);
  const int64_t* o = offsets.data_ptr<int64_t>();
  const int64_t* k = keys.numel() > 0 ? keys.data_ptr<int64_t>() : nullptr;
  double work = 0;  // multiply-adds, all items
  for (int64_t i = 0; i < n; ++i) work += 0.5 * double(o[i + 1] - o[i]) * double(o[i + 1] - o[i] + 1) * D;
  const int64_t items = n * heads;
  const double per_item = items > 0 ? work / items : 1.0;
  const int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(kGrain / std::max(per_item, 1.0)));
  at::parallel_for(0, items, grain, [&](int64_t t0, int64_t t1) {
    Scratch<T> w(D, Lp, backward);
    int64_t staged = -1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / heads, b = o[i];
      const Seq<T> q = make_seq(x, D, dh, b, o[i + 1] - b, k != nullptr ? k[i] : o[i + 1] - b);
      if (q.L == 0) continue;
      if (i != staged) stage(q, b, w), staged = i;
      if (i + 1 < n)  // a share of the next sequence's rows into the cache while this head computes
        for (const auto& [base, cols] : streams) {
          const char* next = reinterpret_cast<const char*>(base + o[i + 1] * cols);
          const int64_t lines = ((o[i + 2] - o[i + 1]) * cols * int64_t(sizeof(T)) + 63) / 64, h = t % heads;
          for (int64_t c = lines * h / heads; c < lines * (h + 1) / heads; ++c) __builtin_prefetch(next + c * 64);
        }
      f(q, t % heads, b, w);
    }
  });
}

// (out (R, D), lse (R, heads))
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& qkv, const at::Tensor& offsets, const at::Tensor& keys,
                                           int64_t heads) {
  const int64_t longest = check(qkv, offsets, keys, heads, "packed_causal_attention");
  const at::Tensor off = offsets.contiguous();
  const int64_t R = qkv.size(0), D = qkv.size(1) / 3, dh = D / heads;
  auto out = at::empty({R, D}, qkv.options());
  auto lse = at::empty({R, heads}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "packed_causal_attention", [&] {
    using T = scalar_t;
    T *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
    const T scale = T(1) / std::sqrt(T(dh));
    over_items<T>(
        qkv.data_ptr<T>(), off, keys, D, heads, longest, false, {{qkv.data_ptr<T>(), 3 * D}},
        [&](const Seq<T>& q, int64_t, Scratch<T>& w) { stage_forward(q, scale, w); },
        [&](const Seq<T>& q, int64_t h, int64_t b, Scratch<T>& w) {
          forward_head(q, h, op + b * D + h * dh, lp + b * heads + h, heads, w);
        });
  });
  return {out, lse};
}

// grad_qkv (R, 3D)
at::Tensor backward(const at::Tensor& grad, const at::Tensor& qkv, const at::Tensor& offsets, const at::Tensor& keys,
                    const at::Tensor& out, const at::Tensor& lse, int64_t heads) {
  const int64_t longest = check(qkv, offsets, keys, heads, "packed_causal_attention backward");
  const at::Tensor off = offsets.contiguous();
  const int64_t R = qkv.size(0), D = qkv.size(1) / 3, dh = D / heads;
  const auto like = [&](const at::Tensor& t, const char* name, int64_t cols) {
    TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == R && t.size(1) == cols && t.is_contiguous() &&
                          t.scalar_type() == qkv.scalar_type() && t.device().is_cpu(),
                      "packed_causal_attention backward: ", name, " must be contiguous (", R, ", ", cols,
                      ") of qkv's dtype on the CPU");
  };
  like(grad, "grad", D);
  like(out, "out", D);
  like(lse, "lse", heads);
  auto gqkv = at::empty_like(qkv);
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "packed_causal_attention_backward", [&] {
    using T = scalar_t;
    const T *gp = grad.data_ptr<T>(), *op = out.data_ptr<T>(), *lp = lse.data_ptr<T>();
    T* gx = gqkv.data_ptr<T>();
    const T scale = T(1) / std::sqrt(T(dh));
    over_items<T>(
        qkv.data_ptr<T>(), off, keys, D, heads, longest, true, {{qkv.data_ptr<T>(), 3 * D}, {gp, D}, {op, D}},
        [&](const Seq<T>& q, int64_t b, Scratch<T>& w) { stage_backward(q, scale, gp + b * D, w); },
        [&](const Seq<T>& q, int64_t h, int64_t b, Scratch<T>& w) {
          const int64_t at = b * D + h * dh;
          backward_head(q, h, scale, gp + at, op + at, lp + b * heads + h, heads, gx + b * 3 * D + h * dh, w);
        });
  });
  return gqkv;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "causal attention of packed sequences: (out (R, D), lse (R, heads))", py::arg("qkv"),
        py::arg("offsets"), py::arg("keys"), py::arg("heads"));
  m.def("backward", &backward, "its backward: grad_qkv (R, 3D)", py::arg("grad"), py::arg("qkv"),
        py::arg("offsets"), py::arg("keys"), py::arg("out"), py::arg("lse"), py::arg("heads"));
}
