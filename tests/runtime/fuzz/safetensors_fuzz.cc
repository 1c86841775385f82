// libFuzzer target for the safetensors header parser (mirrors the reference's
// safetensors/fuzz/fuzz_targets/fuzz_target_1.rs: any input must parse or fail cleanly). Built only
// with -DKBITD_FUZZ=ON and clang; scripts/test.sh runs it for a bounded time.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "runtime/checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view file(reinterpret_cast<const char*>(data), size);
  auto header = kbitd::runtime::ParseSafetensorsHeader(file, "fuzz");
  if (!header.ok()) return 0;
  // An accepted header must describe tensors that tile the bytes after it exactly; touch the first
  // and last byte of each so AddressSanitizer catches any view that could escape the input.
  uint64_t expected = 0;
  volatile uint8_t sink = 0;
  for (const auto& tensor : header->tensors) {
    if (tensor.begin != expected || tensor.end < tensor.begin) std::abort();
    expected = tensor.end;
    if (tensor.size_bytes() == 0) continue;
    const uint8_t* start = data + header->data_start() + tensor.begin;
    sink = sink ^ start[0] ^ start[tensor.size_bytes() - 1];
  }
  if (header->data_start() + expected != size) std::abort();
  return 0;
}
