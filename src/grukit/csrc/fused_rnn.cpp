// grukit fused CPU kernels: one layer-direction of any GRU variant over a whole (packed) sequence,
// forward and backward, in one call each.
//
// Structure (see grukit/fused.py for the Python side and grukit/variants.py for the math):
//   * the input projection of all steps is one GEMM;
//   * each step does one GEMM on the state (two for reset-before cells: gates, then candidate)
//     and one fused vectorised pass over the gates (at::vec);
//   * backward keeps one or two small GEMMs per step and forms the weight gradients with large
//     GEMMs over all steps afterwards;
//   * no tensor is allocated and nothing goes through the dispatcher inside the time loop.
//
// One loop serves every variant. A Cell (GruResetAfter, GruResetBefore, Mgu, MinGru) supplies
// the element-wise forward and backward of its family; the per-variant differences (which
// sources feed the gates) are the Layout flags, read in the element-wise pass.
//
// Packed layout: step t owns rows [off_t, off_t + n_t) of x/out, n_t non-increasing; the
// sequences alive at step t are batch rows 0..n_t-1. The state lives in one (N, H) buffer, so
// rows that are not active keep their value: in the forward direction a finished sequence keeps
// its final state, in the reverse direction a sequence that has not started keeps its h0.
//
// Determinism: every parallel split (GEMM blocks, rows, columns) depends on the problem shape
// only, never on the thread count, and every BLAS call runs single-threaded, so 1 and 2 threads
// give bit-identical results.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

// Standard Fortran BLAS, exported by libtorch_cpu when PyTorch is built with MKL or OpenBLAS.
// Weak: if absent, gemm() falls back to at::mm (correct, slower, not thread-count independent).
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*,
            const float*, const int*, const float*, const int*, const float*, float*,
            const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*,
            const double*, const int*, const double*, const int*, const double*, double*,
            const int*) __attribute__((weak));
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace grukit {
namespace {

using at::vec::Vectorized;

// ------------------------------------------------------------------------------ profiler
// Opt-in wall-clock time per phase (grukit.fused.profile()); off, it costs one branch a phase.

enum Phase : int {
  kInputGemm, kStepGemm, kStepElementwise, kStepCopy, kBackStepGemm, kBackElementwise,
  kWeightGemm, kBiasSums, kPhases
};
const char* const kPhaseNames[kPhases] = {
    "input projection GEMM", "per-step GEMMs (forward)", "element-wise (forward)",
    "state copies (forward)", "per-step GEMMs (backward)", "element-wise (backward)",
    "weight and input-gradient GEMMs", "bias gradient sums"};
std::atomic<bool> g_profiling{false};
std::atomic<int64_t> g_phase_ns[kPhases];

struct PhaseTimer {
  Phase phase;
  std::chrono::steady_clock::time_point start;
  bool on;
  explicit PhaseTimer(Phase p) : phase(p), on(g_profiling.load(std::memory_order_relaxed)) {
    if (on) start = std::chrono::steady_clock::now();
  }
  ~PhaseTimer() {
    if (on) {
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now() - start).count();
      g_phase_ns[phase].fetch_add(ns, std::memory_order_relaxed);
    }
  }
};

// --------------------------------------------------------------------------- block pool
// The workspace saved for backward is large (R x W*H values: 65 MB for a batch of 256 x 50
// steps x 256 units) and lives from one forward to its backward. Fresh memory from the OS
// costs a page fault and a zeroing per 4 KB page, which took 15% of such a training step, so
// workspaces come from a small pool of blocks this process has used before (new blocks ask
// for transparent huge pages). A block goes back to the pool when its tensor is freed.

class BlockPool {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;  // smaller buffers: at::empty
  static constexpr size_t kKeep = 4;                    // free blocks kept at most

  void* get(size_t bytes, size_t* capacity) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it)  // smallest block that fits
        if (it->second >= bytes && it->second <= 2 * bytes &&
            (best == free_.end() || it->second < best->second))
          best = it;
      if (best != free_.end()) {
        void* p = best->first;
        *capacity = best->second;
        free_.erase(best);
        return p;
      }
    }
    constexpr size_t kHuge = size_t(2) << 20;
    *capacity = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, *capacity) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    madvise(p, *capacity, MADV_HUGEPAGE);
#endif
    return p;
  }

  void put(void* p, size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace_back(p, capacity);
    if (free_.size() > kKeep) {  // drop the oldest
      std::free(free_.front().first);
      free_.erase(free_.begin());
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;
};

BlockPool& block_pool() {
  static BlockPool* pool = new BlockPool();  // never destroyed: tensors may outlive statics
  return *pool;
}

// at::empty for large internal buffers, from the block pool.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const size_t bytes = size_t(c10::multiply_integers(sizes)) * opts.dtype().itemsize();
  if (bytes < BlockPool::kMinBytes) return at::empty(sizes, opts);
  size_t capacity = 0;
  void* p = block_pool().get(bytes, &capacity);
  return at::from_blob(
      p, sizes, [capacity](void* q) { block_pool().put(q, capacity); }, opts);
}

// ------------------------------------------------------------------------------------ GEMM

bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// Column-major BLAS call.
inline void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda,
                      const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                      int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Row-major C[M,N] = op(A)[M,K] * op(B)[K,N] + beta * C, one thread.
// op(A) = A (A is M x K, ld lda) or A^T (A is K x M); likewise B.
template <typename T>
void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda,
                 const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  if (blas_available()) {
    // row-major C = A B  <=>  column-major C^T = B^T A^T
    blas_gemm(tb ? 'T' : 'N', ta ? 'T' : 'N', int(N), int(M), int(K), T(1), B, int(ldb), A,
              int(lda), beta, C, int(ldc));
    return;
  }
  auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto a = ta ? at::from_blob(const_cast<T*>(A), {K, M}, {lda, 1}, opts).t()
              : at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  auto b = tb ? at::from_blob(const_cast<T*>(B), {N, K}, {ldb, 1}, opts).t()
              : at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (beta == T(0)) {
    c.copy_(at::mm(a, b));
  } else {
    c.mul_(beta).add_(at::mm(a, b));
  }
}

