// GPTQ calibration: H = 2 X^T X of every Linear's inputs X, collected by running the float32 model
// on the CPU over a calibration text (Frantar et al. 2022, "GPTQ: Accurate Post-Training
// Quantization for Generative Pre-trained Transformers", §3: the layer-wise objective
// ||W X - Ŵ X||² has Hessian 2 X Xᵀ).
//
// How the inputs are captured: the forward pass is left untouched; the model runs through a
// Backend decorator whose Linear accumulates X^T X for the weight it is given (LinearWeight::name)
// and forwards every call to the CPU backend. That is the smallest hook there is (no new code in
// llama_forward, no second forward to maintain) and it sees exactly the inputs the runtime feeds
// each linear. The inputs are those of the float32 model for every layer (GPTQModel quantizes
// layer by layer and feeds later layers the quantized outputs); with one forward pass this is the
// simpler, common approximation and costs memory for the Hessians only.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kbitd::runtime {

struct GptqCalibrationOptions {
  int32_t window = 256;     // tokens per forward window (ScoreTokens windows)
  int32_t num_threads = 0;  // CPU threads; 0: the DeviceSet default
};

// Module name -> H [in, in] (row-major) for every Linear but lm_head of the checkpoint at
// `model_dir`, over the tokens of `text_file` (the model's tokenizer, special tokens added).
// INVALID_ARGUMENT for a missing or unreadable file or a text of fewer than 2 tokens.
absl::StatusOr<std::map<std::string, std::vector<double>>> CollectGptqHessians(
    const std::string& model_dir, const std::string& text_file,
    const GptqCalibrationOptions& options);

}  // namespace kbitd::runtime
