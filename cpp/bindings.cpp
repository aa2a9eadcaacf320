// Thin pybind11 bindings of the C++ core (latentinv._core). No physics here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

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

py::tuple engine_run(const ShortestPathEngine& engine, py::handle slowness_obj, bool want_jacobian,
                     int n_threads, const std::string& queue, py::handle rows_obj) {
  latentinv::QueueKind kind;
  if (queue == "auto") kind = latentinv::QueueKind::automatic;
  else if (queue == "heap") kind = latentinv::QueueKind::heap;
  else if (queue == "buckets") kind = latentinv::QueueKind::buckets;
  else throw std::invalid_argument("ShortestPathEngine.run: queue must be 'auto', 'heap' or 'buckets'");
  // forcecast + c_style: a C-contiguous float64 copy when needed
  auto slowness = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(slowness_obj);
  if (!slowness) throw std::invalid_argument("ShortestPathEngine.run: slowness must be a float64 array");
  if (slowness.ndim() != 2 || slowness.shape(1) != engine.n_cells() || slowness.shape(0) < 1)
    throw std::invalid_argument("ShortestPathEngine.run: slowness must have shape (n_models, " +
                                std::to_string(engine.n_cells()) + ")");
  if (n_threads < 1) throw std::invalid_argument("ShortestPathEngine.run: n_threads must be >= 1");
  const int64_t n_models = slowness.shape(0);
  const double* data = slowness.data();
  // optional (n_models, n_data) flags of the Jacobian rows wanted
  py::array_t<uint8_t, py::array::c_style | py::array::forcecast> rows;
  const uint8_t* row_flags = nullptr;
  if (!rows_obj.is_none()) {
    rows = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(rows_obj);
    if (!rows || rows.ndim() != 2 || rows.shape(0) != n_models || rows.shape(1) != engine.n_data())
      throw std::invalid_argument("ShortestPathEngine.run: jacobian_rows must be None or an array of "
                                  "shape (n_models, " + std::to_string(engine.n_data()) + ")");
    row_flags = rows.data();
  }
  BatchResult result;
  {
    py::gil_scoped_release release;
    result = engine.run(data, n_models, want_jacobian, n_threads, kind, row_flags);
  }
  py::array_t<double> times = to_numpy(std::move(result.times));
  times.resize({n_models, engine.n_data()});
  if (!want_jacobian) return py::make_tuple(times, py::none());
  return py::make_tuple(times, py::make_tuple(to_numpy(std::move(result.indptr)),
                                              to_numpy(std::move(result.indices)),
                                              to_numpy(std::move(result.data))));
}

void bind_shortest_path(py::module_& m) {
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
      .def("run", &engine_run, py::arg("slowness"), py::arg("want_jacobian"), py::arg("n_threads"),
           py::arg("queue") = "auto", py::arg("jacobian_rows") = py::none(),
           "slowness (n_models, n_cells) -> (times (n_models, n_data), (indptr, indices, data) or None)."
           " The Jacobian is one CSR stacked over models (row model*n_data + datum). queue: 'auto', "
           "'heap' (4-ary) or 'buckets' (exact bucket queue); all give identical results. jacobian_rows: "
           "None or (n_models, n_data) flags; unflagged rows of the Jacobian are left empty.");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "latentinv compiled core (C++17)";
  bind_shortest_path(m);
}
