// Multi-source label-correcting solver on the secondary-node graph: K sources per pass, one SIMD
// lane per source (see shortest_path.hpp, "Solvers").
//
// This header is included by translation units compiled with different instruction sets
// (shortest_path.cpp: the baseline; sweep_avx2.cpp: -mavx2). To keep code of one instruction set
// from being linked into another's callers (the ODR trap of inline functions), everything here is
// in an anonymous namespace of the including file and uses raw pointers only, no standard-library
// templates.
//
// Algorithm (exact, see the proof in shortest_path.hpp): labels start at +inf (0 at the sources) or
// at given upper bounds. A cell is processed only when one of its boundary nodes changed since the
// cell was last processed; processing pushes the labels of its changed nodes p through the cell's
// edges: lab[q] = min(lab[q], lab[p] + L[p,q]*s) for every boundary node q (lanes: sources), the
// same floating-point operations per edge as the Dijkstra engine. Whatever a cell changes marks it
// and its neighbours across the changed nodes dirty (the engine schedules them: a bucket queue of
// cells keyed by the smallest new label, or alternating sweeps). The run ends when no cell is dirty:
// then every edge satisfies lab[q] <= fl(lab[p] + w), which with labels that are values of paths
// (or upper bounds of the shortest ones) makes them the Dijkstra distances, bit for bit, whatever
// the order of processing.
#ifndef LATENTINV_SWEEP_KERNEL_HPP
#define LATENTINV_SWEEP_KERNEL_HPP

#include <cstdint>

namespace latentinv {
namespace sweep {

struct Grid {
  int32_t n_rows, n_cols, n_sec, m;  // m = 4 + 4 n local nodes per cell
  int32_t n_corner, n_side_h;        // first horizontal-side node id, first vertical-side node id
  const double* lengths;             // m x m local lengths (symmetric, zero diagonal)
  // Rounds after the first push a node the cell improved only to the nodes on a common side with it
  // when `collinear_only` (see ShortestPathEngine::sweep_group for the bound that allows it):
  // side_nodes[side * (n + 2) + i] lists the n + 2 local nodes of each side (top, bottom, left,
  // right; corners included), node_sides[q] the sides of local node q (bits 1, 2, 4, 8).
  bool collinear_only;
  const int32_t* side_nodes;
  const uint8_t* node_sides;
};

// rows of a cell pushed together (their weights are computed into the scratch first)
constexpr int32_t kRowBlock = 32;

// bits returned by process_cell: the cells to mark dirty
constexpr uint32_t kTop = 2, kBottom = 4, kLeft = 8, kRight = 16, kTopLeft = 32,
                   kTopRight = 64, kBottomLeft = 128, kBottomRight = 256;

struct State {
  double* labels;         // n_nodes x K (lane = source of the group)
  // per cell, `words` 64-bit words: bit q set when the cell's local node q changed since the cell
  // was last processed (by a neighbour, or by the start of the pass); the cell pushes exactly those
  uint64_t* changed;
  int32_t words;
  // scratch owned by the caller: weights kRowBlock x m, acc and start m x K doubles, gid and rows
  // m int32 each
  double* weights;
  double* acc;
  double* start;
  int32_t* gid;
  int32_t* rows;
  int64_t processed;      // cells processed (statistics)
  int64_t pushed;         // node pushes through a cell (statistics)
  int64_t repeats;        // second and later rounds inside a cell (statistics)
};

}  // namespace sweep
}  // namespace latentinv
#endif  // LATENTINV_SWEEP_KERNEL_HPP

