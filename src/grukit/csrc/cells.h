// The cell families of the fused kernels: what each saves for backward (named blocks of the
// workspace) and its forward and backward lane math, one policy per family. The in-cell options
// enter in three shared places: the state the matmuls read (h~ = recurrent mask * h, formed by
// the loop), the candidate (`candidate()`: n~ = mask * n) and one post-update step
// (`post_update()`: zoneout). Layer normalisation is one row step (`layer_norm_rows`) that the
// loop applies to the input projection and to the per-step GEMM results, with its backward.
// Included by fused_rnn.cpp only. The math of every variant is defined in grukit/variants.py and
// grukit/reference.py; this is its fast twin.
#pragma once

#include "kernel_support.h"

namespace grukit {
namespace {

enum CellKind : int64_t { kGruResetAfter = 0, kGruResetBefore = 1, kMgu = 2, kMinGru = 3 };

// Which blocks a variant has, where they sit, and which options are on. Offsets are in units of
// H values; -1 marks an absent block.
struct Layout {
  int64_t cell;
  int64_t G;       // number of gates (2: r, z; 1: f or minGRU's z)
  bool gate_x;     // gates read x: weight_ih = [gates..., n], else [n]
  bool gate_h;     // gates read h: weight_hh starts with the gates
  bool gate_bias;  // gates have a bias in bias_hh: bias_hh = [gates..., n], else [n]
  int64_t H;
  // options
  bool recurrent_mask = false;  // recurrent dropout: the matmuls read h~ = m * h
  bool layer_norm = false;      // normalised input and recurrent pre-activations
  // derived
  int64_t Gx;  // blocks in weight_ih
  int64_t K1;  // blocks in the first per-step GEMM (on h~)
  int64_t Kh;  // recurrent pre-activation blocks (rows of weight_hh / H)
  // the workspace row: named blocks, then one rstd per normalised block
  int64_t ws_r = -1, ws_z = -1, ws_n = -1;  // gates (MGU's f in ws_r, minGRU's z in ws_z), n
  int64_t ws_hn = -1;     // reset-after: U_n h~ + b_hn (normalised when layer_norm)
  int64_t ws_rh = -1;     // reset-before: r * h~, the candidate GEMM's input
  int64_t ws_hprev = -1;  // h_{t-1}
  int64_t ws_hd = -1;     // h~_{t-1} = m * h_{t-1} (recurrent dropout)
  int64_t ws_xhat_x = -1, ws_xhat_h = -1;  // normalised pre-activations (Gx, then Kh blocks)
  int64_t W = 0;          // blocks per workspace row
  int64_t n_stats = 0;    // rstd values after the blocks: Gx (input side), then Kh
  // the rows of dA, the pre-activation gradients (see dA_blocks in fused_rnn.cpp)
  int64_t da_base = 0;     // the blocks of the plain cell
  int64_t da_du = -1;      // layer_norm: gradients of the raw recurrent products (Kh blocks)
  int64_t da_dyx = -1;     // layer_norm: dy * xhat of the recurrent blocks (Kh), for the gains
  int64_t da_width = 0;    // blocks per dA row

