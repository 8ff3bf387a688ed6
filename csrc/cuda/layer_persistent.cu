// Persistent design of the CUDA layer recurrence: one cooperative launch runs the whole
// time loop.  Each block owns U hidden units (gate rows j, H + j, 2H + j, 3H + j of W_hh
// for j in [j0, j0 + U)) and keeps that slice of W_hh in shared memory for every step; it
// computes its gate columns for all batch rows with tensor-core MMA (wmma: bf16 / fp16
// m16n16k16, tf32 m16n16k8 for fp32), then the fused pointwise step of layer_common.cuh
// (BN statistics stay inside the block), writes its part of h_s, and the grid
// synchronises once per step.  Backward is persistent too: the block that owns units j
// computes their gate gradients, the grid synchronises, and the same block computes dL/dh
// for the same units from every block's dL/d(W_hh h) and its column slice of W_hh.
//
// The grid barrier is split (grid_arrive / grid_wait on a counter in the exchange buffer):
// a block arrives as soon as its exchange stores are issued and waits only before the MMA
// that reads the other blocks' parts.  Between the two it loads what the next step needs
// and nobody else writes: the forward copies its xp columns of step s + 1 into shared
// memory with cp.async (stage_xp), the backward its saved activations, cell states and dy
// of step s - 1 (stage_saved; the mask and zoneout weights are prefetched into L2).  After the wait the forward
// stages the exchanged h_{s-1} tile once in shared memory (cp.async.cg: L2, never a stale
// L1 line), so that its MMA tiles read it from there instead of each from global memory.
// The stages are in the layout's shared memory when they fit (PersistentLayout::stage_*).
//
// No projection (W_hr would need a second exchange per step); H a multiple of 4.  The layout
// (persistent_layout) says when the design fits; otherwise the per-step design runs, as it does
// when the device refuses the cooperative launch (layer_host.cpp).  Other blocks write the
// exchange buffer and its barrier counter during the launch: the kernels take them without
// __restrict__ (which would promise that nothing else changes them).
//
// Dimension letters: T steps, B batch (Bp padded to 16), H hidden, R = H, Rp = R padded to
// 16, G = 4H, U units per block, Mp = 4U padded to 16, KS split of the MMA's K among warps.
#include <mma.h>

#include <algorithm>
#include <type_traits>

#include "layer_common.cuh"

namespace fusedrnn {
namespace cuda {
namespace {

using namespace nvcuda;

constexpr int kPThreads = 256;
constexpr int kWarps = kPThreads / 32;

__host__ __device__ inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
__host__ __device__ inline size_t align128(size_t x) { return (x + 127) / 128 * 128; }

// wmma shapes per element type: bf16 / fp16 m16n16k16, fp32 as tf32 m16n16k8.
template <typename T> struct Mma {
  using elem = T;
  static constexpr int K = 16;
  template <class F> __device__ static void fix(F&) {}
};
template <> struct Mma<float> {
  using elem = wmma::precision::tf32;
  static constexpr int K = 8;
  template <class F> __device__ static void fix(F& f) {
#pragma unroll
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
  }
};

// acc += A @ B over the K chunks [k0, k1) of KSTEP columns: A a 16 x K row-major tile at a
// (leading dimension lda, chunk kk at a + kk * KSTEP), B a K x 16 tile of layout LB at b
// (leading dimension ldb, chunk kk at b + kk * b_step).  The fragments of kBatch chunks are
// loaded before their MMAs, so that kBatch loads are in flight at once: one chunk at a time
// waited a full L2 round trip per chunk (the backward reads its A operand, the exchanged
// gate gradients, from global memory: 24 chunks per warp at the anchor).
constexpr int kBatch = 8;
template <typename T, typename LB, int KSTEP, class Acc16>
__device__ __forceinline__ void mma_chunks(Acc16& acc, int64_t k0, int64_t k1, const T* a, unsigned lda, const T* b,
                                           unsigned ldb, int64_t b_step) {
  using E = typename Mma<T>::elem;
  for (int64_t kb = k0; kb < k1; kb += kBatch) {
    wmma::fragment<wmma::matrix_a, 16, 16, KSTEP, E, wmma::row_major> fa[kBatch];
    wmma::fragment<wmma::matrix_b, 16, 16, KSTEP, E, LB> fb[kBatch];
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      if (kb + i < k1) {
        wmma::load_matrix_sync(fa[i], a + (kb + i) * KSTEP, lda);
        wmma::load_matrix_sync(fb[i], b + (kb + i) * b_step, ldb);
      }
    }
#pragma unroll
    for (int i = 0; i < kBatch; ++i) {
      if (kb + i < k1) {
        Mma<T>::fix(fa[i]);
        Mma<T>::fix(fb[i]);
        wmma::mma_sync(acc, fa[i], fb[i], acc);
      }
    }
  }
}

struct Geometry {
  int U, Mp, KS_f, KS_b;
  int64_t Bp, Rp, ldw;  // ldw: row stride of the W slice and of the staged h tile (Rp columns each)
  bool stage_xp, stage_h;    // the forward's shared-memory stages (set from the layout)
  bool stage_saved;          // the backward's stage of each step's saved operands
};

// ---- asynchronous copies, prefetches and the split grid barrier ---------------------------
// cp.async of N bytes global -> shared (N = 16: .cg, L2 only, for buffers other blocks write;
// N = 4: .ca, read-only inputs).  Before sm_80: a plain copy (16 bytes through ld.cg).
template <int N>
__device__ __forceinline__ void cp_async(void* dst, const void* src) {
  static_assert(N == 4 || N == 16, "cp.async of 4 or 16 bytes");
#if __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  if constexpr (N == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
#else
  if constexpr (N == 16)
    *static_cast<int4*>(dst) = __ldcg(static_cast<const int4*>(src));
  else
    *static_cast<int*>(dst) = *static_cast<const int*>(src);
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void prefetch_l2(const void* ptr) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(ptr));
}

// Arrive at the grid barrier: every thread's stores so far are issued (block barrier), then
// one thread releases them at GPU scope and counts the block in.
__device__ __forceinline__ void grid_arrive(unsigned int* bar) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(bar, 1u);
  }
}

