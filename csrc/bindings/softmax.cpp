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
  m.def(
      "launch_softmax_cuda",
      [](const SoftmaxArgs& a, uintptr_t stream) {
#if defined(TURBOGEN_WITH_CUDA)
        raise_on_error(cuda::validate_launch(a), "launch_softmax_cuda");
        raise_on_cuda_error(cuda::softmax(a, reinterpret_cast<cudaStream_t>(stream)), "launch_softmax_cuda");
#else
        (void)a;
        (void)stream;
        raise_built_without_cuda("launch_softmax_cuda");
#endif
      },
      "The CUDA softmax over device addresses, enqueued on `stream` (a cudaStream_t as an int).", py::arg("args"),
      py::arg("stream"));
}

}  // namespace turbogen
