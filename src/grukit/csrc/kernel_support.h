// Support code of the fused kernels: the phase profiler, the workspace block pool, the GEMM
// layer (BLAS single-threaded inside shape-determined parallel splits), row and lane loops,
// column sums and the vector math. Included by fused_rnn.cpp, the one translation unit.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
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
// steps x 256 units) and lives from one forward to its backward; the kernels' outputs and
// chunk buffers (input projections, pre-activation gradients) are a megabyte or more each
// call. Fresh memory from the OS costs a page fault and a zeroing per 4 KB page: 15% of a
// training step at S5 for the workspace alone, and at S2 (16 x 200 x 46) the buffers of one
// layer-norm training step took about as long as its layer-norm arithmetic. So buffers of
// kMinBytes or more come from a small pool of blocks this process has used before (new blocks
// of 2 MB or more ask for transparent huge pages); a block goes back to the pool when its
// tensor is freed, and the pool keeps at most kKeep free blocks and kKeepBytes in all.

class BlockPool {
 public:
  static constexpr size_t kMinBytes = size_t(256) << 10;  // smaller buffers: at::empty
  static constexpr size_t kKeep = 16;                      // free blocks kept at most
  static constexpr size_t kKeepBytes = size_t(512) << 20;  // and free bytes kept at most

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
        free_bytes_ -= best->second;
        free_.erase(best);
        return p;
      }
    }
    constexpr size_t kHuge = size_t(2) << 20, kPage = size_t(64) << 10;
    const size_t unit = bytes >= kHuge ? kHuge : kPage;
    *capacity = (bytes + unit - 1) / unit * unit;
    void* p = nullptr;
    if (posix_memalign(&p, unit == kHuge ? kHuge : 64, *capacity) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (unit == kHuge) madvise(p, *capacity, MADV_HUGEPAGE);
#endif
    return p;
  }

  void put(void* p, size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace_back(p, capacity);
    free_bytes_ += capacity;
    while (free_.size() > kKeep || free_bytes_ > kKeepBytes) {  // drop the oldest
      std::free(free_.front().first);
      free_bytes_ -= free_.front().second;
      free_.erase(free_.begin());
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::pair<void*, size_t>> free_;
  size_t free_bytes_ = 0;
};

BlockPool& block_pool() {
  static BlockPool* pool = new BlockPool();  // never destroyed: tensors may outlive statics
  return *pool;
}

// at::empty for large buffers (the kernels' outputs and scratch), from the block pool.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  const size_t bytes = size_t(c10::multiply_integers(sizes)) * opts.dtype().itemsize();
  if (bytes < BlockPool::kMinBytes) return at::empty(sizes, opts);
  size_t capacity = 0;
  void* p = block_pool().get(bytes, &capacity);
  return at::from_blob(
      p, sizes, [capacity](void* q) { block_pool().put(q, capacity); }, opts);
}

// ------------------------------------------------------------------------------- threads
// The kernels' results do not depend on the thread count, so every call may run on one thread
// or on all that torch allows, whichever has lately been faster for calls of the same kind
// (op and shape). On a quiet machine that is usually all threads; beside busy processes, or a
// thread pool that spins on the other cores, a second thread that is descheduled stalls every
// step's barrier, and one thread is faster. Each kind keeps a moving average of both choices'
// times and runs on all threads unless one thread is clearly (15%) faster; the other choice is
// re-timed (two calls, the faster kept) once every `interval` calls (16, doubling to 256 while
// the choice stands) or after 10 s and 16 calls, so a change in the machine's load is
// followed. Policy "all" always uses torch's thread count (as the kernels did before).

class ThreadTuner {
 public:
  enum Policy : int { kAdaptive = 0, kAll = 1, kOne = 2 };

