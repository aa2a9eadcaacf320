// Shortest-path (graph) first-arrival traveltimes on a regular 2-D grid with secondary nodes.
//
// The method of Giroux & Larouche (2013), as in pyGIMLi's TravelTimeDijkstraModelling: graph nodes
// are the cell corners plus `n_secondary` equally spaced nodes on every cell side; inside each cell
// every pair of its 4 + 4n boundary nodes is joined by a straight segment whose traveltime is
// length x slowness(cell). A side shared by two cells is reached through both cells, so the smaller
// slowness wins. One Dijkstra per source gives the traveltimes; the back-tracked path gives the
// Jacobian (length of the ray in each cell, credited to the cell whose slowness the segment used).
//
// No Python in this file. Every input is checked; bad input throws std::invalid_argument.
//
// Node numbering (identical in the NumPy fallback, latentinv/operators/shortest_path.py):
//   R = n_rows (depth), C = n_cols (x), n = n_secondary
//   corners           : (R+1)(C+1) nodes, node = i*(C+1) + j            (i: depth line, j: x line)
//   horizontal sides  : (R+1)*C*n nodes,  node = NC + (i*C + j)*n + k    (side on depth line i,
//                                                                        between x lines j and j+1)
//   vertical sides    : R*(C+1)*n nodes,  node = NC + NH + (i*(C+1) + j)*n + k (side on x line j,
//                                                                        between depth lines i, i+1)
// Local boundary nodes of a cell, with integer local coordinates (a, b) in units of 1/(n+1) cell:
//   0 TL (0,0), 1 TR (n+1,0), 2 BL (0,n+1), 3 BR (n+1,n+1),
//   4+k top (k+1,0), 4+n+k bottom (k+1,n+1), 4+2n+k left (0,k+1), 4+3n+k right (n+1,k+1).
// Local length: ox[a] = (a/(n+1))*dx, oz[b] = (b/(n+1))*dz, L = sqrt(ddx*ddx + ddz*ddz) with
// ddx = ox[a_p] - ox[a_q], ddz = oz[b_p] - oz[b_q]; edge weight w = L * slowness[cell].
//
// Canonical tie rule (so that the C++ engine and the fallback pick the same paths): the predecessor
// of node u is, among all (v, cell) with fl(d[v] + fl(L*s[cell])) == d[u], the lexicographically
// smallest (v, w, cell). It depends on the final distances only, so every solver below gives the
// same Jacobian once it gives the same distances.
//
// Solvers (all give the same distances, bit for bit):
// - "dijkstra": one Dijkstra run per source (bucket queue or 4-ary heap, `QueueKind`), stopped once
//   the source's receivers are settled.
// - "sweep": multi-source label correcting (cpp/sweep_kernel.hpp). K sources share a pass, one
//   SIMD lane each (K = 4: AVX2, or the portable scalar kernel with the same layout); cells are
//   swept in four alternating orders and a cell is processed only when one of its nodes changed
//   since its last processing. Exactness: let D be Dijkstra's distances. With positive weights
//   and round-to-nearest, fl(a + w) is monotone in a, so D[u] is the minimum over paths of the
//   path time accumulated left to right in floating point. The sweep's labels only ever take such
//   path values (or +inf), so lab >= D; at the end every edge satisfies lab[q] <= fl(lab[p] + w),
//   and induction along the path that realises D[u] gives lab[u] <= D[u]. Hence lab == D.
//   The same argument holds from any starting labels that are upper bounds of D (a warm start).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace latentinv {

struct BatchResult {
  std::vector<double> times;      // n_models * n_data, model-major
  std::vector<int64_t> indptr;    // n_models * n_data + 1 (empty when no Jacobian)
  std::vector<int32_t> indices;   // cell indices, sorted and unique per row
  std::vector<double> data;       // ray length (m) per cell
};

// Division of non-negative int32 by a fixed divisor through one double multiply (exact after the
// correction steps); integer division is the slowest instruction on the hot path otherwise.
struct FastDivisor {
  int32_t d = 1;
  double inverse = 1.0;
  FastDivisor() = default;
  explicit FastDivisor(int64_t divisor) : d(static_cast<int32_t>(divisor)), inverse(1.0 / divisor) {}
  inline int32_t div(int32_t x) const {
    int32_t q = static_cast<int32_t>(static_cast<double>(x) * inverse);
    if (static_cast<int64_t>(q) * d > x) --q;
    else if (static_cast<int64_t>(q + 1) * d <= x) ++q;
    return q;
  }
};

