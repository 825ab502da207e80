// quad_ops.cc: fused onnxruntime CPU kernels for the custom-op domain "quadexport", version 1.
//
//   QuadLinear(x[N,K], W_r[M,K], b_r[M], W_g[M,K], b_g[M], W_b[M,K], c[M]) -> y[N,M]
//       y = (x W_rᵀ + b_r) ⊙ (x W_gᵀ + b_g) + (x⊙x) W_bᵀ + c            (x may be rank > 2, K last)
//   QuadConv2d(x[N,C,H,W], W_r[M,C/group,kh,kw], b_r, W_g, b_g, W_b, c) -> y[N,M,OH,OW]
//       y = (conv(x,W_r)+b_r) ⊙ (conv(x,W_g)+b_g) + conv(x⊙x,W_b) + c   (ONNX Conv attributes, zero padding)
//   QuadConv1d: the same in 1-D.
//
// The three branches are computed in one pass: every micro-kernel keeps the r, g and b accumulators of its output
// tile in registers (initialised with b_r, b_g, c) and writes r*g+b once. x² is formed once per input element.
//
// One source, several compilation units (tools/build_kernels.sh):
//   1. Plain-old-data job descriptions shared by all parts.
//   2. Kernels (QX_PART_KERNELS): compiled once per ISA, each copy in its own namespace (qx_avx512, qx_avx2, qx_base;
//      qx_native in single-unit builds). This part includes no STL and no onnxruntime header, so the linker can never
//      merge an AVX-512 instantiation of a shared inline/template function into code that runs on an AVX2-only CPU.
//   3. Glue (QX_PART_GLUE): onnxruntime Lite custom-op API, attribute/shape checks, weight packing (once, at session
//      start, for constant initializers), run-time ISA choice, ORT's intra-op thread pool via
//      KernelContext::ParallelFor, and the exported RegisterCustomOps. Needs no link against libonnxruntime.
// Defining neither part macro builds everything in one unit for the compiler's target (e.g. -march=native).

#include <cstddef>
#include <cstdint>

#if !defined(QX_PART_KERNELS) && !defined(QX_PART_GLUE)
#define QX_SINGLE_UNIT 1
#endif

// ===================================================================================================================
// 1. Shared job descriptions (aggregates only: nothing here may generate code).
// ===================================================================================================================
namespace qx {

// Pointers to the six weight tensors of a quadratic layer, in the op's input order.
struct Weights {
  const float *wr, *br, *wg, *bg, *wb, *c;
};

// Every job runs in two parallel phases over the session's thread pool: n_prep_tasks preparation tasks that fill
// `work` (work_floats floats, allocated by the glue after planning), then the compute tasks.

// Dense job: y[N,M] from x[N,K]. The tiling fields are filled by KernelTable::linear_plan.
struct LinearJob {
  const float* packed;  // from KernelTable::linear_pack
  const float* x;
  float* y;
  int64_t N, M, K;
  float* work;                     // K tap offsets (int64), then x per chunk of mr rows: [K][mr] x, [K][mr] x²
  int64_t work_floats, n_prep_tasks, prep_block;  // prep: row chunks per task
  int failed;                      // (unused by dense jobs: they need no per-thread memory)
  int64_t mr, np;                  // micro-tile: rows × panels of VL columns
  int64_t row_block, n_row_tasks;  // chunks of mr rows per task, tasks along rows
  int64_t col_block, n_col_tasks;  // groups of np panels per task, tasks along columns
};

// Convolution geometry (2-D; Conv1d uses H = kh = 1). pt/pl: top/left zero padding.
struct ConvGeom {
  int64_t N, C, H, W, M, G, kh, kw, sh, sw, dh, dw, pt, pl, OH, OW;
};

// Convolution job. The preparation phase copies x and x² once into zero-padded *phase images*: padded row r and
// column w go to phase (r % sh, w % sw) at (r / sh, w / sw), each phase Hu × Wv. On the flattened grid
// q = oh*Wv + ow every kernel tap then reads one phase at a constant offset from q, for any stride and dilation, so
// no im2col buffer is needed. Two tilings (chosen from M/group by the kernel set):
//   channel tiling: micro-tiles of up to `mr` consecutive output pixels of one row × np panels of VL channels
//                   (the dense micro-kernel); used when the group's channels fill the vectors;
//   pixel tiling:   micro-tiles of CONV_MR channels × NR consecutive grid positions (dead columns ow >= OW are
//                   computed and dropped); used for narrow groups (e.g. depthwise).
// Work is split along a pixel axis (pixel chunks or grid tiles) and a channel axis (panel groups or channel blocks).
// Large batches of small images use one task per image instead, which keeps each image's phase images in L2.
struct ConvJob {
  const float* packed;  // from KernelTable::conv_pack
  const float* x;
  float* y;
  ConvGeom g;
  float* work;  // Kc tap offsets (int64), then (shared mode) phase images of x and of x²: [N][C][sh][sw][Hu][Wv]
                // (+ slack) each
  int64_t work_floats, n_prep_tasks;
  int per_image;  // per-image mode: task n prepares image n's phase images in thread-local memory and computes it
  int failed;     // set by a task that could not get its scratch memory
  int64_t Hu, Wv, chan_stride, image_stride, prep_chunk;
  int64_t Kc;                         // taps per group: C/group*kh*kw
  int channel_tiling;
  int64_t mr, np, row_chunks, chunk;  // channel tiling: pixels and panels per tile, chunks per output row, chunk size
  int64_t px_count, px_block, n_px_tasks;  // pixel axis: units per image, units per task, tasks
  int64_t ch_count, ch_block, n_ch_tasks;  // channel axis: units per group, units per task, tasks
};

// Entry points of one ISA's kernel set.
struct KernelTable {
  const char* isa;
  size_t (*linear_packed_size)(int64_t M, int64_t K);  // in floats
  void (*linear_pack)(const Weights& w, int64_t M, int64_t K, float* dst);
  size_t (*linear_plan)(LinearJob* job);                // fills all but `work`, returns the compute task count
  void (*linear_prep)(void* job, size_t task);
  void (*linear_task)(void* job, size_t task);
  size_t (*conv_packed_size)(int64_t M, int64_t G, int64_t Kc);
  void (*conv_pack)(const Weights& w, int64_t M, int64_t G, int64_t Kc, float* dst);
  size_t (*conv_plan)(ConvJob* job);                    // fills all but `work`, returns the compute task count
  void (*conv_prep)(void* job, size_t task);
  void (*conv_task)(void* job, size_t task);
};

}  // namespace qx

// ===================================================================================================================
// 2. Kernels, one copy per ISA.
// ===================================================================================================================
#if defined(QX_PART_KERNELS) || defined(QX_SINGLE_UNIT)
#include <cstdlib>
#include <cstring>

#if defined(QX_ISA_AVX512)
#define QX_NS qx_avx512
#elif defined(QX_ISA_AVX2)
#define QX_NS qx_avx2
#elif defined(QX_ISA_BASE)
#define QX_NS qx_base
#else
#define QX_NS qx_native
#endif

