#include "turbogen/sampling.h"

#include "bindings.h"
#include "penalty_fields.h"
#include "turbogen/philox.h"

namespace py = pybind11;

namespace turbogen {

void bind_sampling(py::module_& m) {
  py::class_<SamplingArgs> args(m, "SamplingArgs",
                                "Arguments of launch_sample_cpu / _cuda (csrc/include/turbogen/sampling.h).");
  args.def(py::init<>());
  def_address(args, "logits", &SamplingArgs::logits, "[rows, vocab] input of `dtype`");
  def_address(args, "temperature", &SamplingArgs::temperature, "float32 [rows] or [1]");
  def_address(args, "top_k", &SamplingArgs::top_k, "int64 [rows] or [1]");
  def_address(args, "top_p", &SamplingArgs::top_p, "float64 [rows] or [1]");
  def_address(args, "min_p", &SamplingArgs::min_p, "float32 [rows] or [1]");
  def_address(args, "seed", &SamplingArgs::seed, "int64 [rows]; needed with tokens");
  def_address(args, "offset", &SamplingArgs::offset, "int64 [rows] or [1]; needed with tokens");
  def_address(args, "tokens", &SamplingArgs::tokens, "int64 [rows] output, or 0");
  def_address(args, "logprobs", &SamplingArgs::logprobs, "float32 [rows] output, or 0 (needs tokens)");
  def_address(args, "filtered", &SamplingArgs::filtered, "float32 [rows, vocab] output, contiguous, or 0");
  def_address(args, "workspace", &SamplingArgs::workspace, "CUDA only: device memory for partial results");
  args.def_readwrite("rows", &SamplingArgs::rows)
      .def_readwrite("vocab", &SamplingArgs::vocab)
      .def_readwrite("row_stride", &SamplingArgs::row_stride, "elements between row starts, >= vocab")
      .def_readwrite("temperature_per_row", &SamplingArgs::temperature_per_row)
      .def_readwrite("top_k_per_row", &SamplingArgs::top_k_per_row)
      .def_readwrite("top_p_per_row", &SamplingArgs::top_p_per_row)
      .def_readwrite("min_p_per_row", &SamplingArgs::min_p_per_row)
      .def_readwrite("offset_per_row", &SamplingArgs::offset_per_row)
      .def_readwrite("workspace_bytes", &SamplingArgs::workspace_bytes, "size of `workspace`");
  def_dtype(args);
  def_penalty_fields(args);

  def_cpu_launcher(m, "launch_sample_cpu", &cpu::sample,
                   "Sampling / filtering into whichever outputs are set (use turbogen.ops.sample, filter_logits).");
  def_cuda_launcher<SamplingArgs>(m, "launch_sample_cuda", TURBOGEN_CUDA_OP(sample),
                    "CUDA sampling / filtering over device addresses, enqueued on `stream` (cudaStream_t as an int).");
  m.def(
      "sampling_workspace_bytes",
      [](int64_t rows, int64_t vocab) -> int64_t {
#if defined(TURBOGEN_WITH_CUDA)
        return cuda::sampling_workspace_bytes(rows, vocab);
#else
        (void)rows;
        (void)vocab;
        raise_built_without_cuda("sampling_workspace_bytes");
#endif
      },
      "Bytes of device workspace launch_sample_cuda needs for rows x vocab.", py::arg("rows"), py::arg("vocab"));

  m.def(
      "philox4x32",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1, int rounds) {
        if (rounds < 0 || rounds > 64) throw py::value_error("turbogen._C.philox4x32: rounds must be in [0, 64]");
        const philox::Words out = philox::philox4x32(c0, c1, c2, c3, k0, k1, rounds);
        return py::make_tuple(out.w[0], out.w[1], out.w[2], out.w[3]);
      },
      "Philox4x32 on counter (c0..c3) and key (k0, k1): the C++ generator behind the CPU and CUDA kernels.",
      py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"),
      py::arg("rounds") = philox::kRounds);
}

}  // namespace turbogen