  // The thread count for a call of kind `key` when torch allows `allowed`; returns the arm
  // (0: one thread, 1: all) through `arm`, -1 when there is no choice to learn from.
  int choose(uint64_t key, int allowed, int* arm) {
    *arm = -1;
    const int policy = policy_.load(std::memory_order_relaxed);
    if (allowed <= 1 || policy == kAll) return allowed;
    if (policy == kOne) return 1;
    std::lock_guard<std::mutex> lock(mutex_);
    if (kinds_.size() > 4096) kinds_.clear();  // bounded, whatever the callers' shapes
    Kind& k = kinds_[key];
    ++k.calls;
    int a;
    if (k.samples[0] < kWarm || k.samples[1] < kWarm) {
      a = k.samples[0] <= k.samples[1] ? 0 : 1;
    } else {
      const auto now = std::chrono::steady_clock::now();
      // the time rule waits for kFirstInterval calls too: calls of a second or more (or a
      // benchmark that interleaves many kinds) would otherwise re-time every other call
      if (k.calls >= k.next_probe || (now - k.last_probe > std::chrono::seconds(10) &&
                                      k.calls - k.probe_calls >= kFirstInterval)) {
        a = 1 - k.best;
        k.probing = true;
        k.last_probe = now;
        k.probe_calls = k.calls;
      } else {
        a = k.best;
      }
    }
    *arm = a;
    return a == 0 ? 1 : allowed;
  }

  void record(uint64_t key, int arm, double ns) {
    if (arm < 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    Kind& k = kinds_[key];
    ++chosen_[arm];
    const bool probe = k.probing;
    k.probing = false;
    if (k.seen[arm]++ == 0) return;  // a kind's first call per arm warms caches and pools
    // Timing noise only ever adds time (an interrupt, a neighbour's burst): a probe of the
    // other choice takes two calls and keeps the faster; the choice in use is averaged with
    // each sample capped at twice the average, so one spike moves it little and a lasting
    // slowdown (a busy neighbour) still shows within a few calls.
    if (probe) {
      k.ema[arm] = k.confirming ? std::min(k.ema[arm], ns) : ns;
    } else {
      k.ema[arm] = k.samples[arm] == 0 ? ns : 0.7 * k.ema[arm] + 0.3 * std::min(ns, 2 * k.ema[arm]);
    }
    ++k.samples[arm];
    if (k.samples[0] == 0 || k.samples[1] == 0) return;
    // All threads unless one is clearly faster (a second thread's gain can be small and the
    // timings noisy: flapping between the two would cost more than either).
    const int want = k.best == 1 ? (k.ema[0] < kClearlyFaster * k.ema[1] ? 0 : 1)
                                 : (k.ema[1] < k.ema[0] ? 1 : 0);
    if (!probe) {
      k.best = want;  // the choice in use got slower (a busy neighbour): follow at once
      return;
    }
    if (!k.confirming) {  // the probe's second call comes next
      k.confirming = true;
      k.next_probe = k.calls + 1;
      return;
    }
    k.confirming = false;
    const bool switched = want != k.best;
    k.best = want;
    k.interval = switched ? kFirstInterval : std::min(k.interval * 2, kMaxInterval);
    k.next_probe = k.calls + k.interval;
  }

  void set_policy(int p) {
    TORCH_CHECK(p >= 0 && p <= 2, "grukit: thread policy must be 0 (adaptive), 1 (all), 2 (one)");
    std::lock_guard<std::mutex> lock(mutex_);
    policy_.store(p);
    kinds_.clear();
    chosen_[0] = chosen_[1] = 0;
  }
  int policy() const { return policy_.load(); }
  // per kind learnt: mean ns on one thread, on all, and the calls seen
  std::vector<double> kinds() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<double> out;
    for (const auto& kv : kinds_) {
      out.push_back(kv.second.ema[0]);
      out.push_back(kv.second.ema[1]);
      out.push_back(double(kv.second.calls));
    }
    return out;
  }
  // calls run on one thread and on all threads under the adaptive policy since set_policy
  std::vector<int64_t> chosen() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {chosen_[0], chosen_[1]};
  }

 private:
  static constexpr int kWarm = 2;
  static constexpr double kClearlyFaster = 0.85;
  static constexpr int64_t kFirstInterval = 16, kMaxInterval = 256;
  struct Kind {
    double ema[2] = {0, 0};
    int64_t seen[2] = {0, 0}, samples[2] = {0, 0};
    int64_t calls = 0, next_probe = 0, interval = kFirstInterval;
    int64_t probe_calls = 0;  // calls at the last probe
    int best = 1;
    bool confirming = false;
    bool probing = false;
    std::chrono::steady_clock::time_point last_probe = std::chrono::steady_clock::now();
  };
  std::mutex mutex_;
  std::atomic<int> policy_{kAdaptive};
  std::unordered_map<uint64_t, Kind> kinds_;
  int64_t chosen_[2] = {0, 0};
};
ThreadTuner g_threads;

