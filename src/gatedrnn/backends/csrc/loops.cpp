// The time loops of the `cpu` backend, compiled: per step one product with the recurrent weight
// through our packed GEMM (below) and the cell's vectorised pointwise work, fused into that
// product's epilogue where the build has 32 vector registers (AVX-512) for the LSTM (every
// variant) and the GRU with the reset after, else a separate pass; the GRU with the reset before,
// the MGU and the LSTM with a projection take two products a step; the minimal cells (minGRU,
// minLSTM) none, each unit's recurrence a loop of its own. In place in the caller's buffers.
// `matmul` serves the input projection, dx and the weight gradients. The Python twins are the
// _*_forward_loop / _*_backward_loop functions in gatedrnn/backends/cpu.py; the buffer contracts
// are documented there. Built on first use by torch.utils.cpp_extension
// (gatedrnn/backends/compiled.py).
// ATen and torch's pybind11 casters, not <torch/extension.h>: that one also brings the whole C++
// frontend (modules, optimisers), whose headers took 16 of a 34-second parse
#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/TracerMode.h>
#include <ATen/cpu/vec/vec.h>
#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;
template <typename T>
using Vec = at::vec::Vectorized<T>;

// The activations through ATen's polynomial exp (exp_u20: within 20 ulp, ~1.2e-6 relative in
// float32; the exact exp for float64): several times cheaper than the 1-ulp Sleef calls behind
// Vectorized::exp and ::tanh, which took most of an LSTM step's pointwise time.
template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  const Vec<T> one(T(1));
  return one / (one + x.neg().exp_u20());
}

template <typename T>
inline Vec<T> tanh(const Vec<T>& x) {  // 1 − 2 / (e^{2x} + 1): ±1 where e^{2x} over/underflows
  const Vec<T> one(T(1)), two(T(2));
  return one - two / ((x + x).exp_u20() + one);
}

// Calls f(begin, end) over rows [0, n), in parallel once a chunk holds enough elements.
template <typename F>
inline void for_rows(int64_t n, int64_t width, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(width, 1));
  at::parallel_for(0, n, grain, f);
}

// Calls f(j, count) over the columns [0, H) one vector at a time (the last one partial).
template <typename T, typename F>
inline void for_columns(int64_t H, const F& f) {
  constexpr int64_t width = Vec<T>::size();
  for (int64_t j = 0; j < H; j += width) f(j, std::min<int64_t>(width, H - j));
}

inline int64_t live(const std::vector<int64_t>& batch_sizes, int64_t t, int64_t B) {
  return batch_sizes.empty() ? B : batch_sizes[t];
}

template <typename T>
inline Vec<T> load(const T* p, int64_t count) {
  return count == Vec<T>::size() ? Vec<T>::loadu(p) : Vec<T>::loadu(p, count);
}

template <typename T>
inline void store(const Vec<T>& v, T* p, int64_t count) {
  if (count == Vec<T>::size()) {
    v.store(p);
  } else {
    v.store(p, count);
  }
}

// ---- The recurrent products: a packed GEMM for a few rows --------------------------------------
// C = A·R (+ bias) (+ C) with A (M, K) row-major, M small (the batch), R (K, N) the recurrent
// weight, packed once per call into panels of NR columns so that each step streams it linearly.
// Each thread owns a fixed set of panels (the split is the same every step), so its part of the
// weight stays in its own cache across the whole sequence. MKL's sgemm at these shapes reached
// about half the machine's peak on the 2-core development machine; this reaches ~90% of it with
// AVX-512 (benchmarks/layer_speed.py measures the whole layer).

#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

template <typename T>
struct Tile {
  typedef T V __attribute__((vector_size(kVecBytes)));
  typedef T VU __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));  // unaligned access
  static constexpr int VS = kVecBytes / sizeof(T);    // lanes per vector
  static constexpr int NV = kVecBytes == 64 ? 4 : 2;  // vectors per panel row (registers: 16 / 32)
  static constexpr int NR = NV * VS;                  // columns per panel
};

// Packed weights live in a per-thread pool of buffers, reused from call to call: a fresh
// multi-megabyte allocation per call came back from the kernel as new pages, and their faults
// (~2000 per call for an LSTM with H = 512) cost more than the packing itself. A slot is one
// packed matrix alive at a time; calls on other threads get their own pool.
enum Slot { kInputSlot = 0, kRecurrentSlot = 1, kSecondSlot = 2, kSlots = 3 };

inline Tensor pooled(Slot slot, int64_t numel, const at::TensorOptions& options) {
  thread_local Tensor pool[kSlots];
  Tensor& buffer = pool[slot];
  if (!buffer.defined() || buffer.dtype() != options.dtype() || buffer.numel() < numel) {
    buffer = at::empty({numel}, options);
  }
  return buffer.narrow(0, 0, numel);
}

// R (K, ·), any strides, packed into `panels` blocks of (K, width) in the pool's `slot`: column c
// of panel p is R's column source(p, c), or zeros where that is −1. A transposed weight (R = Wᵀ,
// columns contiguous) is copied by blocks of 16 rows, both sides in L1 (a strided pass took
// 0.2–0.9 ms per call); a row-major one row by row, a panel's run of columns with one memcpy.
template <typename T, int64_t width, typename Source>
Tensor pack_panels(const Tensor& r, int64_t panels, Slot slot, const Source& source) {
  const int64_t K = r.size(0), sk = r.stride(0), sn = r.stride(1);
  Tensor data = pooled(slot, panels * K * width, r.options());
  const T* src = r.data_ptr<T>();
  T* dst = data.data_ptr<T>();
  at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
    int64_t column[width];
    for (int64_t p = p0; p < p1; ++p) {
      bool run = sn == 1;  // the panel's columns are one contiguous run of a row-major R
      for (int64_t c = 0; c < width; ++c) {
        column[c] = source(p, c);
        run = run && column[c] == column[0] + c && column[c] >= 0;
      }
      T* panel = dst + p * K * width;
      if (sk == 1) {
        for (int64_t k0 = 0; k0 < K; k0 += 16) {
          const int64_t k1 = std::min<int64_t>(K, k0 + 16);
          for (int64_t c = 0; c < width; ++c) {
            T* to = panel + c;
            const T* from = src + column[c] * sn;
            if (column[c] < 0) {
              for (int64_t k = k0; k < k1; ++k) to[k * width] = T(0);
            } else {
              for (int64_t k = k0; k < k1; ++k) to[k * width] = from[k];
            }
          }
        }
        continue;
      }
      for (int64_t k = 0; k < K; ++k) {
        T* to = panel + k * width;
        const T* from = src + k * sk;
        if (run) {
          std::memcpy(to, from + column[0], width * sizeof(T));
          continue;
        }
        for (int64_t c = 0; c < width; ++c) to[c] = column[c] < 0 ? T(0) : from[column[c] * sn];
      }
    }
  });
  return data;
}

// R (K, N) packed as panels of NV vectors (NR columns), the last one zero padded.
template <typename T, int NV = Tile<T>::NV>
struct Packed {
  int64_t K, N, panels;
  Tensor data;
  Packed(const Tensor& r, Slot slot) : K(r.size(0)), N(r.size(1)) {
    constexpr int NR = NV * Tile<T>::VS;
    panels = (N + NR - 1) / NR;
    data = pack_panels<T, NR>(r, panels, slot, [&](int64_t p, int64_t c) -> int64_t {
      return p * NR + c < N ? p * NR + c : -1;
    });
  }
};

// R (K, G·H), column v·H + j for gate v of unit j, packed as panels of G gates × VS units: column
// v·VS + u of panel p is gate v of unit p·VS + u.
template <typename T>
struct GatePacked {
  static constexpr int VS = Tile<T>::VS;
  int64_t K, H, G, panels;
  Tensor data;
  GatePacked(const Tensor& r, int64_t gates)
      : K(r.size(0)), H(r.size(1) / gates), G(gates) {
    panels = (H + VS - 1) / VS;
    const auto source = [&](int64_t p, int64_t c) -> int64_t {
      const int64_t j = p * VS + c % VS;
      return j < H ? (c / VS) * H + j : -1;
    };
    TORCH_CHECK(G == 3 || G == 4, "GatePacked: 3 or 4 gates, got ", G);
    data = G == 4 ? pack_panels<T, 4 * VS>(r, panels, kRecurrentSlot, source)
                  : pack_panels<T, 3 * VS>(r, panels, kRecurrentSlot, source);
  }
};

// acc[r][v] = Σ_k A[r, k] · P[k, v·VS …] over a packed panel of NV vectors. With one or two rows
// there are too few independent sums to hide the FMA latency, so even and odd k go to separate
// accumulators (the batch-of-one product ran latency-bound at half speed without this).
template <typename T, int MR, int NV>
inline void panel_sums(const T* A, int64_t lda, const T* P, int64_t K,
                       typename Tile<T>::V (&acc)[MR][NV]) {
  using V = typename Tile<T>::V;
  using VU = typename Tile<T>::VU;
  constexpr int VS = Tile<T>::VS, NR = NV * VS, S = MR <= 2 ? 2 : 1;
  V part[S][MR][NV];
#pragma GCC unroll 8
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) part[s][r][v] = V{};
  const auto step = [&](int s, int64_t k) {
    V w[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) w[v] = *reinterpret_cast<const VU*>(P + k * NR + v * VS);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const V a = V{} + A[r * lda + k];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) part[s][r][v] += a * w[v];
    }
  };
  int64_t k = 0;
  for (; k + S <= K; k += S) {
#pragma GCC unroll 2
    for (int s = 0; s < S; ++s) step(s, k + s);
  }
  for (; k < K; ++k) step(0, k);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      acc[r][v] = part[0][r][v];