// Keeps BLAS single-threaded on this thread while it lives: the kernels parallelise around
// BLAS calls themselves, with splits that do not depend on the thread count. ATen seeds this
// thread's OpenMP pool size from MKL's thread count the first time it runs a parallel loop
// here, so that happens before MKL's count is lowered, and the pool size is put back after.
struct SingleThreadedBlas {
  int previous = 0;
  int omp_threads = 1;
  SingleThreadedBlas() {
    at::internal::lazy_init_num_threads();
#ifdef _OPENMP
    omp_threads = omp_get_max_threads();
#endif
    if (MKL_Set_Num_Threads_Local != nullptr) previous = MKL_Set_Num_Threads_Local(1);
  }
  ~SingleThreadedBlas() {
    if (MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(previous);
#ifdef _OPENMP
    if (omp_get_max_threads() != omp_threads) omp_set_num_threads(omp_threads);
#endif
  }
};

// The same product, split into at most 8 blocks of rows or columns of C, chosen from the shape
// only, run in parallel. Blocks stay at least 64 wide and 1M multiply-adds big, so each BLAS
// call stays efficient and a split pays for its synchronisation and cache traffic.
template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int64_t kBlockWork = int64_t(1) << 20;
  constexpr int64_t kMaxBlocks = 8, kMinSide = 64;
  const bool split_rows = M >= N;
  const int64_t side = split_rows ? M : N;
  const int64_t work = M * N * K;
  int64_t nblocks = std::min<int64_t>({kMaxBlocks, work / kBlockWork, side / kMinSide});
  if (nblocks <= 1) {
    gemm_serial(ta, tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const int64_t block = ((side + nblocks - 1) / nblocks + 15) / 16 * 16;
  nblocks = (side + block - 1) / block;
  at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
    SingleThreadedBlas blas_guard;  // this worker's BLAS calls must not spawn threads of their own
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t s0 = bi * block, s1 = std::min(side, s0 + block);
      if (split_rows) {
        const T* Ab = ta ? A + s0 : A + s0 * lda;
        gemm_serial(ta, tb, s1 - s0, N, K, Ab, lda, B, ldb, beta, C + s0 * ldc, ldc);
      } else {
        const T* Bb = tb ? B + s0 * ldb : B + s0;
        gemm_serial(ta, tb, M, s1 - s0, K, A, lda, Bb, ldb, beta, C + s0, ldc);
      }
    }
  });
}

// Rows [0, n) in parallel when the step has enough elements; the split depends on n, H only.
template <typename F>
void for_rows(int64_t n, int64_t H, const F& f) {
  constexpr int64_t kMinElements = 8192;
  const int64_t grain = std::max<int64_t>(1, kMinElements / std::max<int64_t>(H, 1));
  if (n <= grain) {
    f(0, n);
  } else {
    at::parallel_for(0, n, grain, f);
  }
}

// --------------------------------------------------------------------------- vector math

template <typename T>
inline Vectorized<T> vsigmoid(Vectorized<T> a) {
  const Vectorized<T> one(T(1));
  return one / (one + a.neg().exp());
}

// tanh. float: a rational minimax approximation on [-7.99881, 7.99881] (odd degree 13 over
// even degree 6, the form Eigen uses), within 3 ulp of tanh and twice as fast as Sleef's tanh;
// double: Sleef's tanh (1 ulp), which the float64 tests compare against torch to 1e-10.
template <typename T>
inline Vectorized<T> vtanh(Vectorized<T> x) {
  return x.tanh();
}
template <>
inline Vectorized<float> vtanh(Vectorized<float> x) {
  using V = Vectorized<float>;
  const V c(7.99881172180175781f);
  x = at::vec::minimum(at::vec::maximum(x, V(-7.99881172180175781f)), c);
  const V x2 = x * x;
  V p = at::vec::fmadd(x2, V(-2.76076847742355e-16f), V(2.00018790482477e-13f));
  p = at::vec::fmadd(p, x2, V(-8.60467152213735e-11f));
  p = at::vec::fmadd(p, x2, V(5.12229709037114e-08f));
  p = at::vec::fmadd(p, x2, V(1.48572235717979e-05f));
  p = at::vec::fmadd(p, x2, V(6.37261928875436e-04f));
  p = at::vec::fmadd(p, x2, V(4.89352455891786e-03f));
  V q = at::vec::fmadd(x2, V(1.19825839466702e-06f), V(1.18534705686654e-04f));
  q = at::vec::fmadd(q, x2, V(2.26843463243900e-03f));
  q = at::vec::fmadd(q, x2, V(4.89352518554385e-03f));
  return p * x / q;
}

// minGRU's g(a) = a + 1/2 (a >= 0), sigma(a) (a < 0), and g'(a) from n = g(a): 1 if n >= 1/2,
// else n (1 - n).
template <typename T>
inline Vectorized<T> vg(Vectorized<T> a) {
  const Vectorized<T> zero(T(0)), half(T(0.5));
  return Vectorized<T>::blendv(vsigmoid(a), a + half, a >= zero);
}
template <typename T>
inline Vectorized<T> vg_grad_from_value(Vectorized<T> n) {
  const Vectorized<T> one(T(1)), half(T(0.5));
  return Vectorized<T>::blendv(n * (one - n), one, n >= half);
}

// Loads that treat a null pointer as a zero vector (an absent source of a pre-activation).
template <typename T>
inline Vectorized<T> load(const T* p, int64_t j, int64_t count) {
  if (p == nullptr) return Vectorized<T>(T(0));
  return count == Vectorized<T>::size() ? Vectorized<T>::loadu(p + j)
                                         : Vectorized<T>::loadu(p + j, count);
}
template <typename T>
inline void store(T* p, int64_t j, int64_t count, Vectorized<T> v) {
  if (count == Vectorized<T>::size()) {
    v.store(p + j);
  } else {
    v.store(p + j, count);
  }
}

