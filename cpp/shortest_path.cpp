// Shortest-path traveltimes and Jacobians on a regular grid with secondary nodes (see the header).
//
// Design for speed (the graph holds ~60k nodes and ~2M directed edges on the paper geometry):
// - no adjacency list: the edges of a settled node are generated from the cells it touches (1, 2 or
//   4) and one small table of local lengths shared by all cells; a cell's nodes are 4 corners and
//   runs of consecutive ids (its sides), relaxed two at a time with SSE2;
// - an exact bucket queue (Dial) with bucket width half the smallest edge weight of the model, a
//   4-ary indexed heap when the weight range would need too many buckets; both settle nodes at the
//   same distances;
// - the Dijkstra loop keeps only distances and settled flags (12 B/node of hot state); the
//   canonical predecessors are found afterwards, only along the back-tracked paths, from the final
//   distances (memoised per node met, in a small hash table), so the forward and the Jacobian
//   share the same inner loop;
// - Dijkstra stops once every receiver of the source is settled;
// - per-thread workspaces are pooled in the engine and reused between calls;
// - submit() queues a job on a persistent pool of workers (FIFO over jobs), so a caller can
//   overlap its own work with the Dijkstra runs it does not need yet.
// The default solver is the multi-source label-correcting "wavefront" (cpp/sweep_kernel.hpp for the
// per-cell kernel, compiled once portable and once with AVX2; sweep_group() below for the
// scheduling): 4 sources per pass in the lanes of one vector, 32 B of labels per node and 8 B of
// changed-node bits per cell (for up to 15 secondary nodes; more take more words); measured 1.9x
// the Dijkstra engine on the paper geometry (docs/benchmarks/raytrace.md). Its back-tracking is the
// same code as Dijkstra's, reading the lane of the source (stride 4), with the cells' queue keys
// as its accumulator.
#include "shortest_path.hpp"

#if defined(_WIN32)
#include <process.h>
#define getpid _getpid
#else
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "sweep_kernel.hpp"

// the portable kernel of the sweep solver: 4 lanes in plain loops (same layout as AVX2)
namespace {
struct Vec {
  static constexpr int K = 4;
  double v[4];
  static inline Vec load(const double* p) { return Vec{{p[0], p[1], p[2], p[3]}}; }
  static inline void store(double* p, const Vec& a) {
    p[0] = a.v[0]; p[1] = a.v[1]; p[2] = a.v[2]; p[3] = a.v[3];
  }
  static inline Vec broadcast(double x) { return Vec{{x, x, x, x}}; }
  static inline Vec add(const Vec& a, const Vec& b) {
    return Vec{{a.v[0] + b.v[0], a.v[1] + b.v[1], a.v[2] + b.v[2], a.v[3] + b.v[3]}};
  }
  static inline Vec mul(const Vec& a, const Vec& b) {
    return Vec{{a.v[0] * b.v[0], a.v[1] * b.v[1], a.v[2] * b.v[2], a.v[3] * b.v[3]}};
  }
  static inline double min1(double a, double b) { return b < a ? b : a; }
  static inline Vec min(const Vec& a, const Vec& b) {
    return Vec{{min1(a.v[0], b.v[0]), min1(a.v[1], b.v[1]), min1(a.v[2], b.v[2]), min1(a.v[3], b.v[3])}};
  }
  static inline bool any_less(const Vec& a, const Vec& b) {
    return (a.v[0] < b.v[0]) | (a.v[1] < b.v[1]) | (a.v[2] < b.v[2]) | (a.v[3] < b.v[3]);
  }
  static inline double min_where_less(const Vec& a, const Vec& b) {
    double k = __builtin_inf();
    for (int l = 0; l < 4; ++l)
      if (a.v[l] < b.v[l] && a.v[l] < k) k = a.v[l];
    return k;
  }
};
}  // namespace
#define LATENTINV_SWEEP_KERNEL_BODY
#include "sweep_kernel.hpp"
#undef LATENTINV_SWEEP_KERNEL_BODY

namespace latentinv {
namespace sweep {
uint32_t process_cell_scalar(const Grid& g, const double* slowness, State& st, int32_t r, int32_t c,
                             double* key) {
  return process_cell(g, slowness, st, r, c, key);
}
#if defined(LATENTINV_HAVE_AVX2)
uint32_t process_cell_avx2(const Grid& g, const double* slowness, State& st, int32_t r, int32_t c,
                           double* key);
#endif
}  // namespace sweep

namespace {

constexpr int32_t kNotInHeap = -1;
constexpr int32_t kSettled = -2;

struct HeapEntry {
  double key;
  int32_t node;
};

// Indexed 4-ary min-heap over node ids with decrease-key.
class QuaternaryHeap {
 public:
  void init(std::vector<HeapEntry>* storage, int32_t* pos) {
    heap_ = storage;
    pos_ = pos;
    size_ = 0;
  }
  bool empty() const { return size_ == 0; }

  void push_or_decrease(int32_t node, double key) {
    int32_t i = pos_[node];
    if (i == kNotInHeap) i = static_cast<int32_t>(size_++);
    sift_up(static_cast<size_t>(i), HeapEntry{key, node});
  }

  HeapEntry pop() {
    HeapEntry* h = heap_->data();
    HeapEntry top = h[0];
    pos_[top.node] = kSettled;
    --size_;
    if (size_ > 0) sift_down(h[size_]);
    return top;
  }

 private:
  void sift_up(size_t i, HeapEntry e) {
    HeapEntry* h = heap_->data();
    while (i > 0) {
      size_t parent = (i - 1) >> 2;
      if (!(e.key < h[parent].key)) break;
      h[i] = h[parent];
      pos_[h[i].node] = static_cast<int32_t>(i);
      i = parent;
    }
    h[i] = e;
    pos_[e.node] = static_cast<int32_t>(i);
  }

  void sift_down(HeapEntry e) {
    HeapEntry* h = heap_->data();
    size_t i = 0;
    const size_t n = size_;
    while (true) {
      size_t first = 4 * i + 1;
      if (first >= n) break;
      size_t best = first;
      double bk = h[first].key;
      size_t last = std::min(first + 4, n);
      for (size_t c = first + 1; c < last; ++c) {
        if (h[c].key < bk) {
          bk = h[c].key;
          best = c;
        }
      }
      if (!(bk < e.key)) break;
      h[i] = h[best];
      pos_[h[i].node] = static_cast<int32_t>(i);
      i = best;
    }
    h[i] = e;
    pos_[e.node] = static_cast<int32_t>(i);
  }

  std::vector<HeapEntry>* heap_ = nullptr;
  int32_t* pos_ = nullptr;
  size_t size_ = 0;
};




// The ring of buckets both bucket queues below share: bucket floor(key / width), never one before the
// current bucket, taken modulo the ring's power-of-two size.
struct BucketRing {
  int64_t mask = 0, current = 0;
  double inverse_width = 1.0;
  void reset(int64_t n_buckets, double inverse) {
    mask = n_buckets - 1;
    inverse_width = inverse;
    current = 0;
  }
  int64_t slot(double key) const {
    int64_t b = static_cast<int64_t>(key * inverse_width);
    if (b < current) b = current;  // Dijkstra: cannot happen (see BucketQueue); kept as a guard
    return b & mask;
  }
};

// Bucket queue (Dial 1969) with bucket width at most half the smallest edge weight of the model.
// Exact for Dijkstra: a node in the lowest non-empty bucket cannot be improved by any other
// unsettled node (that would add at least one edge weight, i.e. two bucket widths), so every node
// of that bucket is final and the order inside a bucket does not matter (distances are the same
// fixpoint, and predecessors only come from strictly earlier buckets). Buckets are a ring of
// power-of-two size larger than (largest edge weight / width) + 4. A node whose distance drops is
// appended again; stale entries are skipped when popped (settled flag).
class BucketQueue {
 public:
  void reset(int64_t n_buckets, double inverse_width) {
    if (static_cast<int64_t>(buckets_.size()) < n_buckets) buckets_.resize(n_buckets);
    for (auto& b : buckets_) b.clear();
    ring_.reset(n_buckets, inverse_width);
    size_ = 0;
  }
  void push(int32_t node, double key) {
    buckets_[ring_.slot(key)].push_back(node);
    ++size_;
  }
  // next entry in bucket order, possibly stale; false when empty
  bool pop(int32_t* node) {
    while (size_ > 0) {
      std::vector<int32_t>& b = buckets_[ring_.current & ring_.mask];
      if (!b.empty()) {
        *node = b.back();
        b.pop_back();
        --size_;
        return true;
      }
      ++ring_.current;
    }
    return false;
  }

