// Fused flash attention for XLA:CPU, forward and backward, called through the XLA FFI by ctxjax/attention/cpu.py.
//
// Why it exists: the pure-JAX `blockwise` kernel hands every tile's matmuls to XLA one by one and runs softmax,
// masks and rescaling as separate passes over the tile, which made a 16k-token layer twice as slow as PyTorch's
// fused CPU kernel. Here each tile's scores stay in cache from the matmul through the softmax to the next matmul.
//
// Layout (ctxjax.attention.common.Grouped): q, out, dq [B, G, Lq, R, D] float32 with q already scaled; k, v, dk,
// dv [B, G, Lk, D]; segment ids and positions [B, L] int32; slopes and their gradient [G, R]; lse, delta
// [B, G, Lq, R]. The R query heads that share a key/value head are interleaved row by row (row = t * R + r), so
// one tile of tile_q query positions is a contiguous [tile_q * R, D] matrix against one K/V tile. Lq is a multiple
// of tile_q, Lk of tile_k; D and tile_k are multiples of 16 (cpu.py pads and checks).
//
// Visibility is the contract of ctxjax.attention: key j is visible to query i iff their segment ids are equal and,
// causal, 0 <= pos_i - pos_j (< window when window > 0), or, non-causal, |pos_i - pos_j| < window (any distance
// without a window; padded keys, at position INT32_MAX, stay hidden); ALiBi's bias is -slope (pos_i - pos_j),
// non-causal -slope |pos_i - pos_j|. Tiles that no pair can see are skipped and tiles that every pair sees skip
// the mask, both decided from per-tile bounds of positions and segment ids.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

constexpr float kInf = std::numeric_limits<float>::infinity();
// Where cpu.py (common.KEY_PAD_POSITION) puts padded keys.
constexpr int32_t kPadPosition = std::numeric_limits<int32_t>::max();

inline vf load(const float* p) { vf x; std::memcpy(&x, p, sizeof x); return x; }
inline vi load(const int32_t* p) { vi x; std::memcpy(&x, p, sizeof x); return x; }
inline void store(float* p, vf x) { std::memcpy(p, &x, sizeof x); }
// A uniform initializer compiles to one broadcast load; `vf{} + x` would cost a scalar add first.
inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x}; }
inline vf select(vi mask, vf yes, vf no) { return mask ? yes : no; }

inline float reduce_max(vf x) {
  float m = x[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, x[i]);
  return m;
}

inline float reduce_sum(vf x) {
  float s = 0.0f;
  for (int i = 0; i < kLanes; ++i) s += x[i];
  return s;
}

// exp(x) for x <= 0 (every caller exponentiates a logit minus the row's max or log-sum-exp, or -2|y|):
// x = n ln2 + r with |r| <= ln2 / 2, a degree-6 Taylor polynomial in r (relative error about 2e-7), and 2^n built
// in the exponent bits. Below -87 it returns about 1e-38, not 0: callers zero hidden entries.
inline vf vexp(vf x) {
  x = select(x < -87.0f, splat(-87.0f), x);
  const vf n = (x * 1.44269504f + 12582912.0f) - 12582912.0f;  // round to nearest through the float mantissa
  const vf r = (x - n * 0.693359375f) + n * 2.12194440e-4f;     // ln 2 in two parts keeps r exact
  vf p = splat(1.0f / 720);
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return p * two_n;
}

// Probabilities exp(x - shift), 0 where the logit is -inf (hidden); tiles without hidden keys skip that test.
inline vf probability(vf x, float shift, bool masked) {
  const vf prob = vexp(x - shift);
  return masked ? select(x == -kInf, vf{}, prob) : prob;
}

// tanh: its odd Taylor series below |y| = 0.3 (where (1 - e) / (1 + e) would lose digits), that formula above.
inline vf vtanh(vf y) {
  const vf a = select(y < 0.0f, -y, y);
  const vf y2 = y * y;
  const vf small = y * (1.0f + y2 * (-1.0f / 3 + y2 * (2.0f / 15 + y2 * (-17.0f / 315 + y2 * (62.0f / 2835 +
                   y2 * (-1382.0f / 155925))))));
  const vf e = vexp(-2.0f * a);
  const vf large = (1.0f - e) / (1.0f + e);
  return select(a < 0.3f, small, select(y < 0.0f, -large, large));
}