// (no include guard below: each including translation unit instantiates the body once)
#ifdef LATENTINV_SWEEP_KERNEL_BODY
// The kernel body, instantiated by a translation unit that defines LATENTINV_SWEEP_KERNEL_BODY and a
// vector type `Vec` with: static constexpr int K; load(const double*), store(double*),
// broadcast(double), add, mul, min, any_less(a, b) (a < b in some lane) and min_where_less(a, b) (the
// smallest a over the lanes where a < b).
namespace {

using latentinv::sweep::Grid;
using latentinv::sweep::State;

// Processes one cell (r, c): pushes the nodes changed since its last processing through its edges.
// Returns the neighbours to mark dirty (kTop, ... bits) and, in *key, the smallest new label
// over the changed (node, lane) pairs (+inf when nothing changed).
inline uint32_t process_cell(const Grid& g, const double* slowness, State& st, int32_t r, int32_t c,
                             double* key) {
  using namespace latentinv::sweep;
  constexpr int K = Vec::K;
  const int32_t C = g.n_cols, n = g.n_sec, m = g.m;
  const int32_t cell = r * C + c;
  *key = __builtin_inf();
  int32_t* gid = st.gid;
  const int32_t tl = cell + r;  // r*(C+1) + c
  gid[0] = tl;
  gid[1] = tl + 1;
  gid[2] = tl + C + 1;
  gid[3] = tl + C + 2;
  {
    const int32_t top = g.n_corner + cell * n, bottom = top + C * n;
    const int32_t left = g.n_side_h + (cell + r) * n, right = left + n;
    for (int32_t k = 0; k < n; ++k) {
      gid[4 + k] = top + k;
      gid[4 + n + k] = bottom + k;
      gid[4 + 2 * n + k] = left + k;
      gid[4 + 3 * n + k] = right + k;
    }
  }
  // the nodes changed since the last processing, whose labels must be pushed through this cell
  // (in increasing local order); the cell's own changes need no second push: it leaves its edges
  // at a fixpoint (below)
  int32_t n_rows = 0;
  uint64_t* mine = st.changed + static_cast<int64_t>(cell) * st.words;
  for (int32_t word = 0; word < st.words; ++word) {
    for (uint64_t bits = mine[word]; bits != 0; bits &= bits - 1)
      st.rows[n_rows++] = word * 64 + __builtin_ctzll(bits);
    mine[word] = 0;
  }
  if (n_rows == 0) return 0;
  ++st.processed;
  double* acc = st.acc;
  double* start = st.start;
  for (int32_t q = 0; q < m; ++q) {
    const Vec v = Vec::load(st.labels + static_cast<int64_t>(gid[q]) * K);
    Vec::store(acc + q * K, v);
    Vec::store(start + q * K, v);
  }
  const double s = slowness[cell];
  double* w = st.weights;
  const Vec infinity = Vec::broadcast(__builtin_inf());
  const Vec vs = Vec::broadcast(s);
  // Push the rows through the cell; the nodes it improves are pushed again (rounding may break the
  // triangle inequality between collinear nodes by an ulp) until nothing changes inside the cell.
  // the nodes whose label improved become the next rows (their new labels are the next start)
  auto collect_improved = [&]() {
    n_rows = 0;
    for (int32_t qq = 0; qq < m; ++qq) {
      const Vec a = Vec::load(acc + qq * K);
      if (Vec::any_less(a, Vec::load(start + qq * K))) {
        st.rows[n_rows++] = qq;
        Vec::store(start + qq * K, a);
      }
    }
  };
  while (true) {
    int32_t n_live = 0;
    for (int32_t k = 0; k < n_rows; ++k) {
      const int32_t p = st.rows[k];
      st.rows[n_live] = p;  // rows whose lanes are all +inf push nothing
      n_live += Vec::any_less(Vec::load(start + p * K), infinity) ? 1 : 0;
    }
    st.pushed += n_live;
    // acc[q] = min(acc[q], start[p] + w[p][q]) over the live rows p (the diagonal adds 0), in blocks
    // of kRowBlock rows whose weights w[k][q] = L[p_k][q] * s are computed first (rounded once, as
    // Dijkstra's Lrow[q] * s); the block bounds the scratch memory to kRowBlock x m doubles
    for (int32_t k0 = 0; k0 < n_live; k0 += kRowBlock) {
      const int32_t k1 = n_live < k0 + kRowBlock ? n_live : k0 + kRowBlock;
      for (int32_t k = k0; k < k1; ++k) {
        const double* Lp = g.lengths + st.rows[k] * m;
        double* wk = w + (k - k0) * m;
        int32_t q = 0;
        for (; q + Vec::K <= m; q += Vec::K) Vec::store(wk + q, Vec::mul(Vec::load(Lp + q), vs));
        for (; q < m; ++q) wk[q] = Lp[q] * s;
      }
      int32_t q = 0;
      for (; q + 4 <= m; q += 4) {
        Vec a0 = Vec::load(acc + (q + 0) * K), a1 = Vec::load(acc + (q + 1) * K);
        Vec a2 = Vec::load(acc + (q + 2) * K), a3 = Vec::load(acc + (q + 3) * K);
        for (int32_t k = k0; k < k1; ++k) {
          const Vec vp = Vec::load(start + st.rows[k] * K);
          const double* wk = w + (k - k0) * m + q;
          a0 = Vec::min(a0, Vec::add(vp, Vec::broadcast(wk[0])));
          a1 = Vec::min(a1, Vec::add(vp, Vec::broadcast(wk[1])));
          a2 = Vec::min(a2, Vec::add(vp, Vec::broadcast(wk[2])));
          a3 = Vec::min(a3, Vec::add(vp, Vec::broadcast(wk[3])));
        }
        Vec::store(acc + (q + 0) * K, a0);
        Vec::store(acc + (q + 1) * K, a1);
        Vec::store(acc + (q + 2) * K, a2);
        Vec::store(acc + (q + 3) * K, a3);
      }
      for (; q < m; ++q) {
        Vec a0 = Vec::load(acc + q * K);
        for (int32_t k = k0; k < k1; ++k)
          a0 = Vec::min(a0, Vec::add(Vec::load(start + st.rows[k] * K),
                                     Vec::broadcast(w[(k - k0) * m + q])));
        Vec::store(acc + q * K, a0);
      }
    }
    collect_improved();
    if (n_rows == 0) break;
    ++st.repeats;
    if (!g.collinear_only) continue;
    // Later rounds: only nodes on a common side can be improved (rounding of collinear segments);
    // for the others the triangle inequality holds with a margin beyond rounding (the bound
    // checked by the engine), so pushing there cannot change anything.
    while (n_rows > 0) {
      for (int32_t k = 0; k < n_rows; ++k) {
        const int32_t z = st.rows[k];
        const Vec vz = Vec::load(start + z * K);
        const double* Lz = g.lengths + z * m;
        for (uint32_t sides = g.node_sides[z]; sides != 0; sides &= sides - 1) {
          const int32_t* list = g.side_nodes + __builtin_ctz(sides) * (n + 2);
          for (int32_t i = 0; i < n + 2; ++i) {
            const int32_t t = list[i];
            Vec::store(acc + t * K,
                       Vec::min(Vec::load(acc + t * K), Vec::add(vz, Vec::broadcast(Lz[t] * s))));
          }
        }
      }
      collect_improved();
      if (n_rows) ++st.repeats;
    }
    break;
  }
  // write back the improved nodes; tell the neighbours sharing them (their local index there) and
  // collect which neighbours to mark dirty
  const int32_t R = g.n_rows;
  const bool up = r > 0, down = r + 1 < R, left = c > 0, right = c + 1 < C;
  const int32_t words = st.words;
  auto tell = [&](bool inside, int32_t neighbour, int32_t q) {
    if (inside)
      st.changed[static_cast<int64_t>(neighbour) * words + (q >> 6)] |= uint64_t{1} << (q & 63);
  };
  uint32_t marks = 0;
  for (int32_t qq = 0; qq < m; ++qq) {
    double* lab = st.labels + static_cast<int64_t>(gid[qq]) * K;
    const Vec a = Vec::load(acc + qq * K), b = Vec::load(lab);
    if (!Vec::any_less(a, b)) continue;
    Vec::store(lab, a);
    const double kq = Vec::min_where_less(a, b);
    if (kq < *key) *key = kq;
    // local order: 0 TL, 1 TR, 2 BL, 3 BR, then n nodes each of top, bottom, left, right
    if (qq < 4) {
      if (qq == 0) {
        marks |= kTop | kLeft | kTopLeft;
        tell(up, cell - C, 2), tell(left, cell - 1, 1), tell(up && left, cell - C - 1, 3);
      } else if (qq == 1) {
        marks |= kTop | kRight | kTopRight;
        tell(up, cell - C, 3), tell(right, cell + 1, 0), tell(up && right, cell - C + 1, 2);
      } else if (qq == 2) {
        marks |= kBottom | kLeft | kBottomLeft;
        tell(down, cell + C, 0), tell(left, cell - 1, 3), tell(down && left, cell + C - 1, 1);
      } else {
        marks |= kBottom | kRight | kBottomRight;
        tell(down, cell + C, 1), tell(right, cell + 1, 2), tell(down && right, cell + C + 1, 0);
      }
    } else {
      const int32_t side = (qq - 4) / n, k = (qq - 4) - side * n;
      if (side == 0) marks |= kTop, tell(up, cell - C, 4 + n + k);
      else if (side == 1) marks |= kBottom, tell(down, cell + C, 4 + k);
      else if (side == 2) marks |= kLeft, tell(left, cell - 1, 4 + 3 * n + k);
      else marks |= kRight, tell(right, cell + 1, 4 + 2 * n + k);
    }
  }
  return marks;
}

}  // namespace
#endif  // LATENTINV_SWEEP_KERNEL_BODY