// A call's kind: the op and what sets its cost. Sizes that vary from batch to batch (the
// batch and the rows of a packed sequence) go in half-octave buckets, so that kinds repeat.
inline int64_t size_bucket(int64_t n) { return n <= 1 ? 0 : int64_t(2.0 * std::log2(double(n))); }

inline uint64_t kind_key(std::initializer_list<int64_t> parts, at::IntArrayRef more = {}) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the parts' bytes
  auto mix = [&](int64_t v) {
    for (int b = 0; b < 8; ++b) h = (h ^ uint64_t((v >> (8 * b)) & 0xff)) * 1099511628211ull;
  };
  for (int64_t v : parts) mix(v);
  for (int64_t v : more) mix(v);
  return h;
}

// Runs the calling op on the tuner's thread count for its kind, and times it.
class TunedThreads {
 public:
  explicit TunedThreads(uint64_t key) : key_(key) {
    at::internal::lazy_init_num_threads();
    allowed_ = at::get_num_threads();
    const int n = g_threads.choose(key, allowed_, &arm_);
#ifdef _OPENMP
    if (n != allowed_) omp_set_num_threads(n);
#endif
    start_ = std::chrono::steady_clock::now();
  }
  ~TunedThreads() {
    const auto ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start_);
#ifdef _OPENMP
    if (omp_get_max_threads() != allowed_) omp_set_num_threads(allowed_);
#endif
    if (!std::uncaught_exceptions()) g_threads.record(key_, arm_, ns.count());
  }
  TunedThreads(const TunedThreads&) = delete;
  TunedThreads& operator=(const TunedThreads&) = delete;

 private:
  uint64_t key_;
  int allowed_ = 1, arm_ = -1;
  std::chrono::steady_clock::time_point start_;
};

// A counter one thread raises and another waits on: a short spin, then a sleep on a condition
// variable, so a waiter never burns a core that the thread it waits for may need.
class Progress {
 public:
  void publish(int64_t value) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      value_.store(value, std::memory_order_release);
    }
    cv_.notify_all();
  }
  void abort() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      aborted_.store(true);
    }
    cv_.notify_all();
  }
  // whether the value has reached `target` (no waiting)
  bool reached(int64_t target) const { return value_.load(std::memory_order_acquire) >= target; }
  // true once the value reaches `target`; false if abort() was called first
  bool wait_for(int64_t target) {
    for (int i = 0; i < kSpins; ++i) {
      if (value_.load(std::memory_order_acquire) >= target) return true;
      if (aborted_.load(std::memory_order_relaxed)) return false;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return value_.load(std::memory_order_acquire) >= target || aborted_.load(); });
    return !aborted_.load();
  }

 private:
  static constexpr int kSpins = 2000;
  std::atomic<int64_t> value_{0};
  std::atomic<bool> aborted_{false};
  std::mutex mutex_;
  std::condition_variable cv_;
};

// ------------------------------------------------------------------------------------ GEMM

bool blas_available() { return sgemm_ != nullptr && dgemm_ != nullptr; }

// The float GEMM provider. kBlas: the sgemm torch exports (MKL in torch's x86 wheels, which runs
// its AVX2 code on AMD CPUs). kBrgemm: oneDNN's batch-reduce GEMM micro-kernel through torch's
// at::native::cpublas::brgemm (JIT-compiled per shape and cached, one thread, B as stored), for
// products without a transposed operand whose B fits in cache (kBrgemmMaxB elements); it ran
// the kernels' block shapes at 1.09-1.59x MKL's speed on an AMD EPYC with AVX-512, one thread
// (benchmarks/gemm_providers.py). float64 always uses BLAS. The choice depends on the CPU only
// (never on timing), so a machine always computes the same bits.
enum GemmProvider : int { kBlas = 0, kBrgemm = 1 };
constexpr int64_t kBrgemmMaxB = int64_t(1) << 20;
std::atomic<int> g_gemm_provider{-1};  // -1: not chosen yet (the CPU's default on first use)
std::atomic<int64_t> g_gemm_calls[2];  // serial products per provider (the tests' witness)
std::atomic<int64_t> g_brgemm_at_b_calls{0};  // of them, brgemm's A^T B (weight gradients)