 private:
  std::vector<std::vector<int32_t>> buckets_;
  BucketRing ring_;
  size_t size_ = 0;
};

// The cells waiting in the wavefront solver: a ring of buckets by key (the smallest label that made
// the cell dirty), each bucket an intrusive doubly linked list over cell ids, so that a cell sits in
// one bucket at most and a smaller key moves it (no stale entries, 12 B per cell and 8 B per
// bucket in all). First in, first out within a bucket (measured: 3 % fewer cells and 9 % less time
// than last in, first out on the paper's case); keys beyond the ring wrap around and come out
// early. The order only steers the work: the solver's result does not depend on it.
class CellQueue {
 public:
  void reset(int32_t n_cells, int64_t n_buckets, double inverse_width) {
    head_.assign(n_buckets, -1);
    tail_.assign(n_buckets, -1);
    next_.resize(n_cells);
    prev_.resize(n_cells);
    slot_.assign(n_cells, -1);
    ring_.reset(n_buckets, inverse_width);
    size_ = 0;
  }
  // inserts the cell, or moves it to the bucket of its new key
  void push(int32_t cell, double key) {
    const int32_t slot = static_cast<int32_t>(ring_.slot(key));
    if (slot_[cell] >= 0) unlink(cell);
    else ++size_;
    const int32_t last = tail_[slot];
    prev_[cell] = last;
    next_[cell] = -1;
    if (last >= 0) next_[last] = cell;
    else head_[slot] = cell;
    tail_[slot] = cell;
    slot_[cell] = slot;
  }
  bool pop(int32_t* cell) {
    while (size_ > 0) {
      const int32_t c = head_[ring_.current & ring_.mask];
      if (c >= 0) {
        unlink(c);
        slot_[c] = -1;
        --size_;
        *cell = c;
        return true;
      }
      ++ring_.current;
    }
    return false;
  }

 private:
  void unlink(int32_t cell) {
    const int32_t p = prev_[cell], n = next_[cell];
    if (p >= 0) next_[p] = n;
    else head_[slot_[cell]] = n;
    if (n >= 0) prev_[n] = p;
    else tail_[slot_[cell]] = p;
  }
  std::vector<int32_t> head_, tail_, next_, prev_, slot_;
  BucketRing ring_;
  int64_t size_ = 0;
};

// The back-tracking memo: canonical predecessor codes of the nodes met on one source's paths
// (a few thousand of the graph's nodes), in an open-addressing hash table that grows as needed:
// tens of kB instead of 4 B for every node.
class PredecessorMemo {
 public:
  void clear() {
    if (keys_.empty()) {
      keys_.assign(4096, -1);
      values_.resize(4096);
    } else {
      std::fill(keys_.begin(), keys_.end(), -1);
    }
    size_ = 0;
  }
  // the code stored for node u, 0 when none
  uint32_t find(int32_t u) const {
    const size_t mask = keys_.size() - 1;
    for (size_t i = slot(u); ; i = (i + 1) & mask) {
      if (keys_[i] == u) return values_[i];
      if (keys_[i] < 0) return 0u;
    }
  }
  void insert(int32_t u, uint32_t code) {
    if (2 * (size_ + 1) > keys_.size()) grow();
    const size_t mask = keys_.size() - 1;
    size_t i = slot(u);
    while (keys_[i] >= 0 && keys_[i] != u) i = (i + 1) & mask;
    if (keys_[i] < 0) ++size_;
    keys_[i] = u;
    values_[i] = code;
  }

 private:
  size_t slot(int32_t u) const {
    return (static_cast<uint32_t>(u) * 2654435761u) & (keys_.size() - 1);
  }
  void grow() {
    std::vector<int32_t> keys(std::move(keys_));
    std::vector<uint32_t> values(std::move(values_));
    keys_.assign(2 * keys.size(), -1);
    values_.resize(keys_.size());
    size_ = 0;
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] >= 0) insert(keys[i], values[i]);
  }
  std::vector<int32_t> keys_;
  std::vector<uint32_t> values_;
  size_t size_ = 0;
};

[[noreturn]] void fail(const std::string& msg) {
  throw std::invalid_argument("ShortestPathEngine: " + msg);
}

}  // namespace

// Per-thread buffers, pooled in the engine and reused between calls. Only the Dijkstra state
// (distance, settled flag, receiver marks: 16 B per node) is allocated up front; the heap and the
// Jacobian buffers are allocated the first time they are needed.
struct ShortestPathEngine::Workspace {
  int64_t n_nodes, n_cells;
  std::vector<double> dist;
  std::vector<int32_t> pos, target_stamp;
  PredecessorMemo memo;  // see backtrack
  std::vector<HeapEntry> heap;
  std::vector<double> accumulator;  // per cell, for Jacobian rows
  std::vector<int32_t> touched, gid;
  int32_t stamp = 0;
  QuaternaryHeap queue;
  BucketQueue buckets;
  CellQueue cell_queue;  // wavefront solver

  // sweep solver state (allocated on first use)
  std::vector<double> labels, scratch;
  std::vector<uint64_t> changed;  // per cell: its local nodes changed since it was processed
  std::vector<uint8_t> dirty;
  std::vector<double> cell_key;
  std::vector<float> floor_key;  // wavefront: the smallest key of each cell in a pass
  std::vector<int32_t> sweep_ints;
  int64_t last_sweeps = 0, last_processed = 0, last_pushed = 0;

  Workspace(int64_t n_nodes, int64_t n_cells, int64_t n_local)
      : n_nodes(n_nodes), n_cells(n_cells), gid(n_local) {}
  void ensure_dijkstra() {
    if (static_cast<int64_t>(dist.size()) < n_nodes) {
      dist.resize(n_nodes);
      pos.resize(n_nodes);
      target_stamp.assign(n_nodes, 0);
      stamp = 0;
    }
  }
  void ensure_sweep(int64_t lanes, int64_t m) {
    if (static_cast<int64_t>(labels.size()) < n_nodes * lanes) {
      labels.resize(n_nodes * lanes);
      changed.resize(n_cells * ((m + 63) / 64));
      dirty.resize(n_cells);
      cell_key.resize(n_cells);
      scratch.resize(sweep::kRowBlock * m + 2 * m * lanes);
      sweep_ints.resize(2 * m);
    }
  }
  void ensure_heap() {
    if (static_cast<int64_t>(heap.size()) < n_nodes) heap.resize(n_nodes);
  }
  // the Dijkstra solver's per-cell accumulator of Jacobian rows (the label-correcting solvers lend
  // their cell keys, which the back-tracking does not need)
  double* dijkstra_accumulator() {
    if (static_cast<int64_t>(accumulator.size()) < n_cells) accumulator.assign(n_cells, 0.0);
    return accumulator.data();
  }
};

struct ShortestPathEngine::TaskOutput {
  // rows of the data of one (model, source): row r occupies [row_start[r], row_start[r+1])
  std::vector<int64_t> row_start;
  std::vector<int32_t> cols;
  std::vector<double> vals;
};

// One call's work: (model, source) tasks sharing inputs and outputs. A synchronous run() lays it out
// over the caller's arrays; submit() copies the inputs into it first.
struct ShortestPathEngine::Job {
  std::vector<double> slowness_copy;
  std::vector<uint8_t> rows_copy;
  const double* slowness = nullptr;
  const uint8_t* rows = nullptr;          // jacobian_rows flags or null
  int64_t n_models = 0;
  bool want_jacobian = false;
  int n_threads = 1;
  std::vector<QueueChoice> choices;       // per model (Dijkstra)
  bool sweep = false;                     // solver: label correcting (groups of sources) or Dijkstra
  bool wavefront = true;                  // label correcting: bucket-ordered cells, else sweeps
  SimdKind simd = SimdKind::scalar;       // lanes of the sweep (resolved)
  // task i solves the items tasks[task_begin[i] .. task_begin[i+1]), each model * n_active + slot
  // (one item per Dijkstra task; up to sweep_lanes() items of one model per sweep task)
  std::vector<int64_t> tasks, task_begin;
  int64_t n_tasks() const { return static_cast<int64_t>(task_begin.size()) - 1; }
  std::vector<double> times;              // n_models * n_data (NaN for skipped sources)
  std::vector<TaskOutput> outputs;        // per model * n_active + slot (when want_jacobian)
  std::atomic<int64_t> next{0};           // next task to take
  std::atomic<bool> failed{false};
  mutable std::mutex mutex;               // guards the fields below
  std::condition_variable finished_cv;
  int64_t n_done = 0;
  bool finished = false, taken = false;
  std::exception_ptr error;
};

