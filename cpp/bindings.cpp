// Thin pybind11 bindings of the C++ core (latentinv._core). No physics here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef LATENTINV_HAVE_DECODER_KERNELS
#include "decoder_kernels.hpp"
#include "engine_kernels.hpp"
#endif
#include "shortest_path.hpp"

namespace py = pybind11;
using latentinv::BatchResult;
using latentinv::ShortestPathEngine;

namespace {

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule owner(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(heap->size())}, {sizeof(T)}, heap->data(), owner);
}

latentinv::QueueKind parse_queue(const std::string& queue, const char* where) {
  if (queue == "auto") return latentinv::QueueKind::automatic;
  if (queue == "heap") return latentinv::QueueKind::heap;
  if (queue == "buckets") return latentinv::QueueKind::buckets;
  throw std::invalid_argument(std::string(where) + ": queue must be 'auto', 'heap' or 'buckets', got '" +
                              queue + "'");
}

latentinv::SolverKind parse_solver(const std::string& solver, const char* where) {
  if (solver == "auto") return latentinv::SolverKind::automatic;
  if (solver == "dijkstra") return latentinv::SolverKind::dijkstra;
  if (solver == "sweep") return latentinv::SolverKind::sweep;
  if (solver == "wavefront") return latentinv::SolverKind::wavefront;
  throw std::invalid_argument(std::string(where) +
                              ": solver must be 'auto', 'wavefront', 'sweep' or 'dijkstra', got '" +
                              solver + "'");
}

latentinv::SimdKind parse_simd(const std::string& simd, const char* where) {
  if (simd == "auto") return latentinv::SimdKind::automatic;
  if (simd == "scalar") return latentinv::SimdKind::scalar;
  if (simd == "avx2") return latentinv::SimdKind::avx2;
  throw std::invalid_argument(std::string(where) + ": simd must be 'auto', 'scalar' or 'avx2', got '" +
                              simd + "'");
}

const char* simd_name(latentinv::SimdKind kind) {
  return kind == latentinv::SimdKind::avx2 ? "avx2" : "scalar";
}

using Flags = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

// optional (n_models, n_cols) uint8 flags; a null handle when None (a default-constructed
// array_t is an empty array, not null)
Flags optional_flags(py::handle obj, int64_t n_models, int64_t n_cols, const char* where,
                     const char* name) {
  if (obj.is_none()) return py::reinterpret_steal<Flags>(py::handle());
  Flags flags = Flags::ensure(obj);
  if (!flags || flags.ndim() != 2 || flags.shape(0) != n_models || flags.shape(1) != n_cols)
    throw std::invalid_argument(std::string(where) + ": " + name + " must be None or an array of shape (" +
                                std::to_string(n_models) + ", " + std::to_string(n_cols) + ")");
  return flags;
}

// The checked arguments of run() and submit(); the arrays keep the inputs alive.
struct RunArgs {
  py::array_t<double, py::array::c_style | py::array::forcecast> slowness;
  Flags rows, sources;
  int64_t n_models = 0;
  latentinv::RunOptions options;
  const uint8_t* rows_ptr() const { return rows.ptr() != nullptr ? rows.data() : nullptr; }
  const uint8_t* sources_ptr() const { return sources.ptr() != nullptr ? sources.data() : nullptr; }
};

// n_threads: a Python integer >= 1 (bool, float and str refused); values above INT_MAX are
// clamped (the engine bounds its threads by max_threads() anyway).
int parse_threads(py::handle obj, const char* where) {
  const std::string got = py::repr(obj).cast<std::string>() + " (" +
                          std::string(Py_TYPE(obj.ptr())->tp_name) + ")";
  if (PyBool_Check(obj.ptr()) || !PyIndex_Check(obj.ptr()))
    throw std::invalid_argument(std::string(where) + ": n_threads must be a positive integer, got " + got);
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow < 0 || (overflow == 0 && value < 1))
    throw std::invalid_argument(std::string(where) + ": n_threads must be a positive integer, got " + got);
  if (overflow > 0 || value > std::numeric_limits<int>::max()) return std::numeric_limits<int>::max();
  return static_cast<int>(value);
}