// Calls f(j, count) over [0, H) in vector-width chunks.
template <typename T, typename F>
inline void for_lanes(int64_t H, const F& f) {
  constexpr int64_t W = Vectorized<T>::size();
  int64_t j = 0;
  for (; j + W <= H; j += W) f(j, W);
  if (j < H) f(j, H - j);
}

// ------------------------------------------------------------------------------- layout

enum CellKind : int64_t { kGruResetAfter = 0, kGruResetBefore = 1, kMgu = 2, kMinGru = 3 };

// What feeds the gates of a variant (grukit/variants.py, Block flags) and where blocks sit.
struct Layout {
  int64_t cell;
  int64_t G;       // number of gates (2: r, z; 1: f or minGRU's z)
  bool gate_x;     // gates read x: weight_ih = [gates..., n], else [n]
  bool gate_h;     // gates read h: weight_hh starts with the gates
  bool gate_bias;  // gates have a bias in bias_hh: bias_hh = [gates..., n], else [n]
  int64_t H;
  // derived
  int64_t Gx;  // blocks in weight_ih
  int64_t K1;  // blocks in the first per-step GEMM (on h)
  int64_t W;   // blocks saved per row for backward (the last one is h_{t-1})

  int64_t x_n() const { return gate_x ? G * H : 0; }        // n's columns in weight_ih
  int64_t bhh_n() const { return gate_bias ? G * H : 0; }  // n's entries in bias_hh
};

Layout make_layout(at::IntArrayRef spec, int64_t H) {
  TORCH_CHECK(spec.size() == 5, "grukit: layout spec must have 5 entries");
  Layout L{};
  L.cell = spec[0];
  L.G = spec[1];
  L.gate_x = spec[2] != 0;
  L.gate_h = spec[3] != 0;
  L.gate_bias = spec[4] != 0;
  L.H = H;
  TORCH_CHECK(L.cell >= 0 && L.cell <= 3, "grukit: unknown cell kind ", L.cell);
  L.Gx = L.gate_x ? L.G + 1 : 1;
  switch (L.cell) {
    case kGruResetAfter:
      TORCH_CHECK(L.G == 2 && L.gate_x && L.gate_h, "grukit: reset-after needs x- and h-fed gates");
      L.K1 = 3;
      L.W = 5;  // r, z, n, hn = W_hn h + b_hn, h_prev
      break;
    case kGruResetBefore:
      TORCH_CHECK(L.G == 2, "grukit: GRU cells have two gates");
      L.K1 = L.gate_h ? 2 : 0;
      L.W = 5;  // r, z, n, r*h, h_prev
      break;
    case kMgu:
      TORCH_CHECK(L.G == 1, "grukit: MGU cells have one gate");
      L.K1 = L.gate_h ? 1 : 0;
      L.W = 4;  // f, n, f*h, h_prev
      break;
    default:
      TORCH_CHECK(L.G == 1 && L.gate_x && !L.gate_h, "grukit: minGRU gates read x only");
      L.K1 = 0;
      L.W = 3;  // z, n, h_prev
  }
  return L;
}

// Pointers of one forward step. Rows are the step's batch rows 0..n-1.
template <typename T>
struct StepPtrs {
  const T* gx;   // (n, Gx*H) input projection of this step (without bias_ih)
  const T* bih;  // (Gx*H) or null
  const T* bhh;  // bias_hh or null
  T* g1;         // (n, K1*H) first GEMM on h, or null
  T* c2;         // (n, H) candidate GEMM on r*h (reset-before), or null
  T* h;          // (n, H) state, updated in place
  T* rh;         // (n, H) r*h, input of the candidate GEMM (reset-before)
  T* keep;       // (n, H) z or f, carried from phase 1 to phase 2 (reset-before)
  T* ws;         // (n, W*H) saved for backward, or null
};

// ---------------------------------------------------------------------------- forward

// Pre-activation of gate k at lanes [j, j+cnt) of one row: x part + bias_ih, h part, bias_hh.
template <typename T>
inline Vectorized<T> gate_preactivation(const Layout& L, const StepPtrs<T>& p, const T* gx,
                                        const T* g1, int64_t k, int64_t j, int64_t cnt) {
  using V = Vectorized<T>;
  V a(T(0));
  if (L.gate_x) {
    a = load<T>(gx + k * L.H, j, cnt);
    if (p.bih) a = a + load<T>(p.bih + k * L.H, j, cnt);
  }
  if (L.gate_h) a = a + load<T>(g1 + k * L.H, j, cnt);
  if (L.gate_bias && p.bhh) a = a + load<T>(p.bhh + k * L.H, j, cnt);
  return a;
}

// First element-wise pass of a step. Reset-after and minGRU finish the step here; reset-before
// cells compute their gates and r*h, the input of the candidate GEMM.
template <typename T>
void forward_phase1(const Layout& L, const StepPtrs<T>& p, int64_t r0, int64_t r1) {
  using V = Vectorized<T>;
  const int64_t H = L.H, sx = L.Gx * H, s1 = L.K1 * H, sw = L.W * H;
  for (int64_t b = r0; b < r1; ++b) {
    const T* gx = p.gx + b * sx;
    const T* g1 = p.g1 ? p.g1 + b * s1 : nullptr;
    T* h = p.h + b * H;
    T* ws = p.ws ? p.ws + b * sw : nullptr;
    for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
      const V hv = load<T>(h, j, cnt);
      switch (L.cell) {
        case kGruResetAfter: {
          const V r = vsigmoid(gate_preactivation(L, p, gx, g1, 0, j, cnt));
          const V z = vsigmoid(gate_preactivation(L, p, gx, g1, 1, j, cnt));
          V xn = load<T>(gx + 2 * H, j, cnt), hn = load<T>(g1 + 2 * H, j, cnt);
          if (p.bih) xn = xn + load<T>(p.bih + 2 * H, j, cnt);
          if (p.bhh) hn = hn + load<T>(p.bhh + 2 * H, j, cnt);
          const V n = vtanh(xn + r * hn);
          store(h, j, cnt, n + z * (hv - n));
          if (ws) {
            store(ws, j, cnt, r);
            store(ws + H, j, cnt, z);
            store(ws + 2 * H, j, cnt, n);
            store(ws + 3 * H, j, cnt, hn);
            store(ws + 4 * H, j, cnt, hv);
          }
          break;
        }
        case kGruResetBefore:
        case kMgu: {
          const V r = vsigmoid(gate_preactivation(L, p, gx, g1, 0, j, cnt));  // r, or f
          const V rh = r * hv;
          store(p.rh + b * H, j, cnt, rh);
          if (L.cell == kGruResetBefore) {
            const V z = vsigmoid(gate_preactivation(L, p, gx, g1, 1, j, cnt));
            store(p.keep + b * H, j, cnt, z);
            if (ws) store(ws + H, j, cnt, z);
          } else {
            store(p.keep + b * H, j, cnt, r);
          }
          if (ws) {
            store(ws, j, cnt, r);
            store(ws + (L.W - 2) * H, j, cnt, rh);
            store(ws + (L.W - 1) * H, j, cnt, hv);
          }
          break;
        }
        default: {  // minGRU: h' = h + z (g(a_n) - h)
          const V z = vsigmoid(gate_preactivation(L, p, gx, g1, 0, j, cnt));
          V xn = load<T>(gx + H, j, cnt);
          if (p.bih) xn = xn + load<T>(p.bih + H, j, cnt);
          const V n = vg(xn);
          store(h, j, cnt, hv + z * (n - hv));
          if (ws) {
            store(ws, j, cnt, z);
            store(ws + H, j, cnt, n);
            store(ws + 2 * H, j, cnt, hv);
          }
        }
      }
    });
  }
}