// Wait until the counter reaches target (= gridDim.x x the arrivals each block has made so
// far): one thread polls with acquire loads, fences, and releases the block.
__device__ __forceinline__ void grid_wait(const unsigned int* bar, unsigned int target) {
  if (threadIdx.x == 0) {
    unsigned int v;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(bar) : "memory");
    } while (static_cast<int>(v - target) < 0);
    __threadfence();
  }
  __syncthreads();
}

template <typename T>
Geometry geometry(int64_t B, int64_t H, int64_t R, int U) {
  Geometry g{};
  g.U = U;
  g.Mp = static_cast<int>(round_up(4 * U, 16));
  g.Bp = round_up(B, 16);
  g.Rp = round_up(R, 16);
  g.ldw = g.Rp + (sizeof(T) == 4 ? 4 : 8);  // skew rows by 16 bytes against bank conflicts
  const int64_t tiles_f = (g.Mp / 16) * (g.Bp / 16);
  g.KS_f = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kWarps / std::max<int64_t>(tiles_f, 1), 8)));
  const int64_t tiles_b = g.Bp / 16;  // N = 16 covers the block's U <= 16 units
  g.KS_b = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(kWarps / std::max<int64_t>(tiles_b, 1), 8)));
  return g;
}

// The forward's shared memory: the W slice, the MMA partials and forward_units' scratch
// (its 10U statistics of 16U), then the optional stages (xp [B][4U], h [Bp][ldw]).
template <typename T>
size_t smem_forward_base(const Geometry& g) {
  using A = typename Acc<T>::type;
  return align128(g.Mp * g.ldw * sizeof(T)) + align128(size_t(g.KS_f) * g.Mp * g.Bp * sizeof(float)) +
         align128(16 * g.U * sizeof(A));
}
template <typename T>
__host__ __device__ size_t stage_xp_bytes(const Geometry& g, int64_t B) { return align128(size_t(B) * 4 * g.U * sizeof(T)); }
template <typename T>
__host__ __device__ size_t stage_h_bytes(const Geometry& g) { return align128(size_t(g.Bp) * g.ldw * sizeof(T)); }
template <typename T>
size_t smem_forward(const Geometry& g, int64_t B) {
  return smem_forward_base<T>(g) + (g.stage_xp ? stage_xp_bytes<T>(g, B) : 0) +
         (g.stage_h ? stage_h_bytes<T>(g) : 0);
}