RunArgs check_args(const ShortestPathEngine& engine, py::handle slowness_obj, int n_threads,
                   const std::string& queue, const std::string& solver, const std::string& simd,
                   py::handle rows_obj, py::handle sources_obj, const char* where) {
  RunArgs args;
  args.options.queue = parse_queue(queue, where);
  args.options.solver = parse_solver(solver, where);
  args.options.simd = parse_simd(simd, where);
  // forcecast + c_style: a C-contiguous float64 copy when needed
  args.slowness = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(slowness_obj);
  if (!args.slowness) throw std::invalid_argument(std::string(where) + ": slowness must be a float64 array");
  // n_models == 0 is allowed: an empty result, as the Python backend gives
  if (args.slowness.ndim() != 2 || args.slowness.shape(1) != engine.n_cells())
    throw std::invalid_argument(std::string(where) + ": slowness must have shape (n_models, " +
                                std::to_string(engine.n_cells()) + ")");
  if (n_threads < 1) throw std::invalid_argument(std::string(where) + ": n_threads must be >= 1");
  args.n_models = args.slowness.shape(0);
  args.rows = optional_flags(rows_obj, args.n_models, engine.n_data(), where, "jacobian_rows");
  args.sources = optional_flags(sources_obj, args.n_models, engine.n_sources(), where, "sources");
  return args;
}

py::tuple to_python(BatchResult&& result, int64_t n_models, int64_t n_data, bool want_jacobian) {
  py::array_t<double> times = to_numpy(std::move(result.times));
  times.resize({n_models, n_data});
  if (!want_jacobian) return py::make_tuple(times, py::none());
  return py::make_tuple(times, py::make_tuple(to_numpy(std::move(result.indptr)),
                                              to_numpy(std::move(result.indices)),
                                              to_numpy(std::move(result.data))));
}

py::tuple engine_run(const ShortestPathEngine& engine, py::handle slowness_obj, bool want_jacobian,
                     py::handle threads_obj, const std::string& queue, py::handle rows_obj,
                     py::handle sources_obj, const std::string& solver, const std::string& simd) {
  const int n_threads = parse_threads(threads_obj, "ShortestPathEngine.run");
  RunArgs a = check_args(engine, slowness_obj, n_threads, queue, solver, simd, rows_obj, sources_obj,
                         "ShortestPathEngine.run");
  BatchResult result;
  {
    py::gil_scoped_release release;
    result = engine.run(a.slowness.data(), a.n_models, want_jacobian, n_threads, a.options,
                        a.rows_ptr(), a.sources_ptr());
  }
  return to_python(std::move(result), a.n_models, engine.n_data(), want_jacobian);
}

// A submitted job; result() waits for it (GIL released) and keeps the tuple for later calls.
struct PendingRun {
  std::shared_ptr<ShortestPathEngine::Job> job;
  py::object engine;  // keeps the engine (and its pool) alive while the job exists
  int64_t n_models = 0;
  bool want_jacobian = false;
  py::object value;

  py::object result() {
    if (!value) {
      const auto& engine_ref = engine.cast<const ShortestPathEngine&>();
      BatchResult r;
      {
        py::gil_scoped_release release;
        r = engine_ref.wait(*job);
      }
      value = to_python(std::move(r), n_models, engine_ref.n_data(), want_jacobian);
    }
    return value;
  }
  bool done() const { return value || ShortestPathEngine::done(*job); }
};

PendingRun engine_submit(py::object self, py::handle slowness_obj, bool want_jacobian,
                         py::handle threads_obj, const std::string& queue, py::handle rows_obj,
                         py::handle sources_obj, const std::string& solver, const std::string& simd) {
  const int n_threads = parse_threads(threads_obj, "ShortestPathEngine.submit");
  const auto& engine = self.cast<const ShortestPathEngine&>();
  RunArgs a = check_args(engine, slowness_obj, n_threads, queue, solver, simd, rows_obj, sources_obj,
                         "ShortestPathEngine.submit");
  PendingRun pending;
  pending.job = engine.submit(a.slowness.data(), a.n_models, want_jacobian, n_threads, a.options,
                              a.rows_ptr(), a.sources_ptr());
  pending.engine = self;
  pending.n_models = a.n_models;
  pending.want_jacobian = want_jacobian;
  return pending;
}

