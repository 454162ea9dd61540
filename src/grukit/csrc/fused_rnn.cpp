// grukit fused CPU kernels: one layer-direction of any GRU variant over a whole (packed) sequence,
// forward and backward, in one call each, with the in-cell options of grukit/cell_options.py.
//
// Files: kernel_support.h (profiler, workspace pool, the GEMM layer, lane loops, vector math),
// cells.h (the Layout with the workspace's named blocks, one policy per cell family with its
// forward and backward lane math, the shared candidate/post-update steps and the layer-norm row
// step), this file (the sequence loops and the ops). The math is defined once, in
// grukit/variants.py and grukit/reference.py; the tests hold this twin to it.
//
// Structure:
//   * the input projection of all steps is one GEMM per chunk of steps, then (layer_norm) one
//     row-normalisation pass over it;
//   * each step does one GEMM on the state (two for reset-before cells: gates, then candidate),
//     each optionally row-normalised, and one or two vectorised passes of the family's lane math;
//   * backward keeps one or two small GEMMs per step and forms the weight gradients with large
//     GEMMs over chunks of steps, while the chunk's dA is still in cache;
//   * steps too small to split between threads (few rows, a narrow state) run on one thread
//     while the other works a chunk apart: the forward projects the next chunk's input, the
//     backward forms the finished chunks' gradients (the "overlap", in both passes);
//   * no tensor is allocated and nothing goes through the dispatcher inside the time loop;
//   * masks come from Python (the kernel draws no random numbers); what only training needs
//     (the workspace) is a compile-time flag of the forward loop.
//
// Packed layout: step t owns rows [off_t, off_t + n_t) of x/out, n_t non-increasing; the
// sequences alive at step t are batch rows 0..n_t-1. The state lives in one (N, H) buffer, so
// rows that are not active keep their value: in the forward direction a finished sequence keeps
// its final state, in the reverse direction a sequence that has not started keeps its h0.
//
// Determinism: every parallel split (GEMM blocks, rows, columns) depends on the problem shape
// only, never on the thread count (the one exception, a single row's product with a weight,
// splits outputs that are each one dot product computed the same way in any block), and every
// BLAS call runs single-threaded, so 1 and 2 threads give bit-identical results.

#include "cells.h"

namespace grukit {
namespace {

struct Steps {
  std::vector<int64_t> n, off;  // rows and first packed row of each step
  int64_t N = 0, R = 0, T = 0;
};

Steps make_steps(const at::Tensor& batch_sizes) {
  TORCH_CHECK(batch_sizes.dim() == 1 && batch_sizes.scalar_type() == at::kLong &&
                  batch_sizes.device().is_cpu(),
              "grukit: batch_sizes must be a 1-D int64 CPU tensor");
  auto bs = batch_sizes.contiguous();
  const int64_t* p = bs.data_ptr<int64_t>();
  Steps s;
  s.T = bs.numel();
  TORCH_CHECK(s.T > 0, "grukit: empty sequence");
  s.n.resize(s.T);
  s.off.resize(s.T);
  for (int64_t t = 0; t < s.T; ++t) {
    TORCH_CHECK(p[t] > 0 && (t == 0 || p[t] <= p[t - 1]),
                "grukit: batch_sizes must be positive and non-increasing");
    s.n[t] = p[t];
    s.off[t] = s.R;
    s.R += p[t];
  }
  s.N = s.n[0];
  return s;
}

// Consecutive steps [t0, t1) whose packed rows [r0, r1) hold at most max_rows rows (at least
// one step each). The split depends on the shape only.
struct Chunk {
  int64_t t0, t1, r0, r1;
};

std::vector<Chunk> make_chunks(const Steps& S, int64_t max_rows) {
  std::vector<Chunk> chunks;
  int64_t t0 = 0;
  while (t0 < S.T) {
    int64_t t1 = t0 + 1;
    while (t1 < S.T && S.off[t1] + S.n[t1] - S.off[t0] <= max_rows) ++t1;
    chunks.push_back({t0, t1, S.off[t0], S.off[t1 - 1] + S.n[t1 - 1]});
    t0 = t1;
  }
  return chunks;
}

// Rows per chunk so that a chunk's buffer of row_width values stays within ~bytes.
template <typename T>
int64_t rows_for(int64_t row_width, int64_t bytes) {
  return std::max<int64_t>(1, bytes / (row_width * int64_t(sizeof(T))));
}

// The same, and with `at_least_min` at least kMinChunks chunks (if the sequence has the
// steps), so that a second thread's share of the work overlaps the recurrence with a short
// fill and drain. Callers decide `at_least_min` from the shape only, like every split.
constexpr int64_t kMinChunks = 16;
template <typename T>
int64_t chunk_rows(const Steps& S, bool at_least_min, int64_t row_width, int64_t bytes) {
  const int64_t rows = rows_for<T>(row_width, bytes);
  return at_least_min ? std::min(rows, std::max<int64_t>(S.N, (S.R + kMinChunks - 1) / kMinChunks))
                   : rows;
}

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined() && t->numel() > 0) ? t->data_ptr<T>() : nullptr;
}

std::atomic<int64_t> g_calls{0};
std::atomic<int64_t> g_overlapped[2];  // forward and backward calls that took the overlap path

// True when a step's GEMMs and element-wise pass are too small to be split across threads
// (the thresholds of gemm() and for_rows()), so one thread runs the whole recurrence.
bool steps_are_serial(const Layout& L, int64_t N) {
  const int64_t gemm_work = N * L.H * L.H * (L.cell == kGruResetAfter ? 3 : std::max<int64_t>(L.K1, 1));
  return N * L.H <= 8192 && gemm_work < (int64_t(2) << 20);
}

// Batch rows never interact in the recurrence. When a step is too small to split, a batch of
// 32 or more rows is cut into two fixed row blocks that run their steps on different threads
// with no synchronisation between steps. The cut depends on the shape only.
std::vector<std::pair<int64_t, int64_t>> row_blocks(const Layout& L, int64_t N) {
  if (!steps_are_serial(L, N) || N < 32) return {{0, N}};
  const int64_t half = (N / 2 + 7) / 8 * 8;
  return {{0, half}, {half, N}};
}

// Runs f(lo, hi) for every row block, the blocks in parallel.
template <typename F>
void for_row_blocks(const std::vector<std::pair<int64_t, int64_t>>& blocks, const F& f) {
  if (blocks.size() == 1) {
    f(blocks[0].first, blocks[0].second);
    return;
  }
  at::parallel_for(0, int64_t(blocks.size()), 1, [&](int64_t b0, int64_t b1) {
    SingleThreadedBlas blas_guard;
    for (int64_t b = b0; b < b1; ++b) f(blocks[b].first, blocks[b].second);
  });
}