// Copies K segments of U elements per running row b at step s (the first Uv valid) from
// src + (rows.pos(b, s) * B + b) * ld + k * kstride + j0 into dst[(b * K + k) * U + u]: 4-byte
// cp.async chunks when every segment is whole and 4-byte aligned, else plain copies.
// Completed by a cp_async_wait_all.  The forward's xp stage and the backward's dy stage.
template <int K, typename T>
__device__ void stage_rows(T* dst, const T* src, const Rows& rows, int64_t s, int64_t B, int64_t ld, int64_t kstride,
                           int64_t j0, int U, int Uv) {
  static_assert(sizeof(T) <= 4, "the persistent kernels take fp32 / fp16 / bf16");
  constexpr int per = 4 / sizeof(T);  // elements per 4-byte chunk
  if (Uv == U && U % per == 0 && ld % per == 0 && kstride % per == 0 && j0 % per == 0 &&
      (reinterpret_cast<uintptr_t>(src) & 3) == 0) {
    const int cps = U / per;  // chunks per segment
    for (int64_t e = threadIdx.x; e < B * K * cps; e += blockDim.x) {
      const int c = static_cast<int>(e % cps), k = static_cast<int>((e / cps) % K);
      const int64_t b = e / (K * cps);
      if (rows.active(b, s))
        cp_async<4>(dst + (b * K + k) * U + c * per, src + (rows.pos(b, s) * B + b) * ld + k * kstride + j0 + c * per);
    }
  } else {
    for (int64_t e = threadIdx.x; e < B * K * U; e += blockDim.x) {
      const int u = static_cast<int>(e % U), k = static_cast<int>((e / U) % K);
      const int64_t b = e / (K * U);
      if (u < Uv && rows.active(b, s)) dst[e] = src[(rows.pos(b, s) * B + b) * ld + k * kstride + j0 + u];
    }
  }
}

// The xp of this block's units at step s, for the running rows, into xsm [B][4U] (element
// b * 4U + k * U + u).  Completed by the cp_async_wait_all before the next MMA.
template <typename T>
__device__ void stage_xp(const LayerParams& p, int64_t s, int64_t j0, int U, int Uv, T* xsm) {
  stage_rows<4>(xsm, static_cast<const T*>(p.xp), Rows{p.lengths, p.T, p.reverse}, s, p.B, 4 * p.H, p.H, j0, U, Uv);
}

// xp of forward_units: from the stage when there is one, else from global memory.
template <typename T>
struct XpStaged {
  const T* sm;
  XpGlobal<T> g;
  int U;
  __device__ __forceinline__ typename Acc<T>::type operator()(int64_t b, int k, int u) const {
    return sm ? to_acc(sm[b * 4 * U + k * U + u]) : g(b, k, u);
  }
};

// The backward's stage of step s for this block's units: backward_units' saved operands
// (SavedStaged's [B][6U] layout: 4U gate activations, c_{s-1}, c_s) and dy ([B][U], T), by
// 4-byte cp.async (dy: plain copies when its columns are not 4-byte aligned), for the running
// rows.  Issued while the grid finishes step s + 1, completed by the cp_async_wait_all at the
// end of that step.  A stage rather than an L1 prefetch: the barrier's acquire invalidates L1.
template <typename T>
__device__ void stage_saved(const LayerParams& p, const LayerGrads& g, int64_t s, int64_t j0, int U, int Uv,
                            typename Acc<T>::type* sv_stage, T* gy_stage) {
  using A = typename Acc<T>::type;
  static_assert(sizeof(A) == 4, "4-byte cp.async of the saved fp32 operands");
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t B = p.B, H = p.H, G = 4 * H, R = p.R;
  const A* act = static_cast<const A*>(p.ws_act) + s * B * G;
  const A* cst = static_cast<const A*>(p.ws_c) + s * B * H;
  for (int64_t e = threadIdx.x; e < B * 6 * U; e += blockDim.x) {
    const int q = static_cast<int>(e % (6 * U)), k = q / U, u = q % U;
    const int64_t b = e / (6 * U), j = j0 + u;
    if (u >= Uv || !rows.active(b, s)) continue;
    const A* src = k < 4 ? act + b * G + k * H + j : cst + (k - 4) * B * H + b * H + j;
    cp_async<4>(sv_stage + e, src);
  }
  stage_rows<1>(gy_stage, static_cast<const T*>(g.grad_y), rows, s, B, R, 0, j0, U, Uv);
}