// The asynchronous pool: FIFO of jobs, workers that take their tasks in order.
struct ShortestPathEngine::Pool {
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Job>> queue;
  std::vector<std::thread> threads;
  bool stop = false;
  long pid = 0;  // process that started the threads
};

ShortestPathEngine::ShortestPathEngine(int64_t n_rows, int64_t n_cols, double dx, double dz,
                                       int64_t n_secondary, std::vector<int64_t> source_nodes,
                                       std::vector<int64_t> receiver_nodes,
                                       std::vector<int64_t> pair_sources,
                                       std::vector<int64_t> pair_receivers)
    : n_rows_(n_rows), n_cols_(n_cols), n_sec_(n_secondary),
      div_cols_(std::max<int64_t>(n_cols, 1)), div_cols1_(n_cols + 1),
      div_sec_(std::max<int64_t>(n_secondary, 1)), dx_(dx), dz_(dz) {
  if (n_rows < 1 || n_cols < 1) fail("n_rows and n_cols must be >= 1");
  if (!(std::isfinite(dx) && dx > 0) || !(std::isfinite(dz) && dz > 0))
    fail("cell sizes dx and dz must be finite and > 0");
  if (n_secondary < 0 || n_secondary > 1000) fail("n_secondary must be in [0, 1000]");
  n_local_ = 4 + 4 * n_sec_;
  n_corner_ = (n_rows + 1) * (n_cols + 1);
  n_horizontal_ = (n_rows + 1) * n_cols * n_sec_;
  n_vertical_ = n_rows * (n_cols + 1) * n_sec_;
  n_nodes_ = n_corner_ + n_horizontal_ + n_vertical_;
  if (n_nodes_ >= static_cast<int64_t>(std::numeric_limits<int32_t>::max()) ||
      n_rows * n_cols >= static_cast<int64_t>(std::numeric_limits<int32_t>::max()))
    fail("grid too large (node or cell count exceeds int32)");

  for (const auto* nodes : {&source_nodes, &receiver_nodes}) {
    if (nodes->empty()) fail("source and receiver node lists must not be empty");
    for (int64_t v : *nodes)
      if (v < 0 || v >= n_nodes_)
        fail("sensor node " + std::to_string(v) + " out of range [0, " +
             std::to_string(n_nodes_) + ")");
  }
  if (pair_sources.size() != pair_receivers.size() || pair_sources.empty())
    fail("pair_sources and pair_receivers must be non-empty and of equal length");
  const int64_t ns = static_cast<int64_t>(source_nodes.size());
  const int64_t nr = static_cast<int64_t>(receiver_nodes.size());
  for (size_t i = 0; i < pair_sources.size(); ++i) {
    if (pair_sources[i] < 0 || pair_sources[i] >= ns)
      fail("pair " + std::to_string(i) + ": source index out of range");
    if (pair_receivers[i] < 0 || pair_receivers[i] >= nr)
      fail("pair " + std::to_string(i) + ": receiver index out of range");
  }
  source_nodes_.assign(source_nodes.begin(), source_nodes.end());
  for (int64_t v : source_nodes) {
    double x = 0, z = 0;
    node_position(v, &x, &z);
    source_x_.push_back(x);
    source_z_.push_back(z);
  }
  receiver_nodes_.assign(receiver_nodes.begin(), receiver_nodes.end());
  pair_sources_ = std::move(pair_sources);
  pair_receivers_ = std::move(pair_receivers);

  // group data by source (stable: datum order kept within a source)
  data_start_.assign(ns + 1, 0);
  for (int64_t s : pair_sources_) ++data_start_[s + 1];
  for (int64_t s = 0; s < ns; ++s) data_start_[s + 1] += data_start_[s];
  data_of_source_.resize(pair_sources_.size());
  std::vector<int64_t> fill(data_start_.begin(), data_start_.end() - 1);
  for (size_t i = 0; i < pair_sources_.size(); ++i)
    data_of_source_[fill[pair_sources_[i]]++] = static_cast<int64_t>(i);
  for (int64_t s = 0; s < ns; ++s)
    if (data_start_[s + 1] > data_start_[s]) active_sources_.push_back(s);

  // local lengths, computed exactly as the NumPy fallback does
  const int64_t n = n_sec_, m = n_local_;
  std::vector<int64_t> la(m), lb(m);
  la[0] = 0; lb[0] = 0;
  la[1] = n + 1; lb[1] = 0;
  la[2] = 0; lb[2] = n + 1;
  la[3] = n + 1; lb[3] = n + 1;
  for (int64_t k = 0; k < n; ++k) {
    la[4 + k] = k + 1; lb[4 + k] = 0;
    la[4 + n + k] = k + 1; lb[4 + n + k] = n + 1;
    la[4 + 2 * n + k] = 0; lb[4 + 2 * n + k] = k + 1;
    la[4 + 3 * n + k] = n + 1; lb[4 + 3 * n + k] = k + 1;
  }
  std::vector<double> ox(n + 2), oz(n + 2);
  for (int64_t a = 0; a < n + 2; ++a) {
    const double frac = static_cast<double>(a) / static_cast<double>(n + 1);
    ox[a] = frac * dx;
    oz[a] = frac * dz;
  }
  lengths_.assign(m * m, 0.0);
  for (int64_t p = 0; p < m; ++p)
    for (int64_t q = 0; q < m; ++q) {
      const double ddx = ox[la[p]] - ox[la[q]];
      const double ddz = oz[lb[p]] - oz[lb[q]];
      lengths_[p * m + q] = std::sqrt(ddx * ddx + ddz * ddz);
    }

  // Sides of the cell (local nodes, corners included) for the sweep solver, and the margin of the
  // triangle inequality between nodes that do not share a side. For such (p, q, t), with weights
  // w = fl(L s) and unit roundoff u, fl(fl(x + w_pq) + w_qt) >= fl(x + w_pt) holds whenever
  // s (L_pq + L_qt) (rho - 5.1 u) >= 3.01 u (x + ...), rho = min (L_pq + L_qt - L_pt) / (L_pq + L_qt);
  // it suffices that x <= s * margin_factor_ with margin_factor_ = Lmin2 (rho - 5.1 u) / (3.01 u) / 2
  // (Lmin2 = min L_pq + L_qt over those triples; halved for safety). Computed for m <= 64 only (the
  // triple loop is m^3); 0 disables the shortcut.
  side_nodes_.assign(4 * (n + 2), 0);
  node_sides_.assign(m, 0);
  const int64_t corner_of_side[4][2] = {{0, 1}, {2, 3}, {0, 2}, {1, 3}};
  for (int64_t side = 0; side < 4; ++side) {
    side_nodes_[side * (n + 2)] = static_cast<int32_t>(corner_of_side[side][0]);
    side_nodes_[side * (n + 2) + 1] = static_cast<int32_t>(corner_of_side[side][1]);
    for (int64_t k = 0; k < n; ++k) side_nodes_[side * (n + 2) + 2 + k] = static_cast<int32_t>(4 + side * n + k);
    for (int64_t i = 0; i < n + 2; ++i) node_sides_[side_nodes_[side * (n + 2) + i]] |= uint8_t(1u << side);
  }
  margin_factor_ = 0.0;
  if (m <= 64) {
    const double u = std::numeric_limits<double>::epsilon() / 2;
    double rho = std::numeric_limits<double>::infinity(), lmin2 = rho;
    for (int64_t p = 0; p < m; ++p)
      for (int64_t q = 0; q < m; ++q)
        for (int64_t t = 0; t < m; ++t) {
          if (p == q || q == t || p == t) continue;
          if (node_sides_[p] & node_sides_[q] & node_sides_[t]) continue;  // collinear
          const double a = lengths_[p * m + q] + lengths_[q * m + t];
          rho = std::min(rho, (a - lengths_[p * m + t]) / a);
          lmin2 = std::min(lmin2, a);
        }
    if (std::isfinite(rho) && rho > 1e3 * u) margin_factor_ = 0.5 * lmin2 * (rho - 5.1 * u) / (3.01 * u);
  }
}

