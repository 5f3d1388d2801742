#include "turbogen/penalties.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {
namespace {

// A pointer field of the nested PenaltyInputs, as an integer address (0 for null).
template <typename Pointee>
void def_penalty_address(py::class_<PenaltyArgs>& cls, const char* name, Pointee* PenaltyInputs::*field,
                         const char* doc) {
  cls.def_property(
      name, [field](const PenaltyArgs& a) { return reinterpret_cast<uintptr_t>(a.penalties.*field); },
      [field](PenaltyArgs& a, uintptr_t address) { a.penalties.*field = reinterpret_cast<Pointee*>(address); }, doc);
}

void def_penalty_flag(py::class_<PenaltyArgs>& cls, const char* name, bool PenaltyInputs::*field) {
  cls.def_property(
      name, [field](const PenaltyArgs& a) { return a.penalties.*field; },
      [field](PenaltyArgs& a, bool value) { a.penalties.*field = value; }, "one value per row (else one shared)");
}

}  // namespace

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
  def_penalty_address(args, "penalty_mask", &PenaltyInputs::mask, "int32 [rows, (vocab + 31) // 32]: marked tokens");
  def_penalty_address(args, "penalty_seen", &PenaltyInputs::seen, "int32 [rows, vocab] counts, or 0");
  def_penalty_address(args, "penalty_generated", &PenaltyInputs::generated, "int32 [rows, vocab] counts, or 0");
  def_penalty_address(args, "repetition_penalty", &PenaltyInputs::repetition, "float32 [rows] or [1], > 0");
  def_penalty_address(args, "presence_penalty", &PenaltyInputs::presence, "float32 [rows] or [1], finite");
  def_penalty_address(args, "frequency_penalty", &PenaltyInputs::frequency, "float32 [rows] or [1], finite");
  def_penalty_flag(args, "repetition_penalty_per_row", &PenaltyInputs::repetition_per_row);
  def_penalty_flag(args, "presence_penalty_per_row", &PenaltyInputs::presence_per_row);
  def_penalty_flag(args, "frequency_penalty_per_row", &PenaltyInputs::frequency_per_row);

  def_cpu_launcher(m, "launch_apply_penalties_cpu", &cpu::apply_penalties,
                   "Repetition / presence / frequency penalties into out (use turbogen.ops.apply_penalties).");
  m.def(
      "launch_apply_penalties_cuda",
      [](const PenaltyArgs& a, uintptr_t stream) {
#if defined(TURBOGEN_WITH_CUDA)
        raise_on_error(cuda::validate_launch(a), "launch_apply_penalties_cuda");
        raise_on_cuda_error(cuda::apply_penalties(a, reinterpret_cast<cudaStream_t>(stream)),
                            "launch_apply_penalties_cuda");
#else
        (void)a;
        (void)stream;
        raise_built_without_cuda("launch_apply_penalties_cuda");
#endif
      },
      "The CUDA penalties over device addresses, enqueued on `stream` (a cudaStream_t as an int).", py::arg("args"),
      py::arg("stream"));

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
