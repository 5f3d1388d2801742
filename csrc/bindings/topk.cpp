#include "turbogen/topk.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {

void bind_topk(py::module_& m) {
  py::class_<TopKArgs> args(m, "TopKArgs", "Arguments of launch_topk_cpu (csrc/include/turbogen/topk.h).");
  args.def(py::init<>());
  def_address(args, "scores", &TopKArgs::scores, "[rows, cols] float32 input");
  def_address(args, "values", &TopKArgs::values, "[rows, k] float32 output, contiguous");
  def_address(args, "indices", &TopKArgs::indices, "[rows, k] int64 output, contiguous");
  args.def_readwrite("rows", &TopKArgs::rows)
      .def_readwrite("cols", &TopKArgs::cols)
      .def_readwrite("row_stride", &TopKArgs::row_stride, "elements between row starts, >= cols")
      .def_readwrite("k", &TopKArgs::k, "0 <= k <= cols");

  def_cpu_launcher(m, "launch_topk_cpu", &cpu::topk,
                   "Row-wise top-k, best first (use turbogen.ops.topk).");
}

}  // namespace turbogen