// Second element-wise pass of reset-before cells: the candidate and the state update.
template <typename T>
void forward_phase2(const Layout& L, const StepPtrs<T>& p, int64_t r0, int64_t r1) {
  using V = Vectorized<T>;
  const int64_t H = L.H, sx = L.Gx * H, sw = L.W * H;
  const int64_t xn_off = L.x_n(), bn_off = L.bhh_n();
  for (int64_t b = r0; b < r1; ++b) {
    const T* gx = p.gx + b * sx;
    const T* c2 = p.c2 + b * H;
    const T* keep = p.keep + b * H;
    T* h = p.h + b * H;
    T* ws = p.ws ? p.ws + b * sw : nullptr;
    for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
      const V hv = load<T>(h, j, cnt);
      V a = load<T>(gx + xn_off, j, cnt) + load<T>(c2, j, cnt);
      if (p.bih) a = a + load<T>(p.bih + xn_off, j, cnt);
      if (p.bhh) a = a + load<T>(p.bhh + bn_off, j, cnt);
      const V n = vtanh(a);
      const V g = load<T>(keep, j, cnt);
      // GRU: h' = n + z (h - n); MGU: h' = h + f (n - h)
      store(h, j, cnt, L.cell == kMgu ? hv + g * (n - hv) : n + g * (hv - n));
      if (ws) store(ws + (L.cell == kMgu ? H : 2 * H), j, cnt, n);
    });
  }
}

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

template <typename T>
const T* ptr_or_null(const c10::optional<at::Tensor>& t) {
  return (t.has_value() && t->defined() && t->numel() > 0) ? t->data_ptr<T>() : nullptr;
}

std::atomic<int64_t> g_calls{0};

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

template <typename T>
void forward_impl(const Layout& L, const Steps& S, bool reverse, const at::Tensor& x,
                  const at::Tensor& w_ih, const c10::optional<at::Tensor>& w_hh,
                  const c10::optional<at::Tensor>& b_ih, const c10::optional<at::Tensor>& b_hh,
                  at::Tensor& out, at::Tensor& h, at::Tensor* ws) {
  const int64_t H = L.H, I = x.size(1), N = S.N;
  const int64_t sx = L.Gx * H;
  auto opts = x.options();
  // the input projection runs a chunk of steps at a time, so the chunk stays in cache
  const auto chunks = make_chunks(S, rows_for<T>(sx, int64_t(1) << 19));
  int64_t max_rows = 0;
  for (const auto& c : chunks) max_rows = std::max(max_rows, c.r1 - c.r0);
  at::Tensor gx = at::empty({max_rows, sx}, opts);
  const T* whh = ptr_or_null<T>(w_hh);
  at::Tensor g1 = L.K1 > 0 ? at::empty({N, L.K1 * H}, opts) : at::Tensor();
  const bool before = L.cell == kGruResetBefore || L.cell == kMgu;
  at::Tensor scratch = before ? at::empty({3, N, H}, opts) : at::Tensor();
  T* hp = h.data_ptr<T>();
  T* outp = out.data_ptr<T>();
  StepPtrs<T> p{};
  p.bih = ptr_or_null<T>(b_ih);
  p.bhh = ptr_or_null<T>(b_hh);
  p.g1 = L.K1 > 0 ? g1.data_ptr<T>() : nullptr;
  p.h = hp;
  T* c2 = before ? scratch[1].data_ptr<T>() : nullptr;
  if (before) {
    p.rh = scratch[0].data_ptr<T>();
    p.c2 = c2;
    p.keep = scratch[2].data_ptr<T>();
  }
  // the steps of chunk c for batch rows [lo, hi)
  auto run_steps = [&](const Chunk& c, int64_t lo, int64_t hi) {
    StepPtrs<T> q = p;
    q.h = hp + lo * H;
    if (L.K1 > 0) q.g1 = p.g1 + lo * L.K1 * H;
    if (before) {
      q.rh = p.rh + lo * H;
      q.c2 = c2 + lo * H;
      q.keep = p.keep + lo * H;
    }
    for (int64_t i = 0; i < c.t1 - c.t0; ++i) {
      const int64_t t = reverse ? c.t1 - 1 - i : c.t0 + i;
      const int64_t n = std::min(S.n[t], hi) - lo, off = S.off[t] + lo;  // off: packed row of lo
      if (n <= 0) continue;
      q.gx = gx.data_ptr<T>() + (off - c.r0) * sx;
      q.ws = ws ? ws->data_ptr<T>() + off * L.W * H : nullptr;
      if (L.K1 > 0) {  // g1 = h W1^T, W1 = the first K1*H rows of weight_hh
        PhaseTimer timer(kStepGemm);
        gemm<T>(false, true, n, L.K1 * H, H, q.h, H, whh, H, T(0), q.g1, L.K1 * H);
      }
      {
        PhaseTimer timer(kStepElementwise);
        for_rows(n, H, [&](int64_t r0, int64_t r1) { forward_phase1<T>(L, q, r0, r1); });
      }
      if (before) {  // candidate GEMM on r*h with the last H rows of weight_hh
        {
          PhaseTimer timer(kStepGemm);
          gemm<T>(false, true, n, H, H, q.rh, H, whh + L.K1 * H * H, H, T(0), q.c2, H);
        }
        PhaseTimer timer(kStepElementwise);
        for_rows(n, H, [&](int64_t r0, int64_t r1) { forward_phase2<T>(L, q, r0, r1); });
      }
      PhaseTimer timer(kStepCopy);
      std::copy(q.h, q.h + n * H, outp + off * H);
    }
  };
  const auto blocks = row_blocks(L, N);
  const int64_t nchunks = int64_t(chunks.size());
  for (int64_t ci = 0; ci < nchunks; ++ci) {
    const Chunk& c = chunks[reverse ? nchunks - 1 - ci : ci];
    {  // gx = x W_ih^T for the chunk's rows
      PhaseTimer timer(kInputGemm);
      gemm<T>(false, true, c.r1 - c.r0, sx, I, x.data_ptr<T>() + c.r0 * I, I, w_ih.data_ptr<T>(),
              I, T(0), gx.data_ptr<T>(), sx);
    }
    for_row_blocks(blocks, [&](int64_t lo, int64_t hi) { run_steps(c, lo, hi); });
  }
}