// Whether brgemm runs here and gives the right product (torch builds without oneDNN's
// micro-kernels raise; a tiny product is checked once).
bool brgemm_works() {
  static const bool works = [] {
    try {
      const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
      float c[4] = {0, 0, 0, 0};
      at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, false);
      return c[0] == 19 && c[1] == 22 && c[2] == 43 && c[3] == 50;
    } catch (...) {
      return false;
    }
  }();
  return works;
}

// The CPU's default: brgemm where it runs on AVX-512 (where it was measured to win), else BLAS.
int default_gemm_provider() {
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f") && brgemm_works()) return kBrgemm;
#endif
  return blas_available() || !brgemm_works() ? kBlas : kBrgemm;
}

int gemm_provider() {
  int p = g_gemm_provider.load(std::memory_order_relaxed);
  if (p < 0) {
    p = default_gemm_provider();
    g_gemm_provider.store(p);
  }
  return p;
}

// Whether float products go to brgemm at all (torch.backends.mkldnn.enabled = False turns
// brgemm into a BLAS call: it is not taken then).
inline bool brgemm_on() {
  return gemm_provider() == kBrgemm && at::globalContext().userEnabledMkldnn();
}

// Whether a float product C[M,N] = A[M,K] B[K,N] (both as stored) goes to brgemm.
inline bool brgemm_takes(int64_t N, int64_t K) { return N * K <= kBrgemmMaxB && brgemm_on(); }

// Column-major BLAS call.
inline void blas_gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda,
                      const float* b, int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void blas_gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a,
                      int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// One row of C (a streaming step at batch 1): c[n] = beta c[n] + sum_k a[k] op(B)[k, n], with
// a[k] = A[k * inc]; op(B) = B^T for B row-major (N, K) (tb: one dot product per n, four rows
// at a time so each load of a serves four), else B (K, N) (a scaled row of B added per k).
// sgemm would pack all of B on every call, and MKL's sgemv streamed B more slowly than these
// loops on the AMD EPYC. Sums run in a fixed order.
template <typename T>
void gemv_row(bool tb, int64_t N, int64_t K, const T* A, int64_t inc, const T* B, int64_t ldb,
              T beta, T* C) {
  using V = Vectorized<T>;
  constexpr int64_t W = V::size();
  T abuf[1024];
  std::vector<T> aheap;
  const T* a = A;
  if (inc != 1) {  // gather a strided a once
    T* dst = abuf;
    if (K > 1024) {
      aheap.resize(K);
      dst = aheap.data();
    }
    for (int64_t k = 0; k < K; ++k) dst[k] = A[k * inc];
    a = dst;
  }
  auto finish = [&](int64_t n, T dot) { C[n] = beta == T(0) ? dot : beta * C[n] + dot; };
  if (tb) {
    int64_t n = 0;
    for (; n + 4 <= N; n += 4) {
      const T* b0 = B + n * ldb;
      const T *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
      V s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
      int64_t k = 0;
      for (; k + W <= K; k += W) {
        const V av = V::loadu(a + k);
        s0 = at::vec::fmadd(V::loadu(b0 + k), av, s0);
        s1 = at::vec::fmadd(V::loadu(b1 + k), av, s1);
        s2 = at::vec::fmadd(V::loadu(b2 + k), av, s2);
        s3 = at::vec::fmadd(V::loadu(b3 + k), av, s3);
      }
      T t[4] = {at::vec::vec_reduce_all<T>([](V x, V y) { return x + y; }, s0),
                at::vec::vec_reduce_all<T>([](V x, V y) { return x + y; }, s1),
                at::vec::vec_reduce_all<T>([](V x, V y) { return x + y; }, s2),
                at::vec::vec_reduce_all<T>([](V x, V y) { return x + y; }, s3)};
      for (; k < K; ++k) {
        t[0] += b0[k] * a[k];
        t[1] += b1[k] * a[k];
        t[2] += b2[k] * a[k];
        t[3] += b3[k] * a[k];
      }
      for (int j = 0; j < 4; ++j) finish(n + j, t[j]);
    }
    for (; n < N; ++n) {
      const T* b0 = B + n * ldb;
      V s0(T(0));
      int64_t k = 0;
      for (; k + W <= K; k += W) s0 = at::vec::fmadd(V::loadu(b0 + k), V::loadu(a + k), s0);
      T t = at::vec::vec_reduce_all<T>([](V x, V y) { return x + y; }, s0);
      for (; k < K; ++k) t += b0[k] * a[k];
      finish(n, t);
    }
    return;
  }
  // B (K, N): c = beta c + sum_k a[k] B[k, :]
  int64_t n = 0;
  for (; n + W <= N; n += W) {
    V acc = beta == T(0) ? V(T(0)) : V::loadu(C + n) * V(beta);
    for (int64_t k = 0; k < K; ++k) acc = at::vec::fmadd(V(a[k]), V::loadu(B + k * ldb + n), acc);
    acc.store(C + n);
  }
  for (; n < N; ++n) {
    T acc = beta == T(0) ? T(0) : beta * C[n];
    for (int64_t k = 0; k < K; ++k) acc += a[k] * B[k * ldb + n];
    C[n] = acc;
  }
}

