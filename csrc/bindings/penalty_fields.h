// The penalty inputs (turbogen/penalties.h PenaltyInputs) as flat Python fields of an argument struct that
// holds them as `penalties`: SamplingArgs (the penalties fused into sampling) and PenaltyArgs.
#pragma once

#include <cstdint>

#include "bindings.h"
#include "turbogen/penalties.h"

namespace turbogen {

template <typename Args>
void def_penalty_fields(pybind11::class_<Args>& cls) {
  auto address = [&cls](const char* name, auto PenaltyInputs::*field, const char* doc) {
    cls.def_property(
        name, [field](const Args& a) { return reinterpret_cast<uintptr_t>(a.penalties.*field); },
        [field](Args& a, uintptr_t value) {
          a.penalties.*field = reinterpret_cast<std::remove_reference_t<decltype(a.penalties.*field)>>(value);
        },
        doc);
  };
  auto flag = [&cls](const char* name, bool PenaltyInputs::*field) {
    cls.def_property(
        name, [field](const Args& a) { return a.penalties.*field; },
        [field](Args& a, bool value) { a.penalties.*field = value; }, "one value per row (else one shared)");
  };
  address("penalty_mask", &PenaltyInputs::mask,
          "int32 [rows, (vocab + 31) // 32]: the tokens to penalise (a superset), or 0 for no penalties");
  address("penalty_seen", &PenaltyInputs::seen, "int32 [rows, vocab] counts, or 0");
  address("penalty_generated", &PenaltyInputs::generated, "int32 [rows, vocab] counts, or 0");
  address("repetition_penalty", &PenaltyInputs::repetition, "float32 [rows] or [1], > 0");
  address("presence_penalty", &PenaltyInputs::presence, "float32 [rows] or [1], finite");
  address("frequency_penalty", &PenaltyInputs::frequency, "float32 [rows] or [1], finite");
  flag("repetition_penalty_per_row", &PenaltyInputs::repetition_per_row);
  flag("presence_penalty_per_row", &PenaltyInputs::presence_per_row);
  flag("frequency_penalty_per_row", &PenaltyInputs::frequency_per_row);
}

}  // namespace turbogen