#pragma GCC unroll 2
      for (int s = 1; s < S; ++s) acc[r][v] += part[s][r][v];
    }
}

// tile[r][v·VS + u] = Σ_k A[r, k] · P[k, v·VS + u] for MR rows and NV vectors. Not inlined: in
// the caller, the activations' constants hoisted out of the loops would take the registers that
// the accumulators need (inlined, the fused LSTM step ran at half the speed of the bare product).
template <typename T, int MR, int NV>
__attribute__((noinline)) void tile_product(const T* A, int64_t lda, const T* P, int64_t K,
                                            T* tile) {
  using V = typename Tile<T>::V;
  using VU = typename Tile<T>::VU;
  constexpr int VS = Tile<T>::VS, NR = NV * VS;
  V acc[MR][NV];
  panel_sums<T, MR, NV>(A, lda, P, K, acc);
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) *reinterpret_cast<VU*>(tile + r * NR + v * VS) = acc[r][v];
}

// Calls f(std::integral_constant<int, R>) for R = rows, 1 ≤ rows ≤ N.
template <int N, typename F>
inline void with_rows(int64_t rows, const F& f) {
  if constexpr (N > 0) {
    if (rows == N) {
      f(std::integral_constant<int, N>{});
    } else {
      with_rows<N - 1>(rows, f);
    }
  }
}

// Rows of A in one tile against a panel of NV vectors: MR·NV accumulators, 3/4 of the registers.
template <int NV>
constexpr int tile_rows() {
  return (kVecBytes == 64 ? 24 : 12) / NV;
}

// Rows [0, M) of A against panels [p0, p1) of NV vectors (K rows each, from `base`), then
// epilogue(row0, rows, panel, tile) with tile (rows, NV·VS) of products, in the thread that
// computed them: threads that split the panels split the epilogue's work too.
template <typename T, int NV, typename Epilogue>
void panel_range(const T* A, int64_t lda, int64_t M, const T* base, int64_t K, int64_t p0,
                 int64_t p1, const Epilogue& epilogue) {
  constexpr int VS = Tile<T>::VS, NR = NV * VS;
  constexpr int MR = tile_rows<NV>();
  alignas(64) T tile[MR * NR];
  for (int64_t p = p0; p < p1; ++p) {
    const T* P = base + p * K * NR;
    for (int64_t m = 0; m < M; m += MR) {
      with_rows<MR>(std::min<int64_t>(MR, M - m), [&](auto rows) {
        tile_product<T, decltype(rows)::value, NV>(A + m * lda, lda, P, K, tile);
      });
      epilogue(m, std::min<int64_t>(MR, M - m), p, tile);
    }
  }
}

// C = A·R (+ bias) (+ C) for R packed in plain panels.
template <typename T>
void gemm(const T* A, int64_t lda, int64_t M, const Packed<T>& R, T* C, int64_t ldc, const T* bias,
          bool accumulate) {
  constexpr int VS = Tile<T>::VS, NR = Tile<T>::NR;
  static_assert(VS == Vec<T>::size(), "the tiles and ATen's vectors have the same width");
  const int64_t K = R.K, N = R.N;
  const T* base = R.data.template data_ptr<T>();
  // Rows [m0, m1) of C against panels [p0, p1).
  const auto block = [&](int64_t m0, int64_t m1, int64_t p0, int64_t p1) {
    panel_range<T, Tile<T>::NV>(
        A + m0 * lda, lda, m1 - m0, base, K, p0, p1,
        [&](int64_t m, int64_t rows, int64_t p, const T* tile) {
          const int64_t col = p * NR, cols = std::min<int64_t>(NR, N - col);
          for (int64_t r = 0; r < rows; ++r) {
            T* c = C + (m0 + m + r) * ldc + col;
            for (int64_t j = 0; j < cols; j += VS) {
              const int64_t k = std::min<int64_t>(VS, cols - j);
              Vec<T> x = Vec<T>::loadu(tile + r * NR + j);
              if (bias != nullptr) x = x + load(bias + col + j, k);
              store(accumulate ? load(c + j, k) + x : x, c + j, k);
            }
          }
        });
  };
  constexpr int64_t kRowBlock = 96;
  if (M == 0) return;
  if (M < 4 * kRowBlock) {  // (fewer row blocks would leave a thread idle)
    // a step's product: threads split the panels, the same way every step, so each keeps its
    // part of the weight in its own cache; a thread takes at least ~128K multiply-adds
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(M * K * NR, 1));
    at::parallel_for(0, R.panels, grain, [&](int64_t p0, int64_t p1) { block(0, M, p0, p1); });
  } else {
    // all steps at once (the input projection): threads split row blocks, which stay in cache
    // while the panels stream past; about as many rows for each thread, in blocks of up to
    // kRowBlock (400 rows as 5 blocks of 96 left one of two threads idle a fifth of the time:
    // 0.84–0.95 of the layer's time against MKL's GEMM at batch 4–8, T = 100). A block is a
    // whole number of tiles (MR rows), so every row lands in the same tile, and sums in the
    // same order, whatever the number of threads (panel_sums splits the sums of 1–2 rows).
    constexpr int64_t MR = tile_rows<Tile<T>::NV>();
    const int64_t threads = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
    const int64_t least = (M + kRowBlock - 1) / kRowBlock;
    const int64_t even = (least + threads - 1) / threads * threads;
    const int64_t rows = ((M + even - 1) / even + MR - 1) / MR * MR;
    const int64_t blocks = (M + rows - 1) / rows;
    at::parallel_for(0, blocks, 1, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        if (r * rows < M) block(r * rows, std::min(M, (r + 1) * rows), 0, R.panels);
      }
    });
  }
}

template <typename T>
const T* data_or_null(const c10::optional<Tensor>& t) {
  return t.has_value() ? t->template data_ptr<T>() : nullptr;
}

// ---- Fused steps: the product and the cell's pointwise work in one pass -------------------------
// With 32 vector registers (AVX-512) the forward step packs W_hh in gate panels (GatePacked): the
// tile's epilogue then has every gate of its units and finishes the step for them (activations,
// cell, output) while they are in L1, and the threads that split the panels split the pointwise
// work too, with no second pass over memory. The backward steps fuse on plain panels in every
// build: step t's product gives dh for a panel's units, and step t − 1's pointwise work for those
// units follows in the epilogue.
#if defined(CPU_CAPABILITY_AVX512) || defined(GATEDRNN_GATE_PANELS)  // (the latter: for tests)
constexpr bool kGatePanels = true;
#else
constexpr bool kGatePanels = false;  // 16 registers: the plain panels and a separate pass
#endif

// Threads worth running for `work` multiply-adds per step: each takes at least ~64K (within one
// parallel region a step costs a barrier, not a fork; at ~128K a batch-of-one GRU with H = 256
// ran on one thread, at twice the time of two).
inline int64_t threads_for(int64_t work, int64_t panels) {
  if (at::in_parallel_region()) return 1;
  const int64_t useful = std::max<int64_t>(1, work >> 16);
  return std::max<int64_t>(1, std::min<int64_t>({int64_t{at::get_num_threads()}, panels, useful}));
}

// The largest packed weight that steps split by rows (over_steps) stream whole on each thread: a
// quarter of a core's L2 on the EPYC (1 MB), the GRU's, LSTM's and RNN's up to H = 128. Against
// the split by panels (two threads, T = 100, forward+backward): 0.73–0.95 of the time at H = 74
// and 100, B 16–64; at H = 64 and 128 level in one run and 0.85–0.93 (128) in another, whose
// phase of the machine slowed the barriers; H = 160–256, above this budget, level to 1.07.
constexpr int64_t kRowsBytes = 256 * 1024;

// The panels [p0, p1) and rows [q0, q1) whose work outside the product a thread does.
struct Share {
  int64_t p0, p1, q0, q1;
};

