#include "turbogen/softmax.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {

void bind_softmax(py::module_& m) {
  py::class_<SoftmaxArgs> args(m, "SoftmaxArgs",
                               "Arguments of launch_softmax_cpu / _cuda (csrc/include/turbogen/softmax.h).");
  args.def(py::init<>());
  def_address(args, "logits", &SoftmaxArgs::logits, "[rows, cols] input of `dtype`");
  def_address(args, "out", &SoftmaxArgs::out, "[rows, cols] output of `dtype`, contiguous");
  def_address(args, "temperature", &SoftmaxArgs::temperature, "float32 [rows] or [1], every value > 0");
  args.def_readwrite("rows", &SoftmaxArgs::rows)
      .def_readwrite("cols", &SoftmaxArgs::cols)
      .def_readwrite("row_stride", &SoftmaxArgs::row_stride, "elements between row starts, >= cols")
      .def_readwrite("temperature_per_row", &SoftmaxArgs::temperature_per_row);
  def_dtype(args);

  def_cpu_launcher(m, "launch_softmax_cpu", &cpu::softmax,
                   "softmax(logits / temperature) per row (use turbogen.ops.softmax).");
  def_cuda_launcher<SoftmaxArgs>(m, "launch_softmax_cuda", TURBOGEN_CUDA_OP(softmax),
                    "The CUDA softmax over device addresses, enqueued on `stream` (a cudaStream_t as an int).");
}

}  // namespace turbogen