// Whether one thread runs the whole recurrence (steps too small to split, too few rows for two
// row blocks), so that a second thread can work a chunk apart: the overlap of both passes.
bool pipelined(const Layout& L, int64_t N) {
  return steps_are_serial(L, N) && row_blocks(L, N).size() == 1;
}

// Whether this call runs the overlap: a pipelined shape, two chunks or more, two threads.
bool overlap_on(bool pipelined_shape, int64_t nchunks) {
#ifdef _OPENMP
  return pipelined_shape && nchunks >= 2 && at::get_num_threads() >= 2;
#else
  (void)pipelined_shape, (void)nchunks;
  return false;
#endif
}

// The masks and gains of one call (null when the option is off).
template <typename T>
struct Extras {
  const T* recurrent = nullptr;  // (N, H) recurrent-dropout mask, one row per sequence
  const T* candidate = nullptr;  // (R, H) candidate-dropout mask, one row per packed row
  const T* zoneout = nullptr;    // zoneout keep mask: (R, H), or (H,) for all rows
  int64_t zoneout_ld = 0;        // its row stride: H, or 0
  const T* ln_ih = nullptr;      // (Gx*H) layer-norm gains of the input pre-activations
  const T* ln_hh = nullptr;      // (Kh*H) and of the recurrent ones

  const T* candidate_row(int64_t row, int64_t H) const { return candidate ? candidate + row * H : nullptr; }
  const T* zoneout_row(int64_t row) const { return zoneout ? zoneout + row * zoneout_ld : nullptr; }
};

// ---------------------------------------------------------------------------- forward

template <typename T, typename Cell, bool kSave>
void forward_impl(const Layout& L, const Steps& S, bool reverse, const at::Tensor& x,
                  const at::Tensor& w_ih, const c10::optional<at::Tensor>& w_hh,
                  const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                  const Extras<T>& E, at::Tensor& out, at::Tensor& h, at::Tensor* ws) {
  const int64_t H = L.H, I = x.size(1), N = S.N;
  const int64_t sx = L.Gx * H, s1 = L.K1 * H, sw = L.ws_stride();
  auto opts = x.options();
  // the input projection runs a chunk of steps at a time, so the chunk stays in cache
  // with one thread on the steps, a second one projects the next chunk's input meanwhile
  const auto blocks = row_blocks(L, N);
  const bool one_thread_steps = pipelined(L, N);
  const auto chunks = make_chunks(S, chunk_rows<T>(S, one_thread_steps, sx, int64_t(1) << 19));
  const int64_t nchunks = int64_t(chunks.size());
  int64_t max_rows = 0;
  for (const auto& c : chunks) max_rows = std::max(max_rows, c.r1 - c.r0);
  const bool overlap = overlap_on(one_thread_steps, nchunks);
  // with the overlap, two buffers: chunk ci projects into buffer ci % 2
  at::Tensor gx = pooled_empty({overlap ? 2 : 1, max_rows, sx}, opts);
  const WeightT<T> whh_t =
      w_hh.has_value() && w_hh->defined() ? WeightT<T>(*w_hh, N) : WeightT<T>();
  const WeightT<T> wih_t(w_ih, max_rows);
  const T* bih = ptr_or_null<T>(b_ih);
  const T* bhh = ptr_or_null<T>(b_hh);
  at::Tensor g1 = L.K1 > 0 ? at::empty({N, s1}, opts) : at::Tensor();
  at::Tensor scratch = L.before() ? at::empty({3, N, H}, opts) : at::Tensor();
  at::Tensor hd = L.recurrent_mask ? at::empty({N, H}, opts) : at::Tensor();
  T* g1p = L.K1 > 0 ? g1.data_ptr<T>() : nullptr;
  T* rhp = L.before() ? scratch[0].data_ptr<T>() : nullptr;
  T* c2p = L.before() ? scratch[1].data_ptr<T>() : nullptr;
  T* keepp = L.before() ? scratch[2].data_ptr<T>() : nullptr;
  T* hdp = L.recurrent_mask ? hd.data_ptr<T>() : nullptr;
  T* hp = h.data_ptr<T>();
  T* outp = out.data_ptr<T>();
  T* wsp = kSave ? ws->data_ptr<T>() : nullptr;
  // the saved statistics of row `row`, from normalised block `k` (null in inference)
  auto xhat_at = [&](int64_t row, int64_t block) -> T* {
    return kSave ? wsp + row * sw + block * H : nullptr;
  };
  auto rstd_at = [&](int64_t row, int64_t k) -> T* {
    return kSave ? wsp + row * sw + L.W * H + k : nullptr;
  };

  // the steps of chunk c for batch rows [lo, hi), reading the chunk's projection gxc
  auto run_steps = [&](const Chunk& c, const T* gxc, int64_t lo, int64_t hi) {
    T* hrow = hp + lo * H;
    for (int64_t i = 0; i < c.t1 - c.t0; ++i) {
      const int64_t t = reverse ? c.t1 - 1 - i : c.t0 + i;
      const int64_t n = std::min(S.n[t], hi) - lo, off = S.off[t] + lo;  // off: packed row of lo
      if (n <= 0) continue;
      const T* src = hrow;  // what the recurrent matmuls read
      if (L.recurrent_mask) {  // h~ = m * h
        PhaseTimer timer(kStepElementwise);
        for (int64_t b = 0; b < n; ++b) {
          const T* m = E.recurrent + (lo + b) * H;
          for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
            const Vec<T> v = load<T>(hrow + b * H, j, cnt) * load<T>(m, j, cnt);
            store(hdp + (lo + b) * H, j, cnt, v);
            if (kSave) store(wsp + (off + b) * sw + L.ws_hd * H, j, cnt, v);
          });
        }
        src = hdp + lo * H;
      }
      if (L.K1 > 0) {  // g1 = h~ W1^T, W1 = the first K1*H rows of weight_hh
        {
          PhaseTimer timer(kStepGemm);
          whh_t.gemm_rows(n, 0, s1, src, H, g1p + lo * s1, s1);
        }
        if (L.layer_norm) {
          PhaseTimer timer(kStepElementwise);
          for_rows(n, s1, [&](int64_t r0, int64_t r1) {
            layer_norm_rows<T>(g1p + lo * s1, s1, L.K1, H, E.ln_hh, xhat_at(off, L.ws_xhat_h),
                               rstd_at(off, L.Gx), sw, r0, r1);
          });
        }
      }
      auto row = [&](int64_t b) {
        FwdRow<T> q{};
        q.gx = gxc + (off - c.r0 + b) * sx;
        q.bih = bih;
        q.bhh = bhh;
        q.g1 = g1p ? g1p + (lo + b) * s1 : nullptr;
        q.c2 = c2p ? c2p + (lo + b) * H : nullptr;
        q.src = src + b * H;
        q.cand = E.candidate_row(off + b, H);
        q.zone = E.zoneout_row(off + b);
        q.h = hrow + b * H;
        q.rh = rhp ? rhp + (lo + b) * H : nullptr;
        q.keep = keepp ? keepp + (lo + b) * H : nullptr;
        q.ws = kSave ? wsp + (off + b) * sw : nullptr;
        return q;
      };
      {
        PhaseTimer timer(kStepElementwise);
        for_rows(n, H, [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b) {
            const FwdRow<T> q = row(b);
            for_lanes<T>(H, [&](int64_t j, int64_t cnt) { Cell::template forward1<T, kSave>(L, q, j, cnt); });
          }
        });
      }
      if constexpr (Cell::kTwoPhase) {  // candidate GEMM on r * h~ with the last H rows of weight_hh
        {
          PhaseTimer timer(kStepGemm);
          whh_t.gemm_rows(n, L.K1 * H, H, rhp + lo * H, H, c2p + lo * H, H);
        }
        PhaseTimer timer(kStepElementwise);
        if (L.layer_norm)
          for_rows(n, H, [&](int64_t r0, int64_t r1) {
            layer_norm_rows<T>(c2p + lo * H, H, 1, H, E.ln_hh + s1,
                               xhat_at(off, L.ws_xhat_h + L.K1), rstd_at(off, L.Gx + L.K1), sw, r0, r1);
          });
        for_rows(n, H, [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b) {
            const FwdRow<T> q = row(b);
            for_lanes<T>(H, [&](int64_t j, int64_t cnt) { Cell::template forward2<T, kSave>(L, q, j, cnt); });
          }
        });
      }
      PhaseTimer timer(kStepCopy);
      std::copy(hrow, hrow + n * H, outp + off * H);
    }
  };
  auto chunk_at = [&](int64_t ci) -> const Chunk& { return chunks[reverse ? nchunks - 1 - ci : ci]; };
  auto gx_buffer = [&](int64_t b) { return gx.data_ptr<T>() + b * max_rows * sx; };
  // gx = x W_ih^T for the chunk's rows, then (layer_norm) normalised block by block
  auto project = [&](const Chunk& c, T* gxc) {
    PhaseTimer timer(kInputGemm);
    wih_t.gemm_rows(c.r1 - c.r0, 0, sx, x.data_ptr<T>() + c.r0 * I, I, gxc, sx);
    if (L.layer_norm)
      for_rows(c.r1 - c.r0, sx, [&](int64_t r0, int64_t r1) {
        layer_norm_rows<T>(gxc, sx, L.Gx, H, E.ln_ih, xhat_at(c.r0, L.ws_xhat_x), rstd_at(c.r0, 0),
                           sw, r0, r1);
      });
  };
  if (!overlap) {
    for (int64_t ci = 0; ci < nchunks; ++ci) {
      const Chunk& c = chunk_at(ci);
      project(c, gx_buffer(0));
      for_row_blocks(blocks, [&](int64_t lo, int64_t hi) { run_steps(c, gx_buffer(0), lo, hi); });
    }
    return;
  }