// Priority queue of the Dijkstra runs: `automatic` picks the bucket queue when the ratio of the
// largest to the smallest edge weight allows (< 65536 buckets), else the 4-ary heap. All give the
// same distances and predecessors.
enum class QueueKind { automatic = 0, heap = 1, buckets = 2 };

// Which solver runs (see the top of this file); `automatic` is the sweep.
enum class SolverKind { automatic = 0, dijkstra = 1, sweep = 2, wavefront = 3 };
// Lanes of the sweep solver: `automatic` takes AVX2 where the build has it and the CPU supports it,
// else the scalar kernel; asking for AVX2 where it is not available throws.
enum class SimdKind { automatic = 0, scalar = 1, avx2 = 2 };

struct RunOptions {
  QueueKind queue = QueueKind::automatic;
  SolverKind solver = SolverKind::automatic;
  SimdKind simd = SimdKind::automatic;
};

class ShortestPathEngine {
 public:
  ShortestPathEngine(int64_t n_rows, int64_t n_cols, double dx, double dz, int64_t n_secondary,
                     std::vector<int64_t> source_nodes, std::vector<int64_t> receiver_nodes,
                     std::vector<int64_t> pair_sources, std::vector<int64_t> pair_receivers);
  ~ShortestPathEngine();

  // slowness: n_models x n_cells, C order (cell = row*n_cols + col). Throws on NaN/inf/<=0.
  // jacobian_rows: null (every row) or n_models x n_data flags; rows flagged 0 are left empty in
  // the Jacobian (their back-tracking is skipped), e.g. the data outside an SGD mini-batch.
  // source_mask: null (every source) or n_models x n_sources flags; the solve of a (model, source)
  // flagged 0 is skipped: its data get NaN times and empty Jacobian rows.
  // options: solver, its SIMD lanes, and the Dijkstra queue (see RunOptions; a queue other than
  // `automatic` needs the Dijkstra solver, simd other than `automatic` a label-correcting one).
  BatchResult run(const double* slowness, int64_t n_models, bool want_jacobian, int n_threads,
                  RunOptions options = RunOptions(),
                  const uint8_t* jacobian_rows = nullptr,
                  const uint8_t* source_mask = nullptr) const;

  // n_models may be 0: the result is then empty (no times, indptr = {0} with a Jacobian).
  // Threads: a call uses at most min(n_threads, its tasks, max_threads()). A task is one source
  // (Dijkstra) or a group of up to sweep_lanes() consecutive flagged sources of one model within
  // kGroupSpan cell sizes of the group's first one (the label-correcting solvers; at least as
  // many groups per model as threads per model, when the sources allow).
  //
  // The same computation, queued on the engine's persistent pool of worker threads (grown on
  // demand to min(n_threads, the job's tasks, max_threads()), never shrunk) and returned at once;
  // the inputs are copied. Jobs are served in
  // submission order, so a job submitted behind another keeps the workers busy while the caller
  // works on the first one's result. wait() blocks until the job is done and returns its result
  // (once). Safe after fork(): a child process starts a fresh pool.
  struct Job;
  std::shared_ptr<Job> submit(const double* slowness, int64_t n_models, bool want_jacobian,
                              int n_threads, RunOptions options = RunOptions(),
                              const uint8_t* jacobian_rows = nullptr,
                              const uint8_t* source_mask = nullptr) const;
  BatchResult wait(Job& job) const;
  static bool done(const Job& job);

  // The lanes `automatic` resolves to on this machine and build ("avx2" or "scalar"), whether AVX2
  // was compiled in and is supported by the CPU, and the sources per sweep pass (K).
  static SimdKind resolve_simd(SimdKind requested);
  static bool avx2_available();
  static int sweep_lanes() { return 4; }
  // Statistics of one label-correcting solve of a group of sources, for benchmarks: rounds
  // (sweeps, or 1 for the wavefront), cells processed, node pushes. `sources`: 1 to sweep_lanes()
  // source indices.
  void sweep_statistics(const double* slowness, const std::vector<int64_t>& sources, SimdKind simd,
                        bool wavefront, int64_t* sweeps, int64_t* cells, int64_t* pushes) const;

