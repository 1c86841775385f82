// Defaults and range checks for kbitd.v1.Config (the defaults are documented in config.proto).
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "runtime/placement.h"
#include "server/config.h"

namespace kbitd::server {
namespace {

class Checker {
 public:
  explicit Checker(const absl::flat_hash_map<std::string, std::string>& origin) : origin_(origin) {}

  absl::Status Fail(const std::string& path, const std::string& what) const {
    auto it = origin_.find(path);
    const std::string where = it == origin_.end() ? "" : absl::StrCat(it->second, ": ");
    return absl::InvalidArgumentError(absl::StrCat(where, path, ": ", what));
  }

  template <typename T>
  absl::Status Range(const std::string& path, T value, T lo, T hi) const {
    if (value < lo || value > hi) {
      return Fail(path, absl::StrCat("must be in [", lo, ", ", hi, "], got ", value));
    }
    return absl::OkStatus();
  }

  absl::Status HostPort(const std::string& path, const std::string& address) const {
    const size_t colon = address.rfind(':');
    int port = -1;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
      return Fail(path, absl::StrCat("'", address, "' is not host:port (port 0-65535)"));
    }
    return absl::OkStatus();
  }

 private:
  const absl::flat_hash_map<std::string, std::string>& origin_;
};

// Sets a proto3 scalar that was left at zero (unset) to its documented default.
#define KBITD_DEFAULT(message, field, value) \
  if ((message).field() == decltype((message).field()){}) (message).set_##field(value)

absl::Status CheckQuantization(const Checker& check, const std::string& path,
                               const v1::QuantizationConfig& q) {
  if (q.load_in_4bit() && q.load_in_8bit()) {
    return check.Fail(path, "load_in_4bit and load_in_8bit are exclusive");
  }
  const std::string& type = q.bnb_4bit_quant_type();
  if (!type.empty() && type != "nf4" && type != "fp4") {
    return check.Fail(path + ".bnb_4bit_quant_type",
                      absl::StrCat("'", type, "' is not nf4 or fp4"));
  }
  const std::string& compute = q.bnb_4bit_compute_dtype();
  if (!compute.empty() && compute != "float16" && compute != "bfloat16" && compute != "float32") {
    return check.Fail(path + ".bnb_4bit_compute_dtype",
                      absl::StrCat("'", compute, "' is not float16, bfloat16 or float32"));
  }
  const std::string& storage = q.bnb_4bit_quant_storage();
  if (!storage.empty() && storage != "uint8" && storage != "int8" && storage != "float16" &&
      storage != "bfloat16" && storage != "float32") {
    return check.Fail(
        path + ".bnb_4bit_quant_storage",
        absl::StrCat("'", storage, "' is not uint8, int8, float16, bfloat16 or float32"));
  }
  if (q.has_llm_int8_threshold() &&
      (!std::isfinite(q.llm_int8_threshold()) || q.llm_int8_threshold() < 0)) {
    return check.Fail(path + ".llm_int8_threshold", "must be a finite number >= 0");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateModelName(std::string_view name_view) {
  const std::string name(name_view);
  if (name.empty() || name.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("model name must have 1 to 128 characters, got ", name.size()));
  }
  if (name[0] == '.') {
    return absl::InvalidArgumentError(absl::StrCat("model name '", name, "' starts with '.'"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("model name '", absl::CHexEscape(name),
                       "' may only contain letters, digits, '.', '_' and '-'"));
    }
  }
  return absl::OkStatus();
}

std::string BundledModelRoot() {
  if (const char* env = std::getenv("KBITD_BUNDLED_MODEL_ROOT"); env != nullptr) return env;
#ifdef KBITD_BUNDLED_MODEL_ROOT
  return KBITD_BUNDLED_MODEL_ROOT;
#else
  return "";
#endif
}

absl::Status FinalizeConfig(v1::Config* config,
                            const absl::flat_hash_map<std::string, std::string>& origin) {
  const Checker check(origin);
  KBITD_DEFAULT(*config, listen_address, "0.0.0.0:50051");
  KBITD_DEFAULT(*config, metrics_address, "0.0.0.0:9400");
  KBITD_DEFAULT(*config, log_level, "info");
  v1::LimitsConfig& limits = *config->mutable_limits();
  KBITD_DEFAULT(limits, max_queue, 256);
  KBITD_DEFAULT(limits, max_batch_tokens, 2048);
  KBITD_DEFAULT(limits, max_batch_size, 64);
  KBITD_DEFAULT(limits, max_new_tokens, 4096);
  KBITD_DEFAULT(limits, default_max_new_tokens, 256);
  KBITD_DEFAULT(limits, max_prompt_tokens, 32768);
  KBITD_DEFAULT(limits, max_stop_strings, 16);
  KBITD_DEFAULT(limits, max_stop_string_bytes, 256);
  KBITD_DEFAULT(limits, max_message_bytes, 4 << 20);
  KBITD_DEFAULT(limits, prefill_chunk_tokens, 512);
  KBITD_DEFAULT(*config, unload_grace_seconds, 30);
  KBITD_DEFAULT(*config, shutdown_grace_seconds, 30);

  KBITD_RETURN_IF_ERROR(check.HostPort("listen_address", config->listen_address()));
  if (config->metrics_address() != "off") {
    KBITD_RETURN_IF_ERROR(check.HostPort("metrics_address", config->metrics_address()));
  }
  if (config->tls().cert_file().empty() != config->tls().key_file().empty()) {
    return check.Fail("tls", "cert_file and key_file must be set together");
  }
  if (!config->tls().client_ca_file().empty() && config->tls().cert_file().empty()) {
    return check.Fail("tls.client_ca_file", "needs cert_file and key_file");
  }
  if (!config->admin_token().empty() && !config->admin_token_file().empty()) {
    return check.Fail("admin_token", "set admin_token or admin_token_file, not both");
  }
  if (config->model_root().empty() && config->models_size() == 0) {
    // Nothing configured at all: serve the bundled default model, so that a bare `kbitd` answers
    // Generate at once (README). A model_root without models starts empty instead.
    const std::string bundled = BundledModelRoot();
    if (!bundled.empty() && std::filesystem::exists(bundled + "/default/config.json")) {
      config->set_model_root(bundled);
      v1::ModelConfig& model = *config->add_models();
      model.set_name("default");
      model.set_path("default");
      model.set_dtype("float32");  // the CPU backend computes in float32 anyway
    }
  }
  if (config->model_root().empty()) {
    return check.Fail(
        "model_root",
        "is required (the bundled default model, served when nothing is configured, "
        "was not found: set KBITD_BUNDLED_MODEL_ROOT to the folder holding default/)");
  }
  const std::string& level = config->log_level();
  if (level != "debug" && level != "info" && level != "warning" && level != "error") {
    return check.Fail("log_level",
                      absl::StrCat("'", level, "' is not debug, info, warning, error"));
  }
  KBITD_RETURN_IF_ERROR(check.Range("limits.max_queue", limits.max_queue(), 1, 1 << 20));
  KBITD_RETURN_IF_ERROR(check.Range("limits.max_batch_size", limits.max_batch_size(), 1, 4096));
  KBITD_RETURN_IF_ERROR(check.Range("limits.max_batch_tokens", limits.max_batch_tokens(),
                                    limits.max_batch_size(), 1 << 20));
  KBITD_RETURN_IF_ERROR(check.Range("limits.max_new_tokens", limits.max_new_tokens(), 1, 1 << 20));
  KBITD_RETURN_IF_ERROR(check.Range("limits.default_max_new_tokens",
                                    limits.default_max_new_tokens(), 1, limits.max_new_tokens()));
  KBITD_RETURN_IF_ERROR(
      check.Range("limits.max_prompt_tokens", limits.max_prompt_tokens(), 1, 1 << 24));
  KBITD_RETURN_IF_ERROR(check.Range("limits.max_stop_strings", limits.max_stop_strings(), 1, 1024));
  KBITD_RETURN_IF_ERROR(
      check.Range("limits.max_stop_string_bytes", limits.max_stop_string_bytes(), 1, 65536));
  KBITD_RETURN_IF_ERROR(
      check.Range("limits.max_message_bytes", limits.max_message_bytes(), 1024, 1 << 30));
  KBITD_RETURN_IF_ERROR(check.Range("limits.prefill_chunk_tokens", limits.prefill_chunk_tokens(), 1,
                                    limits.max_batch_tokens()));
  KBITD_RETURN_IF_ERROR(
      check.Range("unload_grace_seconds", config->unload_grace_seconds(), 0.0, 86400.0));
  KBITD_RETURN_IF_ERROR(
      check.Range("shutdown_grace_seconds", config->shutdown_grace_seconds(), 0.0, 86400.0));
  KBITD_RETURN_IF_ERROR(
      check.Range<int64_t>("kv_cache_tokens", config->kv_cache_tokens(), 0, int64_t{1} << 32));
  KBITD_RETURN_IF_ERROR(check.Range("num_threads", config->num_threads(), 0, 1024));
  for (const auto& [device, size] : config->max_memory()) {
    const std::string path = absl::StrCat("max_memory.", device);
    if (absl::StatusOr<runtime::Device> d = runtime::ParseDevice(device); !d.ok()) {
      return check.Fail(path, std::string(d.status().message()));
    }
    if (absl::StatusOr<int64_t> bytes = runtime::ParseMemorySize(size); !bytes.ok()) {
      return check.Fail(path, std::string(bytes.status().message()));
    }
  }
  KBITD_RETURN_IF_ERROR(check.Range("kernel_timing_interval_steps",
                                    config->kernel_timing_interval_steps(), 0, 1'000'000));

  absl::flat_hash_set<std::string> names;
  for (int i = 0; i < config->models_size(); ++i) {
    const v1::ModelConfig& model = config->models(i);
    const std::string path = absl::StrCat("models[", i, "]");
    if (absl::Status status = ValidateModelName(model.name()); !status.ok()) {
      return check.Fail(path + ".name", std::string(status.message()));
    }
    if (!names.insert(model.name()).second) {
      return check.Fail(path + ".name", absl::StrCat("model '", model.name(), "' listed twice"));
    }
    if (model.path().empty()) return check.Fail(path + ".path", "is required");
    KBITD_RETURN_IF_ERROR(CheckQuantization(check, path + ".quantization", model.quantization()));
    const std::string& dtype = model.dtype();
    if (!dtype.empty() && dtype != "auto" && dtype != "float32" && dtype != "bfloat16" &&
        dtype != "float16") {
      return check.Fail(path + ".dtype",
                        absl::StrCat("'", dtype, "' is not float32, bfloat16, float16 or auto"));
    }
    if (!model.kv_cache_bytes().empty()) {
      if (absl::StatusOr<int64_t> bytes = runtime::ParseMemorySize(model.kv_cache_bytes());
          !bytes.ok()) {
        return check.Fail(path + ".kv_cache_bytes", std::string(bytes.status().message()));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kbitd::server