#ifdef _OPENMP
  // Thread 0: the recurrence; thread 1: the next chunk's input projection, into the other
  // buffer (which chunk ci - 1 read: thread 1 waits until thread 0 is done with it). Each
  // projection runs on one thread with the same blocks as on all, so the bits do not change.
  g_overlapped[0].fetch_add(1, std::memory_order_relaxed);
  Progress projected, stepped;
  std::atomic<bool> failed{false};
  run_two_roles({&projected, &stepped}, failed, [&](int role) {
    for (int64_t ci = 0; ci < nchunks && !failed.load(); ++ci) {
      if (role == 1) {
        if (!stepped.wait_for(ci - 1)) return;
        project(chunk_at(ci), gx_buffer(ci % 2));
        projected.publish(ci + 1);
      } else {
        if (!projected.wait_for(ci + 1)) return;
        run_steps(chunk_at(ci), gx_buffer(ci % 2), 0, N);
        stepped.publish(ci + 1);
      }
    }
  });
#endif
}

// ---------------------------------------------------------------------------- backward

// A run of dA columns [col, col + width) and the rows [row, row + width) of the parameter it
// is the gradient of.
struct Segment {
  int64_t col, row, width;
};

// Pre-activation gradients dA, one row per packed row (Layout::da_width blocks):
//   reset-after: [da_r, da_z, da_n * r, da_n]: the first three blocks are the gradients of the
//     h-side pre-activations (rows of weight_hh), blocks 0, 1, 3 those of the x side;
//   otherwise:   [gates..., da_n]: the x-fed blocks are the last Gx, the h-fed gates the first
//     K1, and the candidate GEMM's gradient is da_n;
//   with layer_norm, Kh more blocks (from da_du) hold the gradients of the raw recurrent
//     products U h~ (the first blocks hold those of the normalised ones, which the biases
//     take); the GEMMs read these. Kh more (from da_dyx) hold dy * xhat, which the recurrent
//     gains' gradient sums; the input side's go to a chunk buffer of their own.
//
// The recursion runs chunk by chunk in reverse order of the forward pass, and every chunk's
// parameter and input gradients are formed from its dA while it is still in cache. When the
// steps are too small to share between threads, a second thread computes a chunk's gradients
// while the first runs the next chunk's recursion (two dA buffers). Either way each gradient
// sums the chunks in the same order: the results do not depend on the thread count.
// grads (out): dx, dW_ih, dW_hh, db_ih, db_hh, d ln_ih, d ln_hh (undefined when not wanted).
template <typename T, typename Cell>
void backward_impl(const Layout& L, const Steps& S, bool reverse, const at::Tensor& x,
                   const at::Tensor& w_ih, const c10::optional<at::Tensor>& w_hh,
                   const at::Tensor& ws, const at::Tensor& dout, const Extras<T>& E, at::Tensor& dh,
                   at::Tensor& dx, at::Tensor& dw_ih, at::Tensor& dw_hh, at::Tensor& db_ih,
                   at::Tensor& db_hh, at::Tensor& dln_ih, at::Tensor& dln_hh) {
  const int64_t H = L.H, N = S.N, I = x.size(1), sw = L.ws_stride(), sx = L.Gx * H;
  const int64_t sa = L.da_width * H;
  const T* whh = ptr_or_null<T>(w_hh);
  // chunks of at most ~1 MB of dA, and with serial steps at least kMinChunks: a short fill and
  // drain for the overlap and, with two row blocks (S3), a chunk's gradients that stay in cache
  // (the forward's rule, kMinChunks only where the overlap runs, made the S3 step much slower)
  const auto chunks =
      make_chunks(S, chunk_rows<T>(S, steps_are_serial(L, N), sa, int64_t(1) << 20));
  const int64_t nchunks = int64_t(chunks.size());
  int64_t max_rows = 0;
  for (const auto& c : chunks) max_rows = std::max(max_rows, c.r1 - c.r0);
  const auto blocks = row_blocks(L, N);
  const bool overlap = overlap_on(pipelined(L, N), nchunks);
  at::Tensor dA = pooled_empty({overlap ? 2 : 1, max_rows, sa}, x.options());
  at::Tensor drh = L.before() ? at::empty({N, H}, x.options()) : at::Tensor();
  at::Tensor dhd = L.recurrent_mask ? at::empty({N, H}, x.options()) : at::Tensor();
  // layer_norm, input side: a chunk's raw products' gradients du, and dy * xhat for the gains
  // (one pair per dA buffer)
  at::Tensor dux =
      L.layer_norm ? pooled_empty({overlap ? 2 : 1, 2, max_rows, sx}, x.options()) : at::Tensor();
  const T* wsp = ws.data_ptr<T>();

  // which dA columns feed which parameter rows
  const int64_t du0 = L.layer_norm && L.Kh > 0 ? L.da_du * H : 0;  // the recurrent GEMMs' columns
  std::vector<Segment> x_seg, hprev_seg, rh_seg, bhh_seg;
  if (L.cell == kGruResetAfter) {
    x_seg = {{0, 0, 2 * H}, {3 * H, 2 * H, H}};
    hprev_seg = {{du0, 0, 3 * H}};
    bhh_seg = {{0, 0, 3 * H}};
  } else {
    x_seg = {{(L.G + 1 - L.Gx) * H, 0, L.Gx * H}};
    if (L.K1 > 0) hprev_seg = {{du0, 0, L.K1 * H}};
    if (L.before()) {
      rh_seg = {{L.layer_norm ? (L.da_du + L.K1) * H : L.G * H, L.K1 * H, H}};
      bhh_seg = {{L.gate_bias ? 0 : L.G * H, 0, (L.gate_bias ? L.G + 1 : 1) * H}};
    }
  }
  const int64_t c_col = rh_seg.empty() ? 0 : rh_seg[0].col;  // the candidate GEMM's gradient

  // the ci-th chunk to process: the forward order, backwards
  auto chunk_at = [&](int64_t ci) -> const Chunk& { return chunks[reverse ? ci : nchunks - 1 - ci]; };

  // layer-norm backward of K recurrent blocks starting at dy column `col` / stats block k0
  auto ln_back = [&](const T* w, T* da, int64_t n, int64_t col, int64_t k0, int64_t K, int64_t du_col) {
    PhaseTimer timer(kBackElementwise);
    for_rows(n, K * H, [&](int64_t r0, int64_t r1) {
      layer_norm_backward_rows<T>(da + col, sa, w + (L.ws_xhat_h + k0) * H,
                                  w + L.W * H + L.Gx + k0, sw, E.ln_hh + k0 * H, K, H,
                                  da + du_col, da + (L.da_dyx + k0) * H, sa, r0, r1);
    });
  };

  // the recursion over one chunk's steps for batch rows [lo, hi), writing their dA into dAc
  auto recurse_rows = [&](const Chunk& c, T* dAc, int64_t lo, int64_t hi) {
    T* dhp = dh.data_ptr<T>() + lo * H;
    T* drhp = L.before() ? drh.data_ptr<T>() + lo * H : nullptr;
    // dL/dh~: a buffer of its own with recurrent dropout, else dL/dh itself
    T* dsrc = L.recurrent_mask ? dhd.data_ptr<T>() + lo * H : dhp;
    const T beta = L.recurrent_mask ? T(0) : T(1);
    for (int64_t i = 0; i < c.t1 - c.t0; ++i) {
      const int64_t t = reverse ? c.t0 + i : c.t1 - 1 - i;
      const int64_t n = std::min(S.n[t], hi) - lo, off = S.off[t] + lo;
      if (n <= 0) continue;
      const T* w = wsp + off * sw;
      T* da = dAc + (off - c.r0) * sa;
      const T* go = dout.data_ptr<T>() + off * H;
      {
        PhaseTimer timer(kBackElementwise);
        for_rows(n, H, [&](int64_t r0, int64_t r1) {
          for (int64_t b = r0; b < r1; ++b) {
            const BackRow<T> q{w + b * sw, go + b * H, E.candidate_row(off + b, H),
                               E.zoneout_row(off + b), dhp + b * H, da + b * sa};
            for_lanes<T>(H, [&](int64_t j, int64_t cnt) { Cell::template backward1<T>(L, q, j, cnt); });
          }
        });
      }
      if constexpr (!Cell::kTwoPhase) {
        if (L.cell == kGruResetAfter) {  // dh~ (+)= [da_r, da_z, da_n r] W_hh
          if (L.layer_norm) ln_back(w, da, n, 0, 0, 3, du0);
          PhaseTimer timer(kBackStepGemm);
          gemm<T>(false, false, n, H, 3 * H, da + du0, sa, whh, H, beta, dsrc, H);
        }
      } else {
        // drh = da_n W_hn, then the reset gate's share, then dh~ += da_gates W_gates
        if (L.layer_norm) ln_back(w, da, n, L.G * H, L.K1, 1, c_col);
        {
          PhaseTimer timer(kBackStepGemm);
          gemm<T>(false, false, n, H, H, da + c_col, sa, whh + L.K1 * H * H, H, T(0), drhp, H);
        }
        {
          PhaseTimer timer(kBackElementwise);
          for_rows(n, H, [&](int64_t r0, int64_t r1) {
            for (int64_t b = r0; b < r1; ++b)
              for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
                Cell::template backward2<T>(L, w + b * sw, drhp + b * H, dsrc + b * H,
                                            L.recurrent_mask, da + b * sa, j, cnt);
              });
          });
        }
        if (L.K1 > 0) {
          if (L.layer_norm) ln_back(w, da, n, 0, 0, L.K1, du0);
          PhaseTimer timer(kBackStepGemm);
          gemm<T>(false, false, n, H, L.K1 * H, da + du0, sa, whh, H, T(1), dsrc, H);
        }
      }
      if (L.recurrent_mask) {  // dh += m * dh~
        PhaseTimer timer(kBackElementwise);
        for (int64_t b = 0; b < n; ++b) {
          const T* m = E.recurrent + (lo + b) * H;
          for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
            store(dhp + b * H, j, cnt,
                  load<T>(dhp + b * H, j, cnt) + load<T>(m, j, cnt) * load<T>(dsrc + b * H, j, cnt));
          });
        }
      }
    }
  };
  auto recurse = [&](const Chunk& c, T* dAc) {
    for_row_blocks(blocks, [&](int64_t lo, int64_t hi) { recurse_rows(c, dAc, lo, hi); });
  };

  // dA buffer b, and its du (whose dy * xhat follow at + max_rows * sx)
  auto dA_buffer = [&](int64_t b) -> T* { return dA.data_ptr<T>() + b * max_rows * sa; };
  auto du_buffer = [&](int64_t b) -> T* {
    return L.layer_norm ? dux.data_ptr<T>() + b * 2 * max_rows * sx : nullptr;
  };

  // layer_norm: one chunk's raw input products' gradients, block by block, into du
  auto chunk_input_norm = [&](const Chunk& c, const T* dAc, T* du) {
    PhaseTimer timer(kWeightGemm);
    const T* wsc = wsp + c.r0 * sw;
    T* dyx = du + max_rows * sx;
    for_rows(c.r1 - c.r0, sx, [&](int64_t r0, int64_t r1) {
      for (const Segment& sg : x_seg) {  // the segment's blocks of weight_ih, from block blk
        const int64_t blk = sg.row / H;
        layer_norm_backward_rows<T>(dAc + sg.col, sa, wsc + (L.ws_xhat_x + blk) * H,
                                    wsc + L.W * H + blk, sw, E.ln_ih + blk * H, sg.width / H, H,
                                    du + blk * H, dyx + blk * H, sx, r0, r1);
      }
    });
  };

  // one chunk's input gradient dx = dA_x W_ih (the segments of dA, or du with layer norm); its
  // rows are the chunk's own, so any thread may run it once the chunk's dA (and du) are final
  auto chunk_dx = [&](const Chunk& c, const T* dAc, const T* du) {
    if (!dx.defined()) return;
    PhaseTimer timer(kWeightGemm);
    const int64_t rows = c.r1 - c.r0;
    T* dxc = dx.data_ptr<T>() + c.r0 * I;
    if (L.layer_norm) {
      gemm<T>(false, false, rows, I, sx, du, sx, w_ih.data_ptr<T>(), I, T(0), dxc, I);
      return;
    }
    for (size_t k = 0; k < x_seg.size(); ++k)
      gemm<T>(false, false, rows, I, x_seg[k].width, dAc + x_seg[k].col, sa,
              w_ih.data_ptr<T>() + x_seg[k].row * I, I, T(k == 0 ? 0 : 1), dxc, I);
  };

  // one chunk's share of the parameter gradients (the first chunk initialises them), in chunk
  // order: they sum over chunks
  auto chunk_params = [&](const Chunk& c, const T* dAc, const T* du, bool first) {
    const int64_t rows = c.r1 - c.r0;
    const T* xc = x.data_ptr<T>() + c.r0 * I;
    const T* wsc = wsp + c.r0 * sw;
    const T keep = T(first ? 0 : 1);
    PhaseTimer timer(kWeightGemm);
    if (L.layer_norm) {
      if (dw_ih.defined())
        gemm<T>(true, false, sx, I, rows, du, sx, xc, I, keep, dw_ih.data_ptr<T>(), I);
      if (dln_ih.defined())
        column_sums<T>(du + max_rows * sx, rows, sx, sx, dln_ih.data_ptr<T>(), !first);
    }
    for (const Segment& sg : x_seg) {
      if (!L.layer_norm && dw_ih.defined())
        gemm<T>(true, false, sg.width, I, rows, dAc + sg.col, sa, xc, I, keep,
                dw_ih.data_ptr<T>() + sg.row * I, I);
      if (db_ih.defined())
        column_sums<T>(dAc + sg.col, rows, sg.width, sa, db_ih.data_ptr<T>() + sg.row, !first);
    }
    if (dw_hh.defined()) {
      for (const Segment& sg : hprev_seg)  // the matmuls' source: h_{t-1}, or h~_{t-1}
        gemm<T>(true, false, sg.width, H, rows, dAc + sg.col, sa, wsc + L.ws_src() * H, sw, keep,
                dw_hh.data_ptr<T>() + sg.row * H, H);
      for (const Segment& sg : rh_seg)
        gemm<T>(true, false, sg.width, H, rows, dAc + sg.col, sa, wsc + L.ws_rh * H, sw, keep,
                dw_hh.data_ptr<T>() + sg.row * H, H);
    }
    if (db_hh.defined())
      for (const Segment& sg : bhh_seg)
        column_sums<T>(dAc + sg.col, rows, sg.width, sa, db_hh.data_ptr<T>() + sg.row, !first);
    if (dln_hh.defined())  // the recurrent blocks' dy * xhat sit in ln_hh's order
      column_sums<T>(dAc + L.da_dyx * H, rows, L.Kh * H, sa, dln_hh.data_ptr<T>(), !first);
  };

  if (!overlap) {
    T* dAc = dA_buffer(0);
    T* du = du_buffer(0);
    for (int64_t ci = 0; ci < nchunks; ++ci) {
      const Chunk& c = chunk_at(ci);
      recurse(c, dAc);
      if (L.layer_norm) chunk_input_norm(c, dAc, du);
      chunk_dx(c, dAc, du);
      chunk_params(c, dAc, du, ci == 0);
    }
    return;
  }
