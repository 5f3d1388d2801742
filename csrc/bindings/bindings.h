// The single Python module turbogen._C (module.cpp) and the helpers each op's bindings share.
//
// Every op has one argument struct (csrc/include/turbogen/<op>.h), bound as a class whose fields
// python/turbogen/ops/_native.py sets by name: buffers as raw addresses (Python ints from
// Tensor.data_ptr()), sizes, strides, dtype codes, per-row flags. The launchers
// launch_<op>_cpu(args) and launch_<op>_cuda(args, stream) run the struct's validate() (a
// ValueError naming the argument) before any memory is touched, so the extension never links
// libtorch and one wheel serves every torch version. The CUDA launchers always exist; without
// CUDA kernels in the build they raise RuntimeError, so the module's names (and _C.pyi) do not
// depend on how it was built.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "turbogen/dtype.h"
#include "turbogen/status.h"

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace turbogen {

void bind_softmax(pybind11::module_& m);
void bind_sampling(pybind11::module_& m);
void bind_topk(pybind11::module_& m);
void bind_beam_step(pybind11::module_& m);
void bind_penalties(pybind11::module_& m);
void bind_noise(pybind11::module_& m);
void bind_verify(pybind11::module_& m);
void bind_paged_attention(pybind11::module_& m);

// Turns a failed Status into a Python ValueError naming the launcher and the argument.
inline void raise_on_error(const Status& status, const char* launcher) {
  if (!status.ok()) {
    throw pybind11::value_error(std::string("turbogen._C.") + launcher + ": " + status_message(status.code) + ": " +
                                status.detail);
  }
}

#if defined(TURBOGEN_WITH_CUDA)
inline void raise_on_cuda_error(cudaError_t err, const char* launcher) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("turbogen._C.") + launcher + ": CUDA error " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
}
#else
[[noreturn]] inline void raise_built_without_cuda(const char* launcher) {
  throw std::runtime_error(std::string("turbogen._C.") + launcher +
                           ": turbogen was built without CUDA kernels (nvcc not found or TURBOGEN_CUDA=OFF)");
}
#endif

// Binds `name(args)`, a CPU launcher: validate(args) before any memory is touched, then `kernel`
// without the GIL (it may run on the thread pool for a while), then a failed Status as a ValueError.
template <typename Args>
void def_cpu_launcher(pybind11::module_& m, const char* name, Status (*kernel)(const Args&), const char* doc) {
  m.def(
      name,
      [name, kernel](const Args& args) {
        raise_on_error(validate(args), name);
        Status status;
        {
          pybind11::gil_scoped_release release;
          status = kernel(args);
        }
        raise_on_error(status, name);
      },
      doc, pybind11::arg("args"));
}

// The CUDA half of a launcher pair: cuda::validate_launch and the op's cuda:: kernel, or nothing in a build
// without CUDA kernels (TURBOGEN_CUDA_OP(softmax) names cuda::softmax).
#if defined(TURBOGEN_WITH_CUDA)
template <typename Args>
using CudaKernel = cudaError_t (*)(const Args&, cudaStream_t);
#define TURBOGEN_CUDA_OP(kernel) &cuda::validate_launch, &cuda::kernel
#else
template <typename Args>
using CudaKernel = std::nullptr_t;
#define TURBOGEN_CUDA_OP(kernel) nullptr, nullptr
#endif

// Binds `name(args, stream)`, a CUDA launcher: `check(args)` on the host (a ValueError naming the argument),
// then `kernel` enqueued on `stream` (a cudaStream_t as an int; a CUDA error raises RuntimeError). In a build
// without CUDA kernels the same name exists and raises RuntimeError, so the module's names (and _C.pyi) do
// not depend on the build. Call as def_cuda_launcher<SoftmaxArgs>(m, name, TURBOGEN_CUDA_OP(softmax), doc).
template <typename Args>
void def_cuda_launcher(pybind11::module_& m, const char* name, Status (*check)(const Args&), CudaKernel<Args> kernel,
                       const char* doc) {
  m.def(
      name,
      [name, check, kernel](const Args& args, uintptr_t stream) {
#if defined(TURBOGEN_WITH_CUDA)
        raise_on_error(check(args), name);
        raise_on_cuda_error(kernel(args, reinterpret_cast<cudaStream_t>(stream)), name);
#else
        (void)args;
        (void)stream;
        (void)check;
        (void)kernel;
        raise_built_without_cuda(name);
#endif
      },
      doc, pybind11::arg("args"), pybind11::arg("stream"));
}

// A pointer field exposed to Python as an integer address (0 for null).
template <typename Args, typename Pointee>
void def_address(pybind11::class_<Args>& cls, const char* name, Pointee* Args::*field, const char* doc) {
  cls.def_property(
      name, [field](const Args& args) { return reinterpret_cast<uintptr_t>(args.*field); },
      [field](Args& args, uintptr_t address) { args.*field = reinterpret_cast<Pointee*>(address); }, doc);
}

// The dtype field as its integer code (python/turbogen/_ext.py's DTYPE_CODES). Any int is stored;
// validate() refuses the codes the kernels cannot read.
template <typename Args>
void def_dtype(pybind11::class_<Args>& cls) {
  cls.def_property(
      "dtype", [](const Args& args) { return static_cast<int>(args.dtype); },
      [](Args& args, int code) { args.dtype = static_cast<DType>(code); },
      "element type code: 0 float32, 1 float16, 2 bfloat16");
}

}  // namespace turbogen