// C[m][n] (+)= sum_k A(m, k) B[k][n] for m < MR, n < 16 NV, where A(m, k) = a[m * am + k * ak] (a matrix or its
// transpose) and B is row-major. The MR x NV accumulators stay in registers (24 of AVX-512's 32 at 6 x 4).
template <int MR, int NV>
inline void micro_kernel(const float* a, int64_t am, int64_t ak, const float* b, int64_t ldb, float* c, int64_t ldc,
                         int64_t depth, bool accumulate) {
  vf acc[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) acc[m][n] = accumulate ? load(c + m * ldc + n * kLanes) : vf{};
  for (int64_t k = 0; k < depth; ++k) {
    vf bv[NV];
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) bv[n] = load(b + k * ldb + n * kLanes);
    const float* ak_ptr = a + k * ak;
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const vf x = splat(ak_ptr[m * am]);
#pragma GCC unroll 4
      for (int n = 0; n < NV; ++n) acc[m][n] += x * bv[n];
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int n = 0; n < NV; ++n) store(c + m * ldc + n * kLanes, acc[m][n]);
}

template <int MR>
inline void row_panel(int nv, const float* a, int64_t am, int64_t ak, const float* b, int64_t ldb, float* c,
                      int64_t ldc, int64_t depth, bool accumulate) {
  switch (nv) {
    case 4: return micro_kernel<MR, 4>(a, am, ak, b, ldb, c, ldc, depth, accumulate);
    case 3: return micro_kernel<MR, 3>(a, am, ak, b, ldb, c, ldc, depth, accumulate);
    case 2: return micro_kernel<MR, 2>(a, am, ak, b, ldb, c, ldc, depth, accumulate);
    default: return micro_kernel<MR, 1>(a, am, ak, b, ldb, c, ldc, depth, accumulate);
  }
}

constexpr int kRows = 6;              // rows per micro-kernel call
constexpr int64_t kPanel = 4 * kLanes;  // columns per micro-kernel call
constexpr int64_t kDepth = 128;         // contraction steps per pass: a [128][64] panel of B (32 KiB) stays in L1

// C[M][N] (+)= A B with A(m, k) = a[m * am + k * ak] and N a multiple of 16. B is row-major with row stride ldb;
// its panels of kPanel columns start panel_stride apart (kPanel for a plain matrix, depth * kPanel when packed).
void matmul(int64_t rows, int64_t cols, int64_t depth, const float* a, int64_t am, int64_t ak, const float* b,
            int64_t ldb, int64_t panel_stride, float* c, int64_t ldc, bool accumulate) {
  for (int64_t n0 = 0; n0 < cols; n0 += kPanel) {
    const int nv = static_cast<int>(std::min<int64_t>(4, (cols - n0) / kLanes));
    for (int64_t k0 = 0; k0 < depth; k0 += kDepth) {
      const int64_t steps = std::min(kDepth, depth - k0);
      const float* panel = b + n0 / kPanel * panel_stride + k0 * ldb;
      const float* a0 = a + k0 * ak;
      const bool add = accumulate || k0 > 0;
      int64_t m0 = 0;
      for (; m0 + kRows <= rows; m0 += kRows)
        row_panel<kRows>(nv, a0 + m0 * am, am, ak, panel, ldb, c + m0 * ldc + n0, ldc, steps, add);
      const float* a_rest = a0 + m0 * am;
      float* c_rest = c + m0 * ldc + n0;
      switch (rows - m0) {  // the last rows in one call too: row by row they ran at a quarter of the speed
        case 5: row_panel<5>(nv, a_rest, am, ak, panel, ldb, c_rest, ldc, steps, add); break;
        case 4: row_panel<4>(nv, a_rest, am, ak, panel, ldb, c_rest, ldc, steps, add); break;
        case 3: row_panel<3>(nv, a_rest, am, ak, panel, ldb, c_rest, ldc, steps, add); break;
        case 2: row_panel<2>(nv, a_rest, am, ak, panel, ldb, c_rest, ldc, steps, add); break;
        case 1: row_panel<1>(nv, a_rest, am, ak, panel, ldb, c_rest, ldc, steps, add); break;
      }
    }
  }
}