// ---------------------------------------------------------------------------- backward

// Pre-activation gradients dA, one row per packed row, in blocks:
//   reset-after: [da_r, da_z, da_n * r, da_n]: the first three blocks are the gradients of the
//     h-side pre-activations (rows of weight_hh), blocks 0, 1, 3 those of the x side;
//   otherwise:   [gates..., da_n]: the x-fed blocks are the last Gx, the h-fed gates the first
//     K1, and the candidate GEMM's gradient is da_n.
int64_t dA_blocks(const Layout& L) { return L.cell == kGruResetAfter ? 4 : L.G + 1; }

// Element-wise backward of one step, first pass (for reset-after and minGRU the only one).
// dh: (n, H) gradient w.r.t. h' on entry (dout of this step is added here); on exit the part
// of dL/dh_{t-1} that does not go through a GEMM.
template <typename T>
void backward_phase1(const Layout& L, const T* ws, const T* dout, T* dh, T* dA, int64_t r0,
                     int64_t r1) {
  using V = Vectorized<T>;
  const int64_t H = L.H, sw = L.W * H, sa = dA_blocks(L) * H;
  const V one(T(1));
  for (int64_t b = r0; b < r1; ++b) {
    const T* w = ws + b * sw;
    T* dhb = dh + b * H;
    T* da = dA + b * sa;
    for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
      const V g = load<T>(dhb, j, cnt) + load<T>(dout + b * H, j, cnt);
      switch (L.cell) {
        case kGruResetAfter: {
          const V r = load<T>(w, j, cnt), z = load<T>(w + H, j, cnt), n = load<T>(w + 2 * H, j, cnt);
          const V hn = load<T>(w + 3 * H, j, cnt), hp = load<T>(w + 4 * H, j, cnt);
          const V dan = g * (one - z) * (one - n * n);
          store(da, j, cnt, dan * hn * r * (one - r));
          store(da + H, j, cnt, g * (hp - n) * z * (one - z));
          store(da + 2 * H, j, cnt, dan * r);
          store(da + 3 * H, j, cnt, dan);
          store(dhb, j, cnt, g * z);
          break;
        }
        case kGruResetBefore: {
          const V z = load<T>(w + H, j, cnt), n = load<T>(w + 2 * H, j, cnt);
          const V hp = load<T>(w + 4 * H, j, cnt);
          store(da + H, j, cnt, g * (hp - n) * z * (one - z));
          store(da + 2 * H, j, cnt, g * (one - z) * (one - n * n));
          store(dhb, j, cnt, g * z);
          break;
        }
        case kMgu: {
          const V f = load<T>(w, j, cnt), n = load<T>(w + H, j, cnt), hp = load<T>(w + 3 * H, j, cnt);
          store(da + H, j, cnt, g * f * (one - n * n));
          store(da, j, cnt, g * (n - hp));  // df from the update; phase 2 adds the reset part
          store(dhb, j, cnt, g * (one - f));
          break;
        }
        default: {  // minGRU
          const V z = load<T>(w, j, cnt), n = load<T>(w + H, j, cnt), hp = load<T>(w + 2 * H, j, cnt);
          store(da, j, cnt, g * (n - hp) * z * (one - z));
          store(da + H, j, cnt, g * z * vg_grad_from_value(n));
          store(dhb, j, cnt, g * (one - z));
        }
      }
    });
  }
}

// Second pass of reset-before cells, after drh = da_n W_hn: the reset gate's share.
template <typename T>
void backward_phase2(const Layout& L, const T* ws, const T* drh, T* dh, T* dA, int64_t r0,
                     int64_t r1) {
  using V = Vectorized<T>;
  const int64_t H = L.H, sw = L.W * H, sa = dA_blocks(L) * H;
  const V one(T(1));
  for (int64_t b = r0; b < r1; ++b) {
    const T* w = ws + b * sw;
    T* dhb = dh + b * H;
    T* da = dA + b * sa;
    const T* d = drh + b * H;
    for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
      const V r = load<T>(w, j, cnt);  // r, or f for MGU
      const V hp = load<T>(w + (L.W - 1) * H, j, cnt);
      const V dv = load<T>(d, j, cnt);
      store(dhb, j, cnt, load<T>(dhb, j, cnt) + dv * r);
      V dr = dv * hp;
      if (L.cell == kMgu) dr = dr + load<T>(da, j, cnt);
      store(da, j, cnt, dr * r * (one - r));
    });
  }
}