void ShortestPathEngine::node_position(int64_t node, double* x, double* depth) const {
  if (node < 0 || node >= n_nodes_) fail("node index out of range");
  const int64_t n = n_sec_;
  if (node < n_corner_) {
    *depth = (node / (n_cols_ + 1)) * dz_;
    *x = (node % (n_cols_ + 1)) * dx_;
  } else if (node < n_corner_ + n_horizontal_) {
    const int64_t t = node - n_corner_, e = t / n, k = t % n;
    *depth = (e / n_cols_) * dz_;
    *x = (e % n_cols_) * dx_ + (static_cast<double>(k + 1) / (n + 1)) * dx_;
  } else {
    const int64_t t = node - n_corner_ - n_horizontal_, e = t / n, k = t % n;
    *depth = (e / (n_cols_ + 1)) * dz_ + (static_cast<double>(k + 1) / (n + 1)) * dz_;
    *x = (e % (n_cols_ + 1)) * dx_;
  }
}

inline int ShortestPathEngine::cell_nodes(int64_t cell64, int32_t* gid) const {
  const int32_t C = static_cast<int32_t>(n_cols_), n = static_cast<int32_t>(n_sec_);
  const int32_t cell = static_cast<int32_t>(cell64);
  const int32_t r = div_cols_.div(cell), c = cell - r * C;
  const int32_t tl = r * (C + 1) + c;
  gid[0] = tl;
  gid[1] = tl + 1;
  gid[2] = tl + C + 1;
  gid[3] = tl + C + 2;
  const int32_t top = static_cast<int32_t>(n_corner_) + cell * n;
  const int32_t bottom = top + C * n;
  const int32_t left = static_cast<int32_t>(n_corner_ + n_horizontal_) + (cell + r) * n;
  const int32_t right = left + n;
  for (int32_t k = 0; k < n; ++k) {
    gid[4 + k] = top + k;
    gid[4 + n + k] = bottom + k;
    gid[4 + 2 * n + k] = left + k;
    gid[4 + 3 * n + k] = right + k;
  }
  return static_cast<int>(n_local_);
}

// cells touching `node` and the local index of the node in each; returns their count (1..4)
inline int ShortestPathEngine::adjacent_cells(int32_t node, int32_t* cells, int32_t* local) const {
  const int32_t R = static_cast<int32_t>(n_rows_), C = static_cast<int32_t>(n_cols_);
  const int32_t n = static_cast<int32_t>(n_sec_);
  const int32_t n_corner = static_cast<int32_t>(n_corner_);
  const int32_t n_horizontal = static_cast<int32_t>(n_horizontal_);
  int count = 0;
  if (node < n_corner) {
    const int32_t i = div_cols1_.div(node), j = node - i * (C + 1);
    // cell (i-1, j-1): node is its BR; (i-1, j): BL; (i, j-1): TR; (i, j): TL
    if (i > 0 && j > 0) { cells[count] = (i - 1) * C + j - 1; local[count++] = 3; }
    if (i > 0 && j < C) { cells[count] = (i - 1) * C + j; local[count++] = 2; }
    if (i < R && j > 0) { cells[count] = i * C + j - 1; local[count++] = 1; }
    if (i < R && j < C) { cells[count] = i * C + j; local[count++] = 0; }
  } else if (node < n_corner + n_horizontal) {
    const int32_t t = node - n_corner, e = div_sec_.div(t), k = t - e * n;
    const int32_t i = div_cols_.div(e);  // e = i*C + j is also the cell below
    if (i > 0) { cells[count] = e - C; local[count++] = 4 + n + k; }
    if (i < R) { cells[count] = e; local[count++] = 4 + k; }
  } else {
    const int32_t t = node - n_corner - n_horizontal, e = div_sec_.div(t), k = t - e * n;
    const int32_t i = div_cols1_.div(e), j = e - i * (C + 1);
    if (j > 0) { cells[count] = i * C + j - 1; local[count++] = 4 + 3 * n + k; }
    if (j < C) { cells[count] = i * C + j; local[count++] = 4 + 2 * n + k; }
  }
  return count;
}

inline int32_t ShortestPathEngine::local_node(int32_t cell, int32_t q) const {
  const int32_t C = static_cast<int32_t>(n_cols_), n = static_cast<int32_t>(n_sec_);
  const int32_t r = div_cols_.div(cell), tl = cell + r;
  if (q < 4) return q == 0 ? tl : q == 1 ? tl + 1 : q == 2 ? tl + C + 1 : tl + C + 2;
  const int32_t side = div_sec_.div(q - 4), k = q - 4 - side * n;
  if (side == 0) return static_cast<int32_t>(n_corner_) + cell * n + k;
  if (side == 1) return static_cast<int32_t>(n_corner_) + (cell + C) * n + k;
  return static_cast<int32_t>(n_corner_ + n_horizontal_) + (cell + r) * n + (side - 2) * n + k;
}

inline int ShortestPathEngine::local_index(int32_t node, int32_t cell) const {
  int32_t cells[4], local[4];
  const int count = adjacent_cells(node, cells, local);
  for (int a = 0; a < count; ++a)
    if (cells[a] == cell) return local[a];
  throw std::logic_error("ShortestPathEngine: internal error, node not on cell");
}

template <bool Jacobian, bool Buckets>
void ShortestPathEngine::solve_source(const double* slowness, int64_t source, Workspace& ws,
                                      const QueueChoice& choice, double* times_row,
                                      TaskOutput* out, const uint8_t* row_flags) const {
  const int64_t m = n_local_;
  ws.ensure_dijkstra();
  double* dist = ws.dist.data();
  int32_t* pos = ws.pos.data();
  const double* L = lengths_.data();
  std::fill(ws.dist.begin(), ws.dist.end(), std::numeric_limits<double>::infinity());
  std::fill(ws.pos.begin(), ws.pos.end(), kNotInHeap);

  // receivers of this source: stop once all are settled
  if (++ws.stamp == std::numeric_limits<int32_t>::max()) {
    std::fill(ws.target_stamp.begin(), ws.target_stamp.end(), 0);
    ws.stamp = 1;
  }
  const int32_t stamp = ws.stamp;
  int64_t remaining = 0;
  for (int64_t a = data_start_[source]; a < data_start_[source + 1]; ++a) {
    const int32_t rn = receiver_nodes_[pair_receivers_[data_of_source_[a]]];
    if (ws.target_stamp[rn] != stamp) {
      ws.target_stamp[rn] = stamp;
      ++remaining;
    }
  }

  const int32_t src = source_nodes_[source];
  QuaternaryHeap& queue = ws.queue;
  BucketQueue& buckets = ws.buckets;
  if (Buckets) {
    buckets.reset(choice.n_buckets, choice.inverse_width);
    buckets.push(src, 0.0);
  } else {
    ws.ensure_heap();
    queue.init(&ws.heap, pos);
    queue.push_or_decrease(src, 0.0);
  }
  dist[src] = 0.0;

  double* __restrict d = dist;
  const int32_t C = static_cast<int32_t>(n_cols_), n = static_cast<int32_t>(n_sec_);
  const int32_t n_corner = static_cast<int32_t>(n_corner_);
  const int32_t n_side_h = static_cast<int32_t>(n_corner_ + n_horizontal_);
  while (true) {
    int32_t v;
    double dv;
    if (Buckets) {
      if (!buckets.pop(&v)) break;
      if (pos[v] == kSettled) continue;  // stale entry
      pos[v] = kSettled;
      dv = dist[v];
    } else {
      if (queue.empty()) break;
      const HeapEntry top = queue.pop();
      v = top.node;
      dv = top.key;
    }
    if (ws.target_stamp[v] == stamp && --remaining == 0) break;
    int32_t cells[4], local[4];
    const int count = adjacent_cells(v, cells, local);
    for (int a = 0; a < count; ++a) {
      const int32_t cell = cells[a];
      const double s = slowness[cell];
      const double* __restrict Lrow = L + local[a] * m;
      // relax u (local index q) through this cell
      auto relax = [&](int32_t u, int64_t q) {
        const double w = Lrow[q] * s;
        const double cand = dv + w;
        const double du = d[u];
        if (cand < du) {
          d[u] = cand;
          if (Buckets)
            buckets.push(u, cand);
          else
            queue.push_or_decrease(u, cand);
        }
      };
      // global ids of the cell's nodes (see cell_nodes): 4 corners, then 4 runs of n
      const int32_t r = div_cols_.div(cell);
      const int32_t tl = cell + r;  // r*(C+1) + c
      relax(tl, 0);
      relax(tl + 1, 1);
      relax(tl + C + 1, 2);
      relax(tl + C + 2, 3);
      const int32_t top = n_corner + cell * n;
      const int32_t bottom = top + C * n;
      const int32_t left = n_side_h + (cell + r) * n;
      // runs of consecutive node ids: two doubles at a time where SSE2 exists (the x86-64
      // baseline); mul then add, each rounded, exactly as the scalar code and NumPy do
      auto relax_run = [&](int32_t base, int64_t q0, int32_t len) {
        int32_t k = 0;
#if defined(__SSE2__)
        const __m128d vdv = _mm_set1_pd(dv), vs = _mm_set1_pd(s);
        for (; k + 2 <= len; k += 2) {
          const __m128d cand = _mm_add_pd(vdv, _mm_mul_pd(_mm_loadu_pd(Lrow + q0 + k), vs));
          const int improved = _mm_movemask_pd(_mm_cmplt_pd(cand, _mm_loadu_pd(d + base + k)));
          if (improved) {
            if (improved & 1) relax(base + k, q0 + k);
            if (improved & 2) relax(base + k + 1, q0 + k + 1);
          }
        }
#endif
        for (; k < len; ++k) relax(base + k, q0 + k);
      };
      relax_run(top, 4, n);
      relax_run(bottom, 4 + n, n);
      relax_run(left, 4 + 2 * n, 2 * n);  // left then right side: consecutive ids
    }
  }

  for (int64_t a = data_start_[source]; a < data_start_[source + 1]; ++a) {
    const int64_t datum = data_of_source_[a];
    times_row[datum] = dist[receiver_nodes_[pair_receivers_[datum]]];
  }
  if (!Jacobian) return;
  backtrack(slowness, source, dist, 1, ws.dijkstra_accumulator(), ws, out, row_flags);
}

