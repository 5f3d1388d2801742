#include "turbogen/sampling.h"

#include "bindings.h"
#include "turbogen/philox.h"

namespace py = pybind11;

namespace turbogen {
namespace {

// Argument order shared by sample_cpu and sample_cuda (python/turbogen/ops/sampling.py builds it).
SamplingArgs make_args(uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, int dtype,
                       uintptr_t temperature, bool temperature_per_row, uintptr_t top_k, bool top_k_per_row,
                       uintptr_t top_p, bool top_p_per_row, uintptr_t min_p, bool min_p_per_row, uintptr_t seed,
                       uintptr_t offset, bool offset_per_row, uintptr_t tokens, uintptr_t logprobs,
                       uintptr_t filtered, const char* op) {
  if (!is_valid_dtype(dtype)) raise_on_error(Status::kBadDType, op);
  SamplingArgs args{};
  args.logits = from_address<const void>(logits);
  args.rows = rows;
  args.vocab = vocab;
  args.row_stride = row_stride;
  args.dtype = static_cast<DType>(dtype);
  args.temperature = from_address<const float>(temperature);
  args.temperature_per_row = temperature_per_row;
  args.top_k = from_address<const int64_t>(top_k);
  args.top_k_per_row = top_k_per_row;
  args.top_p = from_address<const double>(top_p);
  args.top_p_per_row = top_p_per_row;
  args.min_p = from_address<const float>(min_p);
  args.min_p_per_row = min_p_per_row;
  args.seed = from_address<const int64_t>(seed);
  args.offset = from_address<const int64_t>(offset);
  args.offset_per_row = offset_per_row;
  args.tokens = from_address<int64_t>(tokens);
  args.logprobs = from_address<float>(logprobs);
  args.filtered = from_address<float>(filtered);
  return args;
}

}  // namespace

void bind_sampling(py::module_& m) {
  m.def(
      "sample_cpu",
      [](uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, int dtype, uintptr_t temperature,
         bool temperature_per_row, uintptr_t top_k, bool top_k_per_row, uintptr_t top_p, bool top_p_per_row,
         uintptr_t min_p, bool min_p_per_row, uintptr_t seed, uintptr_t offset, bool offset_per_row,
         uintptr_t tokens, uintptr_t logprobs, uintptr_t filtered) {
        const SamplingArgs args =
            make_args(logits, rows, vocab, row_stride, dtype, temperature, temperature_per_row, top_k, top_k_per_row,
                      top_p, top_p_per_row, min_p, min_p_per_row, seed, offset, offset_per_row, tokens, logprobs,
                      filtered, "sample_cpu");
        Status status;
        {
          py::gil_scoped_release release;
          status = cpu::sample(args);
        }
        raise_on_error(status, "sample_cpu");
      },
      "Sampling / filtering over raw addresses (use turbogen.ops.sample). Null (0) outputs are skipped.",
      py::arg("logits"), py::arg("rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("dtype"),
      py::arg("temperature"), py::arg("temperature_per_row"), py::arg("top_k"), py::arg("top_k_per_row"),
      py::arg("top_p"), py::arg("top_p_per_row"), py::arg("min_p"), py::arg("min_p_per_row"), py::arg("seed"),
      py::arg("offset"), py::arg("offset_per_row"), py::arg("tokens"), py::arg("logprobs"), py::arg("filtered"));

  m.def(
      "philox4x32",
      [](uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1, int rounds) {
        if (rounds < 0 || rounds > 64) throw py::value_error("philox4x32: rounds must be in [0, 64]");
        const philox::Words out = philox::philox4x32(c0, c1, c2, c3, k0, k1, rounds);
        return py::make_tuple(out.w[0], out.w[1], out.w[2], out.w[3]);
      },
      "Philox4x32 on counter (c0..c3) and key (k0, k1): the C++ generator behind the CPU and CUDA kernels.",
      py::arg("c0"), py::arg("c1"), py::arg("c2"), py::arg("c3"), py::arg("k0"), py::arg("k1"),
      py::arg("rounds") = philox::kRounds);

#if defined(TURBOGEN_WITH_CUDA)
  m.def("sampling_workspace_bytes", &cuda::sampling_workspace_bytes,
        "Bytes of device workspace sample_cuda needs for rows x vocab.", py::arg("rows"), py::arg("vocab"));
  m.def(
      "sample_cuda",
      [](uintptr_t logits, int64_t rows, int64_t vocab, int64_t row_stride, int dtype, uintptr_t temperature,
         bool temperature_per_row, uintptr_t top_k, bool top_k_per_row, uintptr_t top_p, bool top_p_per_row,
         uintptr_t min_p, bool min_p_per_row, uintptr_t seed, uintptr_t offset, bool offset_per_row,
         uintptr_t tokens, uintptr_t logprobs, uintptr_t filtered, uintptr_t workspace, uintptr_t stream) {
        SamplingArgs args =
            make_args(logits, rows, vocab, row_stride, dtype, temperature, temperature_per_row, top_k, top_k_per_row,
                      top_p, top_p_per_row, min_p, min_p_per_row, seed, offset, offset_per_row, tokens, logprobs,
                      filtered, "sample_cuda");
        args.workspace = from_address<void>(workspace);
        raise_on_cuda_error(cuda::sample(args, reinterpret_cast<cudaStream_t>(stream)), "sample_cuda");
      },
      "CUDA sampling / filtering over raw device addresses (use turbogen.ops.sample).", py::arg("logits"),
      py::arg("rows"), py::arg("vocab"), py::arg("row_stride"), py::arg("dtype"), py::arg("temperature"),
      py::arg("temperature_per_row"), py::arg("top_k"), py::arg("top_k_per_row"), py::arg("top_p"),
      py::arg("top_p_per_row"), py::arg("min_p"), py::arg("min_p_per_row"), py::arg("seed"), py::arg("offset"),
      py::arg("offset_per_row"), py::arg("tokens"), py::arg("logprobs"), py::arg("filtered"), py::arg("workspace"),
      py::arg("stream"));
#endif
}

}  // namespace turbogen