// out[c] (+)= sum over rows of A[r, c], rows ascending: a fixed order, whatever the threads.
template <typename T>
void column_sums(const T* A, int64_t R, int64_t C, int64_t ld, T* out, bool accumulate) {
  PhaseTimer timer(kBiasSums);
  constexpr int64_t kCols = 64;
  const int64_t nb = (C + kCols - 1) / kCols;
  at::parallel_for(0, nb, R * kCols < 65536 ? nb : 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t c0 = bi * kCols, c1 = std::min(C, c0 + kCols);
      T acc[kCols];
      for (int64_t c = c0; c < c1; ++c) acc[c - c0] = T(0);
      for (int64_t r = 0; r < R; ++r) {
        const T* row = A + r * ld;
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += row[c];
      }
      for (int64_t c = c0; c < c1; ++c) out[c] = accumulate ? out[c] + acc[c - c0] : acc[c - c0];
    }
  });
}

// A run of dA columns [col, col + width) and the rows [row, row + width) of the parameter it
// is the gradient of.
struct Segment {
  int64_t col, row, width;
};

// Gradients of one layer-direction: the per-step recursion, chunk by chunk in reverse order of
// the forward pass, and for every chunk the parameter and input gradients from its dA while it
// is still in cache. When the steps are too small to share between threads, a second thread
// computes a chunk's gradients while the first runs the next chunk's recursion (two dA
// buffers). Either way each gradient sums the chunks in the same order: the results do not
// depend on the thread count.
// grads (out): dx, dW_ih, dW_hh, db_ih, db_hh (undefined when not wanted).
template <typename T>
void backward_impl(const Layout& L, const Steps& S, bool reverse, const at::Tensor& x,
                   const at::Tensor& w_ih, const c10::optional<at::Tensor>& w_hh,
                   const at::Tensor& ws, const at::Tensor& dout, at::Tensor& dh,
                   at::Tensor& dx, at::Tensor& dw_ih, at::Tensor& dw_hh, at::Tensor& db_ih,
                   at::Tensor& db_hh) {
  const int64_t H = L.H, N = S.N, I = x.size(1), sw = L.W * H;
  const int64_t sa = dA_blocks(L) * H;
  const T* whh = ptr_or_null<T>(w_hh);
  const bool before = L.cell == kGruResetBefore || L.cell == kMgu;
  const bool serial = steps_are_serial(L, N);
  // chunks of at most ~1 MB of dA; when the recursion is serial, at least 4 chunks (if the
  // sequence has the steps), so the gradient work can overlap it
  int64_t chunk_rows = rows_for<T>(sa, int64_t(1) << 20);
  if (serial) chunk_rows = std::min(chunk_rows, std::max<int64_t>(N, (S.R + 3) / 4));
  const auto chunks = make_chunks(S, chunk_rows);
  const int64_t nchunks = int64_t(chunks.size());
  int64_t max_rows = 0;
  for (const auto& c : chunks) max_rows = std::max(max_rows, c.r1 - c.r0);
  const auto blocks = row_blocks(L, N);
#ifdef _OPENMP
  const bool overlap = serial && blocks.size() == 1 && nchunks >= 2 && at::get_num_threads() >= 2;
#else
  const bool overlap = false;
#endif
  at::Tensor dA = at::empty({overlap ? 2 : 1, max_rows, sa}, x.options());
  at::Tensor drh = before ? at::empty({N, H}, x.options()) : at::Tensor();

  // which dA columns feed which parameter rows
  std::vector<Segment> x_seg, hprev_seg, rh_seg, bhh_seg;
  if (L.cell == kGruResetAfter) {
    x_seg = {{0, 0, 2 * H}, {3 * H, 2 * H, H}};
    hprev_seg = {{0, 0, 3 * H}};
    bhh_seg = {{0, 0, 3 * H}};
  } else {
    x_seg = {{(L.G + 1 - L.Gx) * H, 0, L.Gx * H}};
    if (L.K1 > 0) hprev_seg = {{0, 0, L.K1 * H}};
    if (L.cell != kMinGru) {
      rh_seg = {{L.G * H, L.K1 * H, H}};
      bhh_seg = {{L.gate_bias ? 0 : L.G * H, 0, (L.gate_bias ? L.G + 1 : 1) * H}};
    }
  }

  // the ci-th chunk to process: the forward order, backwards
  auto chunk_at = [&](int64_t ci) -> const Chunk& { return chunks[reverse ? ci : nchunks - 1 - ci]; };

  // the recursion over one chunk's steps for batch rows [lo, hi), writing their dA into dAc
  auto recurse_rows = [&](const Chunk& c, T* dAc, int64_t lo, int64_t hi) {
    T* dhp = dh.data_ptr<T>() + lo * H;
    T* drhp = before ? drh.data_ptr<T>() + lo * H : nullptr;
    for (int64_t i = 0; i < c.t1 - c.t0; ++i) {
      const int64_t t = reverse ? c.t0 + i : c.t1 - 1 - i;
      const int64_t n = std::min(S.n[t], hi) - lo, off = S.off[t] + lo;
      if (n <= 0) continue;
      const T* w = ws.data_ptr<T>() + off * sw;
      T* da = dAc + (off - c.r0) * sa;
      const T* go = dout.data_ptr<T>() + off * H;
      {
        PhaseTimer timer(kBackElementwise);
        for_rows(n, H, [&](int64_t r0, int64_t r1) { backward_phase1<T>(L, w, go, dhp, da, r0, r1); });
      }
      if (L.cell == kGruResetAfter) {  // dh += [da_r, da_z, da_n r] W_hh
        PhaseTimer timer(kBackStepGemm);
        gemm<T>(false, false, n, H, 3 * H, da, sa, whh, H, T(1), dhp, H);
      } else if (before) {
        // drh = da_n W_hn, then the reset gate's share, then dh += da_gates W_gates
        {
          PhaseTimer timer(kBackStepGemm);
          gemm<T>(false, false, n, H, H, da + L.G * H, sa, whh + L.K1 * H * H, H, T(0), drhp,
                  H);
        }
        {
          PhaseTimer timer(kBackElementwise);
          for_rows(n, H, [&](int64_t r0, int64_t r1) {
            backward_phase2<T>(L, w, drhp, dhp, da, r0, r1);
          });
        }
        PhaseTimer timer(kBackStepGemm);
        if (L.K1 > 0) gemm<T>(false, false, n, H, L.K1 * H, da, sa, whh, H, T(1), dhp, H);
      }
    }
  };
  auto recurse = [&](const Chunk& c, T* dAc) {
    for_row_blocks(blocks, [&](int64_t lo, int64_t hi) { recurse_rows(c, dAc, lo, hi); });
  };

  // one chunk's share of the parameter and input gradients (the first chunk initialises them)
  auto chunk_grads = [&](const Chunk& c, const T* dAc, bool first) {
    const int64_t rows = c.r1 - c.r0;
    const T* xc = x.data_ptr<T>() + c.r0 * I;
    const T* wsc = ws.data_ptr<T>() + c.r0 * sw;
    PhaseTimer timer(kWeightGemm);
    for (size_t k = 0; k < x_seg.size(); ++k) {
      const Segment& sg = x_seg[k];
      if (dx.defined())  // dx = sum over segments of dA_seg W_ih[seg rows]
        gemm<T>(false, false, rows, I, sg.width, dAc + sg.col, sa,
                w_ih.data_ptr<T>() + sg.row * I, I, T(k == 0 ? 0 : 1),
                dx.data_ptr<T>() + c.r0 * I, I);
      if (dw_ih.defined())
        gemm<T>(true, false, sg.width, I, rows, dAc + sg.col, sa, xc, I, T(first ? 0 : 1),
                dw_ih.data_ptr<T>() + sg.row * I, I);
      if (db_ih.defined())
        column_sums<T>(dAc + sg.col, rows, sg.width, sa, db_ih.data_ptr<T>() + sg.row, !first);
    }
    if (dw_hh.defined()) {
      for (const Segment& sg : hprev_seg)  // h_{t-1} is the workspace's last block
        gemm<T>(true, false, sg.width, H, rows, dAc + sg.col, sa, wsc + (L.W - 1) * H, sw,
                T(first ? 0 : 1), dw_hh.data_ptr<T>() + sg.row * H, H);
      for (const Segment& sg : rh_seg)  // r*h sits just before h_{t-1}
        gemm<T>(true, false, sg.width, H, rows, dAc + sg.col, sa, wsc + (L.W - 2) * H, sw,
                T(first ? 0 : 1), dw_hh.data_ptr<T>() + sg.row * H, H);
    }
    if (db_hh.defined())
      for (const Segment& sg : bhh_seg)
        column_sums<T>(dAc + sg.col, rows, sg.width, sa, db_hh.data_ptr<T>() + sg.row, !first);
  };

  if (!overlap) {
    for (int64_t ci = 0; ci < nchunks; ++ci) {
      recurse(chunk_at(ci), dA.data_ptr<T>());
      chunk_grads(chunk_at(ci), dA.data_ptr<T>(), ci == 0);
    }
    return;
  }
#ifdef _OPENMP
  // thread 0: the recursion; thread 1: the gradients of finished chunks. Chunk ci uses dA
  // buffer ci % 2, which thread 0 may refill only after thread 1 is done with chunk ci - 2.
  std::atomic<int64_t> recursed{0}, consumed{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  auto wait_until = [&](const std::atomic<int64_t>& counter, int64_t value) {
    while (counter.load(std::memory_order_acquire) < value && !failed.load()) std::this_thread::yield();
  };
#pragma omp parallel num_threads(2)
  {
    SingleThreadedBlas blas_guard;
    const int role = omp_get_thread_num();
    try {
      for (int64_t ci = 0; ci < nchunks && !failed.load(); ++ci) {
        T* buffer = dA.data_ptr<T>() + (ci % 2) * max_rows * sa;
        if (role == 0) {
          wait_until(consumed, ci - 1);
          recurse(chunk_at(ci), buffer);
          recursed.store(ci + 1, std::memory_order_release);
        } else {
          wait_until(recursed, ci + 1);
          chunk_grads(chunk_at(ci), buffer, ci == 0);
          consumed.store(ci + 1, std::memory_order_release);
        }
      }
    } catch (...) {
#pragma omp critical
      if (!error) error = std::current_exception();
      failed.store(true);
    }
  }
  if (error) std::rethrow_exception(error);
#endif
}

// ------------------------------------------------------------------------------ checks

void check_inputs(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
                  const c10::optional<at::Tensor>& w_hh, const c10::optional<at::Tensor>& b_ih,
                  const c10::optional<at::Tensor>& b_hh, const Layout& L, const Steps& S) {
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
  const int64_t gh = (L.cell == kGruResetAfter ? 3 : (L.cell == kMinGru ? 0 : L.K1 + 1)) * H;
  if (gh > 0) {
    TORCH_CHECK(w_hh.has_value() && w_hh->defined(), "grukit: weight_hh missing");
    check(*w_hh, "weight_hh", {gh, H});
  }
  if (b_ih.has_value() && b_ih->defined() && b_ih->numel() > 0) check(*b_ih, "bias_ih", {L.Gx * H});
  if (b_hh.has_value() && b_hh->defined() && b_hh->numel() > 0) {
    const int64_t bh = L.cell == kGruResetAfter ? 3 * H : (L.gate_bias ? L.G + 1 : 1) * H;
    check(*b_hh, "bias_hh", {bh});
  }
}

// ------------------------------------------------------------------------------ ops

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_forward(
    const at::Tensor& x, const at::Tensor& h0, const at::Tensor& w_ih,
    const c10::optional<at::Tensor>& w_hh, const c10::optional<at::Tensor>& b_ih,
    const c10::optional<at::Tensor>& b_hh, const at::Tensor& batch_sizes, at::IntArrayRef spec,
    bool reverse, bool save) {
  const Steps S = make_steps(batch_sizes);
  const Layout L = make_layout(spec, h0.size(1));
  check_inputs(x, h0, w_ih, w_hh, b_ih, b_hh, L, S);
  g_calls.fetch_add(1);
  SingleThreadedBlas blas_guard;
  at::Tensor out = at::empty({S.R, L.H}, x.options());
  at::Tensor h = h0.clone();
  at::Tensor ws =
      save ? pooled_empty({S.R, L.W * L.H}, x.options()) : at::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grukit_rnn_forward", [&] {
    forward_impl<scalar_t>(L, S, reverse, x, w_ih, w_hh, b_ih, b_hh, out, h, save ? &ws : nullptr);
  });
  return {out, h, ws};
}