// A whole sequence over panels of NV vectors: step(t, share, product) for t = 0 … steps − 1 in
// every thread; product(A, lda, M, epilogue) runs panel_range on the thread's share of the
// product, the same at every step, and `share` says whose work outside the product the thread
// does (the backward's rows that join at t − 1). One parallel region for the sequence instead of
// a fork and join per step (1–2 µs each, a third of a batch-of-one step). Two ways to share:
// - By panels, with a barrier between steps: each thread keeps its part of the weight in its own
//   cache. Panels that do not divide evenly among the threads are not dealt out whole (5 panels
//   on 2 threads went 3:2, and a GRU with H = 68–80 took 1.5× the time of H = 64 forward; one
//   panel ran on one thread): each thread takes the same number of whole panels, and the rest
//   are shared by rows, in whole tiles (MR rows); the last thread owns the shared panels' units.
// - By rows, with no barrier at all (a batch's rows are independent sequences), where the
//   weight is small (kRowsBytes): each thread takes whole tiles, as many as the others (or at
//   least 4), and streams the whole weight from its own cache at each step. Split by panels, the
//   threads meet at every step, and where rows are not 64-byte aligned (H = 74) they write the
//   same cache lines in every row. On the shared 2-core EPYC, for tens of seconds at a time
//   (likeliest: its two virtual cores on physical ones that share no cache), steps split by
//   panels took up to twice their time, a GRU at H = 74 more than the LSTM at 64, and an
//   equal-budget speed verdict moved with them (GRU/LSTM 1.15 → 1.45; on the adding problem,
//   GRU at 80 against LSTM at 69 split by rows, 0.92–0.98 → 1.06–1.19).
// Either way every row's sums keep their order, bit for bit the same on any number of threads.
template <typename T, int NV, typename Step>
void over_steps(int64_t steps, int64_t max_rows, const T* base, int64_t K, int64_t panels,
                const Step& step) {
  constexpr int NR = NV * Tile<T>::VS;
  constexpr int64_t MR = tile_rows<NV>();
  const int64_t tiles = (max_rows + MR - 1) / MR;
  const int64_t work = max_rows * K * NR * panels;
  // shared by rows, panels are no cap on the threads: a tile each is
  const int64_t threads = threads_for(work, std::max(panels, tiles));
  const bool by_rows = K * NR * panels * int64_t(sizeof(T)) <= kRowsBytes && threads > 1 &&
                       (tiles % threads == 0 || tiles >= 4 * threads);
  // where part i of `count` of M rows begins, in whole tiles
  const auto cut = [](int64_t M, int64_t i, int64_t count) {
    return std::min(M, (M + MR - 1) / MR * i / count * MR);
  };
  // rows [r0, r1) of A against panels [p0, p1), the epilogue told the rows' own indices
  const auto rows_of = [=](const T* A, int64_t lda, int64_t r0, int64_t r1, int64_t p0,
                           int64_t p1, const auto& epilogue) {
    if (r1 <= r0) return;
    panel_range<T, NV>(A + r0 * lda, lda, r1 - r0, base, K, p0, p1,
                       [&](int64_t m, int64_t rows, int64_t p, const T* tile) {
                         epilogue(r0 + m, rows, p, tile);
                       });
  };
  // panels [p0, p1) whole, and part `id` of `count` of the rows of [tail, panels)
  const auto run = [=](int64_t p0, int64_t p1, int64_t tail, int64_t id, int64_t count) {
    return [=](const T* A, int64_t lda, int64_t M, const auto& epilogue) {
      rows_of(A, lda, 0, M, p0, p1, epilogue);
      if (tail < panels) rows_of(A, lda, cut(M, id, count), cut(M, id + 1, count), tail, panels,
                                 epilogue);
    };
  };
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t count = omp_get_num_threads(), id = omp_get_thread_num();
      if (by_rows) {
        const int64_t q0 = cut(max_rows, id, count), q1 = cut(max_rows, id + 1, count);
        const auto product = [=](const T* A, int64_t lda, int64_t M, const auto& epilogue) {
          rows_of(A, lda, q0, std::min(M, q1), 0, panels, epilogue);
        };
        for (int64_t t = 0; t < steps; ++t) step(t, Share{0, panels, q0, q1}, product);
      } else {
        const int64_t whole = panels / count, p0 = id * whole, p1 = p0 + whole;
        const auto product = run(p0, p1, count * whole, id, count);
        const int64_t owned = id == count - 1 ? panels : p1;  // the last thread owns the tail
        for (int64_t t = 0; t < steps; ++t) {
          step(t, Share{p0, owned, 0, max_rows}, product);
#pragma omp barrier
        }
      }
    }
    return;
  }
#endif
  const auto product = run(0, panels, panels, 0, 1);
  for (int64_t t = 0; t < steps; ++t) step(t, Share{0, panels, 0, max_rows}, product);
}

// Calls f(std::integral_constant<int, NV>) with the vectors per panel, NV, for a product of M
// rows and N columns a step (a step's plain panels: the RNN's forward, the backward's dh). Panels
// of 4 vectors (64 columns in float32) pad a narrow product a long way (N = 74: 128 columns), so
// the narrowest padded width wins, weighed by what a column costs in panels of one vector, whose
// tiles hold 24 rows and so 24 broadcasts per weight vector: 1.35 against 1 for 3 and 4
// vectors (GRU backward alone, T = 100, two threads, H 32–256, B 8 and 32, each width forced in
// turn: 3 vectors took 0.75–0.85 of the time of 4 at H = 48 and 74; 2 vectors, 1.2, led at two
// sizes of 21, by 12–14%, within this machine's noise, and are not built). With one or two rows,
// streaming the weight is all there is, and a column costs the same in any panel (one vector
// took 0.63 of the time at B = 1, H = 74; 0.86 at 100). Builds with 16 vector registers keep
// their one width.
template <typename T, typename F>
inline void with_panel_vectors(int64_t N, int64_t M, const F& f) {
  if constexpr (Tile<T>::NV == 4) {
    const auto columns = [&](int64_t nv) {
      const int64_t width = nv * Tile<T>::VS;
      return (N + width - 1) / width * width;
    };
    const int64_t four = columns(4), three = columns(3), one = columns(1) * (M <= 2 ? 20 : 27);
    if (one < 20 * std::min(four, three)) return f(std::integral_constant<int, 1>{});
    if (three < four) return f(std::integral_constant<int, 3>{});
    return f(std::integral_constant<int, 4>{});
  } else {
    return f(std::integral_constant<int, Tile<T>::NV>{});
  }
}

// The backward time loop of a fused cell: for t = T − 1 … 0, dh = dgates_t · W_hh (or dh +=,
// where the direct path h_{t−1} → h_t left its part in dh), with `point(t − 1, b, j, k)`, step
// t − 1's pointwise work for one vector of units, in the product's epilogue for the same rows and
// units; `point(T − 1, …)` runs first for every live row. Rows that start at t − 1 (packed input,
// going backwards) are not in step t's product: the thread that owns their units (steps split by
// panels) or the rows themselves (split by rows) does them after it. One parallel region for the
// sequence (over_steps), the product in panels of NV vectors (with_panel_vectors chooses).
template <typename T, int NV, typename Point>
void backward_steps_over(const Tensor& w_hh, const T* dg_all, int64_t lda, T* dhp, int64_t T_,
                         int64_t B, int64_t H, const std::vector<int64_t>& batch_sizes,
                         bool accumulate, const Point& point) {
  constexpr int VS = Tile<T>::VS, NR = NV * VS;
  const Packed<T, NV> w(w_hh, kRecurrentSlot);
  at::parallel_for(0, live(batch_sizes, T_ - 1, B), std::max<int64_t>(1, 4096 / lda),
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) {
                       for_columns<T>(H, [&](int64_t j, int64_t k) { point(T_ - 1, b, j, k); });
                     }
                   });
  over_steps<T, NV>(
      T_, B, w.data.template data_ptr<T>(), w.K, w.panels,
      [&](int64_t s, const Share& own, const auto& product) {
        const int64_t t = T_ - 1 - s, n = live(batch_sizes, t, B);
        product(dg_all + t * B * lda, lda, n,
                [&](int64_t m, int64_t rows, int64_t p, const T* tile) {
                  const int64_t j0 = p * NR, j1 = std::min<int64_t>(H, j0 + NR);
                  for (int64_t r = 0; r < rows; ++r) {
                    const int64_t b = m + r;
                    for (int64_t j = j0; j < j1; j += VS) {
                      const int64_t k = std::min<int64_t>(VS, j1 - j);
                      T* d = dhp + b * H + j;
                      const Vec<T> x = Vec<T>::loadu(tile + r * NR + (j - j0));
                      store(accumulate ? load(d, k) + x : x, d, k);
                      if (t > 0) point(t - 1, b, j, k);
                    }
                  }
                });
        if (t == 0) return;
        const int64_t u0 = own.p0 * NR, u1 = std::min<int64_t>(H, own.p1 * NR);
        const int64_t b1 = std::min(own.q1, live(batch_sizes, t - 1, B));
        for (int64_t b = std::max(n, own.q0); b < b1; ++b) {
          for (int64_t j = u0; j < u1; j += VS) point(t - 1, b, j, std::min<int64_t>(VS, u1 - j));
        }
      });
}

template <typename T, typename Point>
void backward_steps(const Tensor& w_hh, const T* dg_all, int64_t lda, T* dhp, int64_t T_,
                    int64_t B, int64_t H, const std::vector<int64_t>& batch_sizes,
                    bool accumulate, const Point& point) {
  if (T_ == 0) return;
  with_panel_vectors<T>(H, B, [&](auto nv) {
    backward_steps_over<T, decltype(nv)::value>(w_hh, dg_all, lda, dhp, T_, B, H, batch_sizes,
                                                accumulate, point);
  });
}

