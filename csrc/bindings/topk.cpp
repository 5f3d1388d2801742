#include "turbogen/topk.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {

void bind_topk(py::module_& m) {
  m.def(
      "topk_cpu",
      [](uintptr_t scores, uintptr_t values, uintptr_t indices, int64_t rows, int64_t cols, int64_t row_stride,
         int64_t k) {
        const TopKArgs args{from_address<const float>(scores), from_address<float>(values),
                            from_address<int64_t>(indices), rows, cols, row_stride, k};
        Status status;
        {
          py::gil_scoped_release release;
          status = cpu::topk(args);
        }
        raise_on_error(status, "topk_cpu");
      },
      "Row-wise top-k over raw addresses (use turbogen.ops.topk).", py::arg("scores"), py::arg("values"),
      py::arg("indices"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"), py::arg("k"));
}

}  // namespace turbogen