  int64_t x_n() const { return gate_x ? G * H : 0; }        // n's columns in weight_ih
  int64_t bhh_n() const { return gate_bias ? G * H : 0; }  // n's entries in bias_hh
  int64_t ws_stride() const { return W * H + n_stats; }
  bool before() const { return cell == kGruResetBefore || cell == kMgu; }
  // the saved source of the recurrent matmuls: h~ with recurrent dropout, else h_{t-1}
  int64_t ws_src() const { return recurrent_mask ? ws_hd : ws_hprev; }
};

Layout make_layout(at::IntArrayRef spec, int64_t H, bool recurrent_mask, bool layer_norm) {
  TORCH_CHECK(spec.size() == 5, "grukit: layout spec must have 5 entries");
  Layout L{};
  L.cell = spec[0];
  L.G = spec[1];
  L.gate_x = spec[2] != 0;
  L.gate_h = spec[3] != 0;
  L.gate_bias = spec[4] != 0;
  L.H = H;
  L.recurrent_mask = recurrent_mask;
  L.layer_norm = layer_norm;
  TORCH_CHECK(L.cell >= 0 && L.cell <= 3, "grukit: unknown cell kind ", L.cell);
  L.Gx = L.gate_x ? L.G + 1 : 1;
  int64_t w = 0;
  auto block = [&w]() { return w++; };
  switch (L.cell) {
    case kGruResetAfter:
      TORCH_CHECK(L.G == 2 && L.gate_x && L.gate_h, "grukit: reset-after needs x- and h-fed gates");
      L.K1 = 3;
      L.Kh = 3;
      L.ws_r = block(), L.ws_z = block(), L.ws_n = block(), L.ws_hn = block();
      L.da_base = 4;
      break;
    case kGruResetBefore:
      TORCH_CHECK(L.G == 2, "grukit: GRU cells have two gates");
      L.K1 = L.gate_h ? 2 : 0;
      L.Kh = L.K1 + 1;
      L.ws_r = block(), L.ws_z = block(), L.ws_n = block(), L.ws_rh = block();
      L.da_base = 3;
      break;
    case kMgu:
      TORCH_CHECK(L.G == 1, "grukit: MGU cells have one gate");
      L.K1 = L.gate_h ? 1 : 0;
      L.Kh = L.K1 + 1;
      L.ws_r = block(), L.ws_n = block(), L.ws_rh = block();
      L.da_base = 2;
      break;
    default:
      TORCH_CHECK(L.G == 1 && L.gate_x && !L.gate_h, "grukit: minGRU gates read x only");
      TORCH_CHECK(!recurrent_mask, "grukit: minGRU has no recurrent matmul to mask");
      L.K1 = 0;
      L.Kh = 0;
      L.ws_z = block(), L.ws_n = block();
      L.da_base = 2;
  }
  L.ws_hprev = block();
  if (recurrent_mask) L.ws_hd = block();
  if (layer_norm) {
    L.ws_xhat_x = w;
    w += L.Gx;
    L.ws_xhat_h = w;
    w += L.Kh;
    L.n_stats = L.Gx + L.Kh;
  }
  L.W = w;
  L.da_width = L.da_base;
  if (layer_norm && L.Kh > 0) {
    L.da_du = L.da_base;
    L.da_dyx = L.da_base + L.Kh;
    L.da_width += 2 * L.Kh;
  }
  return L;
}

// ------------------------------------------------------------------------ per-row views

// What one row of one step reads and writes in the forward element-wise passes.
template <typename T>
struct FwdRow {
  const T* gx;    // (Gx*H) input projection, normalised when layer_norm (no bias yet)
  const T* bih;   // bias_ih or null
  const T* bhh;   // bias_hh or null
  const T* g1;    // (K1*H) first GEMM on h~ (normalised, times its gain), or null
  const T* c2;    // (H) candidate GEMM on r * h~ (reset-before)
  const T* src;   // (H) h~, the state the matmuls read (h without recurrent dropout)
  const T* cand;  // (H) candidate-dropout mask, or null
  const T* zone;  // (H) zoneout keep mask (or its expectation p), or null
  T* h;           // (H) the state, updated in place
  T* rh;          // (H) r * h~, the candidate GEMM's input (reset-before)
  T* keep;        // (H) the gate carried from phase 1 to phase 2 (reset-before)
  T* ws;          // the row's workspace, or null (inference)
};

// What one row of one step reads and writes in the backward element-wise passes.
template <typename T>
struct BackRow {
  const T* ws;    // the row's workspace
  const T* dout;  // (H) gradient of this step's output
  const T* cand;  // (H) candidate-dropout mask, or null
  const T* zone;  // (H) zoneout keep mask, or null
  T* dh;          // (H) in: dL/dh'; out: the part of dL/dh_{t-1} that skips the matmuls
  T* da;          // the row of dA
};

template <typename T>
using Vec = Vectorized<T>;

// n~ = mask * n (candidate dropout), the candidate the update writes.
template <typename T>
inline Vec<T> candidate(const T* cand, Vec<T> n, int64_t j, int64_t cnt) {
  return cand ? n * load<T>(cand, j, cnt) : n;
}

// The post-update step: zoneout, h' = h_new + m (h - h_new).
template <typename T>
inline Vec<T> post_update(const T* zone, Vec<T> h, Vec<T> h_new, int64_t j, int64_t cnt) {
  return zone ? h_new + load<T>(zone, j, cnt) * (h - h_new) : h_new;
}

// Its backward: g (dL/dh') becomes dL/dh_new; keep (dL/dh_{t-1}'s direct share) is m g.
template <typename T>
inline Vec<T> post_update_backward(const T* zone, Vec<T> g, Vec<T>* keep, int64_t j,
                                   int64_t cnt) {
  if (!zone) {
    *keep = Vec<T>(T(0));
    return g;
  }
  const Vec<T> m = load<T>(zone, j, cnt);
  *keep = g * m;
  return g - *keep;
}

// dL/dh_new at lanes [j, j+cnt) of a backward row: dL/dh' = dh + dout through the post-update
// step; *kept gets the share that goes straight to h_{t-1} (zoneout).
template <typename T>
inline Vec<T> incoming_gradient(const BackRow<T>& q, Vec<T>* kept, int64_t j, int64_t cnt) {
  return post_update_backward(q.zone, load<T>(q.dh, j, cnt) + load<T>(q.dout, j, cnt), kept, j,
                              cnt);
}

// dL/dh_{t-1} that skips the matmuls: the update's share, plus zoneout's.
template <typename T>
inline void store_direct_gradient(const BackRow<T>& q, Vec<T> update_share, Vec<T> kept,
                                  int64_t j, int64_t cnt) {
  store(q.dh, j, cnt, q.zone ? update_share + kept : update_share);
}

// Pre-activation of gate k at lanes [j, j+cnt): x part + bias_ih, h part, bias_hh.
template <typename T>
inline Vec<T> gate_preactivation(const Layout& L, const FwdRow<T>& q, int64_t k, int64_t j,
                                 int64_t cnt) {
  Vec<T> a(T(0));
  if (L.gate_x) {
    a = load<T>(q.gx + k * L.H, j, cnt);
    if (q.bih) a = a + load<T>(q.bih + k * L.H, j, cnt);
  }
  if (L.gate_h) a = a + load<T>(q.g1 + k * L.H, j, cnt);
  if (L.gate_bias && q.bhh) a = a + load<T>(q.bhh + k * L.H, j, cnt);
  return a;
}

// --------------------------------------------------------------------------- the families
// Each policy: kTwoPhase (reset-before: a candidate GEMM between the passes), forward(1|2)
// (one vector of lanes of one row) and backward(1|2). Backward pass 1 gets g = dL/dh' and
// writes the pre-activation gradients it can; pass 2 (two-phase families) runs after
// drh = dL/d(r h~) is known and writes the reset gate's.

// gru: r, z = sigma(.), n = tanh(a_n^x + r * (U_n h~ + b_hn)), h' = n + z (h - n).
struct GruResetAfter {
  static constexpr bool kTwoPhase = false;