// The forward time loop of a fused cell over gate panels: step t's product h_{t−1} · W_hhᵀ, and in
// its epilogue `unit(t, b, j, k, pre)` for each row b and vector of units [j, j + k), with `pre`
// the G·VS recurrent pre-activations of that row and panel (gate v at pre + v·VS). One parallel
// region for the sequence (over_steps).
template <typename T, int G, typename Unit>
void forward_steps(const Tensor& w_hh, const T* h0, const T* out_all, int64_t T_, int64_t B,
                   int64_t H, const std::vector<int64_t>& batch_sizes, const Unit& unit) {
  constexpr int VS = Tile<T>::VS;
  const GatePacked<T> w(w_hh.t(), G);
  over_steps<T, G>(
      T_, B, w.data.template data_ptr<T>(), w.K, w.panels,
      [&](int64_t t, const Share&, const auto& product) {
        const T* hp = t == 0 ? h0 : out_all + (t - 1) * B * H;
        product(hp, H, live(batch_sizes, t, B),
                [&](int64_t m, int64_t rows, int64_t p, const T* tile) {
                  const int64_t j = p * VS, k = std::min<int64_t>(VS, H - j);
                  for (int64_t r = 0; r < rows; ++r) unit(t, m + r, j, k, tile + r * G * VS);
                });
      });
}

// Calls f(std::bool_constant<coupled>, std::bool_constant<peepholes>): one instantiation of the
// LSTM's loops per variant, so that the standard cell's code has no branch for the others.
template <typename F>
inline void with_variant(bool coupled, bool peepholes, const F& f) {
  if (coupled) {
    peepholes ? f(std::true_type{}, std::true_type{}) : f(std::true_type{}, std::false_type{});
  } else {
    peepholes ? f(std::false_type{}, std::true_type{}) : f(std::false_type{}, std::false_type{});
  }
}

// The LSTM's pointwise step for one vector of units [j, j + k) of one row: `pre(v)` is gate v's
// pre-activation (block v of the row's gates `gr`: i|f|g|o, or i|g|o with the coupled gate, where
// f = 1 − i), `cp` the row's previous cell; writes the gates' activations back to `gr`, the cell
// to `c` and h to `o`. Peepholes (p_i|p_f|p_o, or p_i|p_o coupled) add p ⊙ c_{t−1} to i and f and
// p_o ⊙ c_t to o.
template <typename T, bool Coupled, bool Peep, typename Pre>
inline void lstm_unit(const Pre& pre, T* gr, const T* cp, T* c, T* o, const T* peep, int64_t H,
                      int64_t j, int64_t k) {
  constexpr int G = Coupled ? 3 : 4, GV = G - 2, OV = G - 1;  // the g and o blocks
  const Vec<T> cprev = load(cp + j, k);
  Vec<T> ipre = pre(0);
  if constexpr (Peep) ipre = ipre + load(peep + j, k) * cprev;
  const Vec<T> i = sigmoid(ipre);
  const Vec<T> cand = tanh(pre(GV));
  Vec<T> cell;
  if constexpr (Coupled) {
    cell = cprev + i * (cand - cprev);  // (1 − i) ⊙ c + i ⊙ g
  } else {
    Vec<T> fpre = pre(1);
    if constexpr (Peep) fpre = fpre + load(peep + H + j, k) * cprev;
    const Vec<T> f = sigmoid(fpre);
    store(f, gr + H + j, k);
    cell = f * cprev + i * cand;
  }
  Vec<T> opre = pre(OV);
  if constexpr (Peep) opre = opre + load(peep + (G - 2) * H + j, k) * cell;
  const Vec<T> og = sigmoid(opre);
  store(i, gr + j, k);
  store(cand, gr + GV * H + j, k);
  store(og, gr + OV * H + j, k);
  store(cell, c + j, k);
  store(og * tanh(cell), o + j, k);
}

// With the projection W_hr (P, H): o ⊙ tanh(c) goes to `raw_all` and h = raw · W_hrᵀ to
// `out_all` (P features), a second product each step, so the steps take the plain panels; without,
// w_hr is null and P = H.
template <typename T, bool Coupled, bool Peep>
void lstm_forward_variant(T* g_all, T* out_all, T* c_all, T* raw_all, const T* h0, const T* c0,
                          const Tensor& w_hh, const Tensor* w_hr, const T* peep, int64_t T_,
                          int64_t B, int64_t H, int64_t P,
                          const std::vector<int64_t>& batch_sizes) {
  constexpr int G = Coupled ? 3 : 4;
  if (kGatePanels && w_hr == nullptr) {
    constexpr int VS = Tile<T>::VS;
    forward_steps<T, G>(w_hh, h0, out_all, T_, B, H, batch_sizes,
                        [&](int64_t t, int64_t b, int64_t j, int64_t k, const T* pre) {
      const T* cp = (t == 0 ? c0 : c_all + (t - 1) * B * H) + b * H;
      T* gr = g_all + (t * B + b) * G * H;
      const auto gate = [&](int v) {
        return Vec<T>::loadu(pre + v * VS) + load(gr + v * H + j, k);
      };
      lstm_unit<T, Coupled, Peep>(gate, gr, cp, c_all + (t * B + b) * H,
                                  out_all + (t * B + b) * H, peep, H, j, k);
    });
    return;
  }
  const Packed<T> w(w_hh.t(), kRecurrentSlot);
  const c10::optional<Packed<T>> w_r =
      w_hr == nullptr ? c10::nullopt : c10::make_optional(Packed<T>(w_hr->t(), kSecondSlot));
  T* h_all = w_hr == nullptr ? out_all : raw_all;  // o ⊙ tanh(c)
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = live(batch_sizes, t, B);
    const T* hp = t == 0 ? h0 : out_all + (t - 1) * B * P;
    const T* cp = t == 0 ? c0 : c_all + (t - 1) * B * H;
    T* g = g_all + t * B * G * H;
    gemm<T>(hp, P, n, w, g, G * H, nullptr, true);
    for_rows(n, G * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* gr = g + b * G * H;
        for_columns<T>(H, [&](int64_t j, int64_t k) {
          const auto gate = [&](int v) { return load(gr + v * H + j, k); };
          lstm_unit<T, Coupled, Peep>(gate, gr, cp + b * H, c_all + (t * B + b) * H,
                                      h_all + (t * B + b) * H, peep, H, j, k);
        });
      }
    });
    if (w_r.has_value()) {  // h = (o ⊙ tanh c) · W_hrᵀ
      gemm<T>(h_all + t * B * H, H, n, *w_r, out_all + t * B * P, P, nullptr, false);
    }
  }
}

template <typename T>
void gru_forward_fused(T* g_all, T* out_all, T* rec_all, const T* h0, const Tensor& w_hh,
                       const T* b_hh, int64_t T_, int64_t B, int64_t H,
                       const std::vector<int64_t>& batch_sizes) {
  constexpr int VS = Tile<T>::VS;
  forward_steps<T, 3>(w_hh, h0, out_all, T_, B, H, batch_sizes,
                      [&](int64_t t, int64_t b, int64_t j, int64_t k, const T* pre) {
    const T* hp = t == 0 ? h0 : out_all + (t - 1) * B * H;
    T* gr = g_all + (t * B + b) * 3 * H;
    const Vec<T> zero(T(0));
    const auto bias = [&](int64_t v) { return b_hh != nullptr ? load(b_hh + v * H + j, k) : zero; };
    const Vec<T> rg = sigmoid(Vec<T>::loadu(pre) + bias(0) + load(gr + j, k));
    const Vec<T> z = sigmoid(Vec<T>::loadu(pre + VS) + bias(1) + load(gr + H + j, k));
    const Vec<T> hn = Vec<T>::loadu(pre + 2 * VS) + bias(2);
    const Vec<T> cand = tanh(load(gr + 2 * H + j, k) + rg * hn);
    const Vec<T> h = load(hp + b * H + j, k);
    store(rg, gr + j, k);
    store(z, gr + H + j, k);
    store(cand, gr + 2 * H + j, k);
    store(hn, rec_all + (t * B + b) * H + j, k);
    store(cand + z * (h - cand), out_all + (t * B + b) * H + j, k);  // (1 − z) ⊙ n + z ⊙ h
  });
}