// Float buffers aligned to 64 bytes: a vector load that straddles two cache lines costs two, and unaligned
// panels made the matmuls 10% slower. Zero-filled only when asked.
class Floats {
 public:
  explicit Floats(int64_t n, bool zero = false)
      : data_(static_cast<float*>(std::aligned_alloc(64, ((std::max<int64_t>(n, 1) * 4 + 63) / 64) * 64))) {
    if (zero) std::fill(data_.get(), data_.get() + n, 0.0f);
  }
  float* data() const { return data_.get(); }
  float& operator[](int64_t i) const { return data_.get()[i]; }

 private:
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> data_;
};

// Rounds a per-worker buffer size up to whole 64-byte lines, so every worker's part stays aligned.
int64_t whole_lines(int64_t floats) { return (floats + kLanes - 1) / kLanes * kLanes; }

struct Bounds {
  int64_t pos_min, pos_max, seg_min, seg_max;
};

std::vector<Bounds> tile_bounds(const int32_t* seg, const int32_t* pos, int64_t batch, int64_t length, int64_t tile) {
  std::vector<Bounds> out;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t0 = 0; t0 < length; t0 += tile) {
      Bounds x{pos[b * length + t0], pos[b * length + t0], seg[b * length + t0], seg[b * length + t0]};
      for (int64_t t = t0; t < t0 + tile; ++t) {
        x.pos_min = std::min<int64_t>(x.pos_min, pos[b * length + t]);
        x.pos_max = std::max<int64_t>(x.pos_max, pos[b * length + t]);
        x.seg_min = std::min<int64_t>(x.seg_min, seg[b * length + t]);
        x.seg_max = std::max<int64_t>(x.seg_max, seg[b * length + t]);
      }
      out.push_back(x);
    }
  return out;
}

struct Problem {
  int64_t batch, groups, reps, dim, q_len, kv_len, tile_q, tile_k, window;
  float softcap;
  bool alibi, causal;
  const int32_t *q_seg, *kv_seg, *q_pos, *kv_pos;
  const float* slopes;
  std::vector<Bounds> q_bounds, kv_bounds;

  int64_t q_tiles() const { return q_len / tile_q; }
  int64_t kv_tiles() const { return kv_len / tile_k; }
  int64_t tile_rows() const { return tile_q * reps; }

  // Some query of tile i may see some key of tile j (in batch row b).
  bool may_see(int64_t b, int64_t i, int64_t j) const {
    const Bounds& q = q_bounds[b * q_tiles() + i];
    const Bounds& k = kv_bounds[b * kv_tiles() + j];
    return k.seg_min <= q.seg_max && q.seg_min <= k.seg_max && (!causal || k.pos_min <= q.pos_max) &&
           (!window || q.pos_min - k.pos_max < window) && (!window || causal || k.pos_min - q.pos_max < window);
  }

  // Every query of tile i sees every key of tile j: the mask can be skipped.
  bool sees_all(int64_t b, int64_t i, int64_t j) const {
    const Bounds& q = q_bounds[b * q_tiles() + i];
    const Bounds& k = kv_bounds[b * kv_tiles() + j];
    const bool one_segment = q.seg_min == q.seg_max && k.seg_min == k.seg_max && q.seg_min == k.seg_min;
    if (causal) return one_segment && q.pos_min >= k.pos_max && (!window || q.pos_max - k.pos_min < window);
    return one_segment && k.pos_max != kPadPosition &&
           (!window || (q.pos_max - k.pos_min < window && k.pos_max - q.pos_min < window));
  }