// Without the stage: prefetch step s's saved operands, dy, mask and zoneout weights of this
// block's units into L2 (an L1 prefetch would not survive the barrier's acquire); with it,
// only the mask and zoneout weights.
template <typename T>
__device__ void prefetch_step(const LayerParams& p, const LayerGrads& g, int64_t s, int64_t j0, int U, int Uv,
                              bool staged) {
  using A = typename Acc<T>::type;
  const Rows rows{p.lengths, p.T, p.reverse};
  const int64_t B = p.B, H = p.H, G = 4 * H, R = p.R;
  const A* act = static_cast<const A*>(p.ws_act) + s * B * G;
  const A* cst = static_cast<const A*>(p.ws_c) + s * B * H;
  const T* gy = static_cast<const T*>(g.grad_y);
  const T* m = p.mask && p.mask_per_step ? static_cast<const T*>(p.mask) + s * B * R : nullptr;
  const T* zc = p.zone_c && !p.zone_scalar ? static_cast<const T*>(p.zone_c) + s * B * H : nullptr;
  const T* zh = p.zone_h && !p.zone_scalar ? static_cast<const T*>(p.zone_h) + s * B * R : nullptr;
  if (staged && !m && !zc && !zh) return;
  for (int64_t e = threadIdx.x; e < B * U; e += blockDim.x) {
    const int u = static_cast<int>(e % U);
    const int64_t b = e / U, j = j0 + u;
    if (u >= Uv || !rows.active(b, s)) continue;
    if (!staged) {
#pragma unroll
      for (int k = 0; k < 4; ++k) prefetch_l2(act + b * G + k * H + j);
      prefetch_l2(cst + b * H + j);
      prefetch_l2(cst + B * H + b * H + j);
      prefetch_l2(gy + (rows.pos(b, s) * B + b) * R + j);
    }
    if (m) prefetch_l2(m + b * R + j);
    if (zc) prefetch_l2(zc + b * H + j);
    if (zh) prefetch_l2(zh + b * R + j);
  }
}

// The backward's shared memory: the W_hh column slice, the MMA partials, backward_units'
// scratch, then the optional stage of the saved operands ([B][6U] acc) and dy ([B][U]).
template <typename T>
__host__ __device__ size_t smem_backward_base(const Geometry& g, int64_t B, int64_t H, bool bn) {
  using A = typename Acc<T>::type;
  return align128(4 * H * 16 * sizeof(T)) + align128(size_t(g.KS_b) * g.Bp * 16 * sizeof(float)) +
         align128(units_scratch(g.U, B, bn) * sizeof(A));
}
template <typename T>
__host__ __device__ size_t stage_saved_bytes(const Geometry& g, int64_t B) {
  using A = typename Acc<T>::type;
  return align128(size_t(B) * 6 * g.U * sizeof(A)) + align128(size_t(B) * g.U * sizeof(T));
}
template <typename T>
size_t smem_backward(const Geometry& g, int64_t B, int64_t H, bool bn) {
  return smem_backward_base<T>(g, B, H, bn) + (g.stage_saved ? stage_saved_bytes<T>(g, B) : 0);
}

