#include <pybind11/pybind11.h>

#include "../cpu/isa.h"
#include "bindings.h"
#include "turbogen/parallel.h"

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

namespace {

// Number of visible CUDA devices, or the reason there are none (no driver, no device...).
py::tuple cuda_device_count() {
#if defined(TURBOGEN_WITH_CUDA)
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later calls are not poisoned
    return py::make_tuple(0, std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err));
  }
  return py::make_tuple(count, count > 0 ? "" : "no CUDA device is visible");
#else
  return py::make_tuple(0, "turbogen was built without CUDA kernels (nvcc not found or TURBOGEN_CUDA=OFF)");
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "turbogen's compiled kernels (CPU always, CUDA when built with nvcc). Use turbogen.ops, not this module.";
  m.attr("version") = TURBOGEN_VERSION;
#if defined(TURBOGEN_WITH_CUDA)
  m.attr("cuda_compiled") = true;
#else
  m.attr("cuda_compiled") = false;
#endif
  m.attr("cuda_archs") = TURBOGEN_CUDA_ARCHS;
  m.def("cuda_device_count", &cuda_device_count, "(count, reason) for visible CUDA devices");
  m.def("num_threads", [] { return turbogen::ThreadPool::instance().num_threads(); },
        "Threads the CPU kernels use (TURBOGEN_NUM_THREADS, else the hardware concurrency).");
  m.def("cpu_isa", [] { return std::string(turbogen::cpu::isa::selected()); },
        "The CPU kernels' instruction-set variant: 'avx2' or 'portable' (TURBOGEN_CPU_ISA=portable forces it).");

  turbogen::bind_softmax(m);
  turbogen::bind_sampling(m);
  turbogen::bind_topk(m);
  turbogen::bind_beam_step(m);
  turbogen::bind_penalties(m);
  turbogen::bind_noise(m);
  turbogen::bind_verify(m);
  turbogen::bind_paged_attention(m);
}