  // The distance ALiBi's bias scales: pos_i - pos_j, or non-causal |pos_i - pos_j| (in float: no int wrap-around).
  vf bias_distance(vi distance) const {
    const vf x = __builtin_convertvector(distance, vf);
    return causal ? x : select(x < 0.0f, -x, x);
  }

  // What one query row needs to turn the raw scores q.k of key tile j into logits.
  struct Row {
    int32_t pos, seg;
    float slope;
    const int32_t *kv_pos, *kv_seg;
    bool masked;  // some key of the tile may be hidden from some query of it
    bool plain;   // every key visible, no cap, no bias: the logits are the raw scores
  };

  Row row(int64_t b, int64_t query, int64_t r, int64_t g, int64_t j, bool all_visible) const {
    return Row{q_pos[b * q_len + query], q_seg[b * q_len + query], alibi ? slopes[g * reps + r] : 0.0f,
               kv_pos + b * kv_len + j * tile_k, kv_seg + b * kv_len + j * tile_k, !all_visible,
               all_visible && !softcap && !alibi};
  }

  // Logits of keys c..c+15 of a row from their raw scores x: soft cap (its tanh kept in *t for the backward),
  // ALiBi bias, and -inf where hidden.
  vf logits(vf x, int64_t c, const Row& row, vf* t) const {
    if (row.plain) return x;
    if (softcap) {
      *t = vtanh(x * (1.0f / softcap));
      x = *t * softcap;
    }
    const vi distance = row.pos - load(row.kv_pos + c);  // see bias_distance
    if (alibi) x -= row.slope * bias_distance(distance);
    if (row.masked) {
      vi visible = load(row.kv_seg + c) == row.seg;
      if (causal) {
        visible &= distance >= 0;
        if (window) visible &= distance < static_cast<int32_t>(window);
      } else if (window) {  // d = -1 - INT32_MAX (a padded query and key) is INT32_MIN: hidden here too
        visible &= (distance < static_cast<int32_t>(window)) & (distance > -static_cast<int32_t>(window));
      } else {
        visible &= load(row.kv_pos + c) != kPadPosition;
      }
      x = select(visible, x, splat(-kInf));
    }
    return x;
  }
};

// Runs fn(item, worker) for every item in [0, n) on the calling thread and XLA's intra-op threads, handing out
// items in order as threads come free (so give the largest first). Returns when every item is done. A pool thread
// that starts only after that finds the work closed and touches nothing.
template <typename Fn>
void parallel_for(ffi::ThreadPool& pool, int64_t n, int64_t workers, const Fn& fn) {
  struct Shared {
    std::atomic<int64_t> next{0};
    std::mutex mu;
    std::condition_variable idle;
    int64_t active = 0;
    bool closed = false;
  };
  auto shared = std::make_shared<Shared>();
  auto drain = [shared, &fn, n](int64_t worker) {
    for (int64_t item; (item = shared->next.fetch_add(1)) < n;) fn(item, worker);
  };
  for (int64_t w = 1; w < workers; ++w) {
    pool.Schedule([shared, drain, w]() {
      {
        std::lock_guard<std::mutex> lock(shared->mu);
        if (shared->closed) return;
        ++shared->active;
      }
      drain(w);
      std::lock_guard<std::mutex> lock(shared->mu);
      if (--shared->active == 0) shared->idle.notify_all();
    });
  }
  drain(0);
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->closed = true;
  shared->idle.wait(lock, [&] { return shared->active == 0; });
}

int64_t worker_count(ffi::ThreadPool& pool) { return std::max<int64_t>(1, pool.num_threads()); }

// K or V of every (batch row, group, key tile) transposed, in panels of kPanel keys: [panels][D][kPanel]. A
// panel is then one contiguous block for the micro-kernel; a plain [D][tile_k] transpose put its rows 1 KiB
// apart, which map to a few L1 cache sets and evicted each other (scores 15% slower).
int64_t packed_tile_size(const Problem& p) { return (p.tile_k + kPanel - 1) / kPanel * kPanel * p.dim; }

