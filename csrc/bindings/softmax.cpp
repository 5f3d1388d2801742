#include "turbogen/softmax.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {
namespace {

SoftmaxArgs make_args(uintptr_t logits, uintptr_t out, uintptr_t temperature, int64_t rows, int64_t cols,
                      int64_t row_stride, int dtype, bool temperature_per_row) {
  if (!is_valid_dtype(dtype)) raise_on_error(Status::kBadDType, "softmax");
  return SoftmaxArgs{from_address<const void>(logits), from_address<void>(out), from_address<const float>(temperature),
                     rows, cols, row_stride, static_cast<DType>(dtype), temperature_per_row};
}

}  // namespace

void bind_softmax(py::module_& m) {
  m.def(
      "softmax_cpu",
      [](uintptr_t logits, uintptr_t out, uintptr_t temperature, int64_t rows, int64_t cols, int64_t row_stride,
         int dtype, bool temperature_per_row) {
        const SoftmaxArgs args = make_args(logits, out, temperature, rows, cols, row_stride, dtype, temperature_per_row);
        Status status;
        {
          py::gil_scoped_release release;
          status = cpu::softmax(args);
        }
        raise_on_error(status, "softmax_cpu");
      },
      py::arg("logits"), py::arg("out"), py::arg("temperature"), py::arg("rows"), py::arg("cols"),
      py::arg("row_stride"), py::arg("dtype"), py::arg("temperature_per_row"));
#if defined(TURBOGEN_WITH_CUDA)
  m.def(
      "softmax_cuda",
      [](uintptr_t logits, uintptr_t out, uintptr_t temperature, int64_t rows, int64_t cols, int64_t row_stride,
         int dtype, bool temperature_per_row, uintptr_t stream) {
        const SoftmaxArgs args = make_args(logits, out, temperature, rows, cols, row_stride, dtype, temperature_per_row);
        raise_on_cuda_error(cuda::softmax(args, reinterpret_cast<cudaStream_t>(stream)), "softmax_cuda");
      },
      py::arg("logits"), py::arg("out"), py::arg("temperature"), py::arg("rows"), py::arg("cols"),
      py::arg("row_stride"), py::arg("dtype"), py::arg("temperature_per_row"), py::arg("stream"));
#endif
}

}  // namespace turbogen