void bind_shortest_path(py::module_& m) {
  py::class_<PendingRun>(m, "PendingRun", "A job queued by ShortestPathEngine.submit.")
      .def("result", &PendingRun::result,
           "Wait for the job (GIL released) and return the same tuple as ShortestPathEngine.run; "
           "later calls return the same objects.")
      .def("done", &PendingRun::done, "Whether the job has finished (never blocks).");
  py::class_<ShortestPathEngine>(m, "ShortestPathEngine",
                                 "Shortest-path traveltimes on a regular grid with secondary nodes "
                                 "(topology built once; see cpp/shortest_path.hpp).")
      .def(py::init<int64_t, int64_t, double, double, int64_t, std::vector<int64_t>,
                    std::vector<int64_t>, std::vector<int64_t>, std::vector<int64_t>>(),
           py::arg("n_rows"), py::arg("n_cols"), py::arg("dx"), py::arg("dz"),
           py::arg("n_secondary"), py::arg("source_nodes"), py::arg("receiver_nodes"),
           py::arg("pair_sources"), py::arg("pair_receivers"))
      .def_property_readonly("n_nodes", &ShortestPathEngine::n_nodes)
      .def_property_readonly("n_cells", &ShortestPathEngine::n_cells)
      .def_property_readonly("n_data", &ShortestPathEngine::n_data)
      .def_property_readonly("n_local", &ShortestPathEngine::n_local)
      .def("local_lengths",
           [](const ShortestPathEngine& e) {
             std::vector<double> copy = e.local_lengths();
             py::array_t<double> out = to_numpy(std::move(copy));
             out.resize({e.n_local(), e.n_local()});
             return out;
           })
      .def("node_position",
           [](const ShortestPathEngine& e, int64_t node) {
             double x = 0, depth = 0;
             e.node_position(node, &x, &depth);
             return py::make_tuple(x, depth);
           },
           py::arg("node"))
      .def_property_readonly("n_sources", &ShortestPathEngine::n_sources)
      .def_property_readonly("pool_size", &ShortestPathEngine::pool_size,
                             "Worker threads of the background pool started so far (0 before the "
                             "first submit); at most max_threads.")
      .def_property_readonly_static(
          "max_threads", [](py::object) { return ShortestPathEngine::max_threads(); },
          "Upper bound on the threads of one run and on the background pool: "
          "4 x std::thread::hardware_concurrency().")
      .def_property_readonly_static(
          "avx2_available", [](py::object) { return ShortestPathEngine::avx2_available(); },
          "Whether the AVX2 kernel of the sweep solver was compiled in and the CPU supports it.")
      .def_property_readonly_static(
          "default_simd",
          [](py::object) {
            return simd_name(ShortestPathEngine::resolve_simd(latentinv::SimdKind::automatic));
          },
          "The kernel simd='auto' runs on this machine: 'avx2' or 'scalar'.")
      .def_property_readonly_static(
          "sweep_lanes", [](py::object) { return ShortestPathEngine::sweep_lanes(); },
          "Sources solved together by one sweep pass (SIMD lanes).")
      .def("sweep_statistics",
           [](const ShortestPathEngine& e, py::handle slowness_obj, std::vector<int64_t> sources,
              const std::string& simd, const std::string& solver) {
             auto s = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(slowness_obj);
             if (!s || s.ndim() != 1 || s.shape(0) != e.n_cells())
               throw std::invalid_argument("ShortestPathEngine.sweep_statistics: slowness must have shape (" +
                                           std::to_string(e.n_cells()) + ",)");
             int64_t sweeps = 0, cells = 0, pushes = 0;
             {
               py::gil_scoped_release release;
               e.sweep_statistics(s.data(), sources, parse_simd(simd, "sweep_statistics"),
                                  parse_solver(solver, "sweep_statistics") != latentinv::SolverKind::sweep,
                                  &sweeps, &cells, &pushes);
             }
             return py::make_tuple(sweeps, cells, pushes);
           },
           py::arg("slowness"), py::arg("sources"), py::arg("simd") = "auto", py::arg("solver") = "auto",
           "(sweeps, cells processed, node pushes) of one sweep solve of up to sweep_lanes sources.")
      .def("run", &engine_run, py::arg("slowness"), py::arg("want_jacobian"), py::arg("n_threads"),
           py::arg("queue") = "auto", py::arg("jacobian_rows") = py::none(),
           py::arg("sources") = py::none(), py::arg("solver") = "auto", py::arg("simd") = "auto",
           "slowness (n_models, n_cells) -> (times (n_models, n_data), (indptr, indices, data) or None)."
           " n_models may be 0 (empty result). n_threads: positive integer; at most "
           "min(n_threads, tasks, max_threads) threads run."
           " The Jacobian is one CSR stacked over models (row model*n_data + datum). queue: 'auto', "
           "'heap' (4-ary) or 'buckets' (exact bucket queue); all give identical results. jacobian_rows: "
           "None or (n_models, n_data) flags; unflagged rows of the Jacobian are left empty. sources: "
           "None or (n_models, n_sources) flags; the data of an unflagged (model, source) get NaN times "
           "and empty Jacobian rows (its solve is skipped). solver: 'auto' (= 'sweep'), 'sweep' "
           "(multi-source label correcting, sweep_lanes sources per pass) or 'dijkstra' (one run per "
           "source; the only solver that takes a queue other than 'auto'). simd: lanes of the sweep, "
           "'auto' (default_simd), 'avx2' (ValueError where unavailable) or 'scalar'. Every solver "
           "gives the same times and Jacobians, bit for bit.")
      .def("submit", &engine_submit, py::arg("slowness"), py::arg("want_jacobian"),
           py::arg("n_threads"), py::arg("queue") = "auto", py::arg("jacobian_rows") = py::none(),
           py::arg("sources") = py::none(), py::arg("solver") = "auto", py::arg("simd") = "auto",
           "The arguments of run(), queued on the engine's persistent worker pool (jobs served in "
           "submission order, inputs copied); returns a PendingRun at once. The pool grows to "
           "min(n_threads, the job's tasks, max_threads) and never shrinks.");
}

