#include "turbogen/penalties.h"

#include "bindings.h"
#include "penalty_fields.h"

namespace py = pybind11;

namespace turbogen {

void bind_penalties(py::module_& m) {
  py::class_<PenaltyArgs> args(m, "PenaltyArgs",
                               "Arguments of launch_apply_penalties_cpu / _cuda (csrc/include/turbogen/penalties.h).");
  args.def(py::init<>());
  def_address(args, "logits", &PenaltyArgs::logits, "[rows, vocab] input of `dtype`");
  def_address(args, "out", &PenaltyArgs::out, "[rows, vocab] output of `dtype`, contiguous; == logits: in place");
  args.def_readwrite("rows", &PenaltyArgs::rows)
      .def_readwrite("vocab", &PenaltyArgs::vocab)
      .def_readwrite("row_stride", &PenaltyArgs::row_stride, "elements between row starts, >= vocab");
  def_dtype(args);
  def_penalty_fields(args);

  def_cpu_launcher(m, "launch_apply_penalties_cpu", &cpu::apply_penalties,
                   "Repetition / presence / frequency penalties into out (use turbogen.ops.apply_penalties).");
  def_cuda_launcher<PenaltyArgs>(m, "launch_apply_penalties_cuda", TURBOGEN_CUDA_OP(apply_penalties),
                    "The CUDA penalties over device addresses, enqueued on `stream` (a cudaStream_t as an int).");

  py::class_<PenaltyAcceptArgs> accept(
      m, "PenaltyAcceptArgs", "Arguments of launch_accept_penalty_tokens_cpu (csrc/include/turbogen/penalties.h).");
  accept.def(py::init<>());
  def_address(accept, "mask", &PenaltyAcceptArgs::mask, "int32 [rows, (vocab + 31) // 32], updated");
  def_address(accept, "seen", &PenaltyAcceptArgs::seen, "int32 [rows, vocab] counts, updated, or 0");
  def_address(accept, "generated", &PenaltyAcceptArgs::generated, "int32 [rows, vocab] counts, updated, or 0");
  def_address(accept, "seen_from", &PenaltyAcceptArgs::seen_from, "int64 [rows]; needed with seen");
  def_address(accept, "generated_from", &PenaltyAcceptArgs::generated_from, "int64 [rows]; needed with generated");
  def_address(accept, "lengths", &PenaltyAcceptArgs::lengths, "int64 [rows], updated");
  def_address(accept, "recent", &PenaltyAcceptArgs::recent, "int64 [rows, window] ring, updated");
  def_address(accept, "retained", &PenaltyAcceptArgs::retained, "int64 [rows], updated");
  def_address(accept, "tokens", &PenaltyAcceptArgs::tokens, "int64 [rows, n], every id in [0, vocab)");
  accept.def_readwrite("rows", &PenaltyAcceptArgs::rows)
      .def_readwrite("vocab", &PenaltyAcceptArgs::vocab)
      .def_readwrite("window", &PenaltyAcceptArgs::window)
      .def_readwrite("n", &PenaltyAcceptArgs::n, "tokens per row");
  def_cpu_launcher(m, "launch_accept_penalty_tokens_cpu", &cpu::accept_penalty_tokens,
                   "Counts accepted tokens into a CPU penalty state (use turbogen.ops.PenaltyState.accept).");
}

}  // namespace turbogen