  template <typename T, bool kSave>
  static void forward1(const Layout& L, const FwdRow<T>& q, int64_t j, int64_t cnt) {
    const int64_t H = L.H;
    const Vec<T> hv = load<T>(q.h, j, cnt);
    const Vec<T> r = vsigmoid(gate_preactivation(L, q, 0, j, cnt));
    const Vec<T> z = vsigmoid(gate_preactivation(L, q, 1, j, cnt));
    Vec<T> xn = load<T>(q.gx + 2 * H, j, cnt), hn = load<T>(q.g1 + 2 * H, j, cnt);
    if (q.bih) xn = xn + load<T>(q.bih + 2 * H, j, cnt);
    if (q.bhh) hn = hn + load<T>(q.bhh + 2 * H, j, cnt);
    const Vec<T> n = vtanh(xn + r * hn);
    const Vec<T> nd = candidate(q.cand, n, j, cnt);
    store(q.h, j, cnt, post_update(q.zone, hv, nd + z * (hv - nd), j, cnt));
    if (kSave) {
      store(q.ws + L.ws_r * H, j, cnt, r);
      store(q.ws + L.ws_z * H, j, cnt, z);
      store(q.ws + L.ws_n * H, j, cnt, n);
      store(q.ws + L.ws_hn * H, j, cnt, hn);
      store(q.ws + L.ws_hprev * H, j, cnt, hv);
    }
  }
  template <typename T, bool kSave>
  static void forward2(const Layout&, const FwdRow<T>&, int64_t, int64_t) {}