namespace QX_NS {
using qx::ConvGeom;
using qx::ConvJob;
using qx::LinearJob;
using qx::Weights;

// Vector width and register budget. GCC vector extensions compile to zmm / ymm / xmm (or NEON) code.
#if defined(__AVX512F__)
#define QX_VL 16
#define QX_NREG 32
#elif defined(__AVX__)
#define QX_VL 8
#define QX_NREG 16
#else
#define QX_VL 4
#define QX_NREG 16
#endif
constexpr int VL = QX_VL;
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vfu __attribute__((vector_size(VL * sizeof(float)), aligned(4)));  // for unaligned access

static inline vf load(const float* p) { return *reinterpret_cast<const vfu*>(p); }
static inline void store(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return imin(imax(v, lo), hi); }

// Tiling. A micro-tile holds 3 accumulators (r, g, b) per output vector; their count must leave registers for the
// operands. Overridable with -D for tuning experiments.
#ifndef QX_ROWS
#define QX_ROWS (QX_NREG == 32 ? 8 : 4)  // rows (dense: rows of x; conv: pixels of an output row) per micro-tile
#endif
#ifndef QX_CONV_MR
#define QX_CONV_MR 4  // pixel tiling: output channels per micro-tile
#endif
#ifndef QX_CONV_NV
#define QX_CONV_NV (QX_NREG == 32 ? 2 : 1)  // pixel tiling: vectors of grid positions per micro-tile
#endif
constexpr int ROWS = QX_ROWS;
constexpr int ACC = QX_NREG == 32 ? 24 : 12;  // accumulator budget: np = largest of 4, 2, 1 with 3*mr*np <= ACC
constexpr int PANEL_PAD = 4;                  // panel counts are padded to a multiple of the largest np
constexpr int CONV_MR = QX_CONV_MR;
constexpr int NR = QX_CONV_NV * VL;           // pixel tiling: grid positions per micro-tile
#ifndef QX_TASK_SHIFT
#define QX_TASK_SHIFT 19
#endif
constexpr int64_t TASK_FMAS = int64_t(1) << QX_TASK_SHIFT;  // target work per parallel task (~10 µs on one core)
constexpr int64_t MAX_TASKS = 128;
constexpr int64_t MIN_TASKS = 16;  // enough tasks to balance a pool of a few threads
constexpr int64_t PER_IMAGE_FLOATS = int64_t(1) << 17;  // per-image conv mode if x and x² phase images fit (512 KB)

// Per-thread scratch memory (per-image convolution mode).
struct Scratch {
  float* p = nullptr;
  size_t n = 0;
  ~Scratch() { std::free(p); }
  float* get(size_t floats) {
    if (floats > n) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64));
      n = p ? floats : 0;
    }
    return p;
  }
};
static thread_local Scratch tls_scratch;

static int64_t target_tasks(int64_t fmas) { return clamp(fmas / TASK_FMAS, 1, MAX_TASKS); }

static int64_t panels_per_tile(int64_t mr) {
  int64_t np = PANEL_PAD;
  while (np > 1 && 3 * mr * np > ACC) np /= 2;
  return np;
}

// Splits `count` units into about `want` tasks: sets the units per task and the task count.
static void split(int64_t count, int64_t want, int64_t* block, int64_t* tasks) {
  *tasks = clamp(want, 1, count);
  *block = cdiv(count, *tasks);
  *tasks = cdiv(count, *block);
}

// ------------------------------------------------------------------------------------------------------------------
// Panel micro-kernel, shared by dense layers and channel-tiled convolutions.
// Weights are packed in panels of VL output channels: [3][VL] biases (b_r, b_g, c), then [K][3][VL] weights
// (W_r, W_g, W_b at tap/column k), zero-padded past M; the panel count is padded to a multiple of PANEL_PAD so every
// micro-tile has np full panels.
// ------------------------------------------------------------------------------------------------------------------
static int64_t panel_count(int64_t M) { return cdiv(cdiv(M, VL), PANEL_PAD) * PANEL_PAD; }
static int64_t panel_stride(int64_t K) { return (K + 1) * 3 * VL; }

// Packs rows [m0, m0+M) of the weights (each row K long) into panels at dst.
static void pack_panels(const Weights& w, int64_t m0, int64_t M, int64_t K, float* dst) {
  const int64_t ps = panel_stride(K);
  std::memset(dst, 0, sizeof(float) * size_t(panel_count(M) * ps));
  for (int64_t m = 0; m < M; ++m) {
    float* panel = dst + (m / VL) * ps;
    const int64_t l = m % VL, src = (m0 + m) * K;
    panel[l] = w.br[m0 + m];
    panel[VL + l] = w.bg[m0 + m];
    panel[2 * VL + l] = w.c[m0 + m];
    float* wk = panel + 3 * VL + l;
    for (int64_t k = 0; k < K; ++k, wk += 3 * VL) {
      wk[0] = w.wr[src + k];
      wk[VL] = w.wg[src + k];
      wk[2 * VL] = w.wb[src + k];
    }
  }
}

// Stores VL values, or only the first n < VL of them.
static inline void store_n(float* dst, vf v, int64_t n) {
  if (n >= VL) {
    store(dst, v);
  } else if (n > 0) {
    float tmp[VL];
    store(tmp, v);
    std::memcpy(dst, tmp, sizeof(float) * size_t(n));
  }
}

// MR rows × NP panels, taps [k0, k1). Row i reads x = xs[off[k] + i] and x² = x2s[off[k] + i] at tap k; w is the
// first panel, panels are ps floats apart. The accumulators start from the biases when k0 == 0, else from acc
// ([3][MR][NP][VL]); with `out` they end as r*g+b in out (row i at out + i*ldo, first m_valid values), else in acc.
template <int MR, int NP>
static void panel_tile(const float* xs, const float* x2s, const int64_t* off, int64_t k0, int64_t k1, const float* w,
                       int64_t ps, float* acc, float* out, int64_t ldo, int64_t m_valid) {
  vf r[MR][NP], g[MR][NP], b[MR][NP];
  constexpr int A = MR * NP * VL;  // floats per branch in acc
#pragma GCC unroll 4
  for (int j = 0; j < NP; ++j) {
    const vf br = load(w + j * ps), bg = load(w + j * ps + VL), bc = load(w + j * ps + 2 * VL);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const int e = (i * NP + j) * VL;
      r[i][j] = k0 == 0 ? br : load(acc + e);
      g[i][j] = k0 == 0 ? bg : load(acc + A + e);
      b[i][j] = k0 == 0 ? bc : load(acc + 2 * A + e);
    }
  }
  const float* wk = w + 3 * VL * (k0 + 1);
  for (int64_t k = k0; k < k1; ++k, wk += 3 * VL) {
    const float* px = xs + off[k];
    const float* px2 = x2s + off[k];
    // Keep px/px2 in registers: otherwise GCC folds off[k] into indexed addressing, and indexed memory operands of
    // the broadcast FMAs are un-laminated into two uops each on Intel cores (measured ~5-10% slower).
    asm("" : "+r"(px), "+r"(px2));
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) {
      const vf wr = load(wk + j * ps), wg = load(wk + j * ps + VL), wb = load(wk + j * ps + 2 * VL);
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        r[i][j] += wr * px[i];
        g[i][j] += wg * px[i];
        b[i][j] += wb * px2[i];
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NP; ++j) {
      if (out) {
        store_n(out + i * ldo + j * VL, r[i][j] * g[i][j] + b[i][j], m_valid - j * VL);
      } else {
        const int e = (i * NP + j) * VL;
        store(acc + e, r[i][j]);
        store(acc + A + e, g[i][j]);
        store(acc + 2 * A + e, b[i][j]);
      }
    }
}

