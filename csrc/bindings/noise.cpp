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
                   "The sampling contract's Gumbel noise for every token (use turbogen.ops.gumbel_noise).");
  def_cuda_launcher<GumbelNoiseArgs>(m, "launch_gumbel_noise_cuda", TURBOGEN_CUDA_OP(gumbel_noise),
                    "The CUDA Gumbel noise over device addresses, enqueued on `stream` (a cudaStream_t as an int).");
}

}  // namespace turbogen
