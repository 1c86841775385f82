// Whole-file reads for the small text files kbitd opens (config.json, tokenizer.json, kbitd.yaml,
// TLS PEM files, evaluation text). Large tensor data is memory-mapped instead
// (runtime/checkpoint/mapped_file.h).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace kbitd {

// NOT_FOUND "cannot open PATH" when the file cannot be opened, DATA_LOSS "error reading PATH" on a
// read error.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace kbitd