// C[M,N] = A^T B + beta C (beta 0 or 1) through brgemm, for A (K, M) and B (K, N) as stored
// (the weight gradients: A the pre-activation gradients, B the layer's inputs or states).
// brgemm reads its second operand as stored, so this computes C^T = B^T A: B^T is formed kb
// rows of B at a time in a thread-local buffer (small, since N is the narrow side), each block's
// product is added into a (N, M) buffer, and C takes its transpose. The blocks depend on the
// shape only. Returns false (nothing done) where the shape does not suit.
constexpr int64_t kBrgemmAtBMaxN = 64;
inline bool brgemm_at_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  const int64_t kb = std::min<int64_t>(K, std::max<int64_t>(64, (int64_t(1) << 17) / N));
  // measured (benchmarks/kernel_ab.py, AVX-512 EPYC): 0.85-0.93x the BLAS step at S3 (N = 64
  // and 8), 1.15-1.34x slower at S4 and S5 (N = 256, 88, 128), so narrow B only
  if (N > kBrgemmAtBMaxN || M * kb > kBrgemmMaxB) return false;
  thread_local std::vector<float> bt, ct;
  bt.resize(size_t(N * kb));
  ct.resize(size_t(N * M));
  for (int64_t k0 = 0; k0 < K; k0 += kb) {
    const int64_t kn = std::min(kb, K - k0);
    for (int64_t k = 0; k < kn; ++k) {
      const float* row = B + (k0 + k) * ldb;
      for (int64_t n = 0; n < N; ++n) bt[size_t(n * kn + k)] = row[n];
    }
    at::native::cpublas::brgemm(N, M, kn, kn, lda, M, k0 > 0, bt.data(), A + k0 * lda,
                                ct.data(), false);
  }
  for (int64_t m = 0; m < M; ++m) {
    float* c = C + m * ldc;
    if (beta == 0.f)
      for (int64_t n = 0; n < N; ++n) c[n] = ct[size_t(n * M + m)];
    else
      for (int64_t n = 0; n < N; ++n) c[n] += ct[size_t(n * M + m)];
  }
  return true;
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
  if (M == 1) {
    gemv_row(tb, N, K, A, ta ? lda : 1, B, ldb, beta, C);
    return;
  }
  if constexpr (std::is_same_v<T, float>) {
    if (!ta && !tb && (beta == T(0) || beta == T(1)) && brgemm_takes(N, K)) {
      g_gemm_calls[kBrgemm].fetch_add(1, std::memory_order_relaxed);
      at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, beta == T(1), A, B, C, false);
      return;
    }
    if (ta && !tb && (beta == T(0) || beta == T(1)) && brgemm_on() &&
        brgemm_at_b(M, N, K, A, lda, B, ldb, beta, C, ldc)) {
      g_gemm_calls[kBrgemm].fetch_add(1, std::memory_order_relaxed);
      g_brgemm_at_b_calls.fetch_add(1, std::memory_order_relaxed);
      return;
    }
  }
  g_gemm_calls[kBlas].fetch_add(1, std::memory_order_relaxed);
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