template <typename T>
void gru_forward_impl(Tensor& gates, Tensor& out, Tensor& rec, const Tensor& h0, const Tensor& w_hh,
             const c10::optional<Tensor>& b_hh, const std::vector<int64_t>& batch_sizes,
             bool reset_after) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  if (kGatePanels && reset_after) {
    gru_forward_fused<T>(gates.data_ptr<T>(), out.data_ptr<T>(), rec.data_ptr<T>(),
                         h0.data_ptr<T>(), w_hh, data_or_null<T>(b_hh), T_, B, H, batch_sizes);
    return;
  }
  const Tensor w_t = w_hh.t();
  // after: one product for all three gates; before: r|z first, then n from r ⊙ h
  const Packed<T> w_all(reset_after ? w_t : w_t.narrow(1, 0, 2 * H), kRecurrentSlot);
  const c10::optional<Packed<T>> w_n =
      reset_after ? c10::nullopt
                  : c10::make_optional(Packed<T>(w_t.narrow(1, 2 * H, H), kSecondSlot));
  const T* b_all = data_or_null<T>(b_hh);
  const T* b_n = b_all != nullptr ? b_all + 2 * H : nullptr;
  Tensor scratch = at::empty({B, 3 * H}, gates.options());  // W_hh h + b_hh, or its r|z part
  Tensor scratch_n = at::empty({B, H}, gates.options());  // before: W_hn (r ⊙ h) + b_hn
  T* g_all = gates.data_ptr<T>();
  T* out_all = out.data_ptr<T>();
  T* rec_all = rec.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = live(batch_sizes, t, B);
    const T* hp = t == 0 ? h0.data_ptr<T>() : out.data_ptr<T>() + (t - 1) * B * H;
    T* g = g_all + t * B * 3 * H;
    T* o = out_all + t * B * H;
    T* rc = rec_all + t * B * H;
    if (reset_after) {
      T* ghp = scratch.data_ptr<T>();
      gemm<T>(hp, H, n, w_all, ghp, 3 * H, b_all, false);
      for_rows(n, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* gr = g + b * 3 * H;
          const T* hr = ghp + b * 3 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> r = sigmoid(load(gr + j, c) + load(hr + j, c));
            const Vec<T> z = sigmoid(load(gr + H + j, c) + load(hr + H + j, c));
            const Vec<T> hn = load(hr + 2 * H + j, c);
            const Vec<T> cand = tanh(load(gr + 2 * H + j, c) + r * hn);
            const Vec<T> h = load(hp + b * H + j, c);
            store(r, gr + j, c);
            store(z, gr + H + j, c);
            store(cand, gr + 2 * H + j, c);
            store(hn, rc + b * H + j, c);
            store(cand + z * (h - cand), o + b * H + j, c);  // (1 − z) ⊙ n + z ⊙ h
          });
        }
      });
    } else {
      T* ghp = scratch.data_ptr<T>();  // as an (n, 2H) matrix
      gemm<T>(hp, H, n, w_all, ghp, 2 * H, b_all, false);
      for_rows(n, 2 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* gr = g + b * 3 * H;
          const T* hr = ghp + b * 2 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> r = sigmoid(load(gr + j, c) + load(hr + j, c));
            const Vec<T> z = sigmoid(load(gr + H + j, c) + load(hr + H + j, c));
            store(r, gr + j, c);
            store(z, gr + H + j, c);
            store(r * load(hp + b * H + j, c), rc + b * H + j, c);  // r ⊙ h
          });
        }
      });
      T* ghn = scratch_n.data_ptr<T>();
      gemm<T>(rc, H, n, *w_n, ghn, H, b_n, false);
      for_rows(n, H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* gr = g + b * 3 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> cand = tanh(load(gr + 2 * H + j, c) + load(ghn + b * H + j, c));
            const Vec<T> z = load(gr + H + j, c);
            const Vec<T> h = load(hp + b * H + j, c);
            store(cand, gr + 2 * H + j, c);
            store(cand + z * (h - cand), o + b * H + j, c);
          });
        }
      });
    }
  }
}

// The gradient through a gate's product with the previous state, g ⊙ h_{t−1} (the GRU's r ⊙ h
// with the reset before, the MGU's f ⊙ h), given d = ∂/∂(g ⊙ h) (n × H) and the gate as block 0
// of the rows of `g` (`width` apart): its pre-activation gradient d ⊙ h ⊙ g(1 − g) into block 0
// of `dg`'s rows (added to what is there with `accumulate`), and dh += d ⊙ g.
template <typename T>
void through_gated_state(int64_t n, int64_t H, int64_t width, const T* g, T* dg, const T* d,
                         const T* hp, T* dhp, bool accumulate) {
  for_rows(n, H, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* gr = g + b * width;
      T* dgr = dg + b * width;
      for_columns<T>(H, [&](int64_t j, int64_t c) {
        const Vec<T> one(T(1));
        const Vec<T> dv = load(d + b * H + j, c);
        const Vec<T> gate = load(gr + j, c);
        const Vec<T> dgate = dv * load(hp + b * H + j, c) * gate * (one - gate);
        store(accumulate ? load(dgr + j, c) + dgate : dgate, dgr + j, c);
        store(load(dhp + b * H + j, c) + dv * gate, dhp + b * H + j, c);
      });
    }
  });
}

template <typename T>
void gru_backward_impl(const Tensor& grad_out, Tensor& dh, const Tensor& gates, const Tensor& rec,
              const Tensor& out, const Tensor& h0, const Tensor& w_hh, Tensor& dgates,
              c10::optional<Tensor> dn_all, const std::vector<int64_t>& batch_sizes,
              bool reset_after) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  const T* go_all = grad_out.data_ptr<T>();
  const T* g_all = gates.data_ptr<T>();
  const T* rec_all = rec.data_ptr<T>();
  T* dg_all = dgates.data_ptr<T>();
  T* dn_base = dn_all.has_value() ? dn_all->data_ptr<T>() : nullptr;
  T* dhp = dh.data_ptr<T>();
  if (reset_after) {
    // one vector of units [j, j + k) of row b at step t: dgates_t, dn_t and dh ← the direct path
    const auto point = [&](int64_t t, int64_t b, int64_t j, int64_t k) {
      const T* hp = t == 0 ? h0.data_ptr<T>() : out.data_ptr<T>() + (t - 1) * B * H;
      const T* gr = g_all + (t * B + b) * 3 * H;
      T* dgr = dg_all + (t * B + b) * 3 * H;
      const Vec<T> one(T(1));
      const Vec<T> grad = load(dhp + b * H + j, k) + load(go_all + (t * B + b) * H + j, k);
      const Vec<T> r = load(gr + j, k), z = load(gr + H + j, k);
      const Vec<T> cand = load(gr + 2 * H + j, k);
      const Vec<T> h = load(hp + b * H + j, k);
      const Vec<T> dn = grad * (one - z) * (one - cand * cand);
      store(dn * load(rec_all + (t * B + b) * H + j, k) * r * (one - r), dgr + j, k);
      store(grad * (h - cand) * z * (one - z), dgr + H + j, k);
      store(dn * r, dgr + 2 * H + j, k);
      store(dn, dn_base + (t * B + b) * H + j, k);
      store(grad * z, dhp + b * H + j, k);  // the direct path, h_{t−1} → h_t
    };
    backward_steps<T>(w_hh, dg_all, 3 * H, dhp, T_, B, H, batch_sizes, true, point);
    return;
  }
  // reset before: dh += dgates · W_hh as r|z and n apart
  const Packed<T> w_rz(w_hh.narrow(0, 0, 2 * H), kRecurrentSlot);
  const Packed<T> w_n(w_hh.narrow(0, 2 * H, H), kSecondSlot);
  Tensor scratch = at::empty({B, H}, gates.options());
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = live(batch_sizes, t, B);
    const T* hp = t == 0 ? h0.data_ptr<T>() : out.data_ptr<T>() + (t - 1) * B * H;
    const T* go = go_all + t * B * H;
    const T* g = g_all + t * B * 3 * H;
    T* dg = dg_all + t * B * 3 * H;
    {  // reset before: ∂/∂(r ⊙ h) needs its own product before r's gradient

      for_rows(n, 3 * H, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const T* gr = g + b * 3 * H;
          T* dgr = dg + b * 3 * H;
          for_columns<T>(H, [&](int64_t j, int64_t c) {
            const Vec<T> one(T(1));
            const Vec<T> grad = load(dhp + b * H + j, c) + load(go + b * H + j, c);
            const Vec<T> z = load(gr + H + j, c);
            const Vec<T> cand = load(gr + 2 * H + j, c);
            const Vec<T> h = load(hp + b * H + j, c);
            store(grad * (one - z) * (one - cand * cand), dgr + 2 * H + j, c);
            store(grad * (h - cand) * z * (one - z), dgr + H + j, c);
            store(grad * z, dhp + b * H + j, c);
          });
        }
      });
      T* drp = scratch.data_ptr<T>();
      gemm<T>(dg + 2 * H, 3 * H, n, w_n, drp, H, nullptr, false);  // ∂/∂(r ⊙ h)
      through_gated_state<T>(n, H, 3 * H, g, dg, drp, hp, dhp, false);
      gemm<T>(dg, 3 * H, n, w_rz, dhp, H, nullptr, true);
    }
  }
}

template <typename T>
void lstm_forward_impl(Tensor& gates, Tensor& out, Tensor& cells, const Tensor& h0,
                       const Tensor& c0, const Tensor& w_hh, const c10::optional<Tensor>& peep,
                       const c10::optional<Tensor>& w_hr, const c10::optional<Tensor>& raw,
                       const std::vector<int64_t>& batch_sizes, bool coupled) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = cells.size(2), P = out.size(2);
  TORCH_CHECK(w_hr.has_value() == raw.has_value() && (w_hr.has_value() || P == H),
              "lstm_forward: the projection W_hr and its raw buffer come together");
  const auto run = [&](auto coupled_, auto peep_) {
    lstm_forward_variant<T, decltype(coupled_)::value, decltype(peep_)::value>(
        gates.data_ptr<T>(), out.data_ptr<T>(), cells.data_ptr<T>(),
        raw.has_value() ? raw->data_ptr<T>() : nullptr, h0.data_ptr<T>(), c0.data_ptr<T>(), w_hh,
        w_hr.has_value() ? &*w_hr : nullptr, data_or_null<T>(peep), T_, B, H, P, batch_sizes);
  };
  with_variant(coupled, peep.has_value(), run);
}