// ---- forward ------------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kPThreads, 1)
    persistent_forward_kernel(LayerParams p, Geometry geo, const T* h0, T* xch, unsigned int* bar) {
  using A = typename Acc<T>::type;
  using E = typename Mma<T>::elem;
  constexpr int KSTEP = Mma<T>::K;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int U = geo.U, Mp = geo.Mp, KS = geo.KS_f;
  const int64_t B = p.B, H = p.H, R = p.R, Bp = geo.Bp, Rp = geo.Rp, ldw = geo.ldw;
  T* wsm = reinterpret_cast<T*>(smem_raw);
  float* part = reinterpret_cast<float*>(smem_raw + align128(Mp * ldw * sizeof(T)));
  A* scratch = reinterpret_cast<A*>(reinterpret_cast<unsigned char*>(part) +
                                    align128(size_t(KS) * Mp * Bp * sizeof(float)));
  unsigned char* stages = reinterpret_cast<unsigned char*>(scratch) + align128(16 * U * sizeof(A));
  T* xsm = geo.stage_xp ? reinterpret_cast<T*>(stages) : nullptr;
  T* hsm = geo.stage_h ? reinterpret_cast<T*>(stages + (geo.stage_xp ? stage_xp_bytes<T>(geo, B) : 0)) : nullptr;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * U;
  const int Uv = static_cast<int>(min(static_cast<int64_t>(U), H - j0));
  const T* w_hh = static_cast<const T*>(p.w_hh);
  const Rows rows{p.lengths, p.T, p.reverse};

  // This block's slice of W_hh: row m = k * U + u is gate row k * H + j0 + u; zero padding.
  for (int64_t e = tid; e < Mp * ldw; e += blockDim.x) {
    const int m = static_cast<int>(e / ldw);
    const int64_t r = e - m * ldw;
    const int k = m / U, u = m % U;
    T v = from_acc<T>(A(0));
    if (m < 4 * U && u < Uv && r < R) v = w_hh[(k * H + j0 + u) * R + r];
    wsm[e] = v;
  }
  // h_0 for this block's units: state, exchange slot 0 (masked), workspace.
  {
    const T* m0 = static_cast<const T*>(p.mask);
    A* h_state = static_cast<A*>(p.h_state);
    for (int64_t e = tid; e < B * U; e += blockDim.x) {
      const int u = static_cast<int>(e % U);
      const int64_t b = e / U, j = j0 + u;
      if (u >= Uv) continue;
      const A h = to_acc(h0[b * R + j]);
      h_state[b * R + j] = h;
      const T hm = from_acc<T>(m0 ? h * to_acc(m0[b * R + j]) : h);
      xch[b * Rp + j] = hm;
      static_cast<T*>(p.ws_hm)[b * R + j] = hm;  // slot 0 (the only slot without save)
    }
  }
  grid_arrive(bar);
  if (xsm) stage_xp<T>(p, 0, j0, U, Uv, xsm);

  const int tiles_m = Mp / 16, tiles_n = static_cast<int>(Bp / 16);
  const int64_t kchunks = Rp / KSTEP;
  for (int64_t s = 0; s < p.T; ++s) {
    grid_wait(bar, static_cast<unsigned int>((s + 1) * gridDim.x));  // h_{s-1} of every block
    const T* xs = xch + (s & 1) * Bp * Rp;
    const T* hb = xs;  // the MMA's h operand and its row stride
    int64_t ldb = Rp;
    if (hsm) {  // stage h_{s-1} [Bp, Rp] once: 16-byte cp.async.cg
      constexpr int per = 16 / sizeof(T);
      const int64_t cpr = Rp / per;  // chunks per row
      for (int64_t e = tid; e < Bp * cpr; e += blockDim.x) {
        const int64_t b = e / cpr, c = e - b * cpr;
        cp_async<16>(hsm + b * ldw + c * per, xs + b * Rp + c * per);
      }
      hb = hsm;
      ldb = ldw;
    }
    cp_async_wait_all();  // the h stage and this step's xp stage
    __syncthreads();
    // gates_hh [Mp, Bp] = W_slice [Mp, Rp] @ (h_{s-1} * m_s)^T, K split KS ways among warps
    for (int item = warp; item < tiles_m * tiles_n * KS; item += kWarps) {
      const int q = item % KS, t = item / KS, mt = t % tiles_m, nt = t / tiles_m;
      wmma::fragment<wmma::accumulator, 16, 16, KSTEP, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      mma_chunks<T, wmma::col_major, KSTEP>(acc, kchunks * q / KS, kchunks * (q + 1) / KS, wsm + mt * 16 * ldw,
                                            static_cast<unsigned>(ldw), hb + nt * 16 * ldb,
                                            static_cast<unsigned>(ldb), KSTEP);
      wmma::store_matrix_sync(part + (size_t(q) * Mp + mt * 16) * Bp + nt * 16, acc,
                              static_cast<unsigned>(Bp), wmma::mem_row_major);
    }
    __syncthreads();
    auto hh_at = [&](int64_t b, int k, int u) -> A {
      const int m = k * U + u;
      A v = 0;
      for (int q = 0; q < KS; ++q) v += part[(size_t(q) * Mp + m) * Bp + b];
      return v;
    };
    HmOut<T> next{nullptr, 0, nullptr, 0};
    if (s + 1 < p.T) {
      next.a = xch + ((s + 1) & 1) * Bp * Rp;
      next.lda = Rp;
      next.b = static_cast<T*>(p.ws_hm) + (p.save ? (s + 1) * B * R : 0);  // rolling slot 0 without save
      next.ldb = R;
    }
    const XpStaged<T> xq{xsm, XpGlobal<T>{static_cast<const T*>(p.xp), rows, s, B, H, j0}, U};
    forward_units<T>(p, s, j0, U, hh_at, xq, scratch, next);
    grid_arrive(bar);  // h_s issued; the next step's xp loads while the others finish
    if (xsm && s + 1 < p.T) stage_xp<T>(p, s + 1, j0, U, Uv, xsm);
  }
}