#ifdef LATENTINV_HAVE_DECODER_KERNELS
// ---- the frozen decoder's kernels ------------------------------------------------------------------
// Arrays are used in place (no copy, no cast): float32, C-contiguous, outputs writeable; anything else
// is a ValueError that names the argument, what it must be and what it is.
const float* float_data(const py::array& a, const char* where, const char* name, std::vector<int64_t> shape,
                        bool writeable) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument(std::string(where) + ": " + name + " " + what);
  };
  if (!a.dtype().is(py::dtype::of<float>())) fail("must be float32, got " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) fail("must be C-contiguous");
  if (writeable && !a.writeable()) fail("must be writeable");
  std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  if (got != shape) {
    auto text = [](const std::vector<int64_t>& v) {
      std::string t = "(";
      for (size_t i = 0; i < v.size(); ++i) t += (i ? ", " : "") + std::to_string(v[i]);
      return t + (v.size() == 1 ? ",)" : ")");
    };
    fail("must have shape " + text(shape) + ", got " + text(got));
  }
  return static_cast<const float*>(a.data());
}

float* float_out(py::array& a, const char* where, const char* name, std::vector<int64_t> shape) {
  return const_cast<float*>(float_data(a, where, name, std::move(shape), true));
}

void check_channels(int64_t c, const char* where) {
  if (c <= 0 || c % 16 != 0)
    throw std::invalid_argument(std::string(where) + ": the channels must be a positive multiple of 16, got " +
                                std::to_string(c));
}

int positive_threads(int n_threads, const char* where) {
  if (n_threads < 1)
    throw std::invalid_argument(std::string(where) + ": n_threads must be >= 1, got " + std::to_string(n_threads));
  return n_threads;
}

// (n, h, w, c) of an NHWC map whose channels the kernels take (a positive multiple of 16)
std::vector<int64_t> nhwc_dims(const py::array& x, const char* where) {
  if (x.ndim() != 4) throw std::invalid_argument(std::string(where) + ": x must be (n, h, w, c)");
  check_channels(x.shape(3), where);
  return {x.shape(0), x.shape(1), x.shape(2), x.shape(3)};
}