  // dA row: [da_r, da_z, da_n * r, da_n]
  template <typename T>
  static void backward1(const Layout& L, const BackRow<T>& q, int64_t j, int64_t cnt) {
    const int64_t H = L.H;
    const Vec<T> one(T(1));
    const T* w = q.ws;
    Vec<T> kept;
    const Vec<T> g = incoming_gradient(q, &kept, j, cnt);
    const Vec<T> r = load<T>(w + L.ws_r * H, j, cnt), z = load<T>(w + L.ws_z * H, j, cnt);
    const Vec<T> n = load<T>(w + L.ws_n * H, j, cnt), hn = load<T>(w + L.ws_hn * H, j, cnt);
    const Vec<T> hp = load<T>(w + L.ws_hprev * H, j, cnt);
    const Vec<T> nd = candidate(q.cand, n, j, cnt);
    const Vec<T> dan = candidate(q.cand, g * (one - z), j, cnt) * (one - n * n);
    store(q.da, j, cnt, dan * hn * r * (one - r));
    store(q.da + H, j, cnt, g * (hp - nd) * z * (one - z));
    store(q.da + 2 * H, j, cnt, dan * r);
    store(q.da + 3 * H, j, cnt, dan);
    store_direct_gradient(q, g * z, kept, j, cnt);
  }
};

// gru_reset_before, gru1-3: r, z = sigma(.), n = tanh(a_n^x + U_n (r * h~) + b_hn),
// h' = n + z (h - n).   MGU family: f = sigma(.), n likewise with f, h' = h + f (n - h).
template <bool kMguUpdate>
struct ResetBefore {
  static constexpr bool kTwoPhase = true;

  // gates and r * h~, the input of the candidate GEMM
  template <typename T, bool kSave>
  static void forward1(const Layout& L, const FwdRow<T>& q, int64_t j, int64_t cnt) {
    const int64_t H = L.H;
    const Vec<T> r = vsigmoid(gate_preactivation(L, q, 0, j, cnt));  // r, or f
    const Vec<T> rh = r * load<T>(q.src, j, cnt);
    store(q.rh, j, cnt, rh);
    Vec<T> keep = r;
    if (!kMguUpdate) keep = vsigmoid(gate_preactivation(L, q, 1, j, cnt));
    store(q.keep, j, cnt, keep);
    if (kSave) {
      store(q.ws + L.ws_r * H, j, cnt, r);
      if (!kMguUpdate) store(q.ws + L.ws_z * H, j, cnt, keep);
      store(q.ws + L.ws_rh * H, j, cnt, rh);
      store(q.ws + L.ws_hprev * H, j, cnt, load<T>(q.h, j, cnt));
    }
  }

  // the candidate and the update
  template <typename T, bool kSave>
  static void forward2(const Layout& L, const FwdRow<T>& q, int64_t j, int64_t cnt) {
    const Vec<T> hv = load<T>(q.h, j, cnt);
    Vec<T> a = load<T>(q.gx + L.x_n(), j, cnt) + load<T>(q.c2, j, cnt);
    if (q.bih) a = a + load<T>(q.bih + L.x_n(), j, cnt);
    if (q.bhh) a = a + load<T>(q.bhh + L.bhh_n(), j, cnt);
    const Vec<T> n = vtanh(a);
    const Vec<T> nd = candidate(q.cand, n, j, cnt);
    const Vec<T> g = load<T>(q.keep, j, cnt);
    const Vec<T> h_new = kMguUpdate ? hv + g * (nd - hv) : nd + g * (hv - nd);
    store(q.h, j, cnt, post_update(q.zone, hv, h_new, j, cnt));
    if (kSave) store(q.ws + L.ws_n * L.H, j, cnt, n);
  }