// The LSTM's backward through time. Without a projection each step is one product,
// dh = dgates · W_hh, with the next step's pointwise work in its epilogue (backward_steps); with
// W_hr (P, H), ∂h_t (P features) goes to `dproj` (for W_hr's gradient) and through W_hr to
// ∂(o ⊙ tanh c) first: two products a step.
template <typename T, bool Coupled, bool Peep>
void lstm_backward_variant(const Tensor& grad_out, Tensor& dh, Tensor& dc, const Tensor& gates,
                           const Tensor& cells, const Tensor& c0, const Tensor& w_hh,
                           const T* peep, const Tensor* w_hr, T* dproj, Tensor& dgates,
                           const std::vector<int64_t>& batch_sizes) {
  constexpr int G = Coupled ? 3 : 4, GV = G - 2, OV = G - 1;  // the g and o blocks
  const int64_t T_ = gates.size(0), B = gates.size(1), H = cells.size(2), P = dh.size(1);
  const T* go_all = grad_out.data_ptr<T>();
  const T* g_all = gates.data_ptr<T>();
  const T* c_all = cells.data_ptr<T>();
  T* dg_all = dgates.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dcp = dc.data_ptr<T>();
  // one vector of units [j, j + k) of row b at step t, given ∂(o ⊙ tanh c): the gates'
  // pre-activation gradients, and dc ← dc_{t−1}
  const auto cell_point = [&](int64_t t, int64_t b, int64_t j, int64_t k, const Vec<T>& grad) {
    const T* gr = g_all + (t * B + b) * G * H;
    T* dgr = dg_all + (t * B + b) * G * H;
    const T* c = c_all + t * B * H;
    const T* cp = (t == 0 ? c0.data_ptr<T>() : c_all + (t - 1) * B * H);
    const Vec<T> one(T(1));
    const Vec<T> i = load(gr + j, k);
    const Vec<T> cand = load(gr + GV * H + j, k), og = load(gr + OV * H + j, k);
    const Vec<T> cprev = load(cp + b * H + j, k);
    const Vec<T> tc = tanh(load(c + b * H + j, k));
    const Vec<T> dout = grad * tc * og * (one - og);
    Vec<T> dcell = load(dcp + b * H + j, k) + grad * og * (one - tc * tc);
    if constexpr (Peep) dcell = dcell + dout * load(peep + (G - 2) * H + j, k);
    // coupled: c = c_{t−1} + i ⊙ (g − c_{t−1})
    const Vec<T> di = dcell * (Coupled ? cand - cprev : cand) * i * (one - i);
    store(di, dgr + j, k);
    store(dcell * i * (one - cand * cand), dgr + GV * H + j, k);
    store(dout, dgr + OV * H + j, k);
    Vec<T> dprev;  // to c_{t−1}
    if constexpr (Coupled) {
      dprev = dcell * (one - i);
    } else {
      const Vec<T> f = load(gr + H + j, k);
      const Vec<T> df = dcell * cprev * f * (one - f);
      store(df, dgr + H + j, k);
      dprev = dcell * f;
      if constexpr (Peep) dprev = dprev + df * load(peep + H + j, k);
    }
    if constexpr (Peep) dprev = dprev + di * load(peep + j, k);
    store(dprev, dcp + b * H + j, k);
  };
  if (w_hr == nullptr) {  // ∂(o ⊙ tanh c) = ∂h_t = dh + ∂out_t
    const auto point = [&](int64_t t, int64_t b, int64_t j, int64_t k) {
      cell_point(t, b, j, k,
                 load(dhp + b * H + j, k) + load(go_all + (t * B + b) * H + j, k));
    };
    backward_steps<T>(w_hh, dg_all, G * H, dhp, T_, B, H, batch_sizes, false, point);
    return;
  }
  const Packed<T> w(w_hh, kRecurrentSlot);  // dh = dgates · W_hh
  const Packed<T> w_r(*w_hr, kSecondSlot);  // ∂(o ⊙ tanh c) = ∂h_t · W_hr
  Tensor scratch = at::empty({B, H}, gates.options());
  T* draw = scratch.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = live(batch_sizes, t, B);
    T* dp = dproj + t * B * P;
    for_rows(n, P, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for_columns<T>(P, [&](int64_t j, int64_t k) {
          const Vec<T> grad = load(dhp + b * P + j, k) + load(go_all + (t * B + b) * P + j, k);
          store(grad, dp + b * P + j, k);
        });
      }
    });
    gemm<T>(dp, P, n, w_r, draw, H, nullptr, false);
    for_rows(n, G * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for_columns<T>(H, [&](int64_t j, int64_t k) {
          cell_point(t, b, j, k, load(draw + b * H + j, k));
        });
      }
    });
    gemm<T>(dg_all + t * B * G * H, G * H, n, w, dhp, P, nullptr, false);
  }
}

template <typename T>
void lstm_backward_impl(const Tensor& grad_out, Tensor& dh, Tensor& dc, const Tensor& gates,
                        const Tensor& cells, const Tensor& c0, const Tensor& w_hh,
                        const c10::optional<Tensor>& peep, const c10::optional<Tensor>& w_hr,
                        const c10::optional<Tensor>& dproj, Tensor& dgates,
                        const std::vector<int64_t>& batch_sizes, bool coupled) {
  TORCH_CHECK(w_hr.has_value() == dproj.has_value() &&
                  (w_hr.has_value() || dh.size(1) == cells.size(2)),
              "lstm_backward: the projection W_hr and its gradient buffer come together");
  const auto run = [&](auto coupled_, auto peep_) {
    lstm_backward_variant<T, decltype(coupled_)::value, decltype(peep_)::value>(
        grad_out, dh, dc, gates, cells, c0, w_hh, data_or_null<T>(peep),
        w_hr.has_value() ? &*w_hr : nullptr, dproj.has_value() ? dproj->data_ptr<T>() : nullptr,
        dgates, batch_sizes);
  };
  with_variant(coupled, peep.has_value(), run);
}

template <typename T>
void mgu_forward_impl(Tensor& gates, Tensor& out, Tensor& rec, const Tensor& h0, const Tensor& w_hh,
                      const c10::optional<Tensor>& b_hh, const std::vector<int64_t>& batch_sizes) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  // f from h first, then n from f ⊙ h: two products a step, each added to its gate's x part
  const Tensor w_t = w_hh.t();
  const Packed<T> w_f(w_t.narrow(1, 0, H), kRecurrentSlot);
  const Packed<T> w_n(w_t.narrow(1, H, H), kSecondSlot);
  const T* b_f = data_or_null<T>(b_hh);
  const T* b_n = b_f != nullptr ? b_f + H : nullptr;
  T* g_all = gates.data_ptr<T>();
  T* out_all = out.data_ptr<T>();
  T* rec_all = rec.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t n = live(batch_sizes, t, B);
    const T* hp = t == 0 ? h0.data_ptr<T>() : out_all + (t - 1) * B * H;
    T* g = g_all + t * B * 2 * H;
    T* o = out_all + t * B * H;
    T* rc = rec_all + t * B * H;
    gemm<T>(hp, H, n, w_f, g, 2 * H, b_f, true);
    for_rows(n, 2 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* gr = g + b * 2 * H;
        for_columns<T>(H, [&](int64_t j, int64_t c) {
          const Vec<T> f = sigmoid(load(gr + j, c));
          store(f, gr + j, c);
          store(f * load(hp + b * H + j, c), rc + b * H + j, c);  // f ⊙ h
        });
      }
    });
    gemm<T>(rc, H, n, w_n, g + H, 2 * H, b_n, true);
    for_rows(n, 2 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* gr = g + b * 2 * H;
        for_columns<T>(H, [&](int64_t j, int64_t c) {
          const Vec<T> cand = tanh(load(gr + H + j, c));
          const Vec<T> f = load(gr + j, c);
          const Vec<T> h = load(hp + b * H + j, c);
          store(cand, gr + H + j, c);
          store(h + f * (cand - h), o + b * H + j, c);  // (1 − f) ⊙ h + f ⊙ n
        });
      }
    });
  }
}

template <typename T>
void mgu_backward_impl(const Tensor& grad_out, Tensor& dh, const Tensor& gates, const Tensor& out,
                       const Tensor& h0, const Tensor& w_hh, Tensor& dgates,
                       const std::vector<int64_t>& batch_sizes) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  const Packed<T> w_f(w_hh.narrow(0, 0, H), kRecurrentSlot);  // dh += df · U_f
  const Packed<T> w_n(w_hh.narrow(0, H, H), kSecondSlot);     // ∂/∂(f ⊙ h) = dn · U_n
  Tensor scratch = at::empty({B, H}, gates.options());
  const T* go_all = grad_out.data_ptr<T>();
  const T* g_all = gates.data_ptr<T>();
  T* dg_all = dgates.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  T* dfh = scratch.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const int64_t n = live(batch_sizes, t, B);
    const T* hp = t == 0 ? h0.data_ptr<T>() : out.data_ptr<T>() + (t - 1) * B * H;
    const T* go = go_all + t * B * H;
    const T* g = g_all + t * B * 2 * H;
    T* dg = dg_all + t * B * 2 * H;
    // dn, f's gradient through the update, and dh ← the direct path
    for_rows(n, 2 * H, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* gr = g + b * 2 * H;
        T* dgr = dg + b * 2 * H;
        for_columns<T>(H, [&](int64_t j, int64_t c) {
          const Vec<T> one(T(1));
          const Vec<T> grad = load(dhp + b * H + j, c) + load(go + b * H + j, c);
          const Vec<T> f = load(gr + j, c), cand = load(gr + H + j, c);
          const Vec<T> h = load(hp + b * H + j, c);
          store(grad * f * (one - cand * cand), dgr + H + j, c);
          store(grad * (cand - h) * f * (one - f), dgr + j, c);
          store(grad * (one - f), dhp + b * H + j, c);
        });
      }
    });
    gemm<T>(dg + H, 2 * H, n, w_n, dfh, H, nullptr, false);  // ∂/∂(f ⊙ h)
    // f's gradient through f ⊙ h (added to its update path's), and dh ← f ⊙ ∂/∂(f ⊙ h)
    through_gated_state<T>(n, H, 2 * H, g, dg, dfh, hp, dhp, true);
    gemm<T>(dg, 2 * H, n, w_f, dhp, H, nullptr, true);
  }
}