void bind_decoder(py::module_& m) {
  m.def("decoder_set_openmp_runtime", &latentinv::set_openmp_runtime, py::arg("gomp_parallel"),
        py::arg("omp_get_thread_num"),
        "Run the decoder kernels' workers on an OpenMP runtime's pool (the addresses of its GOMP_parallel "
        "and omp_get_thread_num, e.g. torch's libgomp); (0, 0) returns to threads of their own.");
  m.def("decoder_isa", [](const std::string& isa) { return std::string(latentinv::decoder_kernels(isa).isa); },
        py::arg("isa") = "auto",
        "The instruction set of the decoder kernels that isa selects here: 'avx512', 'avx2' or 'portable'.");
  m.def("decoder_norm_relu_forward",
        [](py::array x, py::array y, py::array mean, py::array rstd, double eps, int n_threads,
           const std::string& isa) {
          const char* where = "decoder_norm_relu_forward";
          const auto dims = nhwc_dims(x, where);
          const int64_t n = dims[0], h = dims[1], w = dims[2], c = dims[3];
          const float* xp = float_data(x, where, "x", dims, false);
          float* yp = float_out(y, where, "y", dims);
          float* mp = float_out(mean, where, "mean", {n, c});
          float* rp = float_out(rstd, where, "rstd", {n, c});
          const auto& kr = latentinv::decoder_kernels(isa);
          positive_threads(n_threads, where);
          py::gil_scoped_release release;
          latentinv::norm_relu_forward_batch(kr, xp, n, h * w, static_cast<int>(c), static_cast<float>(eps),
                                             yp, mp, rp, n_threads);
        },
        py::arg("x"), py::arg("y"), py::arg("mean"), py::arg("rstd"), py::arg("eps"), py::arg("n_threads"),
        py::arg("isa") = "auto",
        "Instance norm (per sample and channel over the image, biased variance) then ReLU. x: (n, h, w, c) "
        "float32 (NHWC), c a multiple of 16; writes y (n, h, w, c) and the statistics mean and "
        "rstd = 1 / sqrt(var + eps) (n, c).");
  m.def("decoder_norm_relu_backward",
        [](py::array x, py::array g, py::array mean, py::array rstd, py::array dx, int n_threads,
           const std::string& isa) {
          const char* where = "decoder_norm_relu_backward";
          const auto dims = nhwc_dims(x, where);
          const int64_t n = dims[0], h = dims[1], w = dims[2], c = dims[3];
          const float* xp = float_data(x, where, "x", dims, false);
          const float* gp = float_data(g, where, "g", dims, false);
          const float* mp = float_data(mean, where, "mean", {n, c}, false);
          const float* rp = float_data(rstd, where, "rstd", {n, c}, false);
          float* dp = float_out(dx, where, "dx", dims);
          const auto& kr = latentinv::decoder_kernels(isa);
          positive_threads(n_threads, where);
          py::gil_scoped_release release;
          latentinv::norm_relu_backward_batch(kr, xp, gp, mp, rp, n, h * w, static_cast<int>(c), dp, n_threads);
        },
        py::arg("x"), py::arg("g"), py::arg("mean"), py::arg("rstd"), py::arg("dx"), py::arg("n_threads"),
        py::arg("isa") = "auto",
        "Gradient of decoder_norm_relu_forward (NHWC) with respect to x, given the output gradient g "
        "(n, h, w, c); writes dx (may be g itself).");
  m.def("decoder_deconv1_forward",
        [](py::array x, py::array w, py::array y, int n_threads, const std::string& isa, py::object mean,
           py::object rstd, double eps) {
          const char* where = "decoder_deconv1_forward";
          if (w.ndim() != 3 || y.ndim() != 3)
            throw std::invalid_argument(std::string(where) + ": x must be (n, h, w, c), w (c, k, k), y (n, oh, ow)");
          const auto dims = nhwc_dims(x, where);
          const int64_t n = dims[0], h = dims[1], wd = dims[2], c = dims[3], k = w.shape(1);
          const int64_t oh = y.shape(1), ow = y.shape(2);
          if (k < 1 || k > latentinv::kDeconv1MaxKernel || oh < 2 * (h - 1) + k || ow < 2 * (wd - 1) + k ||
              ow > latentinv::kDeconv1MaxWidth || h < 1 || wd < 1)
            throw std::invalid_argument(std::string(where) + ": unsupported shapes (need 1 <= k <= 16, "
                                        "oh >= 2 (h - 1) + k, 2 (w - 1) + k <= ow <= 128)");
          const float* xp = float_data(x, where, "x", dims, false);
          const float* wp = float_data(w, where, "w", {c, k, k}, false);
          float* yp = float_out(y, where, "y", {n, oh, ow});
          if (mean.is_none() != rstd.is_none())
            throw std::invalid_argument(std::string(where) + ": mean and rstd must be given together");
          float *mp = nullptr, *rp = nullptr;
          py::array ma, ra;
          if (!mean.is_none()) {
            ma = mean.cast<py::array>();
            ra = rstd.cast<py::array>();
            mp = float_out(ma, where, "mean", {n, c});
            rp = float_out(ra, where, "rstd", {n, c});
          }
          const auto& kr = latentinv::decoder_kernels(isa);
          positive_threads(n_threads, where);
          py::gil_scoped_release release;
          latentinv::deconv1_forward_batch(kr, xp, n, static_cast<int>(c), static_cast<int>(h),
                                           static_cast<int>(wd), wp, static_cast<int>(k), static_cast<int>(oh),
                                           static_cast<int>(ow), yp, n_threads, static_cast<float>(eps), mp, rp);
        },
        py::arg("x"), py::arg("w"), py::arg("y"), py::arg("n_threads"), py::arg("isa") = "auto",
        py::arg("mean") = py::none(), py::arg("rstd") = py::none(), py::arg("eps") = 1e-5,
        "Transposed convolution, stride 2, no padding, c channels to one: y[n, 2i+kh, 2j+kw] += "
        "w[c, kh, kw] x[n, i, j, c] (y is overwritten). x (n, h, w, c) NHWC with c a multiple of 16, "
        "w (c, k, k), y (n, oh, ow); rows and columns of y beyond the taps' reach (output padding) get "
        "zeros. With mean and rstd ((n, c) arrays to fill): the input is first normalised per sample and "
        "channel and rectified (decoder_norm_relu_forward with eps, never stored), its statistics written "
        "there.");
  m.def("decoder_deconv1_backward",
        [](py::array g, py::array w, py::array dx, int n_threads, const std::string& isa, py::object x,
           py::object mean, py::object rstd) {
          const char* where = "decoder_deconv1_backward";
          if (g.ndim() != 3 || w.ndim() != 3 || dx.ndim() != 4)
            throw std::invalid_argument(std::string(where) + ": g must be (n, oh, ow), w (c, k, k), dx (n, h, w, c)");
          const int64_t n = g.shape(0), oh = g.shape(1), ow = g.shape(2), c = w.shape(0), k = w.shape(1);
          const int64_t h = dx.shape(1), wd = dx.shape(2);
          check_channels(c, where);
          if (k < 1 || oh < 2 * (h - 1) + k || ow < 2 * (wd - 1) + k || h < 1 || wd < 1)
            throw std::invalid_argument(std::string(where) + ": unsupported shapes (need k >= 1, "
                                        "oh >= 2 (h - 1) + k, ow >= 2 (w - 1) + k)");
          const float* gp = float_data(g, where, "g", {n, oh, ow}, false);
          const float* wp = float_data(w, where, "w", {c, k, k}, false);
          float* dp = float_out(dx, where, "dx", {n, h, wd, c});
          if (x.is_none() != mean.is_none() || x.is_none() != rstd.is_none())
            throw std::invalid_argument(std::string(where) + ": x, mean and rstd must be given together");
          const float *xp = nullptr, *mp = nullptr, *rp = nullptr;
          py::array xa, ma, ra;
          if (!x.is_none()) {
            xa = x.cast<py::array>();
            ma = mean.cast<py::array>();
            ra = rstd.cast<py::array>();
            xp = float_data(xa, where, "x", {n, h, wd, c}, false);
            mp = float_data(ma, where, "mean", {n, c}, false);
            rp = float_data(ra, where, "rstd", {n, c}, false);
          }
          const auto& kr = latentinv::decoder_kernels(isa);
          positive_threads(n_threads, where);
          py::gil_scoped_release release;
          latentinv::deconv1_backward_batch(kr, gp, n, static_cast<int>(oh), static_cast<int>(ow), wp,
                                            static_cast<int>(k), static_cast<int>(c), static_cast<int>(h),
                                            static_cast<int>(wd), dp, n_threads, xp, mp, rp);
        },
        py::arg("g"), py::arg("w"), py::arg("dx"), py::arg("n_threads"), py::arg("isa") = "auto",
        py::arg("x") = py::none(), py::arg("mean") = py::none(), py::arg("rstd") = py::none(),
        "Input gradient of decoder_deconv1_forward, NHWC: dx[n, i, j, c] = sum w[c, kh, kw] g[n, 2i+kh, 2j+kw]; "
        "g (n, oh, ow), w (c, k, k) with c a multiple of 16, dx (n, h, w, c). With x, mean and rstd (the "
        "forward's input and statistics): the gradient with respect to x through its instance norm + ReLU.");
}