// Row stride of a tile's scores: one vector more than tile_k, so that walking down a column (the backward's
// P^T and dS^T) does not hit addresses a multiple of 1 KiB apart, which share a few L1 cache sets.
int64_t score_stride(const Problem& p) { return p.tile_k + kLanes; }

Floats pack_transposed(const float* x, const Problem& p, ffi::ThreadPool& pool) {
  const int64_t tiles = p.batch * p.groups * p.kv_tiles(), packed_size = packed_tile_size(p);
  Floats packed(tiles * packed_size);
  parallel_for(pool, tiles, worker_count(pool), [&](int64_t item, int64_t) {
    const float* src = x + item * p.tile_k * p.dim;
    float* dst = packed.data() + item * packed_size;
    for (int64_t c = 0; c < p.tile_k; ++c)
      for (int64_t d = 0; d < p.dim; ++d) dst[(c / kPanel * p.dim + d) * kPanel + c % kPanel] = src[c * p.dim + d];
  });
  return packed;
}

Problem make_problem(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::S32>& q_seg,
                     ffi::Buffer<ffi::S32>& kv_seg, ffi::Buffer<ffi::S32>& q_pos, ffi::Buffer<ffi::S32>& kv_pos,
                     ffi::Buffer<ffi::F32>& slopes, int64_t tile_q, int64_t tile_k, int64_t window, float softcap,
                     int64_t alibi, int64_t causal) {
  const auto dims = q.dimensions();
  Problem p{dims[0], dims[1], dims[3], dims[4], dims[2], k.dimensions()[2], tile_q, tile_k, window, softcap,
            alibi != 0, causal != 0, q_seg.typed_data(), kv_seg.typed_data(), q_pos.typed_data(),
            kv_pos.typed_data(), slopes.typed_data(), {}, {}};
  p.q_bounds = tile_bounds(p.q_seg, p.q_pos, p.batch, p.q_len, p.tile_q);
  p.kv_bounds = tile_bounds(p.kv_seg, p.kv_pos, p.batch, p.kv_len, p.tile_k);
  return p;
}