  // dA row: [gates..., da_n]; pass 1 writes da_z (GRU) or df's update share (MGU) and da_n
  template <typename T>
  static void backward1(const Layout& L, const BackRow<T>& q, int64_t j, int64_t cnt) {
    const int64_t H = L.H;
    const Vec<T> one(T(1));
    const T* w = q.ws;
    Vec<T> kept;
    const Vec<T> g = incoming_gradient(q, &kept, j, cnt);
    const Vec<T> n = load<T>(w + L.ws_n * H, j, cnt), hp = load<T>(w + L.ws_hprev * H, j, cnt);
    const Vec<T> nd = candidate(q.cand, n, j, cnt);
    if (kMguUpdate) {
      const Vec<T> f = load<T>(w + L.ws_r * H, j, cnt);
      store(q.da + H, j, cnt, candidate(q.cand, g * f, j, cnt) * (one - n * n));
      store(q.da, j, cnt, g * (nd - hp));  // df from the update; pass 2 adds the reset part
      store_direct_gradient(q, g * (one - f), kept, j, cnt);
    } else {
      const Vec<T> z = load<T>(w + L.ws_z * H, j, cnt);
      store(q.da + H, j, cnt, g * (hp - nd) * z * (one - z));
      store(q.da + 2 * H, j, cnt, candidate(q.cand, g * (one - z), j, cnt) * (one - n * n));
      store_direct_gradient(q, g * z, kept, j, cnt);
    }
  }

  // after drh = dL/d(r h~): the reset gate's gradient, and drh's share of dL/dh~ into dsrc
  // (added to it, or written when `assign`: dsrc is then a buffer of its own)
  template <typename T>
  static void backward2(const Layout& L, const T* ws, const T* drh, T* dsrc, bool assign, T* da,
                        int64_t j, int64_t cnt) {
    const int64_t H = L.H;
    const Vec<T> one(T(1));
    const Vec<T> r = load<T>(ws + L.ws_r * H, j, cnt);  // r, or f
    const Vec<T> src = load<T>(ws + L.ws_src() * H, j, cnt);
    const Vec<T> dv = load<T>(drh, j, cnt);
    store(dsrc, j, cnt, assign ? dv * r : load<T>(dsrc, j, cnt) + dv * r);
    Vec<T> dr = dv * src;
    if (kMguUpdate) dr = dr + load<T>(da, j, cnt);
    store(da, j, cnt, dr * r * (one - r));
  }
};
using GruResetBefore = ResetBefore<false>;
using Mgu = ResetBefore<true>;

// minGRU: z = sigma(a_z), n = g(a_n), h' = h + z (n - h).
struct MinGru {
  static constexpr bool kTwoPhase = false;

  template <typename T, bool kSave>
  static void forward1(const Layout& L, const FwdRow<T>& q, int64_t j, int64_t cnt) {
    const int64_t H = L.H;
    const Vec<T> hv = load<T>(q.h, j, cnt);
    const Vec<T> z = vsigmoid(gate_preactivation(L, q, 0, j, cnt));
    Vec<T> xn = load<T>(q.gx + H, j, cnt);
    if (q.bih) xn = xn + load<T>(q.bih + H, j, cnt);
    const Vec<T> n = vg(xn);
    const Vec<T> nd = candidate(q.cand, n, j, cnt);
    store(q.h, j, cnt, post_update(q.zone, hv, hv + z * (nd - hv), j, cnt));
    if (kSave) {
      store(q.ws + L.ws_z * H, j, cnt, z);
      store(q.ws + L.ws_n * H, j, cnt, n);
      store(q.ws + L.ws_hprev * H, j, cnt, hv);
    }
  }
  template <typename T, bool kSave>
  static void forward2(const Layout&, const FwdRow<T>&, int64_t, int64_t) {}

