// The daemon's configuration: kbitd.yaml parsed into the kbitd.v1.Config message (one schema for
// the file, the flags and the API), overridden by "key.path=value" flags, then defaulted and
// validated. Every error names the place it comes from: "kbitd.yaml:12:5: limits.max_queue: ..."
// or "flag --set limits.max_queue=...: ...". Thread-compatible.
#pragma once

#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kbitd/v1/config.pb.h"

namespace kbitd::server {

class ConfigBuilder {
 public:
  // Reads YAML text. Unknown keys, duplicate keys, wrong types and out-of-range numbers are
  // INVALID_ARGUMENT with "<source_name>:<line>:<column>". May be called once, before overrides.
  absl::Status ParseYaml(std::string_view yaml, std::string_view source_name);
  absl::Status ParseYamlFile(const std::string& path);

  // Sets one field from a flag: `path` is a dotted field path ("limits.max_queue",
  // "tls.cert_file", "models" is not settable this way), `value` a YAML scalar or flow
  // collection ("10", "[a, b]", "{cpu: 8GiB}").
  absl::Status Override(std::string_view path, std::string_view value);

  // Fills unset fields with their documented defaults and checks every value; the result is
  // ready for the components.
  absl::StatusOr<v1::Config> Build() &&;

 private:
  v1::Config config_;
  // Field path ("limits.max_queue", "models[1].name") -> where its value came from.
  absl::flat_hash_map<std::string, std::string> origin_;
};

// Where the bundled default model lives (a folder holding default/): $KBITD_BUNDLED_MODEL_ROOT,
// else the source tree's models/ this binary was built from. With neither model_root nor models
// configured, FinalizeConfig serves <that>/default as model "default".
std::string BundledModelRoot();

// Defaults and validation alone (used by Build; exposed for tests and for configs built in code).
// `origin` maps field paths to locations used in error messages; may be empty.
absl::Status FinalizeConfig(v1::Config* config,
                            const absl::flat_hash_map<std::string, std::string>& origin);

// A model name clients can use: 1-128 characters of [A-Za-z0-9._-], not starting with '.'.
absl::Status ValidateModelName(std::string_view name);

}  // namespace kbitd::server
