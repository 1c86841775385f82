// Progress reports of the checkpoint conversions (QuantizeCheckpoint, DequantizeCheckpoint).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace kbitd::runtime {

struct ConvertProgress {
  int64_t done = 0;  // items written so far (a quantized module or a copied tensor is one item)
  int64_t total = 0;
  std::string name;            // the item just written
  std::string action;          // "nf4", "fp4", "int8", "dequantize", "copy"
  uint64_t bytes_read = 0;     // cumulative input tensor bytes
  uint64_t bytes_written = 0;  // cumulative output tensor bytes
};

// Called after each item; returning false cancels the conversion (CANCELLED, nothing is left at
// the destination), which is how an interrupted kbitq or an abandoned request stops early.
using ConvertProgressFn = std::function<bool(const ConvertProgress&)>;

// What a finished conversion did.
struct ConvertSummary {
  int64_t converted = 0;  // modules quantized or dequantized
  int64_t copied = 0;     // tensors copied unchanged (or only cast)
  uint64_t bytes_read = 0;
  uint64_t bytes_written = 0;
  int shards = 0;
};

}  // namespace kbitd::runtime