void ShortestPathEngine::backtrack(const double* slowness, int64_t source, const double* dist,
                                   int64_t stride, double* acc, Workspace& ws, TaskOutput* out,
                                   const uint8_t* row_flags) const {
  const int64_t m = n_local_;
  const double* L = lengths_.data();
  const int32_t src = source_nodes_[source];
  // Canonical predecessors, found from the final distances and memoised per node (paths of one
  // source share their beginnings): among all (v, cell) around u with fl(d[v] + fl(L*s[cell])) ==
  // d[u], the smallest (v, w, cell). Only nodes with d[v] < d[u] can qualify, so a Dijkstra run
  // stopped early gives the same result. The memo holds 1 + slot * m + q for the nodes met (slot:
  // the cell among u's adjacent ones, q: v's local index in it); cleared here for each source.
  PredecessorMemo& memo = ws.memo;
  memo.clear();
  std::vector<int32_t>& touched = ws.touched;
  const int64_t n_rows_here = data_start_[source + 1] - data_start_[source];
  out->row_start.assign(n_rows_here + 1, 0);
  out->cols.clear();
  out->vals.clear();
  int32_t* gid = ws.gid.data();
  auto find_pred = [&](int32_t u) -> uint32_t {
    if (const uint32_t known = memo.find(u)) return known;
    const double du = dist[u * stride];
    int32_t best_v = std::numeric_limits<int32_t>::max(), best_cell = -1;
    double best_w = 0.0;
    uint32_t best_code = 0;
    int32_t cells[4], local[4];
    const int count = adjacent_cells(u, cells, local);
    for (int a = 0; a < count; ++a) {
      const int32_t cell = cells[a];
      const double s = slowness[cell];
      const double* Lrow = L + local[a] * m;
      cell_nodes(cell, gid);
      for (int64_t q = 0; q < m; ++q) {
        const int32_t v = gid[q];
        if (v == u) continue;
        const double w = Lrow[q] * s;
        if (dist[v * stride] + w == du &&
            (v < best_v || (v == best_v && (w < best_w || (w == best_w && cell < best_cell))))) {
          best_v = v;
          best_w = w;
          best_cell = cell;
          best_code = static_cast<uint32_t>(1 + a * m + q);
        }
      }
    }
    if (best_cell < 0) throw std::logic_error("ShortestPathEngine: internal error, no predecessor");
    memo.insert(u, best_code);
    return best_code;
  };
  for (int64_t a = 0; a < n_rows_here; ++a) {
    const int64_t datum = data_of_source_[data_start_[source] + a];
    if (row_flags != nullptr && row_flags[datum] == 0) {  // row not wanted: left empty
      out->row_start[a + 1] = static_cast<int64_t>(out->cols.size());
      continue;
    }
    int32_t u = receiver_nodes_[pair_receivers_[datum]];
    touched.clear();
    int64_t steps = 0;
    while (u != src) {
      // a path has fewer edges than the graph has nodes; more means a predecessor cycle (path times
      // that lost their precision or overflowed), which must end in an error, not a hang
      if (++steps > n_nodes_) {
        for (int32_t cell : touched) acc[cell] = 0.0;  // clean, though a failed job drops its workspace
        throw std::invalid_argument(
            "ShortestPathEngine: no path back to the source (predecessor cycle): path times lost "
            "their precision or overflowed in float64 (slowness, or its contrast, too large)");
      }
      const uint32_t c = find_pred(u) - 1;
      const int32_t slot = static_cast<int32_t>(c / m), q = static_cast<int32_t>(c % m);
      int32_t cells[4], local[4];
      adjacent_cells(u, cells, local);
      const int32_t cell = cells[slot];
      if (acc[cell] == 0.0) touched.push_back(cell);
      acc[cell] += L[local[slot] * m + q];
      u = local_node(cell, q);
    }
    std::sort(touched.begin(), touched.end());
    for (int32_t cell : touched) {
      out->cols.push_back(cell);
      out->vals.push_back(acc[cell]);
      acc[cell] = 0.0;
    }
    out->row_start[a + 1] = static_cast<int64_t>(out->cols.size());
  }
  // the outputs wait for the job's other tasks: no spare capacity held meanwhile (up to 2x)
  out->cols.shrink_to_fit();
  out->vals.shrink_to_fit();
}

std::unique_ptr<ShortestPathEngine::Workspace> ShortestPathEngine::acquire() const {
  {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (!pool_.empty()) {
      std::unique_ptr<Workspace> ws = std::move(pool_.back());
      pool_.pop_back();
      return ws;
    }
  }
  return std::make_unique<Workspace>(n_nodes_, n_rows_ * n_cols_, n_local_);
}

void ShortestPathEngine::release(std::unique_ptr<Workspace> ws) const {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  pool_.push_back(std::move(ws));
}

ShortestPathEngine::~ShortestPathEngine() {
  std::unique_ptr<Pool> pool;
  {
    std::lock_guard<std::mutex> lock(workers_mutex_);
    pool = std::move(workers_);
  }
  if (!pool) return;
  if (pool->pid != getpid()) {  // inherited through fork(): its threads do not exist here
    pool.release();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(pool->mutex);
    pool->stop = true;  // workers finish the queued jobs first
  }
  pool->cv.notify_all();
  for (auto& t : pool->threads) t.join();
}