// ---- the engine's straight-ray kernels (bit-identical to torch's operations) ---------------------------
const int64_t* index_data(const py::array& a, const char* where, const char* name, std::vector<int64_t> shape) {
  if (!a.dtype().is(py::dtype::of<int64_t>()))
    throw std::invalid_argument(std::string(where) + ": " + name + " must be int64, got " +
                                std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style) || a.ndim() != static_cast<py::ssize_t>(shape.size()))
    throw std::invalid_argument(std::string(where) + ": " + name + " must be a C-contiguous array of " +
                                std::to_string(shape.size()) + " dimensions");
  for (size_t d = 0; d < shape.size(); ++d)
    if (shape[d] >= 0 && a.shape(d) != shape[d])
      throw std::invalid_argument(std::string(where) + ": " + name + " has " + std::to_string(a.shape(d)) +
                                  " entries along axis " + std::to_string(d) + ", expected " +
                                  std::to_string(shape[d]));
  return static_cast<const int64_t*>(a.data());
}

// every entry of idx (count of them) in [0, bound): an out-of-range index would read or write outside
void check_indices(const int64_t* idx, int64_t count, int64_t bound, const char* where, const char* name) {
  for (int64_t i = 0; i < count; ++i)
    if (idx[i] < 0 || idx[i] >= bound)
      throw std::invalid_argument(std::string(where) + ": " + name + " holds " + std::to_string(idx[i]) +
                                  ", outside [0, " + std::to_string(bound) + ")");
}

