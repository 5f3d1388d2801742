#include "turbogen/beam_step.h"

#include "bindings.h"

namespace py = pybind11;

namespace turbogen {

void bind_beam_step(py::module_& m) {
  py::class_<BeamStepArgs> args(m, "BeamStepArgs",
                                "Arguments of launch_beam_step_cpu / _cuda (csrc/include/turbogen/beam_step.h).");
  args.def(py::init<>());
  def_address(args, "logits", &BeamStepArgs::logits, "[batch * beams, vocab] input of `dtype`");
  def_address(args, "running_scores", &BeamStepArgs::running_scores, "float32 [batch, beams]");
  def_address(args, "finished_scores", &BeamStepArgs::finished_scores, "float32 [batch, beams]");
  def_address(args, "is_finished", &BeamStepArgs::is_finished, "bool [batch, beams]");
  def_address(args, "may_improve", &BeamStepArgs::may_improve, "bool [batch]");
  def_address(args, "eos", &BeamStepArgs::eos, "int64 [num_eos] (null when num_eos == 0)");
  def_address(args, "seeds", &BeamStepArgs::seeds, "int64 [batch], or null without sampling");
  def_address(args, "offsets", &BeamStepArgs::offsets, "int64 [batch], or null without sampling");
  def_address(args, "candidate_scores", &BeamStepArgs::candidate_scores, "float32 [batch, k] output");
  def_address(args, "candidate_flat", &BeamStepArgs::candidate_flat, "int64 [batch, k] output");
  def_address(args, "next_scores", &BeamStepArgs::next_scores, "float32 [batch, beams] output");
  def_address(args, "next_source", &BeamStepArgs::next_source, "int64 [batch, beams] output");
  def_address(args, "next_finished_scores", &BeamStepArgs::next_finished_scores, "float32 [batch, beams] output");
  def_address(args, "finished_source", &BeamStepArgs::finished_source, "int64 [batch, beams] output");
  def_address(args, "next_is_finished", &BeamStepArgs::next_is_finished, "bool [batch, beams] output");
  def_address(args, "next_may_improve", &BeamStepArgs::next_may_improve, "bool [batch] output");
  def_address(args, "row_is_finite", &BeamStepArgs::row_is_finite, "bool [batch] output");
  args.def_readwrite("batch", &BeamStepArgs::batch)
      .def_readwrite("beams", &BeamStepArgs::beams)
      .def_readwrite("vocab", &BeamStepArgs::vocab)
      .def_readwrite("rows", &BeamStepArgs::rows, "rows of logits, == batch * beams")
      .def_readwrite("row_stride", &BeamStepArgs::row_stride, "elements between logits row starts, >= vocab")
      .def_readwrite("num_eos", &BeamStepArgs::num_eos)
      .def_readwrite("k", &BeamStepArgs::k, "max(2, 1 + num_eos) * beams")
      .def_readwrite("normalized", &BeamStepArgs::normalized)
      .def_readwrite("generated_length", &BeamStepArgs::generated_length, ">= 1")
      .def_readwrite("max_generated_length", &BeamStepArgs::max_generated_length, ">= 1")
      .def_readwrite("length_penalty", &BeamStepArgs::length_penalty)
      .def_readwrite("early_stopping", &BeamStepArgs::early_stopping, "0 False, 1 True, 2 'never'")
      .def_readwrite("all_stop", &BeamStepArgs::all_stop);
  def_dtype(args);

  def_cpu_launcher(m, "launch_beam_step_cpu", &cpu::beam_step,
                   "One fused beam-search step (use turbogen.ops.beam_step).");
  def_cuda_launcher<BeamStepArgs>(m, "launch_beam_step_cuda", TURBOGEN_CUDA_OP(beam_step),
                    "The CUDA beam step over device addresses, enqueued on `stream` (a cudaStream_t as an int).");
}

}  // namespace turbogen