#ifdef _OPENMP
  // Thread 0: the recursion; thread 1: the gradients of finished chunks. Chunk ci uses dA (and
  // du) buffer ci % 2, which thread 0 may refill only after thread 1 is done with chunk ci - 2.
  // A chunk's dx products go to whichever thread claims them first: thread 1 after the chunk's
  // parameter gradients, or thread 0 while it waits for a buffer (when the gradient thread is
  // the slower one). Every product runs on one thread either way, so the results do not depend
  // on which thread ran it.
  g_overlapped[1].fetch_add(1, std::memory_order_relaxed);
  Progress recursed, consumed;
  std::atomic<int64_t> dx_ready{0};  // chunks whose dA (and du) are final
  std::unique_ptr<std::atomic<bool>[]> dx_claimed(new std::atomic<bool>[nchunks]);
  for (int64_t ci = 0; ci < nchunks; ++ci) dx_claimed[ci].store(false);
  auto dx_if_unclaimed = [&](int64_t ci) {
    if (ci < 0 || ci >= dx_ready.load(std::memory_order_acquire)) return;
    if (dx_claimed[ci].exchange(true)) return;
    chunk_dx(chunk_at(ci), dA_buffer(ci % 2), du_buffer(ci % 2));
  };
  std::atomic<bool> failed{false};
  run_two_roles({&recursed, &consumed}, failed, [&](int role) {
    for (int64_t ci = 0; ci < nchunks && !failed.load(); ++ci) {
      T* buffer = dA_buffer(ci % 2);
      T* du = du_buffer(ci % 2);
      if (role == 0) {
        // buffer ci % 2 held chunk ci - 2; only its dx and chunk ci - 1's can be pending
        for (int64_t k = ci - 2; k < ci && !consumed.reached(ci - 1); ++k) dx_if_unclaimed(k);
        if (!consumed.wait_for(ci - 1)) break;
        recurse(chunk_at(ci), buffer);
        if (!L.layer_norm) dx_ready.store(ci + 1, std::memory_order_release);
        recursed.publish(ci + 1);
      } else {
        if (!recursed.wait_for(ci + 1)) break;
        if (L.layer_norm) {
          chunk_input_norm(chunk_at(ci), buffer, du);
          dx_ready.store(ci + 1, std::memory_order_release);
        }
        chunk_params(chunk_at(ci), buffer, du, ci == 0);
        dx_if_unclaimed(ci);
        consumed.publish(ci + 1);
      }
    }
    if (role == 0)  // the recursion is done: help with the last chunks' dx
      for (int64_t k = nchunks - 2; k < nchunks && !failed.load(); ++k) dx_if_unclaimed(k);
  });