// Gradients of one layer-direction. needs = (x, h0, weight_ih, weight_hh, bias_ih, bias_hh);
// outputs that are not needed (or whose parameter is absent) come back empty.
std::vector<at::Tensor> rnn_backward(const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                     const at::Tensor& x, const at::Tensor& h0,
                                     const at::Tensor& w_ih, const c10::optional<at::Tensor>& w_hh,
                                     const c10::optional<at::Tensor>& b_ih,
                                     const c10::optional<at::Tensor>& b_hh, const at::Tensor& ws,
                                     const at::Tensor& batch_sizes, at::IntArrayRef spec,
                                     bool reverse, at::IntArrayRef needs) {
  const Steps S = make_steps(batch_sizes);
  const Layout L = make_layout(spec, h0.size(1));
  check_inputs(x, h0, w_ih, w_hh, b_ih, b_hh, L, S);
  TORCH_CHECK(needs.size() == 6, "grukit: needs must have 6 entries");
  TORCH_CHECK(ws.numel() == S.R * L.W * L.H, "grukit: the workspace does not match this call");
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.sizes() == at::IntArrayRef({S.R, L.H}) &&
                  grad_hn.is_contiguous() && grad_hn.sizes() == at::IntArrayRef({S.N, L.H}),
              "grukit: gradient shapes do not match");
  SingleThreadedBlas blas_guard;
  const int64_t I = x.size(1), R = S.R;
  auto opts = x.options();
  at::Tensor dh = grad_hn.clone();
  const bool has_bih = b_ih.has_value() && b_ih->defined() && b_ih->numel() > 0;
  const bool has_bhh = b_hh.has_value() && b_hh->defined() && b_hh->numel() > 0;
  const bool has_whh = w_hh.has_value() && w_hh->defined() && w_hh->numel() > 0;
  at::Tensor dx = needs[0] ? at::empty({R, I}, opts) : at::Tensor();
  at::Tensor dw_ih = needs[2] ? at::empty(w_ih.sizes(), opts) : at::Tensor();
  at::Tensor dw_hh = needs[3] && has_whh ? at::empty(w_hh->sizes(), opts) : at::Tensor();
  at::Tensor db_ih = needs[4] && has_bih ? at::empty(b_ih->sizes(), opts) : at::Tensor();
  at::Tensor db_hh = needs[5] && has_bhh ? at::empty(b_hh->sizes(), opts) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "grukit_rnn_backward", [&] {
    backward_impl<scalar_t>(L, S, reverse, x, w_ih, w_hh, ws, grad_out, dh, dx, dw_ih, dw_hh,
                            db_ih, db_hh);
  });
  at::Tensor empty = at::empty({0}, opts);
  std::vector<at::Tensor> grads = {dx, needs[1] ? dh : at::Tensor(), dw_ih, dw_hh, db_ih, db_hh};
  for (auto& g : grads)
    if (!g.defined()) g = empty;
  return grads;
}