std::shared_ptr<ShortestPathEngine::Job> ShortestPathEngine::prepare(
    const double* slowness, int64_t n_models, bool want_jacobian, int n_threads, RunOptions options,
    const uint8_t* jacobian_rows, const uint8_t* source_mask, bool own) const {
  const QueueKind queue = options.queue;
  const bool sweep = options.solver != SolverKind::dijkstra;
  if (sweep && queue != QueueKind::automatic)
    fail("queue applies to the Dijkstra solver only (pass solver='dijkstra' with queue='heap' or "
         "'buckets')");
  if (!sweep && options.simd != SimdKind::automatic)
    fail("simd applies to the sweep solver only (solver='sweep' or 'auto')");
  const SimdKind simd = sweep ? resolve_simd(options.simd) : SimdKind::scalar;
  if (n_models < 0) fail("n_models must be >= 0");
  if (slowness == nullptr && n_models > 0) fail("slowness is null");
  if (n_threads < 1) fail("n_threads must be >= 1");
  const int64_t n_cells = n_rows_ * n_cols_;
  for (int64_t i = 0; i < n_models * n_cells; ++i) {
    const double s = slowness[i];
    if (!std::isfinite(s)) fail("slowness holds NaN or inf (model " + std::to_string(i / n_cells) +
                                ", cell " + std::to_string(i % n_cells) + ")");
    if (!(s > 0)) fail("slowness must be > 0 (model " + std::to_string(i / n_cells) + ", cell " +
                       std::to_string(i % n_cells) + ")");
  }
  auto job = std::make_shared<Job>();
  job->n_models = n_models;
  job->want_jacobian = want_jacobian;
  job->n_threads = n_threads;
  const int64_t nd = n_data();
  if (own) {
    if (n_models > 0) job->slowness_copy.assign(slowness, slowness + n_models * n_cells);
    job->slowness = job->slowness_copy.data();
    if (jacobian_rows != nullptr) {
      job->rows_copy.assign(jacobian_rows, jacobian_rows + n_models * nd);
      job->rows = job->rows_copy.data();
    }
  } else {
    job->slowness = slowness;
    job->rows = jacobian_rows;
  }
  job->sweep = sweep;
  job->wavefront = options.solver != SolverKind::sweep;
  job->simd = simd;
  // priority queue per model: buckets when the weight range allows a small ring, else the heap
  job->choices.resize(sweep ? 0 : n_models);
  double l_min = std::numeric_limits<double>::infinity(), l_max = 0.0;
  for (int64_t p = 0; p < n_local_; ++p)
    for (int64_t q = 0; q < n_local_; ++q)
      if (p != q) {
        l_min = std::min(l_min, lengths_[p * n_local_ + q]);
        l_max = std::max(l_max, lengths_[p * n_local_ + q]);
      }
  for (int64_t k = 0; k < (sweep ? 0 : n_models); ++k) {
    const double* s = job->slowness + k * n_cells;
    const auto mm = std::minmax_element(s, s + n_cells);
    const double width = 0.5 * (l_min * *mm.first);
    const double ratio = (l_max * *mm.second) / width + 4.0;
    QueueChoice& c = job->choices[k];
    c.buckets = queue != QueueKind::heap && width > 0 && ratio < 65536.0 &&
                std::isfinite(1.0 / width);
    if (queue == QueueKind::buckets && !c.buckets)
      fail("bucket queue impossible for this slowness range (weights span too many buckets)");
    if (c.buckets) {
      c.inverse_width = 1.0 / width;
      c.n_buckets = 1;
      while (c.n_buckets < static_cast<int64_t>(ratio) + 1) c.n_buckets <<= 1;
    }
  }
  const int64_t n_active = static_cast<int64_t>(active_sources_.size());
  const int64_t ns = n_sources();
  job->times.assign(n_models * nd, std::numeric_limits<double>::quiet_NaN());
  // Tasks: one source each for Dijkstra; for the label-correcting solvers, groups of at most
  // sweep_lanes() flagged sources of one model, consecutive in source order and within kGroupSpan
  // cell sizes of the group's first one (the lanes of a pass share its cell processings, which
  // pays while their wavefronts are close: on the paper geometry a wavefront pass of 4 sources
  // 0.5 / 1 / 2 / 3 m apart costs 1.15 / 1.45 / 2.56 / 4.22 single-source passes); then the
  // largest groups are halved until there are as many groups as threads per model, when the
  // sources allow (a half-filled pass on an idle thread beats a full one waiting).
  const int64_t lanes = sweep ? sweep_lanes() : 1;
  const int64_t threads_per_model =
      std::max<int64_t>(1, (std::min<int64_t>(n_threads, max_threads()) + std::max<int64_t>(n_models, 1) - 1) /
                               std::max<int64_t>(n_models, 1));
  job->task_begin.push_back(0);
  std::vector<int64_t> flagged;
  for (int64_t model = 0; model < n_models; ++model) {
    flagged.clear();
    for (int64_t slot = 0; slot < n_active; ++slot)
      if (source_mask == nullptr || source_mask[model * ns + active_sources_[slot]] != 0)
        flagged.push_back(model * n_active + slot);
    const int64_t c = static_cast<int64_t>(flagged.size());
    if (c == 0) continue;
    // group boundaries in `flagged`: bounds[g] .. bounds[g+1]
    std::vector<int64_t> bounds{0};
    const double span = kGroupSpan * std::max(dx_, dz_);
    for (int64_t i = 1; i < c; ++i) {
      const int64_t a = active_sources_[flagged[bounds.back()] % n_active];
      const int64_t b = active_sources_[flagged[i] % n_active];
      const double d = std::hypot(source_x_[a] - source_x_[b], source_z_[a] - source_z_[b]);
      if (i - bounds.back() >= lanes || d > span) bounds.push_back(i);
    }
    bounds.push_back(c);
    const int64_t wanted = std::min(c, sweep ? threads_per_model : c);
    while (static_cast<int64_t>(bounds.size()) - 1 < wanted) {
      int64_t largest = 0;
      for (int64_t g = 1; g + 1 < static_cast<int64_t>(bounds.size()); ++g)
        if (bounds[g + 1] - bounds[g] > bounds[largest + 1] - bounds[largest]) largest = g;
      const int64_t size = bounds[largest + 1] - bounds[largest];
      if (size < 2) break;
      bounds.insert(bounds.begin() + largest + 1, bounds[largest] + (size + 1) / 2);
    }
    for (size_t g = 0; g + 1 < bounds.size(); ++g) {
      for (int64_t i = bounds[g]; i < bounds[g + 1]; ++i) job->tasks.push_back(flagged[i]);
      job->task_begin.push_back(static_cast<int64_t>(job->tasks.size()));
    }
  }
  if (want_jacobian) job->outputs.resize(n_models * n_active);
  return job;
}

void ShortestPathEngine::execute(Job& job, int64_t i, Workspace& ws) const {
  const int64_t n_active = static_cast<int64_t>(active_sources_.size());
  if (job.sweep) {
    const int64_t begin = job.task_begin[i], end = job.task_begin[i + 1];
    const int64_t model = job.tasks[begin] / n_active;
    const double* s = job.slowness + model * n_rows_ * n_cols_;
    double* times_row = job.times.data() + model * n_data();
    const uint8_t* f = job.rows ? job.rows + model * n_data() : nullptr;
    int64_t sources[8];
    const int n_group = static_cast<int>(end - begin);
    for (int l = 0; l < n_group; ++l) sources[l] = active_sources_[job.tasks[begin + l] % n_active];
    sweep_group(s, sources, n_group, job.simd, job.wavefront, ws);
    const int64_t K = sweep_lanes();
    const double* labels = ws.labels.data();
    // the cell keys are not needed after the pass: they become the back-tracking's accumulator
    double* acc = ws.cell_key.data();
    if (job.want_jacobian) std::fill(ws.cell_key.begin(), ws.cell_key.end(), 0.0);
    for (int l = 0; l < n_group; ++l) {
      const int64_t source = sources[l];
      for (int64_t a = data_start_[source]; a < data_start_[source + 1]; ++a) {
        const int64_t datum = data_of_source_[a];
        times_row[datum] = labels[receiver_nodes_[pair_receivers_[datum]] * K + l];
      }
      if (job.want_jacobian)
        backtrack(s, source, labels + l, K, acc, ws, &job.outputs[job.tasks[begin + l]], f);
    }
    return;
  }
  const int64_t task = job.tasks[job.task_begin[i]];
  const int64_t model = task / n_active;
  const int64_t source = active_sources_[task % n_active];
  const double* s = job.slowness + model * n_rows_ * n_cols_;
  double* times_row = job.times.data() + model * n_data();
  const QueueChoice& c = job.choices[model];
  TaskOutput* o = job.want_jacobian ? &job.outputs[task] : nullptr;
  const uint8_t* f = job.rows ? job.rows + model * n_data() : nullptr;
  if (job.want_jacobian && c.buckets) solve_source<true, true>(s, source, ws, c, times_row, o, f);
  else if (job.want_jacobian) solve_source<true, false>(s, source, ws, c, times_row, o, f);
  else if (c.buckets) solve_source<false, true>(s, source, ws, c, times_row, o, f);
  else solve_source<false, false>(s, source, ws, c, times_row, o, f);
}