  // dA row: [da_z, da_n]
  template <typename T>
  static void backward1(const Layout& L, const BackRow<T>& q, int64_t j, int64_t cnt) {
    const int64_t H = L.H;
    const Vec<T> one(T(1));
    const T* w = q.ws;
    Vec<T> kept;
    const Vec<T> g = incoming_gradient(q, &kept, j, cnt);
    const Vec<T> z = load<T>(w + L.ws_z * H, j, cnt), n = load<T>(w + L.ws_n * H, j, cnt);
    const Vec<T> hp = load<T>(w + L.ws_hprev * H, j, cnt);
    const Vec<T> nd = candidate(q.cand, n, j, cnt);
    store(q.da, j, cnt, g * (nd - hp) * z * (one - z));
    store(q.da + H, j, cnt, candidate(q.cand, g * z, j, cnt) * vg_grad_from_value(n));
    store_direct_gradient(q, g * (one - z), kept, j, cnt);
  }
};

// Calls f(Policy{}) for the layout's family.
template <typename F>
void with_family(const Layout& L, const F& f) {
  switch (L.cell) {
    case kGruResetAfter: f(GruResetAfter{}); break;
    case kGruResetBefore: f(GruResetBefore{}); break;
    case kMgu: f(Mgu{}); break;
    default: f(MinGru{});
  }
}

// ------------------------------------------------------------------- layer normalisation
// u_k <- gain_k * (u_k - mean(u_k)) * rstd_k for the K blocks of H values of one row, with
// rstd_k = 1 / sqrt(var(u_k) + eps) (biased variance, as torch.nn.functional.layer_norm).
// Every pass runs over whole vectors, the last one partial (a masked load and store with
// AVX-512), and a row's sums are reduced by a shuffle tree: a fixed order whatever the threads.
// At H = 46 the scalar tails and lane-by-lane totals of an earlier version cost more than the
// arithmetic.

template <typename T>
inline T lane_total(Vec<T> v) {
  return at::vec::vec_reduce_all<T>([](Vec<T> x, Vec<T> y) { return x + y; }, v);
}

// (sum of d[i], sum of d[i]^2) over [0, H) for d = a - shift, in one pass (the shift, the
// row's first value, keeps the variance free of cancellation when the mean is large)
template <typename T>
inline std::pair<T, T> shifted_sums(const T* a, T shift, int64_t H) {
  const Vec<T> c(shift), zero(T(0));
  Vec<T> s1(T(0)), s2(T(0));
  for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
    Vec<T> d = load<T>(a, j, cnt) - c;
    // the lanes past H: a blend, not a masked load of a stored shift vector (the store
    // cannot be forwarded to that load, and each block waited for it)
    if (cnt != Vec<T>::size()) d = Vec<T>::set(zero, d, cnt);
    s1 = s1 + d;
    s2 = at::vec::fmadd(d, d, s2);
  });
  return {lane_total(s1), lane_total(s2)};
}

constexpr double kLayerNormEps = 1e-5;  // grukit.cell_options.LAYER_NORM_EPS

// Calls f(np, at) for the (row, block) pairs of rows [r0, r1) x K blocks, kLayerNormBatch
// pairs at a time (the last batch shorter); at(p) is the p-th pair of the batch, from a table
// filled by counting (a division per pair cost as much as a block's sums).
constexpr int64_t kLayerNormBatch = 64;
template <typename F>
void for_block_batches(int64_t r0, int64_t r1, int64_t K, const F& f) {
  int64_t rows[kLayerNormBatch], blocks[kLayerNormBatch];
  const auto at = [&](int64_t p) { return std::pair<int64_t, int64_t>{rows[p], blocks[p]}; };
  int64_t b = r0, k = 0;
  const int64_t total = (r1 - r0) * K;
  for (int64_t p0 = 0; p0 < total; p0 += kLayerNormBatch) {
    const int64_t np = std::min(kLayerNormBatch, total - p0);
    for (int64_t p = 0; p < np; ++p) {
      rows[p] = b, blocks[p] = k;
      if (++k == K) k = 0, ++b;
    }
    f(np, at);
  }
}