void bind_col2im(py::module_& m) {
  m.def("decoder_col2im",
        [](py::array taps, py::array y, std::vector<int> stride, std::vector<int> padding, int n_threads) {
          const char* where = "decoder_col2im";
          if (taps.ndim() != 6 || y.ndim() != 4 || stride.size() != 2 || padding.size() != 2)
            throw std::invalid_argument(std::string(where) + ": taps must be (n, h, w, kh, kw, c), y (n, oh, ow, c), "
                                        "stride and padding pairs");
          const int64_t n = taps.shape(0), h = taps.shape(1), w = taps.shape(2), kh = taps.shape(3),
                        kw = taps.shape(4), c = taps.shape(5), oh = y.shape(1), ow = y.shape(2);
          if (stride[0] < 1 || stride[1] < 1 || padding[0] < 0 || padding[1] < 0)
            throw std::invalid_argument(std::string(where) + ": stride must be >= 1 and padding >= 0");
          const float* tp = float_data(taps, where, "taps", {n, h, w, kh, kw, c}, false);
          float* yp = float_out(y, where, "y", {n, oh, ow, c});
          positive_threads(n_threads, where);
          py::gil_scoped_release release;
          latentinv::col2im_batch(tp, n, static_cast<int>(h), static_cast<int>(w), static_cast<int>(kh),
                                  static_cast<int>(kw), static_cast<int>(c), stride[0], stride[1], padding[0],
                                  padding[1], static_cast<int>(oh), static_cast<int>(ow), yp, n_threads);
        },
        py::arg("taps"), py::arg("y"), py::arg("stride"), py::arg("padding"), py::arg("n_threads"),
        "A transposed convolution's col2im, NHWC: y = 0, then y[n, i sh + a - ph, j sw + b - pw, :] += "
        "taps[n, i, j, a, b, :] for every input pixel and tap in order (taps falling outside y dropped).");
}

// The kernel rows' arguments shared by engine_kernel_rows and its backward, checked: a slowness-shaped
// array (n_rows, n_cells) named slowness_name, index and value (n_rays, width), rays (n_rows, batch)
// with every ray and cell index in range.
struct KernelRowsArgs {
  int64_t R, n, m, w, B;
  const int64_t *index, *rays;
  const float* value;
  KernelRowsArgs(const py::array& slowness, const py::array& index_a, const py::array& value_a,
                 const py::array& rays_a, int n_threads, const char* where, const char* slowness_name) {
    if (slowness.ndim() != 2 || index_a.ndim() != 2 || rays_a.ndim() != 2)
      throw std::invalid_argument(std::string(where) + ": " + slowness_name + " must be (n_rows, n_cells), "
                                  "index and value (n_rays, width), rays (n_rows, batch)");
    R = slowness.shape(0), n = slowness.shape(1), m = index_a.shape(0), w = index_a.shape(1), B = rays_a.shape(1);
    index = index_data(index_a, where, "index", {m, w});
    value = float_data(value_a, where, "value", {m, w}, false);
    rays = index_data(rays_a, where, "rays", {R, B});
    check_indices(rays, R * B, m, where, "rays");
    check_indices(index, m * w, n, where, "index");
    positive_threads(n_threads, where);
  }
};