BatchResult ShortestPathEngine::assemble(Job& job) const {
  BatchResult result;
  result.times = std::move(job.times);
  if (!job.want_jacobian) return result;
  // one stacked CSR: row model*n_data + datum; a skipped (model, source) leaves its rows empty
  const int64_t nd = n_data(), n_models = job.n_models;
  const int64_t n_active = static_cast<int64_t>(active_sources_.size());
  std::vector<int64_t> local_row(nd);
  std::vector<int64_t> slot_of_source(source_nodes_.size(), -1);
  for (int64_t k = 0; k < n_active; ++k) slot_of_source[active_sources_[k]] = k;
  for (int64_t s = 0; s < static_cast<int64_t>(source_nodes_.size()); ++s)
    for (int64_t a = data_start_[s]; a < data_start_[s + 1]; ++a)
      local_row[data_of_source_[a]] = a - data_start_[s];
  auto row_range = [&](int64_t model, int64_t datum, int64_t* begin, int64_t* end) {
    const TaskOutput& o = job.outputs[model * n_active + slot_of_source[pair_sources_[datum]]];
    const int64_t r = local_row[datum];
    if (o.row_start.empty()) {  // source skipped
      *begin = *end = 0;
    } else {
      *begin = o.row_start[r];
      *end = o.row_start[r + 1];
    }
  };
  result.indptr.assign(n_models * nd + 1, 0);
  int64_t begin, end;
  for (int64_t model = 0; model < n_models; ++model)
    for (int64_t datum = 0; datum < nd; ++datum) {
      row_range(model, datum, &begin, &end);
      result.indptr[model * nd + datum + 1] = end - begin;
    }
  for (int64_t i = 0; i < n_models * nd; ++i) result.indptr[i + 1] += result.indptr[i];
  // Rows are appended in order into reserved (not yet touched) storage and each task's rows are
  // freed after their last use, so that the task outputs and the stacked CSR are not both resident
  // in full at the peak (data grouped by source, as surveys usually are, free them early).
  std::vector<int64_t> rows_left(job.outputs.size(), 0);
  for (int64_t model = 0; model < n_models; ++model)
    for (int64_t datum = 0; datum < nd; ++datum)
      ++rows_left[model * n_active + slot_of_source[pair_sources_[datum]]];
  result.indices.reserve(result.indptr.back());
  result.data.reserve(result.indptr.back());
  for (int64_t model = 0; model < n_models; ++model)
    for (int64_t datum = 0; datum < nd; ++datum) {
      row_range(model, datum, &begin, &end);
      const int64_t k = model * n_active + slot_of_source[pair_sources_[datum]];
      TaskOutput& o = job.outputs[k];
      result.indices.insert(result.indices.end(), o.cols.begin() + begin, o.cols.begin() + end);
      result.data.insert(result.data.end(), o.vals.begin() + begin, o.vals.begin() + end);
      if (--rows_left[k] == 0) {
        std::vector<int32_t>().swap(o.cols);
        std::vector<double>().swap(o.vals);
      }
    }
  return result;
}

BatchResult ShortestPathEngine::run(const double* slowness, int64_t n_models, bool want_jacobian,
                                    int n_threads, RunOptions options, const uint8_t* jacobian_rows,
                                    const uint8_t* source_mask) const {
  std::shared_ptr<Job> job = prepare(slowness, n_models, want_jacobian, n_threads, options,
                                     jacobian_rows, source_mask, /*own=*/false);
  const int64_t n_tasks = job->n_tasks();
  if (n_tasks == 0) return assemble(*job);  // empty batch or every source skipped
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    std::unique_ptr<Workspace> ws;
    try {
      ws = acquire();
      while (true) {
        const int64_t i = job->next.fetch_add(1);
        if (i >= n_tasks) break;
        execute(*job, i, *ws);
      }
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      job->next.store(n_tasks);
    }
    if (ws) release(std::move(ws));
  };
  const int64_t n_workers = std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(n_threads), n_tasks,
                            static_cast<int64_t>(max_threads())}));
  if (n_workers == 1) {
    worker();
  } else {
    std::vector<std::thread> threads;
    threads.reserve(n_workers - 1);
    for (int64_t t = 0; t + 1 < n_workers; ++t) threads.emplace_back(worker);
    worker();
    for (auto& t : threads) t.join();
  }
  if (error) std::rethrow_exception(error);
  return assemble(*job);
}

void ShortestPathEngine::pool_worker(Pool* pool) const {
  std::unique_ptr<Workspace> ws;
  while (true) {
    std::shared_ptr<Job> job;
    int64_t i;
    {
      std::unique_lock<std::mutex> lock(pool->mutex);
      pool->cv.wait(lock, [&] { return pool->stop || !pool->queue.empty(); });
      if (pool->queue.empty()) break;  // stopping, queue drained
      job = pool->queue.front();
      i = job->next.fetch_add(1);
      if (i + 1 >= job->n_tasks()) pool->queue.pop_front();
    }
    if (!job->failed.load()) {
      try {
        if (!ws) ws = acquire();
        execute(*job, i, *ws);
      } catch (...) {
        std::lock_guard<std::mutex> lock(job->mutex);
        if (!job->error) job->error = std::current_exception();
        job->failed.store(true);
      }
    }
    std::lock_guard<std::mutex> lock(job->mutex);
    if (++job->n_done == job->n_tasks()) {
      job->finished = true;
      job->finished_cv.notify_all();
    }
  }
  if (ws) release(std::move(ws));
}

std::shared_ptr<ShortestPathEngine::Job> ShortestPathEngine::submit(
    const double* slowness, int64_t n_models, bool want_jacobian, int n_threads, RunOptions options,
    const uint8_t* jacobian_rows, const uint8_t* source_mask) const {
  std::shared_ptr<Job> job = prepare(slowness, n_models, want_jacobian, n_threads, options,
                                     jacobian_rows, source_mask, /*own=*/true);
  if (job->n_tasks() == 0) {
    job->finished = true;
    return job;
  }
  std::lock_guard<std::mutex> guard(workers_mutex_);
  if (workers_ && workers_->pid != getpid()) workers_.release();  // forked child: start afresh
  if (!workers_) {
    workers_ = std::make_unique<Pool>();
    workers_->pid = getpid();
  }
  Pool* pool = workers_.get();
  {
    std::lock_guard<std::mutex> lock(pool->mutex);
    pool->queue.push_back(job);
    // never more workers than this job can keep busy, nor than the machine-wide bound
    const int64_t wanted = std::min<int64_t>(
        {static_cast<int64_t>(n_threads), job->n_tasks(),
         static_cast<int64_t>(max_threads())});
    while (static_cast<int64_t>(pool->threads.size()) < wanted)
      pool->threads.emplace_back(&ShortestPathEngine::pool_worker, this, pool);
  }
  pool->cv.notify_all();
  return job;
}