// Rows [r0, r1) of a (rows, ld) matrix whose first K*H columns are normalised in place, block
// by block; row b saves xhat (K*H) into xhat + b * save_ld and rstd (K) into rstd + b * save_ld
// (when xhat is given). kLayerNormBatch blocks at a time: their shifted sums (independent, so their
// reductions overlap), then one vector square root and division for all of them, then
// xhat = (u - mean) rstd and u = gain xhat. A 46-wide block is short enough that each block's
// chain of reductions, square root and division cost more than its arithmetic.
template <typename T>
void layer_norm_rows(T* u, int64_t ld, int64_t K, int64_t H, const T* gain, T* xhat,
                     T* rstd, int64_t save_ld, int64_t r0, int64_t r1) {
  T mean[kLayerNormBatch], rs[kLayerNormBatch];
  const T inv_h = T(1) / T(H);
  for_block_batches(r0, r1, K, [&](int64_t np, const auto& at) {
    for (int64_t p = 0; p < np; ++p) {
      const auto [b, k] = at(p);
      const T* a = u + b * ld + k * H;
      const auto [s1, s2] = shifted_sums<T>(a, a[0], H);
      const T dm = s1 * inv_h;  // mean - a[0]
      mean[p] = a[0] + dm;
      rs[p] = std::max(s2 * inv_h - dm * dm, T(0)) + T(kLayerNormEps);  // var + eps, for now
    }
    for_lanes<T>(np, [&](int64_t j, int64_t cnt) {  // rstd = 1 / sqrt(var + eps)
      (Vec<T>(T(1)) / load<T>(rs, j, cnt).sqrt()).store(rs + j, cnt);  // (lanes past np unused)
    });
    for (int64_t p = 0; p < np; ++p) {
      const auto [b, k] = at(p);
      T* a = u + b * ld + k * H;
      const Vec<T> vm(mean[p]), vr(rs[p]);
      const T* gk = gain + k * H;
      T* xk = xhat ? xhat + b * save_ld + k * H : nullptr;
      for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
        const Vec<T> xh = (load<T>(a, j, cnt) - vm) * vr;
        if (xk) store(xk, j, cnt, xh);
        store(a, j, cnt, xh * load<T>(gk, j, cnt));
      });
      if (xhat) rstd[b * save_ld + k] = rs[p];
    }
  });
}

// Backward of layer_norm_rows for rows [r0, r1): du = rstd (gain dy - mean(gain dy)
// - xhat mean(gain dy xhat)), block by block; du may not alias dy. dyx gets dy * xhat, the
// row's share of the gains' gradient (summed over rows later, in a fixed order). Row b reads
// dy + b * ld_dy, xhat + b * ld_saved (K*H) and rstd + b * ld_saved (K), and writes
// du + b * ld_out and dyx + b * ld_out. Like the forward, kLayerNormBatch blocks at a time: all
// their sums, then one vector division for their means, then their gradients.
template <typename T>
void layer_norm_backward_rows(const T* dy, int64_t ld_dy, const T* xhat, const T* rstd,
                              int64_t ld_saved, const T* gain, int64_t K, int64_t H, T* du,
                              T* dyx, int64_t ld_out, int64_t r0, int64_t r1) {
  T m1[kLayerNormBatch], m2[kLayerNormBatch];
  for_block_batches(r0, r1, K, [&](int64_t np, const auto& at) {
    for (int64_t p = 0; p < np; ++p) {
      const auto [b, k] = at(p);
      const T* d = dy + b * ld_dy + k * H;
      const T* x = xhat + b * ld_saved + k * H;
      const T* gk = gain + k * H;
      Vec<T> s1(T(0)), s2(T(0));
      for_lanes<T>(H, [&](int64_t j, int64_t cnt) {  // the lanes past H load 0
        const Vec<T> dg = load<T>(d, j, cnt) * load<T>(gk, j, cnt);
        s1 = s1 + dg;
        s2 = at::vec::fmadd(dg, load<T>(x, j, cnt), s2);
      });
      m1[p] = lane_total(s1);
      m2[p] = lane_total(s2);
    }
    const Vec<T> vh(static_cast<T>(H));
    for_lanes<T>(np, [&](int64_t j, int64_t cnt) {  // the means (lanes past np unused)
      (load<T>(m1, j, cnt) / vh).store(m1 + j, cnt);
      (load<T>(m2, j, cnt) / vh).store(m2 + j, cnt);
    });
    for (int64_t p = 0; p < np; ++p) {
      const auto [b, k] = at(p);
      const T* d = dy + b * ld_dy + k * H;
      const T* x = xhat + b * ld_saved + k * H;
      const T* gk = gain + k * H;
      T* o = du + b * ld_out + k * H;
      T* pp = dyx + b * ld_out + k * H;
      const Vec<T> rs(rstd[b * ld_saved + k]), vm1(m1[p]), vm2(m2[p]);
      for_lanes<T>(H, [&](int64_t j, int64_t cnt) {
        const Vec<T> dv = load<T>(d, j, cnt), xv = load<T>(x, j, cnt);
        store(o, j, cnt, rs * (dv * load<T>(gk, j, cnt) - vm1 - xv * vm2));
        store(pp, j, cnt, dv * xv);
      });
    }
  });
}

}  // namespace
}  // namespace grukit