  // Upper bound on the threads of one call and on the background pool:
  // 4 x std::thread::hardware_concurrency() (4 when the hardware does not say).
  static int max_threads();
  // Worker threads of the background pool started so far (0 before the first submit).
  int pool_size() const;

  int64_t n_nodes() const { return n_nodes_; }
  int64_t n_cells() const { return n_rows_ * n_cols_; }
  int64_t n_data() const { return static_cast<int64_t>(pair_sources_.size()); }
  int64_t n_sources() const { return static_cast<int64_t>(source_nodes_.size()); }
  int64_t n_local() const { return n_local_; }
  const std::vector<double>& local_lengths() const { return lengths_; }
  // (x, depth) offsets from the grid origin of a node, in m.
  void node_position(int64_t node, double* x, double* depth) const;

 private:
  struct Workspace;
  struct TaskOutput;
  struct Pool;

  struct QueueChoice {
    bool buckets = false;
    double inverse_width = 1.0;
    int64_t n_buckets = 1;
  };
  template <bool Jacobian, bool Buckets>
  void solve_source(const double* slowness, int64_t source, Workspace& ws,
                    const QueueChoice& choice, double* times_row, TaskOutput* out,
                    const uint8_t* row_flags) const;
  // the sweep solver for up to sweep_lanes() sources of one model; labels left in ws
  int64_t sweep_group(const double* slowness, const int64_t* sources, int n_sources, SimdKind simd,
                      bool wavefront, Workspace& ws) const;
  // Jacobian rows of one source from final distances dist[node * stride]; acc: n_cells doubles,
  // zero on entry and on return (the per-cell sums of a row)
  void backtrack(const double* slowness, int64_t source, const double* dist, int64_t stride,
                 double* acc, Workspace& ws, TaskOutput* out, const uint8_t* row_flags) const;
  int cell_nodes(int64_t cell, int32_t* gid) const;     // fills the m global node ids
  int adjacent_cells(int32_t node, int32_t* cells, int32_t* local) const;
  int local_index(int32_t node, int32_t cell) const;
  int32_t local_node(int32_t cell, int32_t q) const;   // global id of local node q of a cell

  std::unique_ptr<Workspace> acquire() const;
  void release(std::unique_ptr<Workspace> ws) const;
  // checks the inputs and lays out a job (no copy of the inputs unless `own`)
  std::shared_ptr<Job> prepare(const double* slowness, int64_t n_models, bool want_jacobian,
                               int n_threads, RunOptions options, const uint8_t* jacobian_rows,
                               const uint8_t* source_mask, bool own) const;
  void execute(Job& job, int64_t i, Workspace& ws) const;  // the job's i-th task
  BatchResult assemble(Job& job) const;                     // stacked CSR and times
  void pool_worker(Pool* pool) const;

  int64_t n_rows_, n_cols_, n_sec_, n_local_;
  FastDivisor div_cols_, div_cols1_, div_sec_;  // by C, C+1 and n
  double dx_, dz_;
  int64_t n_corner_, n_horizontal_, n_vertical_, n_nodes_;
  std::vector<double> lengths_;  // n_local x n_local
  std::vector<int32_t> side_nodes_;  // 4 x (n + 2) local nodes of the cell's sides (sweep solver)
  std::vector<uint8_t> node_sides_;  // sides of each local node (bits)
  double margin_factor_ = 0.0;       // see the constructor
  std::vector<int32_t> source_nodes_, receiver_nodes_;
  std::vector<double> source_x_, source_z_;  // positions of the source nodes (m, from the origin)
  // sources farther than this many cell sizes from a group's first one do not join its pass of
  // the label-correcting solvers (a performance choice; results do not depend on it)
  static constexpr double kGroupSpan = 25.0;
  std::vector<int64_t> pair_sources_, pair_receivers_;
  // data grouped by source: data_of_source_[data_start_[s] .. data_start_[s+1])
  std::vector<int64_t> data_start_, data_of_source_;
  std::vector<int64_t> active_sources_;  // sources with at least one datum

  mutable std::mutex pool_mutex_;
  mutable std::vector<std::unique_ptr<Workspace>> pool_;
  mutable std::mutex workers_mutex_;           // guards workers_ (creation, growth, fork reset)
  mutable std::unique_ptr<Pool> workers_;      // the asynchronous pool, created on first submit
};

}  // namespace latentinv