ffi::Error check_shapes(const Problem& p) {
  if (p.dim % kLanes || p.tile_k % kLanes || p.q_len % p.tile_q || p.kv_len % p.tile_k)
    return ffi::Error::InvalidArgument("ctxjax cpu attention: head_dim and tile_k must be multiples of 16 and the "
                                       "lengths multiples of the tiles (ctxjax/attention/cpu.py pads them)");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::S32> q_seg, ffi::Buffer<ffi::S32> kv_seg, ffi::Buffer<ffi::S32> q_pos,
                   ffi::Buffer<ffi::S32> kv_pos, ffi::Buffer<ffi::F32> slopes, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse, int64_t tile_q, int64_t tile_k, int64_t window, float softcap,
                   int64_t alibi, int64_t causal) {
  const Problem p = make_problem(q, k, q_seg, kv_seg, q_pos, kv_pos, slopes, tile_q, tile_k, window, softcap, alibi,
                                 causal);
  if (auto error = check_shapes(p); error.failure()) return error;
  const Floats k_t = pack_transposed(k.typed_data(), p, pool);
  const int64_t rows = p.tile_rows(), dim = p.dim, tk = p.tile_k, workers = worker_count(pool);
  const int64_t packed = packed_tile_size(p), ld = score_stride(p);
  const int64_t scratch_size = whole_lines(rows * dim + rows * ld + 2 * rows);
  Floats scratch(workers * scratch_size);

  // One item per (batch row, group, query tile); the last query tiles see the most keys, so they go first.
  const int64_t q_tiles = p.q_tiles(), kv_tiles = p.kv_tiles();
  parallel_for(pool, p.batch * p.groups * q_tiles, workers, [&](int64_t item, int64_t worker) {
    const int64_t i = q_tiles - 1 - item % q_tiles, bg = item / q_tiles, b = bg / p.groups, g = bg % p.groups;
    float* acc = scratch.data() + worker * scratch_size;
    float* s = acc + rows * dim;
    float* row_max = s + rows * ld;
    float* row_sum = row_max + rows;
    std::fill(acc, acc + rows * dim, 0.0f);
    std::fill(row_max, row_max + rows, -kInf);
    std::fill(row_sum, row_sum + rows, 0.0f);
    const float* q_tile = q.typed_data() + (bg * p.q_len + i * p.tile_q) * p.reps * dim;
    for (int64_t j = 0; j < kv_tiles; ++j) {
      if (!p.may_see(b, i, j)) continue;
      const bool all_visible = p.sees_all(b, i, j);
      matmul(rows, tk, dim, q_tile, dim, 1, k_t.data() + (bg * kv_tiles + j) * packed, kPanel, dim * kPanel, s, ld,
             false);
      for (int64_t row = 0; row < rows; ++row) {
        float* sr = s + row * ld;
        const Problem::Row mask = p.row(b, i * p.tile_q + row / p.reps, row % p.reps, g, j, all_visible);
        vf top = splat(-kInf), unused;
        for (int64_t c = 0; c < tk; c += kLanes) {
          const vf x = p.logits(load(sr + c), c, mask, &unused);
          if (!mask.plain) store(sr + c, x);
          top = select(x > top, x, top);
        }
        const float new_max = std::max(row_max[row], reduce_max(top));
        if (new_max == -kInf) {  // nothing visible yet: probabilities 0, state unchanged
          std::fill(sr, sr + tk, 0.0f);
          continue;
        }
        vf total = vf{};
        for (int64_t c = 0; c < tk; c += kLanes) {
          const vf x = load(sr + c);
          const vf prob = probability(x, new_max, mask.masked);
          store(sr + c, prob);
          total += prob;
        }
        const float correction = std::exp(row_max[row] - new_max);
        row_sum[row] = row_sum[row] * correction + reduce_sum(total);
        row_max[row] = new_max;
        if (correction != 1.0f)
          for (int64_t d = 0; d < dim; ++d) acc[row * dim + d] *= correction;
      }
      matmul(rows, dim, tk, s, ld, 1, v.typed_data() + (bg * p.kv_len + j * tk) * dim, dim, kPanel, acc, dim, true);
    }
    float* out_tile = out->typed_data() + (bg * p.q_len + i * p.tile_q) * p.reps * dim;
    float* lse_tile = lse->typed_data() + (bg * p.q_len + i * p.tile_q) * p.reps;
    for (int64_t row = 0; row < rows; ++row) {
      const bool seen = row_sum[row] > 0.0f;
      const float inverse = seen ? 1.0f / row_sum[row] : 0.0f;
      for (int64_t d = 0; d < dim; ++d) out_tile[row * dim + d] = acc[row * dim + d] * inverse;
      lse_tile[row] = seen ? row_max[row] + std::log(row_sum[row]) : -kInf;
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::S32> q_seg, ffi::Buffer<ffi::S32> kv_seg, ffi::Buffer<ffi::S32> q_pos,
                    ffi::Buffer<ffi::S32> kv_pos, ffi::Buffer<ffi::F32> slopes, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> delta, ffi::Buffer<ffi::F32> d_out, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                    ffi::ResultBuffer<ffi::F32> d_slopes, int64_t tile_q, int64_t tile_k, int64_t window,
                    float softcap, int64_t alibi, int64_t causal) {
  const Problem p = make_problem(q, k, q_seg, kv_seg, q_pos, kv_pos, slopes, tile_q, tile_k, window, softcap, alibi,
                                 causal);
  if (auto error = check_shapes(p); error.failure()) return error;
  const Floats k_t = pack_transposed(k.typed_data(), p, pool);
  const Floats v_t = pack_transposed(v.typed_data(), p, pool);
  const int64_t rows = p.tile_rows(), dim = p.dim, tk = p.tile_k, workers = worker_count(pool);
  const int64_t packed = packed_tile_size(p), ld = score_stride(p);
  const int64_t q_size = p.batch * p.groups * p.q_len * p.reps * dim, n_slopes = p.groups * p.reps;
  const int64_t q_tiles = p.q_tiles(), kv_tiles = p.kv_tiles(), pairs = p.batch * p.groups;
  // Work items: the key tiles of one (batch row, group) in `shares` interleaved sets (j = share, share + shares,
  // ...), so that each share of a causal row does about the same work. Key tiles of one pair touch the same dQ
  // rows, so each share adds into its own copy of dQ, summed at the end; with twice as many pairs as workers one
  // share per pair balances the load and dQ is written in place. (A copy per worker instead would need
  // workers x |q| floats, gigabytes on a many-core host at long lengths.)
  const int64_t shares = std::min(kv_tiles, std::max<int64_t>(1, (2 * workers + pairs - 1) / pairs));
  Floats dq_shares(shares > 1 ? shares * q_size : 0);
  float* dq_data = dq->typed_data();
  parallel_for(pool, shares, workers, [&](int64_t share, int64_t) {
    std::fill_n(shares > 1 ? dq_shares.data() + share * q_size : dq_data, q_size, 0.0f);
  });
  const int64_t slopes_size = whole_lines(n_slopes);
  Floats slope_parts(workers * slopes_size, true);
  const int64_t scratch_size = 2 * tk * dim + 2 * rows * ld;
  Floats scratch(workers * scratch_size);

  // dK and dV of key tile j of pair bg, and its part of dQ (added into dq_share) and of the slope gradient.
  auto key_tile = [&](int64_t bg, int64_t j, float* dq_share, float* scratch_part, float* slope_part) {
    const int64_t b = bg / p.groups, g = bg % p.groups;
    float* dk_tile = scratch_part;
    float* dv_tile = dk_tile + tk * dim;
    float* probs = dv_tile + tk * dim;
    float* ds = probs + rows * ld;
    std::fill(dk_tile, dk_tile + 2 * tk * dim, 0.0f);
    const float* k_tile = k.typed_data() + (bg * p.kv_len + j * tk) * dim;
    const float* kt_tile = k_t.data() + (bg * kv_tiles + j) * packed;
    const float* vt_tile = v_t.data() + (bg * kv_tiles + j) * packed;
    for (int64_t i = 0; i < q_tiles; ++i) {
      if (!p.may_see(b, i, j)) continue;
      const bool all_visible = p.sees_all(b, i, j);
      const int64_t row0 = (bg * p.q_len + i * p.tile_q) * p.reps;
      const float* q_tile = q.typed_data() + row0 * dim;
      const float* do_tile = d_out.typed_data() + row0 * dim;
      matmul(rows, tk, dim, q_tile, dim, 1, kt_tile, kPanel, dim * kPanel, probs, ld, false);  // scores
      matmul(rows, tk, dim, do_tile, dim, 1, vt_tile, kPanel, dim * kPanel, ds, ld, false);   // dP = dO V^T
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t query = i * p.tile_q + row / p.reps, r = row % p.reps;
        float* pr = probs + row * ld;
        float* dsr = ds + row * ld;
        const Problem::Row mask = p.row(b, query, r, g, j, all_visible);
        const float row_lse = std::isfinite(lse.typed_data()[row0 + row]) ? lse.typed_data()[row0 + row] : 0.0f;
        const float row_delta = delta.typed_data()[row0 + row];
        vf slope_grad = vf{};
        for (int64_t c = 0; c < tk; c += kLanes) {
          vf t;
          const vf x = p.logits(load(pr + c), c, mask, &t);
          const vf prob = probability(x, row_lse, mask.masked);
          vf grad = prob * (load(dsr + c) - row_delta);  // w.r.t. the logits after cap and bias
          if (p.alibi) slope_grad -= grad * p.bias_distance(mask.pos - load(mask.kv_pos + c));
          if (p.softcap) grad *= 1.0f - t * t;  // through C tanh(s / C): w.r.t. the raw scores
          store(pr + c, prob);
          store(dsr + c, grad);
        }
        if (p.alibi) slope_part[g * p.reps + r] += reduce_sum(slope_grad);
      }
      matmul(tk, dim, rows, probs, 1, ld, do_tile, dim, kPanel, dv_tile, dim, true);          // dV += P^T dO
      matmul(tk, dim, rows, ds, 1, ld, q_tile, dim, kPanel, dk_tile, dim, true);              // dK += dS^T Q
      matmul(rows, dim, tk, ds, ld, 1, k_tile, dim, kPanel, dq_share + row0 * dim, dim, true);  // dQ += dS K
    }
    std::copy(dk_tile, dk_tile + tk * dim, dk->typed_data() + (bg * p.kv_len + j * tk) * dim);
    std::copy(dv_tile, dv_tile + tk * dim, dv->typed_data() + (bg * p.kv_len + j * tk) * dim);
  };
  parallel_for(pool, pairs * shares, workers, [&](int64_t item, int64_t worker) {
    const int64_t share = item % shares, bg = item / shares;
    float* dq_share = shares > 1 ? dq_shares.data() + share * q_size : dq_data;
    for (int64_t j = share; j < kv_tiles; j += shares)
      key_tile(bg, j, dq_share, scratch.data() + worker * scratch_size, slope_parts.data() + worker * slopes_size);
  });

  if (shares > 1) {  // sum the shares' dQ, in ranges split across the workers
    const int64_t chunk = 1 << 16, chunks = (q_size + chunk - 1) / chunk;
    parallel_for(pool, chunks, workers, [&](int64_t item, int64_t) {
      const int64_t begin = item * chunk, end = std::min(q_size, begin + chunk);
      std::copy(dq_shares.data() + begin, dq_shares.data() + end, dq_data + begin);
      for (int64_t share = 1; share < shares; ++share)
        for (int64_t x = begin; x < end; ++x) dq_data[x] += dq_shares[share * q_size + x];
    });
  }
  for (int64_t s = 0; s < n_slopes; ++s) {
    float total = 0.0f;
    for (int64_t w = 0; w < workers; ++w) total += slope_parts[w * slopes_size + s];
    d_slopes->typed_data()[s] = total;
  }
  return ffi::Error::Success();
}

}  // namespace

namespace {

// What both calls take first: q, k, v, their segment ids and positions, and the ALiBi slopes.
auto bind_inputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()   // q
      .Arg<ffi::Buffer<ffi::F32>>()   // k
      .Arg<ffi::Buffer<ffi::F32>>()   // v
      .Arg<ffi::Buffer<ffi::S32>>()   // q segment ids
      .Arg<ffi::Buffer<ffi::S32>>()   // kv segment ids
      .Arg<ffi::Buffer<ffi::S32>>()   // q positions
      .Arg<ffi::Buffer<ffi::S32>>()   // kv positions
      .Arg<ffi::Buffer<ffi::F32>>();  // ALiBi slopes
}

template <typename Binding>
auto bind_attributes(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("tile_q")
      .template Attr<int64_t>("tile_k")
      .template Attr<int64_t>("window")
      .template Attr<float>("softcap")
      .template Attr<int64_t>("alibi")
      .template Attr<int64_t>("causal");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtxjaxAttentionForward, Forward,
                              bind_attributes(bind_inputs()
                                                  .Ret<ffi::Buffer<ffi::F32>>()     // out
                                                  .Ret<ffi::Buffer<ffi::F32>>()));  // log-sum-exp

XLA_FFI_DEFINE_HANDLER_SYMBOL(CtxjaxAttentionBackward, Backward,
                              bind_attributes(bind_inputs()
                                                  .Arg<ffi::Buffer<ffi::F32>>()     // log-sum-exp
                                                  .Arg<ffi::Buffer<ffi::F32>>()     // delta = rowsum(dO * out)
                                                  .Arg<ffi::Buffer<ffi::F32>>()     // dO
                                                  .Ret<ffi::Buffer<ffi::F32>>()     // dq
                                                  .Ret<ffi::Buffer<ffi::F32>>()     // dk
                                                  .Ret<ffi::Buffer<ffi::F32>>()     // dv
                                                  .Ret<ffi::Buffer<ffi::F32>>()));  // d slopes