#endif
}

// ------------------------------------------------------------------------------ checks

bool present(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined() && t->numel() > 0; }

void check_inputs(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                  const c10::optional<at::Tensor>& w_hh, const c10::optional<at::Tensor>& b_ih,
                  const c10::optional<at::Tensor>& b_hh, const Layout& L, const Steps& S,
                  const c10::optional<at::Tensor>& recurrent, const c10::optional<at::Tensor>& candidate,
                  const c10::optional<at::Tensor>& zoneout, const c10::optional<at::Tensor>& ln_ih,
                  const c10::optional<at::Tensor>& ln_hh) {
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble, "grukit: float32 or float64 expected");
  auto check = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dt && t.is_contiguous(), "grukit: ",
                name, " must be a contiguous CPU tensor of the input's dtype");
    TORCH_CHECK(t.sizes() == shape, "grukit: ", name, " has shape ", t.sizes(), ", expected ",
                shape);
  };
  const int64_t H = L.H;
  check(x, "x", {S.R, x.size(1)});
  check(h0, "h0", {S.N, H});
  check(w_ih, "weight_ih", {L.Gx * H, x.size(1)});
  if (L.Kh > 0) {
    TORCH_CHECK(present(w_hh), "grukit: weight_hh missing");
    check(*w_hh, "weight_hh", {L.Kh * H, H});
  }
  if (present(b_ih)) check(*b_ih, "bias_ih", {L.Gx * H});
  if (present(b_hh)) {
    const int64_t bh = L.cell == kGruResetAfter ? 3 * H : (L.gate_bias ? L.G + 1 : 1) * H;
    check(*b_hh, "bias_hh", {bh});
  }
  if (present(recurrent)) check(*recurrent, "the recurrent-dropout mask", {S.N, H});
  if (present(candidate)) check(*candidate, "the candidate-dropout mask", {S.R, H});
  if (present(zoneout)) {
    if (zoneout->dim() == 1) {
      check(*zoneout, "the zoneout mask", {H});
    } else {
      check(*zoneout, "the zoneout mask", {S.R, H});
    }
  }
  TORCH_CHECK(present(ln_ih) == L.layer_norm, "grukit: layer-norm gains: ln_ih is needed iff layer_norm");
  if (L.layer_norm) {
    check(*ln_ih, "layer_norm_ih", {L.Gx * H});
    TORCH_CHECK(present(ln_hh) == (L.Kh > 0), "grukit: layer_norm_hh is needed iff the cell reads h");
    if (L.Kh > 0) check(*ln_hh, "layer_norm_hh", {L.Kh * H});
  }
}