bool ShortestPathEngine::avx2_available() {
#if defined(LATENTINV_HAVE_AVX2) && (defined(__GNUC__) || defined(__clang__))
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

SimdKind ShortestPathEngine::resolve_simd(SimdKind requested) {
  if (requested == SimdKind::scalar) return SimdKind::scalar;
  if (requested == SimdKind::avx2) {
    if (!avx2_available())
      fail("simd='avx2' is not available (not compiled in, or the CPU lacks AVX2); use 'scalar' "
           "or 'auto'");
    return SimdKind::avx2;
  }
  return avx2_available() ? SimdKind::avx2 : SimdKind::scalar;
}

int64_t ShortestPathEngine::sweep_group(const double* slowness, const int64_t* sources,
                                        int n_group, SimdKind simd, bool wavefront,
                                        Workspace& ws) const {
  const int64_t K = sweep_lanes(), m = n_local_;
  const int64_t n_cells = n_rows_ * n_cols_;
  if (n_group < 1 || n_group > K) throw std::logic_error("ShortestPathEngine: bad sweep group");
  ws.ensure_sweep(K, m);
  std::fill(ws.labels.begin(), ws.labels.begin() + n_nodes_ * K,
            std::numeric_limits<double>::infinity());
  std::fill(ws.changed.begin(), ws.changed.end(), uint64_t{0});
  std::fill(ws.dirty.begin(), ws.dirty.end(), uint8_t{0});
  sweep::State st;
  st.labels = ws.labels.data();
  st.changed = ws.changed.data();
  st.words = static_cast<int32_t>((m + 63) / 64);
  st.weights = ws.scratch.data();
  st.acc = st.weights + sweep::kRowBlock * m;
  st.start = st.acc + m * K;
  st.gid = ws.sweep_ints.data();
  st.rows = st.gid + m;
  st.processed = st.pushed = st.repeats = 0;
  sweep::Grid g;
  g.n_rows = static_cast<int32_t>(n_rows_);
  g.n_cols = static_cast<int32_t>(n_cols_);
  g.n_sec = static_cast<int32_t>(n_sec_);
  g.m = static_cast<int32_t>(m);
  g.n_corner = static_cast<int32_t>(n_corner_);
  g.n_side_h = static_cast<int32_t>(n_corner_ + n_horizontal_);
  g.lengths = lengths_.data();
  g.side_nodes = side_nodes_.data();
  g.node_sides = node_sides_.data();
  // Rounds after the first inside a cell may push only along the sides when no label can exceed
  // the bound of the triangle-inequality margin (constructor): every finite label is the value of
  // a path of at most n_nodes edges (the first labels form a tree; later ones are smaller), each
  // edge at most max(s) * max(L).
  const auto mm = std::minmax_element(slowness, slowness + n_cells);
  const double s_min = *mm.first, s_max = *mm.second;
  {
    const double l_max = *std::max_element(lengths_.begin(), lengths_.end());
    const double largest_label = static_cast<double>(n_nodes_) * (s_max * l_max) * 1.01;
    g.collinear_only = margin_factor_ > 0 && largest_label <= s_min * margin_factor_;
  }
  using Kernel = uint32_t (*)(const sweep::Grid&, const double*, sweep::State&, int32_t, int32_t,
                              double*);
  Kernel kernel = sweep::process_cell_scalar;
#if defined(LATENTINV_HAVE_AVX2)
  if (simd == SimdKind::avx2) kernel = sweep::process_cell_avx2;
#endif
  if (simd == SimdKind::avx2 && kernel == sweep::process_cell_scalar)
    throw std::logic_error("ShortestPathEngine: AVX2 kernel requested but not compiled in");

  uint8_t* dirty = ws.dirty.data();
  double* cell_key = ws.cell_key.data();
  int64_t n_dirty = 0;
  CellQueue& queue = ws.cell_queue;
  // cells of the wavefront queue are keyed by the smallest label that made them dirty; the bucket
  // width only steers the order (the result does not depend on it): a quarter of the fastest
  // crossing of a cell side
  //
  // A cell's key is at least its floor: the time at which the last of the pass's fronts can reach
  // it, f * s_min * (distance from the farthest source of the pass - one cell diagonal), with
  // f = min(s_max / s_min, 1.5). Keyed by the first front only, a cell would be processed once per
  // lane as the fronts of sources a few cells apart pass it; with the floor it waits for all of
  // them (measured on the paper's geometry, 4 lanes: 3.5 -> 1.6 processings per cell and pass, F
  // 56 -> 28 ms; docs/benchmarks/raytrace.md). f <= s_max / s_min keeps the floor below the
  // straight-line time, and the cap keeps high-contrast fields from waiting on it.
  const float* floor_key = nullptr;
  if (wavefront) {
    const double width = 0.25 * s_min * std::min(dx_, dz_);
    queue.reset(static_cast<int32_t>(n_cells), 4096, 1.0 / width);
    ws.floor_key.resize(n_cells);
    float* fk = ws.floor_key.data();
    const double f = std::min(s_max / s_min, 1.5) * s_min;
    const double slack = std::sqrt(dx_ * dx_ + dz_ * dz_);
    for (int64_t r = 0; r < n_rows_; ++r) {
      const double z = (r + 0.5) * dz_;
      float* row = fk + r * n_cols_;
      for (int64_t c = 0; c < n_cols_; ++c) row[c] = 0.0f;
      for (int l = 0; l < n_group; ++l) {
        const double sx = source_x_[sources[l]], dz_s = z - source_z_[sources[l]];
        for (int64_t c = 0; c < n_cols_; ++c) {
          const double dx_s = (c + 0.5) * dx_ - sx;
          const float v = static_cast<float>(f * (std::sqrt(dx_s * dx_s + dz_s * dz_s) - slack));
          row[c] = row[c] < v ? v : row[c];
        }
      }
    }
    floor_key = fk;
  }
  auto mark = [&](int32_t cell, double key) {
    if (floor_key && key < floor_key[cell]) key = floor_key[cell];
    if (!dirty[cell]) {
      dirty[cell] = 1;
      ++n_dirty;
      cell_key[cell] = key;
      if (wavefront) queue.push(cell, key);
    } else if (key < cell_key[cell]) {
      cell_key[cell] = key;
      if (wavefront) queue.push(cell, key);  // moves it to the bucket of the smaller key
    }
  };
  for (int l = 0; l < n_group; ++l) {
    const int32_t src = source_nodes_[sources[l]];
    ws.labels[static_cast<int64_t>(src) * K + l] = 0.0;
    int32_t cells[4], local[4];
    const int count = adjacent_cells(src, cells, local);
    for (int a = 0; a < count; ++a) {
      ws.changed[static_cast<int64_t>(cells[a]) * st.words + (local[a] >> 6)] |=
          uint64_t{1} << (local[a] & 63);
      mark(cells[a], 0.0);
    }
  }
  const int32_t R = g.n_rows, C = g.n_cols;
  auto process = [&](int32_t r, int32_t c) {
    const int32_t cell = r * C + c;
    dirty[cell] = 0;
    --n_dirty;
    double key;
    const uint32_t marks = kernel(g, slowness, st, r, c, &key);
    if (!marks) return;
    using namespace sweep;
    if ((marks & kTop) && r > 0) mark(cell - C, key);
    if ((marks & kBottom) && r + 1 < R) mark(cell + C, key);
    if ((marks & kLeft) && c > 0) mark(cell - 1, key);
    if ((marks & kRight) && c + 1 < C) mark(cell + 1, key);
    if ((marks & kTopLeft) && r > 0 && c > 0) mark(cell - C - 1, key);
    if ((marks & kTopRight) && r > 0 && c + 1 < C) mark(cell - C + 1, key);
    if ((marks & kBottomLeft) && r + 1 < R && c > 0) mark(cell + C - 1, key);
    if ((marks & kBottomRight) && r + 1 < R && c + 1 < C) mark(cell + C + 1, key);
  };
  int64_t rounds = 0;
  if (wavefront) {
    int32_t cell;
    while (queue.pop(&cell)) {
      const int32_t r = div_cols_.div(cell);
      process(r, cell - r * C);
    }
    rounds = 1;
  } else {
    // alternating sweeps: (rows down, cols right), (up, right), (up, left), (down, left)
    while (n_dirty > 0) {
      const int dir = static_cast<int>(rounds & 3);
      const bool down = dir == 0 || dir == 3, rightward = dir <= 1;
      for (int32_t i = 0; i < R; ++i) {
        const int32_t r = down ? i : R - 1 - i;
        if (rightward) {
          for (int32_t c = 0; c < C; ++c)
            if (dirty[r * C + c]) process(r, c);
        } else {
          for (int32_t c = C - 1; c >= 0; --c)
            if (dirty[r * C + c]) process(r, c);
        }
      }
      ++rounds;
    }
  }
  ws.last_sweeps = rounds;
  ws.last_processed = st.processed;
  ws.last_pushed = st.pushed;
  return rounds;
}

void ShortestPathEngine::sweep_statistics(const double* slowness, const std::vector<int64_t>& sources,
                                          SimdKind simd, bool wavefront, int64_t* sweeps,
                                          int64_t* cells,
                                          int64_t* pushes) const {
  if (sources.empty() || static_cast<int64_t>(sources.size()) > sweep_lanes())
    fail("sweep_statistics: between 1 and " + std::to_string(sweep_lanes()) + " sources");
  for (int64_t v : sources)
    if (v < 0 || v >= n_sources()) fail("sweep_statistics: source index out of range");
  std::shared_ptr<Job> job = prepare(slowness, 1, false, 1, RunOptions(), nullptr, nullptr, false);
  std::unique_ptr<Workspace> ws = acquire();
  sweep_group(slowness, sources.data(), static_cast<int>(sources.size()), resolve_simd(simd),
              wavefront, *ws);
  *sweeps = ws->last_sweeps;
  *cells = ws->last_processed;
  *pushes = ws->last_pushed;
  release(std::move(ws));
}

int ShortestPathEngine::max_threads() {
  const unsigned hardware = std::thread::hardware_concurrency();
  return 4 * static_cast<int>(std::max(1u, std::min(hardware, 1u << 20)));
}

int ShortestPathEngine::pool_size() const {
  std::lock_guard<std::mutex> guard(workers_mutex_);
  if (!workers_ || workers_->pid != getpid()) return 0;
  std::lock_guard<std::mutex> lock(workers_->mutex);
  return static_cast<int>(workers_->threads.size());
}

bool ShortestPathEngine::done(const Job& job) {
  std::lock_guard<std::mutex> lock(job.mutex);
  return job.finished;
}

BatchResult ShortestPathEngine::wait(Job& job) const {
  {
    std::unique_lock<std::mutex> lock(job.mutex);
    job.finished_cv.wait(lock, [&] { return job.finished; });
    if (job.taken) throw std::logic_error("ShortestPathEngine: a job's result can be taken only once");
    job.taken = true;
    if (job.error) std::rethrow_exception(job.error);
  }
  return assemble(job);
}

}  // namespace latentinv
