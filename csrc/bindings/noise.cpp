#include "turbogen/noise.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {

void bind_noise(py::module_& m) {
  py::class_<GumbelNoiseArgs> args(
      m, "GumbelNoiseArgs", "Arguments of launch_gumbel_noise_cpu / _cuda (csrc/include/turbogen/noise.h).");
  args.def(py::init<>());
  def_address(args, "seed", &GumbelNoiseArgs::seed, "int64 [rows], read as uint64");
  def_address(args, "offset", &GumbelNoiseArgs::offset, "int64 [rows], read as uint64");
  def_address(args, "out", &GumbelNoiseArgs::out, "float32 [rows, columns] output, contiguous");
  args.def_readwrite("rows", &GumbelNoiseArgs::rows).def_readwrite("columns", &GumbelNoiseArgs::columns);

  def_cpu_launcher(m, "launch_gumbel_noise_cpu", &cpu::gumbel_noise,
                   "The sampling contract's Gumbel noise for every token of every row (use turbogen.ops.gumbel_noise).");
  m.def(
      "launch_gumbel_noise_cuda",
      [](const GumbelNoiseArgs& a, uintptr_t stream) {
#if defined(TURBOGEN_WITH_CUDA)
        raise_on_error(cuda::validate_launch(a), "launch_gumbel_noise_cuda");
        raise_on_cuda_error(cuda::gumbel_noise(a, reinterpret_cast<cudaStream_t>(stream)),
                            "launch_gumbel_noise_cuda");
#else
        (void)a;
        (void)stream;
        raise_built_without_cuda("launch_gumbel_noise_cuda");
#endif
      },
      "The CUDA Gumbel noise over device addresses, enqueued on `stream` (a cudaStream_t as an int).",
      py::arg("args"), py::arg("stream"));
}

}  // namespace turbogen