template <typename T>
Extras<T> make_extras(int64_t H, const c10::optional<at::Tensor>& recurrent,
                      const c10::optional<at::Tensor>& candidate,
                      const c10::optional<at::Tensor>& zoneout,
                      const c10::optional<at::Tensor>& ln_ih,
                      const c10::optional<at::Tensor>& ln_hh) {
  Extras<T> e;
  e.recurrent = ptr_or_null<T>(recurrent);
  e.candidate = ptr_or_null<T>(candidate);
  e.zoneout = ptr_or_null<T>(zoneout);
  e.zoneout_ld = present(zoneout) && zoneout->dim() == 2 ? H : 0;
  e.ln_ih = ptr_or_null<T>(ln_ih);
  e.ln_hh = ptr_or_null<T>(ln_hh);
  return e;
}

// ------------------------------------------------------------------------------ ops

uint64_t call_kind(int op, bool save, const at::Tensor& x, const Layout& L, const Steps& S,
                   at::IntArrayRef spec, const c10::optional<at::Tensor>& recurrent,
                   const c10::optional<at::Tensor>& candidate,
                   const c10::optional<at::Tensor>& zoneout, const c10::optional<at::Tensor>& ln) {
  return kind_key({op, save, int64_t(x.scalar_type()), L.H, x.size(1), size_bucket(S.N),
                   size_bucket(S.R), present(recurrent), present(candidate), present(zoneout),
                   present(ln)},
                  spec);
}

// The forward over the steps S: (out (R, H), h_n (N, H), the workspace or (0,)).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_steps(
    const Steps& S, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
    const c10::optional<at::Tensor>& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, at::IntArrayRef spec, bool reverse, bool save,
    const c10::optional<at::Tensor>& recurrent, const c10::optional<at::Tensor>& candidate,
    const c10::optional<at::Tensor>& zoneout, const c10::optional<at::Tensor>& ln_ih,
    const c10::optional<at::Tensor>& ln_hh) {
  const Layout L = make_layout(spec, h0.size(1), present(recurrent), present(ln_ih));
  check_inputs(x, h0, w_ih, w_hh, b_ih, b_hh, L, S, recurrent, candidate, zoneout, ln_ih, ln_hh);
  g_calls.fetch_add(1);
  TunedThreads threads(call_kind(0, save, x, L, S, spec, recurrent, candidate, zoneout, ln_ih));
  SingleThreadedBlas blas_guard;
  at::Tensor out = pooled_empty({S.R, L.H}, x.options());
  at::Tensor h = h0.clone();
  at::Tensor ws =
      save ? pooled_empty({S.R, L.ws_stride()}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grukit_rnn_forward", [&] {
    const auto E = make_extras<scalar_t>(L.H, recurrent, candidate, zoneout, ln_ih, ln_hh);
    with_family(L, [&](auto cell) {
      using Cell = decltype(cell);
      if (save) {
        forward_impl<scalar_t, Cell, true>(L, S, reverse, x, w_ih, w_hh, b_ih, b_hh, E, out, h, &ws);
      } else {
        forward_impl<scalar_t, Cell, false>(L, S, reverse, x, w_ih, w_hh, b_ih, b_hh, E, out, h, nullptr);
      }
    });
  });
  return {out, h, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
    const c10::optional<at::Tensor>& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& batch_sizes, at::IntArrayRef spec,
    bool reverse, bool save, const c10::optional<at::Tensor>& recurrent,
    const c10::optional<at::Tensor>& candidate, const c10::optional<at::Tensor>& zoneout,
    const c10::optional<at::Tensor>& ln_ih, const c10::optional<at::Tensor>& ln_hh) {
  return forward_steps(make_steps(batch_sizes), x, h0, w_ih, w_hh, b_ih, b_hh, spec, reverse,
                       save, recurrent, candidate, zoneout, ln_ih, ln_hh);
}