// The matrix products of a `gru` layer and nothing else, through torch's own at::mm (the
// benchmark's floor). x: (T*N, I), h: (N, H), hs: (T*N, H) stand-in states, dA: (T*N, 3H)
// stand-in pre-activation gradients. Forward: x W_ih^T, then T steps of h W_hh^T. Backward:
// T steps of dA_t W_hh, then dA^T hs, dA^T x and dA W_ih.
void gemm_floor(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih,
                const at::Tensor& w_hh, const at::Tensor& hs, const at::Tensor& dA, bool backward) {
  const int64_t N = h.size(0), T = x.size(0) / N;
  at::Tensor gx = at::mm(x, w_ih.t());
  at::Tensor g1 = at::empty({N, w_hh.size(0)}, h.options());
  for (int64_t t = 0; t < T; ++t) at::mm_out(g1, h, w_hh.t());
  if (!backward) return;
  at::Tensor dh = at::empty_like(h);
  for (int64_t t = 0; t < T; ++t) at::mm_out(dh, dA.narrow(0, t * N, N), w_hh);
  at::mm(dA.t(), hs);
  at::mm(dA.t(), x);
  at::mm(dA, w_ih);
}

int64_t call_count() { return g_calls.load(); }

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

}  // namespace
}  // namespace grukit

TORCH_LIBRARY(grukit, m) {
  m.def(
      "rnn_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor? w_hh, Tensor? b_ih, Tensor? b_hh, "
      "Tensor batch_sizes, int[] spec, bool reverse, bool save) -> (Tensor, Tensor, Tensor)");
  m.def(
      "rnn_backward(Tensor grad_out, Tensor grad_hn, Tensor x, Tensor h0, Tensor w_ih, "
      "Tensor? w_hh, Tensor? b_ih, Tensor? b_hh, Tensor ws, Tensor batch_sizes, int[] spec, "
      "bool reverse, int[] needs) -> Tensor[]");
  m.def(
      "gemm_floor(Tensor x, Tensor h, Tensor w_ih, Tensor w_hh, Tensor hs, Tensor dA, "
      "bool backward) -> ()");
  m.def("call_count", &grukit::call_count);
  m.def("set_profiling", &grukit::set_profiling);
  m.def("profile", &grukit::profile);
  m.def("uses_blas", &grukit::uses_blas);
}

TORCH_LIBRARY_IMPL(grukit, CPU, m) {
  m.impl("rnn_forward", &grukit::rnn_forward);
  m.impl("rnn_backward", &grukit::rnn_backward);
  m.impl("gemm_floor", &grukit::gemm_floor);
}