template <typename T, int NV>
void rnn_forward_over(Tensor& out, const Tensor& h0, const Tensor& w_hh,
                      const std::vector<int64_t>& batch_sizes, bool relu) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const Packed<T, NV> w(w_hh.t(), kRecurrentSlot);
  T* out_all = out.data_ptr<T>();
  // h_t = act(out_t + h_{t−1} · W_hhᵀ), the activation in the product's epilogue
  over_steps<T, NV>(
      T_, B, w.data.template data_ptr<T>(), w.K, w.panels,
      [&](int64_t t, const Share&, const auto& product) {
        constexpr int VS = Tile<T>::VS, NR = NV * VS;
        const T* hp = t == 0 ? h0.data_ptr<T>() : out_all + (t - 1) * B * H;
        T* o = out_all + t * B * H;
        product(hp, H, live(batch_sizes, t, B),
                [&](int64_t m, int64_t rows, int64_t p, const T* tile) {
                  const int64_t j0 = p * NR, j1 = std::min<int64_t>(H, j0 + NR);
                  for (int64_t r = 0; r < rows; ++r) {
                    T* orow = o + (m + r) * H;
                    for (int64_t j = j0; j < j1; j += VS) {
                      const int64_t k = std::min<int64_t>(VS, j1 - j);
                      const Vec<T> x = load(orow + j, k) + Vec<T>::loadu(tile + r * NR + j - j0);
                      store(relu ? at::vec::clamp_min(x, Vec<T>(T(0))) : tanh(x), orow + j, k);
                    }
                  }
                });
      });
}

template <typename T>
void rnn_forward_impl(Tensor& out, const Tensor& h0, const Tensor& w_hh,
                      const std::vector<int64_t>& batch_sizes, bool relu) {
  const int64_t B = out.size(1), H = out.size(2);
  with_panel_vectors<T>(H, B, [&](auto nv) {
    rnn_forward_over<T, decltype(nv)::value>(out, h0, w_hh, batch_sizes, relu);
  });
}

template <typename T>
void rnn_backward_impl(const Tensor& grad_out, Tensor& dh, const Tensor& out, const Tensor& w_hh,
                       Tensor& dpre, const std::vector<int64_t>& batch_sizes, bool relu) {
  const int64_t T_ = out.size(0), B = out.size(1), H = out.size(2);
  const T* go_all = grad_out.data_ptr<T>();
  const T* out_all = out.data_ptr<T>();
  T* dp_all = dpre.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  // one vector of units [j, j + k) of row b at step t: dpre_t from dh + ∂out_t
  const auto point = [&](int64_t t, int64_t b, int64_t j, int64_t k) {
    const int64_t at = (t * B + b) * H + j;
    const Vec<T> grad = load(dhp + b * H + j, k) + load(go_all + at, k);
    const Vec<T> h = load(out_all + at, k);
    const Vec<T> slope = relu ? Vec<T>::blendv(Vec<T>(T(0)), Vec<T>(T(1)), h > Vec<T>(T(0)))
                              : Vec<T>(T(1)) - h * h;
    store(grad * slope, dp_all + at, k);
  };
  backward_steps<T>(w_hh, dp_all, H, dhp, T_, B, H, batch_sizes, false, point);
}

// ---- The minimal cells (minGRU, minLSTM) ------------------------------------------------------
// No gate reads the state, so after the input projection each unit's recurrence
// h_t = h_{t−1} + z_t (h̃_t − h_{t−1}) is a loop of its own: one pass over time per vector of units
// of one row, all of them in parallel, the state in a register. `gates` holds x W_ihᵀ + b_ih on
// entry, blocks z|h (minGRU) or i|f|h (minLSTM, z = i / (i + f)); on exit the gates in place of
// their pre-activations, the candidate's k_h kept (g′ jumps at 0: its side is k_h's sign).

// The minimal cells' candidate for one vector of units: h̃ = g(k_h), g(k) = k + ½ for k ≥ 0,
// σ(k) below (gatedrnn.nn.functional.g); and its derivative g′(k_h), 1 for k_h ≥ 0, h̃(1 − h̃)
// below (the side taken from k_h's sign: σ(k) rounds to ½ for a tiny negative k).
template <typename T>
inline Vec<T> candidate(const Vec<T>& k) {
  return Vec<T>::blendv(sigmoid(k), k + Vec<T>(T(0.5)), k >= Vec<T>(T(0)));
}

template <typename T>
inline Vec<T> candidate_slope(const Vec<T>& k, const Vec<T>& cand) {
  const Vec<T> one(T(1));
  return Vec<T>::blendv(cand * (one - cand), one, k >= Vec<T>(T(0)));
}

// Calls f(b, j, count) for every vector of units [j, j + count) of every row b, in parallel
// (each call runs the whole sequence: about `steps` vectors of work).
template <typename T, typename F>
inline void for_units(int64_t B, int64_t H, int64_t steps, const F& f) {
  constexpr int64_t VS = Vec<T>::size();
  const int64_t per_row = (H + VS - 1) / VS;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(steps * VS, 1));
  at::parallel_for(0, B * per_row, grain, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u / per_row, j = (u % per_row) * VS;
      f(b, j, std::min<int64_t>(VS, H - j));
    }
  });
}

template <typename T, bool Lstm>
void min_forward_impl(Tensor& gates, Tensor& out, const Tensor& h0,
                      const std::vector<int64_t>& batch_sizes) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  constexpr int64_t G = Lstm ? 3 : 2;
  T* g_all = gates.data_ptr<T>();
  T* out_all = out.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  for_units<T>(B, H, T_, [&](int64_t b, int64_t j, int64_t c) {
    Vec<T> h = load(h0p + b * H + j, c);
    // rows are sorted by decreasing length: row b is live from step 0 until its end
    for (int64_t t = 0; t < T_ && b < live(batch_sizes, t, B); ++t) {
      T* gr = g_all + (t * B + b) * G * H;
      Vec<T> z = sigmoid(load(gr + j, c));
      store(z, gr + j, c);
      if constexpr (Lstm) {
        const Vec<T> f = sigmoid(load(gr + H + j, c));
        store(f, gr + H + j, c);
        z = z / (z + f);
      }
      h = h + z * (candidate(load(gr + (G - 1) * H + j, c)) - h);  // (1 − z) ⊙ h + z ⊙ h̃
      store(h, out_all + (t * B + b) * H + j, c);
    }
  });
}

template <typename T, bool Lstm>
void min_backward_impl(const Tensor& grad_out, Tensor& dh, const Tensor& gates, const Tensor& out,
                       const Tensor& h0, Tensor& dgates, const std::vector<int64_t>& batch_sizes) {
  const int64_t T_ = gates.size(0), B = gates.size(1), H = out.size(2);
  constexpr int64_t G = Lstm ? 3 : 2;
  const T* go_all = grad_out.data_ptr<T>();
  const T* g_all = gates.data_ptr<T>();
  const T* out_all = out.data_ptr<T>();
  const T* h0p = h0.data_ptr<T>();
  T* dg_all = dgates.data_ptr<T>();
  T* dhp = dh.data_ptr<T>();
  for_units<T>(B, H, T_, [&](int64_t b, int64_t j, int64_t c) {
    const Vec<T> one(T(1));
    Vec<T> d = load(dhp + b * H + j, c);  // ∂h_t, from the final state's
    for (int64_t t = T_ - 1; t >= 0; --t) {
      if (b >= live(batch_sizes, t, B)) continue;  // past row b's end
      const int64_t row = t * B + b;
      const T* gr = g_all + row * G * H;
      T* dgr = dg_all + row * G * H;
      const Vec<T> grad = d + load(go_all + row * H + j, c);
      const Vec<T> hp = load(t == 0 ? h0p + b * H + j : out_all + (row - B) * H + j, c);
      const Vec<T> k_h = load(gr + (G - 1) * H + j, c), cand = candidate(k_h);
      Vec<T> z = load(gr + j, c);
      if constexpr (Lstm) {  // ∂z/∂k_i = z(1 − z)(1 − i), ∂z/∂k_f = −z(1 − z)(1 − f)
        const Vec<T> i = z, f = load(gr + H + j, c);
        z = i / (i + f);
        const Vec<T> dz = grad * (cand - hp) * z * (one - z);
        store(dz * (one - i), dgr + j, c);
        store(dz * (f - one), dgr + H + j, c);
      } else {
        store(grad * (cand - hp) * z * (one - z), dgr + j, c);
      }
      store(grad * z * candidate_slope(k_h, cand), dgr + (G - 1) * H + j, c);
      d = grad * (one - z);
    }
    store(d, dhp + b * H + j, c);
  });
}