// One step of a batch of rows in inference, x (N, I) and h (N, H) -> h' (N, H), without options
// or workspace: rnn_forward's result for a sequence of one step, with fewer arguments and no
// batch_sizes tensor, so that a streaming caller (GRUCell, GRU.step) pays less per call.
at::Tensor rnn_step(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                    const c10::optional<at::Tensor>& w_hh, const c10::optional<at::Tensor>& b_ih,
                    const c10::optional<at::Tensor>& b_hh, at::IntArrayRef spec) {
  TORCH_CHECK(x.dim() == 2 && h.dim() == 2 && x.size(0) == h.size(0) && x.size(0) > 0,
              "grukit: rnn_step takes x (N, I) and h (N, H) with N > 0, got ", x.sizes(), " and ",
              h.sizes());
  Steps S;
  S.T = 1;
  S.N = S.R = x.size(0);
  S.n = {S.N};
  S.off = {0};
  const c10::optional<at::Tensor> none;
  return std::get<1>(forward_steps(S, x, h, w_ih, w_hh, b_ih, b_hh, spec, false, false, none,
                                   none, none, none, none));
}

// Gradients of one layer-direction. needs = (x, h0, weight_ih, weight_hh, bias_ih, bias_hh,
// layer_norm_ih, layer_norm_hh); outputs that are not needed (or absent) come back empty.
std::vector<at::Tensor> rnn_backward(
    const at::Tensor& grad_out, const at::Tensor& grad_hn, const at::Tensor& x,
    const at::Tensor& h0, const at::Tensor& w_ih, const c10::optional<at::Tensor>& w_hh,
    const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
    const at::Tensor& ws, const at::Tensor& batch_sizes, at::IntArrayRef spec, bool reverse,
    at::IntArrayRef needs, const c10::optional<at::Tensor>& recurrent,
    const c10::optional<at::Tensor>& candidate, const c10::optional<at::Tensor>& zoneout,
    const c10::optional<at::Tensor>& ln_ih, const c10::optional<at::Tensor>& ln_hh) {
  const Steps S = make_steps(batch_sizes);
  const Layout L = make_layout(spec, h0.size(1), present(recurrent), present(ln_ih));
  check_inputs(x, h0, w_ih, w_hh, b_ih, b_hh, L, S, recurrent, candidate, zoneout, ln_ih, ln_hh);
  TORCH_CHECK(needs.size() == 8, "grukit: needs must have 8 entries");
  TORCH_CHECK(ws.numel() == S.R * L.ws_stride(), "grukit: the workspace does not match this call");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({S.R, L.H}) &&
                  grad_hn.sizes() == at::IntArrayRef({S.N, L.H}) &&
                  grad_out.scalar_type() == x.scalar_type() &&
                  grad_hn.scalar_type() == x.scalar_type(),
              "grukit: gradient shapes or dtypes do not match");
  TunedThreads threads(call_kind(1, true, x, L, S, spec, recurrent, candidate, zoneout, ln_ih));
  SingleThreadedBlas blas_guard;
  // any strides (a loss's gradient is often a broadcast scalar): copied here, on the thread
  // count the tuner chose, not by torch's pool, which beside a busy process waits for a
  // descheduled worker (milliseconds at the benchmark's shapes)
  const at::Tensor dout = grad_out.contiguous();
  const int64_t I = x.size(1), R = S.R;
  auto opts = x.options();
  at::Tensor dh = grad_hn.clone(at::MemoryFormat::Contiguous);
  auto grad_like = [&](bool need, const c10::optional<at::Tensor>& t) {
    return need && present(t) ? at::empty(t->sizes(), opts) : at::Tensor();
  };
  at::Tensor dx = needs[0] ? pooled_empty({R, I}, opts) : at::Tensor();
  at::Tensor dw_ih = needs[2] ? at::empty(w_ih.sizes(), opts) : at::Tensor();
  at::Tensor dw_hh = grad_like(needs[3], w_hh);
  at::Tensor db_ih = grad_like(needs[4], b_ih);
  at::Tensor db_hh = grad_like(needs[5], b_hh);
  at::Tensor dln_ih = grad_like(needs[6], ln_ih);
  at::Tensor dln_hh = grad_like(needs[7], ln_hh);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grukit_rnn_backward", [&] {
    const auto E = make_extras<scalar_t>(L.H, recurrent, candidate, zoneout, ln_ih, ln_hh);
    with_family(L, [&](auto cell) {
      backward_impl<scalar_t, decltype(cell)>(L, S, reverse, x, w_ih, w_hh, ws, dout, E, dh,
                                              dx, dw_ih, dw_hh, db_ih, db_hh, dln_ih, dln_hh);
    });
  });
  at::Tensor empty = at::empty({0}, opts);
  std::vector<at::Tensor> grads = {dx, needs[1] ? dh : at::Tensor(), dw_ih, dw_hh, db_ih, db_hh,
                                   dln_ih, dln_hh};
  for (auto& g : grads)
    if (!g.defined()) g = empty;
  return grads;
}

// The matrix products of a `gru` layer and nothing else, through the kernels' own GEMM layer
// and provider (the benchmark's floor). x: (T*N, I), h: (N, H), hs: (T*N, H) stand-in states,
// dA: (T*N, 3H) stand-in pre-activation gradients. Forward: x W_ih^T, then T steps of h W_hh^T.
// Backward: T steps of dA_t W_hh, then dA^T hs, dA^T x and dA W_ih.
void gemm_floor(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                const at::Tensor& w_hh, const at::Tensor& hs, const at::Tensor& dA, bool backward) {
  TORCH_CHECK(x.is_contiguous() && h.is_contiguous() && w_ih.is_contiguous() &&
                  w_hh.is_contiguous() && hs.is_contiguous() && dA.is_contiguous(),
              "grukit: gemm_floor takes contiguous tensors");
  SingleThreadedBlas blas_guard;
  const int64_t N = h.size(0), H = h.size(1), R = x.size(0), I = x.size(1), G = w_hh.size(0);
  const int64_t T = R / N;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grukit_gemm_floor", [&] {
    using T_ = scalar_t;
    const WeightT<T_> wih(w_ih), whh(w_hh);
    at::Tensor gx = at::empty({R, G}, x.options()), g1 = at::empty({N, G}, x.options());
    wih.gemm_rows(R, 0, G, x.data_ptr<T_>(), I, gx.data_ptr<T_>(), G);
    for (int64_t t = 0; t < T; ++t) whh.gemm_rows(N, 0, G, h.data_ptr<T_>(), H, g1.data_ptr<T_>(), G);
    if (!backward) return;
    const T_* da = dA.data_ptr<T_>();
    at::Tensor dh = at::empty({N, H}, x.options());
    for (int64_t t = 0; t < T; ++t)
      gemm<T_>(false, false, N, H, G, da + t * N * G, G, w_hh.data_ptr<T_>(), H, T_(0),
               dh.data_ptr<T_>(), H);
    at::Tensor dwhh = at::empty({G, H}, x.options()), dwih = at::empty({G, I}, x.options());
    at::Tensor dx = at::empty({R, I}, x.options());
    gemm<T_>(true, false, G, H, R, da, G, hs.data_ptr<T_>(), H, T_(0), dwhh.data_ptr<T_>(), H);
    gemm<T_>(true, false, G, I, R, da, G, x.data_ptr<T_>(), I, T_(0), dwih.data_ptr<T_>(), I);
    gemm<T_>(false, false, R, I, G, da, G, w_ih.data_ptr<T_>(), I, T_(0), dx.data_ptr<T_>(), I);
  });
}