// ---- backward -----------------------------------------------------------------------------
template <typename T>
__global__ void __launch_bounds__(kPThreads, 1)
    persistent_backward_kernel(LayerParams p, LayerGrads g, Geometry geo, T* xch, unsigned int* bar) {
  using A = typename Acc<T>::type;
  using E = typename Mma<T>::elem;
  constexpr int KSTEP = Mma<T>::K;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int U = geo.U, KS = geo.KS_b;
  const int64_t B = p.B, H = p.H, R = p.R, G = 4 * H, Bp = geo.Bp;
  T* wsm = reinterpret_cast<T*>(smem_raw);  // [G][16]: W_hh[:, j0 .. j0 + 16)
  float* part = reinterpret_cast<float*>(smem_raw + align128(G * 16 * sizeof(T)));
  A* scratch = reinterpret_cast<A*>(reinterpret_cast<unsigned char*>(part) +
                                    align128(size_t(KS) * Bp * 16 * sizeof(float)));
  // the stage sits after the scratch the layout reserved (sized for batch norm, like the layout)
  A* sv_stage = geo.stage_saved ? reinterpret_cast<A*>(smem_raw + smem_backward_base<T>(geo, B, H, true)) : nullptr;
  T* gy_stage = geo.stage_saved ? reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(sv_stage) +
                                                       align128(size_t(B) * 6 * U * sizeof(A)))
                                : nullptr;
  const int tid = threadIdx.x, warp = tid >> 5;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * U;
  const int Uv = static_cast<int>(min(static_cast<int64_t>(U), H - j0));
  const T* w_hh = static_cast<const T*>(p.w_hh);
  for (int64_t e = tid; e < G * 16; e += blockDim.x) {
    const int64_t row = e / 16;
    const int u = static_cast<int>(e % 16);
    wsm[e] = u < Uv ? w_hh[row * R + j0 + u] : from_acc<T>(A(0));
  }
  if (sv_stage) stage_saved<T>(p, g, p.T - 1, j0, U, Uv, sv_stage, gy_stage);
  cp_async_wait_all();
  __syncthreads();

  const Rows rows{p.lengths, p.T, p.reverse};
  const T* gy = static_cast<const T*>(g.grad_y);
  A* carry = static_cast<A*>(g.dh_carry);
  const int tiles_m = static_cast<int>(Bp / 16);
  const int64_t kchunks = G / KSTEP;
  for (int64_t s = p.T - 1; s >= 0; --s) {
    T* xs = xch + (s & 1) * Bp * G;
    auto dh_at = [&](int64_t b, int64_t j) -> A {  // dL/dh~_s (zoneout: 1 - z_h of dL/dh_s)
      const A dy = gy_stage ? to_acc(gy_stage[b * U + (j - j0)]) : to_acc(gy[(rows.pos(b, s) * B + b) * R + j]);
      const A d = dy + carry[b * R + j];
      return p.zone_h ? (A(1) - zone_at<T>(p, p.zone_h, s, b, j, R)) * d : d;
    };
    T* dhh = static_cast<T*>(g.dhh) + s * B * G;
    if (sv_stage)
      backward_units<T>(p, g, s, j0, U, dh_at, SavedStaged<A>{sv_stage, j0, U}, scratch, xs, dhh);
    else
      backward_units<T>(p, g, s, j0, U, dh_at, saved_global<A>(p, s), scratch, xs, dhh);
    grid_arrive(bar);  // dL/d(W_hh h)_s issued; step s - 1's operands load meanwhile
    if (s > 0) {
      if (sv_stage) stage_saved<T>(p, g, s - 1, j0, U, Uv, sv_stage, gy_stage);
      prefetch_step<T>(p, g, s - 1, j0, U, Uv, sv_stage != nullptr);
    }
    grid_wait(bar, static_cast<unsigned int>((p.T - s) * gridDim.x));
    // dh_rec [Bp, 16] = dL/d(W_hh h)_s [Bp, G] @ W_hh[:, j0 .. j0 + 16), K split KS ways
    for (int item = warp; item < tiles_m * KS; item += kWarps) {
      const int q = item % KS, mt = item / KS;
      wmma::fragment<wmma::accumulator, 16, 16, KSTEP, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      mma_chunks<T, wmma::row_major, KSTEP>(acc, kchunks * q / KS, kchunks * (q + 1) / KS, xs + mt * 16 * G,
                                            static_cast<unsigned>(G), wsm, 16u, KSTEP * 16);
      wmma::store_matrix_sync(part + (size_t(q) * Bp + mt * 16) * 16, acc, 16u, wmma::mem_row_major);
    }
    __syncthreads();
    const T* m = p.mask ? static_cast<const T*>(p.mask) + (p.mask_per_step ? s * B * R : 0) : nullptr;
    for (int64_t e = tid; e < B * U; e += blockDim.x) {
      const int u = static_cast<int>(e % U);
      const int64_t b = e / U, j = j0 + u;
      if (u >= Uv || !rows.active(b, s)) continue;
      A v = 0;
      for (int q = 0; q < KS; ++q) v += part[(size_t(q) * Bp + b) * 16 + u];
      if (m) v *= to_acc(m[b * R + j]);
      if (p.zone_h)  // z_h of dL/dh_s reaches h_{s-1} directly (carry still holds step s's; dy from
                     // global memory: the stage holds step s - 1's by now)
        v += zone_at<T>(p, p.zone_h, s, b, j, R) * (to_acc(gy[(rows.pos(b, s) * B + b) * R + j]) + carry[b * R + j]);
      carry[b * R + j] = v;
    }
    cp_async_wait_all();  // step s - 1's stage
    __syncthreads();
  }
}