typedef void (*PanelTileFn)(const float*, const float*, const int64_t*, int64_t, int64_t, const float*, int64_t,
                            float*, float*, int64_t, int64_t);

// Only shapes whose accumulators fit are instantiated (np is chosen for the widest tile; tails have fewer rows).
template <int MR, int NP>
static PanelTileFn tile_if_fits() {
  if constexpr (3 * MR * NP <= ACC && MR <= ROWS) {
    return panel_tile<MR, NP>;
  } else {
    return nullptr;
  }
}

template <int NP>
static PanelTileFn panel_tile_rows(int64_t mr) {
  switch (mr) {
    case 1: return tile_if_fits<1, NP>();
    case 2: return tile_if_fits<2, NP>();
    case 3: return tile_if_fits<3, NP>();
    case 4: return tile_if_fits<4, NP>();
    case 5: return tile_if_fits<5, NP>();
    case 6: return tile_if_fits<6, NP>();
    case 7: return tile_if_fits<7, NP>();
    case 8: return tile_if_fits<8, NP>();
    default: return nullptr;  // unreachable: 1 <= mr <= ROWS <= 8
  }
}

static PanelTileFn panel_tile_fn(int64_t mr, int64_t np) {
  return np == 4 ? panel_tile_rows<4>(mr) : np == 2 ? panel_tile_rows<2>(mr) : panel_tile_rows<1>(mr);
}

// One micro-tile of a group: its x / x² bases, row count and output (row pitch is the group's ldo).
struct RowTile {
  const float *xs, *x2s;
  int64_t mr;
  float* out;
};

constexpr int GROUP = 8;                  // micro-tiles that share one pass over a block of taps
constexpr int64_t KBLOCK_BYTES = 12288;   // weights of one tap block per panel group: stays in L1 across the group