int64_t call_count() { return g_calls.load(); }
std::vector<int64_t> overlapped_calls() { return {g_overlapped[0].load(), g_overlapped[1].load()}; }

// Columns per packed row of the workspace rnn_forward saves for a layer of H units (what a
// fake tensor of it needs: torch.compile traces the ops without running them).
int64_t workspace_width(at::IntArrayRef spec, int64_t H, bool recurrent_mask, bool layer_norm) {
  return make_layout(spec, H, recurrent_mask, layer_norm).ws_stride();
}

void set_profiling(bool on) {
  for (auto& ns : g_phase_ns) ns.store(0);
  g_profiling.store(on);
}

// Seconds spent in each phase since set_profiling(true), and the phases' names.
std::tuple<std::vector<double>, std::vector<std::string>> profile() {
  std::vector<double> seconds;
  std::vector<std::string> names;
  for (int k = 0; k < kPhases; ++k) {
    seconds.push_back(double(g_phase_ns[k].load()) * 1e-9);
    names.emplace_back(kPhaseNames[k]);
  }
  return {seconds, names};
}
bool uses_blas() { return blas_available(); }

// The float GEMM provider (-1: the CPU's default; 0: BLAS; 1: brgemm, refused where it does not
// run), the provider in use, and the serial products each has run (for the tests).
void set_gemm_provider(int64_t provider) {
  TORCH_CHECK(provider >= -1 && provider <= 1, "grukit: provider must be -1, 0 or 1");
  TORCH_CHECK(provider != kBrgemm || brgemm_works(),
              "grukit: oneDNN's brgemm does not run on this machine");
  g_gemm_provider.store(provider < 0 ? default_gemm_provider() : int(provider));
}
int64_t gemm_provider_in_use() { return gemm_provider(); }
bool brgemm_available() { return brgemm_works(); }
// products per provider (blas, brgemm), then how many of brgemm's were A^T B
std::vector<int64_t> gemm_calls() {
  return {g_gemm_calls[kBlas].load(), g_gemm_calls[kBrgemm].load(), g_brgemm_at_b_calls.load()};
}

void set_thread_policy(int64_t policy) { g_threads.set_policy(int(policy)); }
int64_t thread_policy() { return g_threads.policy(); }
std::vector<int64_t> thread_choices() { return g_threads.chosen(); }
std::vector<double> thread_kinds() { return g_threads.kinds(); }

// The tuner's choices (0: one thread, 1: all) over calls of one kind where call i would take
// one_ns[i] on one thread and all_ns[i] on all: a fresh tuner, for the tests.
std::vector<int64_t> thread_tuner_trace(at::ArrayRef<double> one_ns, at::ArrayRef<double> all_ns) {
  TORCH_CHECK(one_ns.size() == all_ns.size(), "grukit: one_ns and all_ns differ in length");
  ThreadTuner tuner;
  std::vector<int64_t> arms;
  for (size_t i = 0; i < one_ns.size(); ++i) {
    int arm = -1;
    tuner.choose(7, 2, &arm);
    tuner.record(7, arm, arm == 0 ? one_ns[i] : all_ns[i]);
    arms.push_back(arm);
  }
  return arms;
}

}  // namespace
}  // namespace grukit

TORCH_LIBRARY(grukit, m) {
  m.def(
      "rnn_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor? w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor batch_sizes, int[] spec, bool reverse, bool save, Tensor? recurrent=None, "
      "Tensor? candidate=None, Tensor? zoneout=None, Tensor? ln_ih=None, Tensor? ln_hh=None) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "rnn_step(Tensor x, Tensor h, Tensor w_ih, Tensor? w_hh, Tensor? b_ih, Tensor? b_hh, "
      "int[] spec) -> Tensor");
  m.def(
      "rnn_backward(Tensor grad_out, Tensor grad_hn, Tensor x, Tensor h0, Tensor w_ih, "
      "Tensor? w_hh, Tensor? b_ih, Tensor? b_hh, Tensor ws, Tensor batch_sizes, int[] spec, "
      "bool reverse, int[] needs, Tensor? recurrent=None, Tensor? candidate=None, "
      "Tensor? zoneout=None, Tensor? ln_ih=None, Tensor? ln_hh=None) -> Tensor[]");
  m.def(
      "gemm_floor(Tensor x, Tensor h, Tensor w_ih, Tensor w_hh, Tensor hs, Tensor dA, "
      "bool backward) -> ()");
  m.def("call_count", &grukit::call_count);
  m.def("workspace_width", &grukit::workspace_width);
  m.def("set_profiling", &grukit::set_profiling);
  m.def("profile", &grukit::profile);
  m.def("uses_blas", &grukit::uses_blas);
  m.def("set_gemm_provider", &grukit::set_gemm_provider);
  m.def("gemm_provider", &grukit::gemm_provider_in_use);
  m.def("brgemm_available", &grukit::brgemm_available);
  m.def("gemm_calls", &grukit::gemm_calls);
  m.def("set_thread_policy", &grukit::set_thread_policy);
  m.def("thread_policy", &grukit::thread_policy);
  m.def("thread_choices", &grukit::thread_choices);
  m.def("overlapped_calls", &grukit::overlapped_calls);
  m.def("thread_kinds", &grukit::thread_kinds);
  m.def("thread_tuner_trace", &grukit::thread_tuner_trace);
}

TORCH_LIBRARY_IMPL(grukit, CPU, m) {
  m.impl("rnn_forward", &grukit::rnn_forward);
  m.impl("rnn_step", &grukit::rnn_step);
  m.impl("rnn_backward", &grukit::rnn_backward);
  m.impl("gemm_floor", &grukit::gemm_floor);
}