// Runs role(0) and role(1) on the two threads of one parallel region, each with BLAS
// single-threaded (the overlaps of fused_rnn.cpp). The first exception sets `failed` and aborts
// the given counters, so that a thread waiting on one returns, and is rethrown here.
template <typename F>
void run_two_roles(std::initializer_list<Progress*> counters, std::atomic<bool>& failed,
                   const F& role) {
#ifdef _OPENMP
  std::exception_ptr error;
#pragma omp parallel num_threads(2)
  {
    SingleThreadedBlas blas_guard;
    try {
      role(omp_get_thread_num());
    } catch (...) {
#pragma omp critical
      if (!error) error = std::current_exception();
      failed.store(true);
      for (Progress* p : counters) p->abort();
    }
  }
  if (error) std::rethrow_exception(error);
#else
  (void)counters, (void)failed, (void)role;
  TORCH_CHECK(false, "grukit: run_two_roles needs OpenMP");
#endif
}

// The same product, split into at most 8 blocks of rows or columns of C, chosen from the shape
// only, run in parallel. Blocks stay at least 64 wide and 1M multiply-adds big, so each BLAS
// call stays efficient and a split pays for its synchronisation and cache traffic.
// One row times a row-major B^T (a streaming step's product with a weight) is the exception:
// gemv_row computes every c[n] as its own dot product, the same way in whichever block it
// falls, so that split follows the thread count (one block per thread, each at least
// kRowWork multiply-adds: it streams B from cache or memory, one load per multiply-add).
template <typename T>
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  constexpr int64_t kBlockWork = int64_t(1) << 20, kRowWork = int64_t(1) << 17;
  constexpr int64_t kMaxBlocks = 8, kMinSide = 64;
  const bool split_rows = M >= N;
  const int64_t side = split_rows ? M : N;
  const int64_t work = M * N * K;
  if (M == 1 && tb) {
    const int64_t parts =
        at::in_parallel_region() ? 1 : std::min<int64_t>({at::get_num_threads(), work / kRowWork, N / kMinSide});
    if (parts > 1) {
      const int64_t block = ((N + parts - 1) / parts + 3) / 4 * 4;
      at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t p = p0; p < p1; ++p) {
          const int64_t n0 = p * block, n1 = std::min(N, n0 + block);
          if (n0 < n1)
            gemm_serial(ta, tb, 1, n1 - n0, K, A, lda, B + n0 * ldb, ldb, beta, C + n0, ldc);
        }
      });
      return;
    }
  }
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

// The product C[M, n] = A[M, K] W[r0 : r0 + n, :]^T with a row-major weight W (R, K): BLAS
// transposes for free, brgemm reads B as stored, so for it W^T is copied once per kernel call
// (the weights are constant over the sequence) and the product reads that copy.
template <typename T>
struct WeightT {
  const T* w = nullptr;
  int64_t R = 0, K = 0;
  at::Tensor wt;  // W^T (K, R), when a product of this weight goes to brgemm
  WeightT() = default;
  // max_rows: the most rows of A any product will have; with one row, all products take
  // gemv_row and the copy is skipped (it cost more than a streaming step's arithmetic)
  explicit WeightT(const at::Tensor& W, int64_t max_rows = 2)
      : w(W.data_ptr<T>()), R(W.size(0)), K(W.size(1)) {
    if constexpr (std::is_same_v<T, float>)
      if (max_rows > 1 && brgemm_takes(R, K)) wt = W.t().contiguous();
  }
  void gemm_rows(int64_t M, int64_t r0, int64_t n, const T* A, int64_t lda, T* C,
                 int64_t ldc) const {
    if (wt.defined() && M > 1)  // one row: gemv_row's dot products with rows of W are faster
      gemm<T>(false, false, M, n, K, A, lda, wt.data_ptr<T>() + r0, R, T(0), C, ldc);
    else
      gemm<T>(false, true, M, n, K, A, lda, w + r0 * K, K, T(0), C, ldc);
  }
};

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

}  // namespace
}  // namespace grukit