template <typename T>
PersistentLayout layout_t(int64_t B, int64_t H, int64_t R, bool proj, size_t smem_limit, int sm_count,
                          int (*occupancy)(const void*, int, size_t), bool need_backward) {
  PersistentLayout layout{};
  layout.threads = kPThreads;
  if (proj) return layout.why = "projection (W_hr needs a second exchange per step)", layout;
  if (H % 4 != 0) return layout.why = "hidden size not a multiple of 4", layout;
  if (B < 1 || H < 1) return layout.why = "empty problem", layout;
  const int U = static_cast<int>(std::max<int64_t>(4, (H + sm_count - 1) / sm_count));
  if (U > 16) return layout.why = "hidden size too large for one unit slice per SM", layout;
  Geometry geo = geometry<T>(B, H, R, U);
  layout.units = U;
  layout.blocks = static_cast<int>((H + U - 1) / U);
  // the forward's stages where they fit: xp first (off the critical path), then h
  geo.stage_xp = smem_forward_base<T>(geo) + stage_xp_bytes<T>(geo, B) <= smem_limit;
  geo.stage_h = smem_forward<T>(geo, B) + stage_h_bytes<T>(geo) <= smem_limit;
  layout.stage_xp = geo.stage_xp;
  layout.stage_h = geo.stage_h;
  layout.smem_forward = smem_forward<T>(geo, B);
  // the backward's stage of the saved operands where it fits
  geo.stage_saved = smem_backward_base<T>(geo, B, H, true) + stage_saved_bytes<T>(geo, B) <= smem_limit;
  layout.stage_saved = geo.stage_saved;
  layout.smem_backward = smem_backward<T>(geo, B, H, true);
  if (layout.smem_forward > smem_limit)
    return layout.why = "the W_hh slice and batch tiles exceed shared memory (forward)", layout;
  if (need_backward && layout.smem_backward > smem_limit)
    return layout.why = "the W_hh column slice exceeds shared memory (backward)", layout;
  if (occupancy) {
    const int fwd = occupancy(reinterpret_cast<const void*>(&persistent_forward_kernel<T>), kPThreads,
                              layout.smem_forward);
    if (fwd < 1 || layout.blocks > fwd * sm_count)
      return layout.why = "the forward grid cannot be co-resident", layout;
    if (need_backward) {
      const int bwd = occupancy(reinterpret_cast<const void*>(&persistent_backward_kernel<T>), kPThreads,
                                layout.smem_backward);
      if (bwd < 1 || layout.blocks > bwd * sm_count)
        return layout.why = "the backward grid cannot be co-resident", layout;
    }
  } else if (layout.blocks > sm_count) {
    return layout.why = "more blocks than SMs", layout;
  }
  layout.ok = true;
  layout.why = "";
  return layout;
}

int occupancy_of(const void* fn, int threads, size_t smem) {
  if (prepare_smem(fn, smem) != cudaSuccess) return 0;
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, fn, threads, smem) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// Calls fn(T{}) for the element types the persistent kernels take (fp32 through TF32, fp16,
// bf16: tensor-core MMA), else returns `unsupported`.
template <typename R, typename Fn>
R dispatch_mma(DType dtype, R unsupported, Fn&& fn) {
  switch (dtype) {
    case DType::kF32: return fn(float{});
    case DType::kF16: return fn(__half{});
    case DType::kBF16: return fn(__nv_bfloat16{});
    default: return unsupported;
  }
}

