// Each op's bindings live in csrc/bindings/<op>.cpp and are registered from module.cpp.
// Bindings take raw addresses (Python ints from Tensor.data_ptr()), sizes, strides and a stream
// handle, so the extension never links libtorch and one wheel serves every torch version.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "turbogen/status.h"

#if defined(TURBOGEN_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace turbogen {

void bind_softmax(pybind11::module_& m);
void bind_sampling(pybind11::module_& m);
void bind_topk(pybind11::module_& m);

// Address passed from Python (Tensor.data_ptr()) -> typed pointer.
template <typename T>
inline T* from_address(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

// Turns a kernel's Status into a Python ValueError naming the op.
inline void raise_on_error(Status status, const char* op) {
  if (status != Status::kOk) {
    throw pybind11::value_error(std::string("turbogen._C.") + op + ": " + status_message(status));
  }
}

#if defined(TURBOGEN_WITH_CUDA)
inline void raise_on_cuda_error(cudaError_t err, const char* op) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("turbogen._C.") + op + ": CUDA error " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
}
#endif

}  // namespace turbogen