// Held by each entry point below: the ATen calls inside (buffers, transposes) are not recorded by
// torch.jit.trace, which records the autograd Function that calls us as one node and cannot
// follow tensors made here (it failed with `unordered_map::at` at a second layer).
struct Untraced {
  at::tracer::impl::NoTracerDispatchMode no_tracer;
};

// a (M, K) row-major · r (K, N) any strides (+ bias (N)): the input projection, dx.
Tensor matmul(const Tensor& a, const Tensor& r, const c10::optional<Tensor>& bias) {
  const Untraced untraced;
  TORCH_CHECK(a.dim() == 2 && r.dim() == 2 && a.size(1) == r.size(0) && a.stride(1) == 1,
              "matmul: expected a (M, K) row-major and r (K, N), got ", a.sizes(), " and ",
              r.sizes());
  Tensor out = at::empty({a.size(0), r.size(1)}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "matmul", [&] {
    const Packed<scalar_t> packed(r, kInputSlot);
    gemm<scalar_t>(a.data_ptr<scalar_t>(), a.stride(0), a.size(0), packed,
                   out.data_ptr<scalar_t>(), r.size(1), data_or_null<scalar_t>(bias), false);
  });
  return out;
}

void gru_forward(Tensor gates, Tensor out, Tensor rec, const Tensor& h0, const Tensor& w_hh,
                 const c10::optional<Tensor>& b_hh, const std::vector<int64_t>& batch_sizes,
                 bool reset_after) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_forward", [&] {
    gru_forward_impl<scalar_t>(gates, out, rec, h0, w_hh, b_hh, batch_sizes, reset_after);
  });
}

void gru_backward(const Tensor& grad_out, Tensor dh, const Tensor& gates, const Tensor& rec,
                  const Tensor& out, const Tensor& h0, const Tensor& w_hh, Tensor dgates,
                  const c10::optional<Tensor>& dn_all, const std::vector<int64_t>& batch_sizes,
                  bool reset_after) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    gru_backward_impl<scalar_t>(grad_out, dh, gates, rec, out, h0, w_hh, dgates, dn_all,
                                batch_sizes, reset_after);
  });
}

void lstm_forward(Tensor gates, Tensor out, Tensor cells, const Tensor& h0, const Tensor& c0,
                  const Tensor& w_hh, const c10::optional<Tensor>& peep,
                  const c10::optional<Tensor>& w_hr, const c10::optional<Tensor>& raw,
                  const std::vector<int64_t>& batch_sizes, bool coupled) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_forward", [&] {
    lstm_forward_impl<scalar_t>(gates, out, cells, h0, c0, w_hh, peep, w_hr, raw, batch_sizes,
                                coupled);
  });
}

void lstm_backward(const Tensor& grad_out, Tensor dh, Tensor dc, const Tensor& gates,
                   const Tensor& cells, const Tensor& c0, const Tensor& w_hh,
                   const c10::optional<Tensor>& peep, const c10::optional<Tensor>& w_hr,
                   const c10::optional<Tensor>& dproj, Tensor dgates,
                   const std::vector<int64_t>& batch_sizes, bool coupled) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    lstm_backward_impl<scalar_t>(grad_out, dh, dc, gates, cells, c0, w_hh, peep, w_hr, dproj,
                                 dgates, batch_sizes, coupled);
  });
}

void mgu_forward(Tensor gates, Tensor out, Tensor rec, const Tensor& h0, const Tensor& w_hh,
                 const c10::optional<Tensor>& b_hh, const std::vector<int64_t>& batch_sizes) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "mgu_forward", [&] {
    mgu_forward_impl<scalar_t>(gates, out, rec, h0, w_hh, b_hh, batch_sizes);
  });
}

void mgu_backward(const Tensor& grad_out, Tensor dh, const Tensor& gates, const Tensor& out,
                  const Tensor& h0, const Tensor& w_hh, Tensor dgates,
                  const std::vector<int64_t>& batch_sizes) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "mgu_backward", [&] {
    mgu_backward_impl<scalar_t>(grad_out, dh, gates, out, h0, w_hh, dgates, batch_sizes);
  });
}

void rnn_forward(Tensor out, const Tensor& h0, const Tensor& w_hh,
                 const std::vector<int64_t>& batch_sizes, bool relu) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnn_forward", [&] {
    rnn_forward_impl<scalar_t>(out, h0, w_hh, batch_sizes, relu);
  });
}

void rnn_backward(const Tensor& grad_out, Tensor dh, const Tensor& out, const Tensor& w_hh,
                  Tensor dpre, const std::vector<int64_t>& batch_sizes, bool relu) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnn_backward", [&] {
    rnn_backward_impl<scalar_t>(grad_out, dh, out, w_hh, dpre, batch_sizes, relu);
  });
}

void min_forward(Tensor gates, Tensor out, const Tensor& h0,
                 const std::vector<int64_t>& batch_sizes, bool lstm) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "min_forward", [&] {
    if (lstm) {
      min_forward_impl<scalar_t, true>(gates, out, h0, batch_sizes);
    } else {
      min_forward_impl<scalar_t, false>(gates, out, h0, batch_sizes);
    }
  });
}

void min_backward(const Tensor& grad_out, Tensor dh, const Tensor& gates, const Tensor& out,
                  const Tensor& h0, Tensor dgates, const std::vector<int64_t>& batch_sizes,
                  bool lstm) {
  const Untraced untraced;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "min_backward", [&] {
    if (lstm) {
      min_backward_impl<scalar_t, true>(grad_out, dh, gates, out, h0, dgates, batch_sizes);
    } else {
      min_backward_impl<scalar_t, false>(grad_out, dh, gates, out, h0, dgates, batch_sizes);
    }
  });
}

// ---- Jobs: a time loop bound to its arguments, run later ------------------------------------------
// A bidirectional layer's two directions are independent: `side_by_side` runs their loops at once,
// one thread each, where each alone would run on one thread (threads_for; the caller decides):
// two directions side by side keep two cores busy where one loop would leave the second idle.
struct Job {
  std::function<void()> run;
};

// entry(args…) as a function of the same arguments that returns the call, unmade, as a Job
// (holding its own references to the tensors).
template <typename... Args>
auto job_of(void (*entry)(Args...)) {
  return [entry](std::decay_t<Args>... args) {
    return std::make_shared<Job>(Job{[entry, args...]() { entry(args...); }});
  };
}

// Runs `jobs` at once, one thread each, in one parallel region: inside it every ATen
// parallel_for and our own regions run inline (serial). Each thread runs with the caller's
// thread-local state (grad mode, dispatch keys); after all ran, the first failed job's error
// (in the jobs' order) is raised.
void side_by_side(const std::vector<std::shared_ptr<Job>>& jobs) {
  const at::ThreadLocalState state;
  std::vector<std::exception_ptr> errors(jobs.size());
  const auto run = [&](int64_t i) {
    try {
      const at::ThreadLocalStateGuard guard(state);
      jobs[i]->run();
    } catch (...) {
      errors[i] = std::current_exception();
    }
  };
  const int64_t count = static_cast<int64_t>(jobs.size());
#pragma omp parallel for num_threads(count) schedule(static, 1) \
    if (count > 1 && !at::in_parallel_region())
  for (int64_t i = 0; i < count; ++i) run(i);
  for (const auto& error : errors) {
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  // Without the GIL: Python threads calling our layers at once run their products and loops at
  // once too.
  m.def("matmul", &matmul, "a · r (+ bias) for a few hundred rows and more, packed",
        py::call_guard<py::gil_scoped_release>());
  py::class_<Job, std::shared_ptr<Job>>(m, "Job", "a time loop bound to its arguments")
      .def("__call__", [](const Job& job) { job.run(); }, "runs the loop, in place",
           py::call_guard<py::gil_scoped_release>());
  m.def("side_by_side", &side_by_side, "runs the jobs at once, one thread each",
        py::call_guard<py::gil_scoped_release>());
  // Each time loop, in place in the caller's buffers, as a Job of the loop's arguments (the
  // buffer contracts: the PyTorch twins' docstrings in gatedrnn/backends/cpu.py).
  m.def("gru_forward_job", job_of(&gru_forward), "GRU forward time loop");
  m.def("gru_backward_job", job_of(&gru_backward), "GRU backward time loop");
  m.def("lstm_forward_job", job_of(&lstm_forward),
        "LSTM forward time loop (peepholes, coupled, projection)");
  m.def("lstm_backward_job", job_of(&lstm_backward),
        "LSTM backward time loop (peepholes, coupled, projection)");
  m.def("mgu_forward_job", job_of(&mgu_forward), "MGU forward time loop");
  m.def("mgu_backward_job", job_of(&mgu_backward), "MGU backward time loop");
  m.def("rnn_forward_job", job_of(&rnn_forward), "RNN forward time loop");
  m.def("rnn_backward_job", job_of(&rnn_backward), "RNN backward time loop");
  m.def("min_forward_job", job_of(&min_forward), "minGRU/minLSTM forward time loop");
  m.def("min_backward_job", job_of(&min_backward), "minGRU/minLSTM backward time loop");
}