PersistentLayout no_mma_layout() {
  PersistentLayout p{};
  p.why = "float64 (no tensor-core MMA)";
  return p;
}

// A cooperative launch of one of the persistent kernels with `smem` bytes of dynamic shared memory.
cudaError_t launch_cooperative(const void* kernel, const PersistentLayout& layout, size_t smem, void** args,
                               cudaStream_t stream) {
  const cudaError_t err = prepare_smem(kernel, smem);
  if (err != cudaSuccess) return err;
  return cudaLaunchCooperativeKernel(kernel, dim3(layout.blocks), dim3(kPThreads), args, smem, stream);
}

}  // namespace

PersistentLayout persistent_layout_for(DType dtype, int64_t B, int64_t H, int64_t R, bool proj, size_t smem_limit,
                                       int sm_count) {
  return dispatch_mma(dtype, no_mma_layout(), [&](auto tag) {
    using T = decltype(tag);
    return layout_t<T>(B, H, R, proj, smem_limit, sm_count, nullptr, true);
  });
}

PersistentLayout persistent_layout(DType dtype, int64_t B, int64_t H, int64_t R, bool proj, bool need_backward) {
  int dev = 0, sms = 0, optin = 0, coop = 0;
  PersistentLayout fail{};
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess) {
    cudaGetLastError();
    return fail.why = "cannot query the device", fail;
  }
  if (!coop) return fail.why = "the device has no cooperative launch", fail;
  return dispatch_mma(dtype, no_mma_layout(), [&](auto tag) {
    using T = decltype(tag);
    return layout_t<T>(B, H, R, proj, static_cast<size_t>(optin), sms, &occupancy_of, need_backward);
  });
}

// The exchange buffer: two [Bp, max(Rp, G)] slots, then the grid barrier's counter.
size_t exchange_slots_bytes(DType dtype, int64_t B, int64_t H, int64_t R) {
  const size_t el = dtype == DType::kF32 ? 4 : 2;
  const int64_t Bp = round_up(B, 16);
  return align128(2 * static_cast<size_t>(Bp) * std::max<int64_t>(round_up(R, 16), 4 * H) * el);
}

unsigned int* barrier_of(void* exchange, DType dtype, int64_t B, int64_t H, int64_t R) {
  return reinterpret_cast<unsigned int*>(static_cast<unsigned char*>(exchange) +
                                         exchange_slots_bytes(dtype, B, H, R));
}

size_t persistent_exchange_bytes(DType dtype, int64_t B, int64_t H, int64_t R) {
  return exchange_slots_bytes(dtype, B, H, R) + 128;
}

cudaError_t layer_persistent_forward(const LayerParams& p, const PersistentLayout& layout, const void* h0, void* exchange,
                                     cudaStream_t stream) {
  if (!layout.ok) return cudaErrorInvalidValue;  // the caller's error, not the device's refusal
  return dispatch_mma(p.dtype, cudaErrorInvalidValue, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    Geometry geo = geometry<T>(p.B, p.H, p.R, layout.units);
    geo.stage_xp = layout.stage_xp;
    geo.stage_h = layout.stage_h;
    LayerParams pp = p;
    const T* h0t = static_cast<const T*>(h0);
    T* xch = static_cast<T*>(exchange);
    unsigned int* bar = barrier_of(exchange, p.dtype, p.B, p.H, p.R);
    void* args[] = {&pp, &geo, &h0t, &xch, &bar};
    return launch_cooperative(reinterpret_cast<const void*>(&persistent_forward_kernel<T>), layout,
                              layout.smem_forward, args, stream);
  });
}

cudaError_t layer_persistent_backward(const LayerParams& p, const LayerGrads& g, const PersistentLayout& layout,
                                      void* exchange, cudaStream_t stream) {
  if (!layout.ok) return cudaErrorInvalidValue;
  return dispatch_mma(p.dtype, cudaErrorInvalidValue, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    Geometry geo = geometry<T>(p.B, p.H, p.R, layout.units);
    geo.stage_saved = layout.stage_saved;
    LayerParams pp = p;
    LayerGrads gg = g;
    T* xch = static_cast<T*>(exchange);
    unsigned int* bar = barrier_of(exchange, p.dtype, p.B, p.H, p.R);
    void* args[] = {&pp, &gg, &geo, &xch, &bar};
    return launch_cooperative(reinterpret_cast<const void*>(&persistent_backward_kernel<T>), layout,
                              layout.smem_backward, args, stream);
  });
}

}  // namespace cuda
}  // namespace fusedrnn