// Runs up to GROUP micro-tiles against np panels at w, blocking the taps so that each block of weights is loaded
// from L2 once and reused from L1 by every tile of the group (partial sums wait in `acc`).
static void run_tiles(const RowTile* tiles, int count, const int64_t* off, int64_t K, const float* w, int64_t ps,
                      int64_t np, int64_t ldo, int64_t m_valid) {
  float acc[GROUP][ACC * VL];
  const int64_t kc = count == 1 ? K : imax(8, KBLOCK_BYTES / int64_t(3 * VL * np * sizeof(float)));
  for (int64_t k0 = 0; k0 < K; k0 += kc) {
    const int64_t k1 = imin(K, k0 + kc);
    for (int t = 0; t < count; ++t)
      panel_tile_fn(tiles[t].mr, np)(tiles[t].xs, tiles[t].x2s, off, k0, k1, w, ps, acc[t],
                                     k1 == K ? tiles[t].out : nullptr, ldo, m_valid);
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Dense layers: x is packed per chunk of mr rows as [K][mr] (x) then [K][mr] (x²), so row i of the chunk reads tap
// k at off[k] + i with off[k] = k*mr. Tasks: panel groups × row chunks.
// ------------------------------------------------------------------------------------------------------------------
static size_t linear_packed_size(int64_t M, int64_t K) { return size_t(panel_count(M) * panel_stride(K)); }

static void linear_pack(const Weights& w, int64_t M, int64_t K, float* dst) { pack_panels(w, 0, M, K, dst); }

static size_t linear_plan(LinearJob* J) {
  J->mr = imin(J->N, ROWS);
  J->np = panels_per_tile(J->mr);
  const int64_t groups = cdiv(cdiv(J->M, VL), J->np), chunks = cdiv(J->N, J->mr);
  // Small batches are bound by streaming the weights, not by FMAs: give each task at most ~256 KB of them.
  const int64_t weight_floats = 3 * J->K * cdiv(J->M, VL) * VL;
  const int64_t want = imax(target_tasks(J->N * weight_floats), clamp(weight_floats / 65536, 1, MAX_TASKS));
  // Columns first: each task then streams its weight panels from memory once, for all its rows. Rows are split only
  // when there are too few panel groups to keep the pool busy.
  split(groups, want, &J->col_block, &J->n_col_tasks);
  split(chunks, J->n_col_tasks >= imin(want, MIN_TASKS) ? 1 : cdiv(want, J->n_col_tasks), &J->row_block,
        &J->n_row_tasks);
  J->work_floats = 2 * J->K + 2 * J->K * chunks * J->mr;
  split(chunks, cdiv(J->N * J->K, 16384), &J->prep_block, &J->n_prep_tasks);
  return size_t(J->n_row_tasks * J->n_col_tasks);
}

// Packed rows: chunk c of x at linear_rows(J) + c*2*K*mr.
static float* linear_rows(const LinearJob& J) { return J.work + 2 * J.K; }

// Prep task t: packs row chunks [t*prep_block, ...); task 0 also writes the tap offsets off[k] = k*mr.
static void linear_prep(void* job, size_t t) {
  const LinearJob& J = *static_cast<const LinearJob*>(job);
  if (t == 0) {
    int64_t* off = reinterpret_cast<int64_t*>(J.work);
    for (int64_t k = 0; k < J.K; ++k) off[k] = k * J.mr;
  }
  const int64_t c0 = int64_t(t) * J.prep_block, c1 = imin(cdiv(J.N, J.mr), c0 + J.prep_block);
  for (int64_t c = c0; c < c1; ++c) {
    const int64_t rows = imin(J.mr, J.N - c * J.mr);
    const float* x = J.x + c * J.mr * J.K;
    float* a = linear_rows(J) + c * 2 * J.K * J.mr;
    float* a2 = a + J.K * J.mr;
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t k = 0; k < J.K; ++k) {
        const float v = x[i * J.K + k];
        a[k * J.mr + i] = v;
        a2[k * J.mr + i] = v * v;
      }
  }
}

// Task t: panel group block t / n_row_tasks (consecutive tasks share weight panels), row chunk block t % n_row_tasks.
static void linear_task(void* job, size_t t) {
  const LinearJob& J = *static_cast<const LinearJob*>(job);
  const int64_t ct = int64_t(t) / J.n_row_tasks, rt = int64_t(t) % J.n_row_tasks, ps = panel_stride(J.K);
  const int64_t c0 = rt * J.row_block, c1 = imin(cdiv(J.N, J.mr), c0 + J.row_block);
  const int64_t p0 = ct * J.col_block * J.np, p1 = imin(panel_count(J.M), p0 + J.col_block * J.np);
  const int64_t* off = reinterpret_cast<const int64_t*>(J.work);
  for (int64_t cg = c0; cg < c1; cg += GROUP) {  // groups of row chunks
    RowTile tiles[GROUP];
    const int count = int(imin(GROUP, c1 - cg));
    for (int t = 0; t < count; ++t) {
      const int64_t c = cg + t;
      const float* a = linear_rows(J) + c * 2 * J.K * J.mr;
      tiles[t] = RowTile{a, a + J.K * J.mr, imin(J.mr, J.N - c * J.mr), nullptr};
    }
    for (int64_t p = p0; p < p1 && p * VL < J.M; p += J.np) {
      for (int t = 0; t < count; ++t) tiles[t].out = J.y + (cg + t) * J.mr * J.M + p * VL;
      run_tiles(tiles, count, off, J.K, J.packed + p * ps, ps, J.np, J.M, J.M - p * VL);
    }
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Convolutions.
// ------------------------------------------------------------------------------------------------------------------
// Channel tiling when the group's channels fill at least 3/4 of the vector lanes.
static bool use_channel_tiling(int64_t Mg) { return 4 * Mg >= 3 * cdiv(Mg, VL) * VL; }

// Pixel tiling packs blocks of CONV_MR channels: [3][MR] biases, then [Kc][3][MR] weights, zero-padded past M/G.
static int64_t block_stride(int64_t Kc) { return (Kc + 1) * 3 * CONV_MR; }

// Floats of one group's packed weights.
static int64_t group_stride(int64_t Mg, int64_t Kc) {
  return use_channel_tiling(Mg) ? panel_count(Mg) * panel_stride(Kc) : cdiv(Mg, CONV_MR) * block_stride(Kc);
}

static size_t conv_packed_size(int64_t M, int64_t G, int64_t Kc) { return size_t(G * group_stride(M / G, Kc)); }

static void conv_pack(const Weights& w, int64_t M, int64_t G, int64_t Kc, float* dst) {
  const int64_t Mg = M / G, gs = group_stride(Mg, Kc);
  if (use_channel_tiling(Mg)) {
    for (int64_t gi = 0; gi < G; ++gi) pack_panels(w, gi * Mg, Mg, Kc, dst + gi * gs);
    return;
  }
  std::memset(dst, 0, sizeof(float) * conv_packed_size(M, G, Kc));
  for (int64_t m = 0; m < M; ++m) {
    const int64_t gi = m / Mg, ml = m % Mg, l = ml % CONV_MR;
    float* blk = dst + gi * gs + (ml / CONV_MR) * block_stride(Kc);
    blk[l] = w.br[m];
    blk[CONV_MR + l] = w.bg[m];
    blk[2 * CONV_MR + l] = w.c[m];
    float* wk = blk + 3 * CONV_MR + l;
    for (int64_t k = 0; k < Kc; ++k, wk += 3 * CONV_MR) {
      wk[0] = w.wr[m * Kc + k];
      wk[CONV_MR] = w.wg[m * Kc + k];
      wk[2 * CONV_MR] = w.wb[m * Kc + k];
    }
  }
}

// Pixel tiling micro-kernel: CONV_MR channels × NR grid positions. Tap k reads NR lanes at xs + off[k] (x) and
// x2s + off[k] (x²). out: CONV_MR rows of NR values, ldo floats apart.
static void pixel_tile(const float* xs, const float* x2s, const int64_t* off, int64_t Kc, const float* w, float* out,
                       int64_t ldo) {
  constexpr int MR = CONV_MR, NV = QX_CONV_NV;
  vf r[MR][NV], g[MR][NV], b[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      r[i][v] = vf{} + w[i];
      g[i][v] = vf{} + w[MR + i];
      b[i][v] = vf{} + w[2 * MR + i];
    }
  const float* wk = w + 3 * MR;
  for (int64_t k = 0; k < Kc; ++k, wk += 3 * MR) {
    const float* px = xs + off[k];
    const float* px2 = x2s + off[k];
    vf xv[NV], x2v[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      xv[v] = load(px + v * VL);
      x2v[v] = load(px2 + v * VL);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        r[i][v] += xv[v] * wk[i];
        g[i][v] += xv[v] * wk[MR + i];
        b[i][v] += x2v[v] * wk[2 * MR + i];
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store(out + i * ldo + v * VL, r[i][v] * g[i][v] + b[i][v]);
}

static size_t conv_plan(ConvJob* J) {
  ConvGeom& g = J->g;
  const int64_t Mg = g.M / g.G;
  J->Kc = g.C / g.G * g.kh * g.kw;
  // Phase images: tall and wide enough for every padded row/column the output reads.
  J->Hu = cdiv((g.OH - 1) * g.sh + (g.kh - 1) * g.dh + 1, g.sh);
  J->Wv = cdiv((g.OW - 1) * g.sw + (g.kw - 1) * g.dw + 1, g.sw);
  J->chan_stride = g.sh * g.sw * J->Hu * J->Wv;
  // Zero slack after each image: pixel tiling reads up to NR lanes past the grid plus the largest column offset
  // (those lanes are dropped).
  J->image_stride = g.C * J->chan_stride + NR + (g.kw - 1) * g.dw;
  J->per_image = g.N >= 4 && 2 * J->image_stride <= PER_IMAGE_FLOATS;
  J->work_floats = 2 * J->Kc + (J->per_image ? 0 : 2 * g.N * J->image_stride);
  J->prep_chunk = imax(1, 16384 / J->chan_stride);  // channels per prep task
  J->n_prep_tasks = J->per_image ? 1 : g.N * cdiv(g.C, J->prep_chunk);

  J->channel_tiling = use_channel_tiling(Mg);
  int64_t fmas;
  if (J->channel_tiling) {  // pixel units: chunks of at most ROWS pixels, evenly sized within each output row
    J->row_chunks = cdiv(g.OW, ROWS);
    J->chunk = cdiv(g.OW, J->row_chunks);
    J->mr = J->chunk;
    J->np = panels_per_tile(J->mr);
    J->px_count = g.OH * J->row_chunks;
    J->ch_count = cdiv(cdiv(Mg, VL), J->np);
    fmas = g.OH * g.OW * cdiv(Mg, VL) * VL * J->Kc * 3;
  } else {  // pixel units: tiles of NR grid positions; channel units: blocks of CONV_MR
    J->px_count = cdiv(g.OH * J->Wv, NR);
    J->ch_count = cdiv(Mg, CONV_MR);
    fmas = J->px_count * NR * J->ch_count * CONV_MR * J->Kc * 3;
  }
  // Tasks of about TASK_FMAS per (image, group), split along channels first: a task then runs all its pixel units
  // against each block of weights (reused from L1 by up to GROUP micro-tiles) while the phase images stay in L2.
  const int64_t want = J->per_image ? 1 : cdiv(target_tasks(g.N * g.G * fmas), g.N * g.G);
  split(J->ch_count, want, &J->ch_block, &J->n_ch_tasks);
  split(J->px_count, cdiv(want, J->n_ch_tasks), &J->px_block, &J->n_px_tasks);
  return size_t(J->per_image ? g.N : g.N * g.G * J->n_px_tasks * J->n_ch_tasks);
}

// Tap offsets on the grid for group channels [0, Cg): tap (c, i, j) reads phase ((i*dh) % sh, (j*dw) % sw),
// shifted by whole phase rows/columns (kh*kw divisions, then additions).
static void conv_offsets(const ConvJob& J, int64_t* off) {
  const ConvGeom& g = J.g;
  for (int64_t i = 0, k = 0; i < g.kh; ++i) {
    const int64_t row = (i * g.dh % g.sh) * g.sw * J.Hu * J.Wv + (i * g.dh / g.sh) * J.Wv;
    for (int64_t j = 0; j < g.kw; ++j, ++k) off[k] = row + (j * g.dw % g.sw) * J.Hu * J.Wv + j * g.dw / g.sw;
  }
  const int64_t taps = g.kh * g.kw;  // channel c repeats channel 0's taps, chan_stride further
  for (int64_t k = taps; k < J.Kc; ++k) off[k] = off[k - taps] + J.chan_stride;
}

// Phase images of x (those of x² follow, N*image_stride further) after the Kc offsets in `work`.
static float* conv_phases(const ConvJob& J) { return J.work + 2 * J.Kc; }



// Phase images of x (xp) and x² (x2p) for channels [c0, c1) of image n (channel c at c*chan_stride): zero-fill
// (one contiguous pass), scatter the input rows, square (one contiguous pass). Input row h goes to row phase
// a = (h + pt) % sh at u = (h + pt) / sh; input column w to column phase b = (w + pl) % sw at v = (w + pl) / sw.
static void prep_image(const ConvJob& J, int64_t n, int64_t c0, int64_t c1, float* __restrict xp,
                       float* __restrict x2p) {
  const ConvGeom& g = J.g;
  const int64_t phase = J.Hu * J.Wv;
  const int64_t e0 = c0 * J.chan_stride, e1 = c1 == g.C ? J.image_stride : c1 * J.chan_stride;  // + slack
  for (int64_t e = e0; e < e1; ++e) xp[e] = 0.f;
  for (int64_t b = 0; b < g.sw; ++b) {
    const int64_t w0 = ((b - g.pl) % g.sw + g.sw) % g.sw, v0 = (w0 + g.pl) / g.sw;  // first column of phase b
    const int64_t count = imin(g.W <= w0 ? 0 : cdiv(g.W - w0, g.sw), J.Wv - v0);
    if (count <= 0) continue;
    for (int64_t c = c0; c < c1; ++c) {
      const float* __restrict src = J.x + (n * g.C + c) * g.H * g.W + w0;
      float* dst = xp + c * J.chan_stride + b * phase + v0;
      for (int64_t h = 0, a = g.pt % g.sh, u = g.pt / g.sh; h < g.H && u < J.Hu; ++h, src += g.W) {
        float* __restrict d = dst + a * g.sw * phase + u * J.Wv;
        if (g.sw == 1) {
          for (int64_t v = 0; v < count; ++v) d[v] = src[v];
        } else {
          for (int64_t v = 0; v < count; ++v) d[v] = src[v * g.sw];
        }
        if (++a == g.sh) a = 0, ++u;
      }
    }
  }
  for (int64_t e = e0; e < e1; ++e) x2p[e] = xp[e] * xp[e];
}

// Prep task t: task 0 writes the tap offsets; in shared mode task t = (image, chunk of channels) also prepares
// those channels' phase images.
static void conv_prep(void* job, size_t t) {
  const ConvJob& J = *static_cast<const ConvJob*>(job);
  if (t == 0) conv_offsets(J, reinterpret_cast<int64_t*>(J.work));
  if (J.per_image) return;
  const int64_t chunks = cdiv(J.g.C, J.prep_chunk), n = int64_t(t) / chunks, c0 = int64_t(t) % chunks * J.prep_chunk;
  float* xp = conv_phases(J) + n * J.image_stride;
  prep_image(J, n, c0, imin(J.g.C, c0 + J.prep_chunk), xp, xp + J.g.N * J.image_stride);
}

// Channel tiling: pixel chunks [u0, u1) × panel groups [c0, c1) of image n, group gi.
static void conv_channel_tiles(const ConvJob& J, const int64_t* off, const float* xs, const float* x2s,
                               const float* w, float* y, int64_t u0, int64_t u1, int64_t c0, int64_t c1) {
  const ConvGeom& g = J.g;
  const int64_t Mg = g.M / g.G, P = g.OH * g.OW, ps = panel_stride(J.Kc), width = J.np * VL;
  float tmp[GROUP][ACC / 3 * VL];  // per tile [mr][np*VL] (pixels × channels), transposed into y below
  for (int64_t cg = c0; cg < c1; ++cg) {
    const int64_t m0 = cg * J.np * VL, m_valid = imin(width, Mg - m0);
    if (m_valid <= 0) break;
    for (int64_t ug = u0; ug < u1; ug += GROUP) {  // groups of pixel chunks
      RowTile tiles[GROUP];
      int64_t pix[GROUP];
      const int count = int(imin(GROUP, u1 - ug));
      for (int t = 0; t < count; ++t) {
        const int64_t oh = (ug + t) / J.row_chunks, ow0 = (ug + t) % J.row_chunks * J.chunk;
        tiles[t] = RowTile{xs + oh * J.Wv + ow0, x2s + oh * J.Wv + ow0, imin(J.chunk, g.OW - ow0), tmp[t]};
        pix[t] = oh * g.OW + ow0;
      }
      run_tiles(tiles, count, off, J.Kc, w + cg * J.np * ps, ps, J.np, width, m_valid);
      for (int t = 0; t < count; ++t) {
        float* yp = y + m0 * P + pix[t];
        for (int64_t m = 0; m < m_valid; ++m)
          for (int64_t i = 0; i < tiles[t].mr; ++i) yp[m * P + i] = tmp[t][i * width + m];
      }
    }
  }
}

// A run of consecutive tile lanes that land in one output row: lanes [lane, lane+len) -> y pixel offset `pix`.
struct Run {
  int64_t lane, len, pix;
};

// Pixel tiling: grid tiles [u0, u1) × channel blocks [c0, c1) of image n, group gi.
static void conv_pixel_tiles(const ConvJob& J, const int64_t* off, const float* xs, const float* x2s,
                             const float* w, float* y, int64_t u0, int64_t u1, int64_t c0, int64_t c1) {
  const ConvGeom& g = J.g;
  const int64_t Mg = g.M / g.G, P = g.OH * g.OW, bs = block_stride(J.Kc);
  float tmp[CONV_MR * NR];
  Run runs[NR + 1];
  for (int64_t u = u0; u < u1; ++u) {
    // Output runs of the tile; lanes past the last row or on dead columns (ow >= OW) are dropped.
    const int64_t q0 = u * NR, q1 = imin(q0 + NR, g.OH * J.Wv);
    int nruns = 0;
    for (int64_t q = q0, oh = q0 / J.Wv, ow = q0 % J.Wv; q < q1; ++oh, ow = 0) {
      const int64_t len = imin(J.Wv - ow, q1 - q);
      if (ow < g.OW) runs[nruns++] = Run{q - q0, imin(len, g.OW - ow), oh * g.OW + ow};
      q += len;
    }
    const bool contiguous = nruns == 1 && runs[0].len == NR;  // the whole tile is one output row segment
    for (int64_t cb = c0; cb < c1; ++cb) {
      const int64_t m_valid = imin(CONV_MR, Mg - cb * CONV_MR);
      float* yb = y + cb * CONV_MR * P;
      if (contiguous && m_valid == CONV_MR) {
        pixel_tile(xs + q0, x2s + q0, off, J.Kc, w + cb * bs, yb + runs[0].pix, P);
        continue;
      }
      pixel_tile(xs + q0, x2s + q0, off, J.Kc, w + cb * bs, tmp, NR);
      for (int64_t i = 0; i < m_valid; ++i)
        for (int r = 0; r < nruns; ++r)
          std::memcpy(yb + i * P + runs[r].pix, tmp + i * NR + runs[r].lane, sizeof(float) * size_t(runs[r].len));
    }
  }
}

// Task t = (image, group, block of pixel units, block of channel units).
static void conv_task(void* job, size_t t) {
  ConvJob& J = *static_cast<ConvJob*>(job);
  const ConvGeom& g = J.g;
  const int64_t Mg = g.M / g.G, Cg = g.C / g.G;
  const int64_t* off = reinterpret_cast<const int64_t*>(J.work);
  const auto run = [&](int64_t n, int64_t gi, const float* xs, const float* x2s, int64_t u0, int64_t u1, int64_t c0,
                       int64_t c1) {
    const float* w = J.packed + gi * group_stride(Mg, J.Kc);
    float* y = J.y + (n * g.M + gi * Mg) * g.OH * g.OW;
    if (J.channel_tiling) {
      conv_channel_tiles(J, off, xs, x2s, w, y, u0, u1, c0, c1);
    } else {
      conv_pixel_tiles(J, off, xs, x2s, w, y, u0, u1, c0, c1);
    }
  };
  if (J.per_image) {  // task t = image t, every group and tile
    float* xp = tls_scratch.get(size_t(2 * J.image_stride));
    if (!xp) {
      J.failed = 1;
      return;
    }
    prep_image(J, int64_t(t), 0, g.C, xp, xp + J.image_stride);
    for (int64_t gi = 0; gi < g.G; ++gi) {
      const float* xs = xp + gi * Cg * J.chan_stride;
      run(int64_t(t), gi, xs, xs + J.image_stride, 0, J.px_count, 0, J.ch_count);
    }
    return;
  }
  // Shared mode: task t = (image, group, block of pixel units, block of channel units).
  const int64_t ct = int64_t(t) % J.n_ch_tasks, pt = int64_t(t) / J.n_ch_tasks % J.n_px_tasks;
  const int64_t ng = int64_t(t) / (J.n_ch_tasks * J.n_px_tasks), gi = ng % g.G, n = ng / g.G;
  const float* xs = conv_phases(J) + n * J.image_stride + gi * Cg * J.chan_stride;
  run(n, gi, xs, xs + g.N * J.image_stride, pt * J.px_block, imin(J.px_count, (pt + 1) * J.px_block),
      ct * J.ch_block, imin(J.ch_count, (ct + 1) * J.ch_block));
}

#if defined(__AVX512F__)
#define QX_ISA_NAME "avx512"
#elif defined(__AVX2__)
#define QX_ISA_NAME "avx2"
#elif defined(__x86_64__)
#define QX_ISA_NAME "sse2"
#else
#define QX_ISA_NAME "generic"
#endif

const qx::KernelTable* table() {
  static const qx::KernelTable t = {QX_ISA_NAME, linear_packed_size, linear_pack, linear_plan, linear_prep,
                                    linear_task, conv_packed_size,   conv_pack,   conv_plan,   conv_prep,
                                    conv_task};
  return &t;
}

}  // namespace QX_NS
#endif  // kernels

// ===================================================================================================================
// 3. onnxruntime glue.
// ===================================================================================================================
#if defined(QX_PART_GLUE) || defined(QX_SINGLE_UNIT)
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT
#include "onnxruntime_lite_custom_op.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(QX_MULTI_ISA)
namespace qx_avx512 { const qx::KernelTable* table(); }
namespace qx_avx2 { const qx::KernelTable* table(); }
namespace qx_base { const qx::KernelTable* table(); }
#endif

namespace qx_glue {
using Tensor = Ort::Custom::Tensor<float>;
using qx::KernelTable;

constexpr const char* kDomain = "quadexport";
constexpr const char* kProvider = "CPUExecutionProvider";

[[noreturn]] void fail(const std::string& msg) { throw Ort::Exception("quadexport: " + msg, ORT_INVALID_ARGUMENT); }

// The kernel set for this CPU; QUADEXPORT_KERNEL_ISA=avx512|avx2|base forces one (an error if unsupported).
const KernelTable* select_table() {
  const char* env = std::getenv("QUADEXPORT_KERNEL_ISA");
  const std::string want = env ? env : "";
#if defined(QX_MULTI_ISA)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (want.empty() || want == "auto") return avx512 ? qx_avx512::table() : avx2 ? qx_avx2::table() : qx_base::table();
  if (want == "avx512" && avx512) return qx_avx512::table();
  if (want == "avx2" && avx2) return qx_avx2::table();
  if (want == "base" || want == "sse2") return qx_base::table();
  fail("QUADEXPORT_KERNEL_ISA=" + want + " is not available on this CPU/build (choose avx512, avx2 or base)");
#else
  if (!want.empty() && want != "auto" && want != "native")
    fail("this library is a single-ISA build (" + std::string(qx_native::table()->isa) +
         "); QUADEXPORT_KERNEL_ISA must be unset");
  return qx_native::table();
#endif
}

// 64-byte aligned float buffer.
struct Buffer {
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float[], Free> p;
  size_t n = 0;
  void resize(size_t floats) {
    if (floats <= n) return;
    const size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    p.reset(static_cast<float*>(std::aligned_alloc(64, bytes ? bytes : 64)));
    if (!p) throw Ort::Exception("quadexport: out of memory", ORT_FAIL);
    n = floats;
  }
  float* data() const { return p.get(); }
};

int64_t numel(const std::vector<int64_t>& shape, size_t from = 0, size_t to = SIZE_MAX) {
  int64_t n = 1;
  for (size_t i = from; i < shape.size() && i < to; ++i) n *= shape[i];
  return n;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

// Runs fn(job, 0..tasks-1) on the session's intra-op pool (inline when there is only one task).
void parallel_for(OrtKernelContext* ctx, void (*fn)(void*, size_t), size_t tasks, void* job) {
  if (tasks == 1) {
    fn(job, 0);
  } else if (tasks > 1) {
    Ort::KernelContext(ctx).ParallelFor(fn, tasks, 0, job);
  }
}

// Allocates a planned job's work buffer, then runs its preparation and compute phases.
template <class Job>
void run_job(OrtKernelContext* ctx, Job& job, size_t tasks, void (*prep)(void*, size_t), void (*task)(void*, size_t)) {
  Buffer work;
  work.resize(size_t(job.work_floats));
  job.work = work.data();
  parallel_for(ctx, prep, size_t(job.n_prep_tasks), &job);
  parallel_for(ctx, task, tasks, &job);
  if (job.failed) throw Ort::Exception("quadexport: out of memory for per-thread scratch", ORT_FAIL);
}

// Shape checks of the six weight inputs (op inputs 1..6): W_g, W_b like W_r; biases [M].
void check_weights(const std::vector<int64_t> shapes[6], const char* op) {
  const auto& w = shapes[0];
  if (w.empty()) fail(std::string(op) + ": W_r must have rank >= 2");
  for (int i : {2, 4})
    if (shapes[i] != w)
      fail(std::string(op) + ": W_g/W_b shape " + shape_str(shapes[i]) + " differs from W_r " + shape_str(w));
  for (int i : {1, 3, 5})
    if (shapes[i].size() != 1 || shapes[i][0] != w[0])
      fail(std::string(op) + ": bias " + shape_str(shapes[i]) + " must be [" + std::to_string(w[0]) + "]");
}

// Packed weights of one node. Constant initializers are packed once when the session creates the kernel; weights
// fed as graph inputs are packed on every call (correct, just slower).
class PackedWeights {
 public:
  using Packer = void (*)(const KernelTable&, const qx::Weights&, const std::vector<int64_t>& w_shape, int64_t group,
                          Buffer& out);

  PackedWeights(const OrtKernelInfo* info, const KernelTable* table, int64_t group, Packer packer, const char* op)
      : table_(table), group_(group), packer_(packer), op_(op) {
    Ort::ConstKernelInfo ki(info);
    std::vector<int64_t> shapes[6];
    const float* ptr[6];
    for (size_t i = 0; i < 6; ++i) {
      int is_const = 0;
      Ort::ConstValue v = ki.GetTensorConstantInput(i + 1, &is_const);
      if (!is_const) return;  // not all constant: pack per call
      auto info_shape = v.GetTensorTypeAndShapeInfo();
      if (info_shape.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(std::string(op) + ": float32 only");
      shapes[i] = info_shape.GetShape();
      ptr[i] = v.GetTensorData<float>();
    }
    check_weights(shapes, op);
    w_shape_ = shapes[0];
    packer_(*table_, qx::Weights{ptr[0], ptr[1], ptr[2], ptr[3], ptr[4], ptr[5]}, w_shape_, group_, const_);
    constant_ = true;
  }

  // Packed weights for this call; `scratch` receives them when the weights are not constant.
  const float* get(const Tensor* const in[6], Buffer& scratch, std::vector<int64_t>& w_shape) const {
    if (constant_) {
      w_shape = w_shape_;
      return const_.data();
    }
    std::vector<int64_t> shapes[6];
    for (int i = 0; i < 6; ++i) shapes[i] = in[i]->Shape();
    check_weights(shapes, op_);
    w_shape = shapes[0];
    packer_(*table_, qx::Weights{in[0]->Data(), in[1]->Data(), in[2]->Data(), in[3]->Data(), in[4]->Data(),
                                 in[5]->Data()},
            w_shape, group_, scratch);
    return scratch.data();
  }

 private:
  const KernelTable* table_;
  int64_t group_;
  Packer packer_;
  const char* op_;
  bool constant_ = false;
  std::vector<int64_t> w_shape_;
  Buffer const_;
};

// ------------------------------------------------------------------------------------------------------------------
// QuadLinear
// ------------------------------------------------------------------------------------------------------------------
void pack_linear(const KernelTable& t, const qx::Weights& w, const std::vector<int64_t>& s, int64_t, Buffer& out) {
  if (s.size() != 2) fail("QuadLinear: W_r must be [M, K], got " + shape_str(s));
  out.resize(t.linear_packed_size(s[0], s[1]));
  t.linear_pack(w, s[0], s[1], out.data());
}

struct QuadLinearKernel {
  QuadLinearKernel(const OrtApi*, const OrtKernelInfo* info)
      : table_(select_table()), weights_(info, table_, 1, pack_linear, "QuadLinear") {}

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor& x, const Tensor& wr, const Tensor& br, const Tensor& wg,
                      const Tensor& bg, const Tensor& wb, const Tensor& c, Tensor& y) {
    try {
      const Tensor* w_in[6] = {&wr, &br, &wg, &bg, &wb, &c};
      Buffer scratch;
      std::vector<int64_t> ws;
      const float* packed = weights_.get(w_in, scratch, ws);
      const int64_t M = ws[0], K = ws[1];
      std::vector<int64_t> xs = x.Shape();
      if (xs.empty() || xs.back() != K)
        fail("QuadLinear: x " + shape_str(xs) + " must end in K=" + std::to_string(K));
      std::vector<int64_t> ys = xs;
      ys.back() = M;
      float* out = y.Allocate(ys);
      qx::LinearJob job{};
      job.packed = packed;
      job.x = x.Data();
      job.y = out;
      job.N = numel(xs, 0, xs.size() - 1);
      job.M = M;
      job.K = K;
      if (job.N == 0 || M == 0) return Ort::Status{nullptr};
      if (K == 0) fail("QuadLinear: K must be > 0");
      run_job(ctx, job, table_->linear_plan(&job), table_->linear_prep, table_->linear_task);
      return Ort::Status{nullptr};
    } catch (const std::exception& e) {
      return Ort::Status(e);
    }
  }

  const KernelTable* table_;
  PackedWeights weights_;
};

// ------------------------------------------------------------------------------------------------------------------
// QuadConv1d / QuadConv2d
// ------------------------------------------------------------------------------------------------------------------
std::vector<int64_t> ints_attr(const OrtKernelInfo* info, const char* name, std::vector<int64_t> dflt) {
  try {
    return Ort::ConstKernelInfo(info).GetAttributes<int64_t>(name);
  } catch (const Ort::Exception&) {
    return dflt;  // attribute absent
  }
}

int64_t int_attr(const OrtKernelInfo* info, const char* name, int64_t dflt) {
  try {
    return Ort::ConstKernelInfo(info).GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    return dflt;
  }
}

std::string string_attr(const OrtKernelInfo* info, const char* name, const std::string& dflt) {
  try {
    return Ort::ConstKernelInfo(info).GetAttribute<std::string>(name);
  } catch (const Ort::Exception&) {
    return dflt;
  }
}

void pack_conv(const KernelTable& t, const qx::Weights& w, const std::vector<int64_t>& s, int64_t group, Buffer& out) {
  if (s.size() < 3) fail("QuadConv: W_r must be [M, C/group, k...], got " + shape_str(s));
  if (s[0] % group != 0) fail("QuadConv: M=" + std::to_string(s[0]) + " not divisible by group");
  const int64_t Kc = numel(s, 1);
  out.resize(t.conv_packed_size(s[0], group, Kc));
  t.conv_pack(w, s[0], group, Kc, out.data());
}

template <int D>  // spatial dimensions: 1 or 2
struct QuadConvKernel {
  static constexpr const char* kName = D == 1 ? "QuadConv1d" : "QuadConv2d";

  QuadConvKernel(const OrtApi*, const OrtKernelInfo* info)
      : table_(select_table()),
        group_(int_attr(info, "group", 1)),
        strides_(ints_attr(info, "strides", std::vector<int64_t>(D, 1))),
        dilations_(ints_attr(info, "dilations", std::vector<int64_t>(D, 1))),
        pads_(ints_attr(info, "pads", std::vector<int64_t>(2 * D, 0))),
        kernel_shape_(ints_attr(info, "kernel_shape", {})),
        auto_pad_(string_attr(info, "auto_pad", "NOTSET")),
        weights_(info, table_, group_ > 0 ? group_ : 1, pack_conv, kName) {
    const std::string op = kName;
    if (group_ < 1) fail(op + ": group must be >= 1");
    if (strides_.size() != D || dilations_.size() != D || pads_.size() != 2 * D)
      fail(op + ": strides/dilations need " + std::to_string(D) + " values and pads " + std::to_string(2 * D));
    for (int i = 0; i < D; ++i)
      if (strides_[i] < 1 || dilations_[i] < 1 || pads_[i] < 0 || pads_[D + i] < 0)
        fail(op + ": strides/dilations must be >= 1 and pads >= 0");
    if (auto_pad_ != "NOTSET" && auto_pad_ != "VALID" && auto_pad_ != "SAME_UPPER" && auto_pad_ != "SAME_LOWER")
      fail(op + ": unknown auto_pad " + auto_pad_);
  }

  Ort::Status Compute(OrtKernelContext* ctx, const Tensor& x, const Tensor& wr, const Tensor& br, const Tensor& wg,
                      const Tensor& bg, const Tensor& wb, const Tensor& c, Tensor& y) {
    try {
      const Tensor* w_in[6] = {&wr, &br, &wg, &bg, &wb, &c};
      Buffer packed_scratch;
      std::vector<int64_t> ws;
      const float* packed = weights_.get(w_in, packed_scratch, ws);
      qx::ConvJob job{};
      job.g = geometry(x.Shape(), ws);
      const qx::ConvGeom& g = job.g;
      std::vector<int64_t> ys = {g.N, g.M, g.OH, g.OW};
      if (D == 1) ys = {g.N, g.M, g.OW};
      job.packed = packed;
      job.x = x.Data();
      job.y = y.Allocate(ys);
      if (numel(ys) == 0) return Ort::Status{nullptr};
      run_job(ctx, job, table_->conv_plan(&job), table_->conv_prep, table_->conv_task);
      return Ort::Status{nullptr};
    } catch (const std::exception& e) {
      return Ort::Status(e);
    }
  }

  // Shapes -> geometry, as 2-D (1-D: H = kh = 1). Applies auto_pad when set.
  qx::ConvGeom geometry(const std::vector<int64_t>& xs, const std::vector<int64_t>& ws) const {
    const std::string op = kName;
    if (xs.size() != size_t(D + 2)) fail(op + ": x must have rank " + std::to_string(D + 2) + ", got " + shape_str(xs));
    if (ws.size() != size_t(D + 2)) fail(op + ": W_r must have rank " + std::to_string(D + 2));
    if (xs[1] != ws[1] * group_)
      fail(op + ": x has " + std::to_string(xs[1]) + " channels, W_r expects " + std::to_string(ws[1]) +
           " per group × group " + std::to_string(group_));
    if (!kernel_shape_.empty() && kernel_shape_ != std::vector<int64_t>(ws.begin() + 2, ws.end()))
      fail(op + ": kernel_shape attribute disagrees with W_r " + shape_str(ws));
    int64_t in[2] = {1, 1}, k[2] = {1, 1}, s[2] = {1, 1}, d[2] = {1, 1}, pb[2] = {0, 0}, pe[2] = {0, 0}, out[2] = {1, 1};
    for (int i = 0; i < D; ++i) {
      const int a = 2 - D + i;  // 1-D fills the W axis
      in[a] = xs[2 + i];
      k[a] = ws[2 + i];
      s[a] = strides_[i];
      d[a] = dilations_[i];
      pb[a] = pads_[i];
      pe[a] = pads_[D + i];
      const int64_t eff = (k[a] - 1) * d[a] + 1;
      if (auto_pad_ == "VALID") {
        pb[a] = pe[a] = 0;
      } else if (auto_pad_ != "NOTSET") {
        const int64_t o = (in[a] + s[a] - 1) / s[a];
        const int64_t total = std::max<int64_t>(0, (o - 1) * s[a] + eff - in[a]);
        pb[a] = auto_pad_ == "SAME_UPPER" ? total / 2 : total - total / 2;
        pe[a] = total - pb[a];
      }
      const int64_t span = in[a] + pb[a] + pe[a] - eff;
      if (span < 0) fail(op + ": kernel larger than padded input " + shape_str(xs));
      out[a] = span / s[a] + 1;
    }
    return qx::ConvGeom{xs[0], xs[1], in[0], in[1], ws[0], group_, k[0], k[1], s[0], s[1], d[0], d[1],
                        pb[0], pb[1], out[0], out[1]};
  }

  const KernelTable* table_;
  int64_t group_;
  std::vector<int64_t> strides_, dilations_, pads_, kernel_shape_;
  std::string auto_pad_;
  PackedWeights weights_;
};

// Registration. The op and domain objects must outlive every session that uses them, including sessions that are
// destroyed during interpreter/process shutdown, so they are created once (ops) or per registration (domains) on
// the heap and deliberately never freed.
OrtStatus* register_ops(OrtSessionOptions* options) {
  static std::mutex mutex;
  static auto* ops = new std::vector<Ort::Custom::OrtLiteCustomOp*>{
      Ort::Custom::CreateLiteCustomOp<QuadLinearKernel>("QuadLinear", kProvider),
      Ort::Custom::CreateLiteCustomOp<QuadConvKernel<1>>("QuadConv1d", kProvider),
      Ort::Custom::CreateLiteCustomOp<QuadConvKernel<2>>("QuadConv2d", kProvider)};
  std::lock_guard<std::mutex> lock(mutex);
  auto* domain = new Ort::CustomOpDomain(kDomain);
  for (auto* op : *ops) domain->Add(op);
  Ort::UnownedSessionOptions(options).Add(*domain);
  return nullptr;
}

}  // namespace qx_glue

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api)  // runtime older than the headers: report it through the oldest API table
    return api_base->GetApi(1)->CreateStatus(ORT_FAIL, "quadexport kernels need onnxruntime >= 1.21 (C API 21)");
  Ort::InitApi(api);
  try {
    return qx_glue::register_ops(options);
  } catch (const std::exception& e) {
    return Ort::Status(e).release();
  }
}
#endif  // glue
