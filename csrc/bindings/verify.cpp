#include "turbogen/verify.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {

void bind_verify(py::module_& m) {
  py::class_<VerifyArgs> args(m, "VerifyArgs",
                              "Arguments of launch_verify_cpu / _cuda (csrc/include/turbogen/verify.h).");
  args.def(py::init<>());
  def_address(args, "logits", &VerifyArgs::logits, "[rows * positions, vocab] input of `dtype`");
  def_address(args, "draft_tokens", &VerifyArgs::draft_tokens, "int64 [rows, positions - 1], contiguous");
  def_address(args, "draft_probs", &VerifyArgs::draft_probs, "float32 [rows, positions - 1, vocab] (rejection), or 0");
  def_address(args, "temperature", &VerifyArgs::temperature, "float32 [rows] or [1]");
  def_address(args, "top_k", &VerifyArgs::top_k, "int64 [rows] or [1]");
  def_address(args, "top_p", &VerifyArgs::top_p, "float64 [rows] or [1]");
  def_address(args, "min_p", &VerifyArgs::min_p, "float32 [rows] or [1]");
  def_address(args, "seed", &VerifyArgs::seed, "int64 [rows]");
  def_address(args, "offset", &VerifyArgs::offset, "int64 [rows] or [1]: position 0's offset");
  def_address(args, "accepted", &VerifyArgs::accepted, "int64 [rows] output");
  def_address(args, "tokens", &VerifyArgs::tokens, "int64 [rows, positions] output, contiguous");
  def_address(args, "workspace", &VerifyArgs::workspace, "CUDA only: device memory");
  args.def_readwrite("rows", &VerifyArgs::rows)
      .def_readwrite("positions", &VerifyArgs::positions, "k + 1")
      .def_readwrite("vocab", &VerifyArgs::vocab)
      .def_readwrite("row_stride", &VerifyArgs::row_stride, "elements between flat rows, >= vocab")
      .def_readwrite("rejection", &VerifyArgs::rejection)
      .def_readwrite("temperature_per_row", &VerifyArgs::temperature_per_row)
      .def_readwrite("top_k_per_row", &VerifyArgs::top_k_per_row)
      .def_readwrite("top_p_per_row", &VerifyArgs::top_p_per_row)
      .def_readwrite("min_p_per_row", &VerifyArgs::min_p_per_row)
      .def_readwrite("offset_per_row", &VerifyArgs::offset_per_row)
      .def_readwrite("workspace_bytes", &VerifyArgs::workspace_bytes, "size of `workspace`");
  def_dtype(args);

  def_cpu_launcher(m, "launch_verify_cpu", &cpu::verify,
                   "Speculative verification into accepted and tokens (use turbogen.ops.verify).");
  def_cuda_launcher<VerifyArgs>(m, "launch_verify_cuda", TURBOGEN_CUDA_OP(verify),
                                "CUDA speculative verification over device addresses, enqueued on `stream`.");
  m.def(
      "verify_workspace_bytes",
      [](int64_t rows, int64_t positions, int64_t vocab, bool rejection) -> int64_t {
#if defined(TURBOGEN_WITH_CUDA)
        return cuda::verify_workspace_bytes(rows, positions, vocab, rejection);
#else
        (void)rows;
        (void)positions;
        (void)vocab;
        (void)rejection;
        raise_built_without_cuda("verify_workspace_bytes");
#endif
      },
      "Bytes of device workspace launch_verify_cuda needs.", py::arg("rows"), py::arg("positions"), py::arg("vocab"),
      py::arg("rejection"));
}

}  // namespace turbogen