void bind_engine(py::module_& m) {
  m.def("engine_paper_slowness",
        [](py::array x, py::array s, int n_threads) {
          const char* where = "engine_paper_slowness";
          std::vector<int64_t> shape(x.shape(), x.shape() + x.ndim());
          const float* xp = float_data(x, where, "x", shape, false);
          float* sp = float_out(s, where, "s", shape);
          positive_threads(n_threads, where);
          py::gil_scoped_release release;
          latentinv::paper_slowness_forward(xp, static_cast<int64_t>(x.size()), sp, n_threads);
        },
        py::arg("x"), py::arg("s"), py::arg("n_threads"),
        "s = 1 / (0.06 + 0.02 (1 - x)) (float32, bit-identical to torch's evaluation of that expression).");
  m.def("engine_paper_slowness_backward",
        [](py::array g, py::array s, py::array gx, int n_threads) {
          const char* where = "engine_paper_slowness_backward";
          std::vector<int64_t> shape(s.shape(), s.shape() + s.ndim());
          const float* gp = float_data(g, where, "g", shape, false);
          const float* sp = float_data(s, where, "s", shape, false);
          float* xp = float_out(gx, where, "gx", shape);
          positive_threads(n_threads, where);
          py::gil_scoped_release release;
          latentinv::paper_slowness_backward(gp, sp, static_cast<int64_t>(s.size()), xp, n_threads);
        },
        py::arg("g"), py::arg("s"), py::arg("gx"), py::arg("n_threads"),
        "Gradient of engine_paper_slowness at its output s for the output gradient g: gx = g s^2 0.02 "
        "(bit-identical to torch's autograd of that expression).");
  m.def("engine_kernel_rows",
        [](py::array s, py::array index, py::array value, py::array rays, py::array out, int n_threads) {
          const char* where = "engine_kernel_rows";
          const KernelRowsArgs k(s, index, value, rays, n_threads, where, "s");
          const float* sp = float_data(s, where, "s", {k.R, k.n}, false);
          float* op = float_out(out, where, "out", {k.R, k.B, k.w});
          py::gil_scoped_release release;
          latentinv::kernel_rows_forward(sp, k.R, k.n, k.index, k.value, k.m, k.w, k.rays, k.B, op, n_threads);
        },
        py::arg("s"), py::arg("index"), py::arg("value"), py::arg("rays"), py::arg("out"), py::arg("n_threads"),
        "out[r, b, p] = s[r, index[rays[r, b], p]] * value[rays[r, b], p] (float32 s, value, out; int64 "
        "index, rays).");
  m.def("engine_kernel_rows_backward",
        [](py::array g, py::array index, py::array value, py::array rays, py::array gs, int n_threads) {
          const char* where = "engine_kernel_rows_backward";
          const KernelRowsArgs k(gs, index, value, rays, n_threads, where, "gs");
          const float* gp = float_data(g, where, "g", {k.R, k.B}, false);
          float* op = float_out(gs, where, "gs", {k.R, k.n});
          py::gil_scoped_release release;
          latentinv::kernel_rows_backward(gp, k.R, k.n, k.index, k.value, k.m, k.w, k.rays, k.B, op, n_threads);
        },
        py::arg("g"), py::arg("index"), py::arg("value"), py::arg("rays"), py::arg("gs"), py::arg("n_threads"),
        "Gradient of engine_kernel_rows' sums over p: gs (overwritten) = 0, then gs[r, index[rays[r, b], p]] "
        "+= g[r, b] * value[rays[r, b], p] in (b, p) order, as torch's scatter-add.");
  m.def("engine_kernel_full",
        [](py::array indptr, py::array indices, py::array data, py::array s, py::array out_t, int n_threads) {
          const char* where = "engine_kernel_full";
          if (s.ndim() != 2 || indptr.ndim() != 1 || indices.ndim() != 1)
            throw std::invalid_argument(std::string(where) + ": s must be (n_rows, n_cells), indptr, indices "
                                        "and data 1-D");
          const int64_t R = s.shape(0), n = s.shape(1), m = indptr.shape(0) - 1, nnz = indices.shape(0);
          if (m < 0) throw std::invalid_argument(std::string(where) + ": indptr must not be empty");
          const int64_t* pp = index_data(indptr, where, "indptr", {m + 1});
          const int64_t* ip = index_data(indices, where, "indices", {nnz});
          const float* dp = float_data(data, where, "data", {nnz}, false);
          const float* sp = float_data(s, where, "s", {R, n}, false);
          float* op = float_out(out_t, where, "out_t", {m, R});
          if (pp[0] != 0 || pp[m] != nnz)
            throw std::invalid_argument(std::string(where) + ": indptr must run from 0 to len(indices)");
          for (int64_t i = 0; i < m; ++i)
            if (pp[i + 1] < pp[i]) throw std::invalid_argument(std::string(where) + ": indptr must not decrease");
          check_indices(ip, nnz, n, where, "indices");
          positive_threads(n_threads, where);
          std::unique_ptr<float[]> st(new float[static_cast<size_t>((R + 31) / 32 * 32 * n)]);   // not zeroed
          py::gil_scoped_release release;
          latentinv::kernel_full_product(pp, ip, dp, m, sp, R, n, op, st.get(), n_threads);
        },
        py::arg("indptr"), py::arg("indices"), py::arg("data"), py::arg("s"), py::arg("out_t"), py::arg("n_threads"),
        "out_t[i, r] = sum_p data[p] s[r, indices[p]] over CSR row i's entries in order (float32, each sum "
        "from zero, no fused multiply-add: bit-identical to torch's CSR @ dense on MKL).");
}
#endif  // LATENTINV_HAVE_DECODER_KERNELS

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "latentinv compiled core (C++17)";
  bind_shortest_path(m);
#ifdef LATENTINV_HAVE_DECODER_KERNELS
  bind_decoder(m);
  bind_engine(m);
  bind_col2im(m);
#endif
}
