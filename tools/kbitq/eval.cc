#include "tools/kbitq/eval.h"

#include <chrono>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file.h"
#include "common/json.h"
#include "common/status_macros.h"
#include "runtime/device_set.h"
#include "runtime/loader.h"
#include "runtime/perplexity.h"
#include "runtime/tokenizer/tokenizer.h"

namespace kbitd::runtime {
namespace {

// The format names of docs/quality.md, as transformers' BitsAndBytesConfig spells them.
absl::StatusOr<std::optional<QuantizationConfig>> FormatConfig(const std::string& format,
                                                               std::optional<ScalarType> compute) {
  if (format == "none") return std::optional<QuantizationConfig>();
  QuantizationConfig c;
  if (format == "int8") {
    c.load_in_8bit = true;
  } else if (format == "nf4" || format == "nf4-dq" || format == "fp4" || format == "fp4-dq") {
    c.load_in_4bit = true;
    c.bnb_4bit_quant_type = format.substr(0, 3);
    c.bnb_4bit_use_double_quant = format.size() > 3;
    // Without --compute-dtype: transformers' default bnb_4bit_compute_dtype (float32).
    c.bnb_4bit_compute_dtype = compute.value_or(ScalarType::kFloat32);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown format \"", format, "\" (none, nf4, nf4-dq, fp4, fp4-dq or int8)"));
  }
  return std::optional<QuantizationConfig>(c);
}

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

absl::StatusOr<std::vector<EvalRow>> RunEval(const EvalOptions& options) {
  if (options.text_files.empty()) return absl::InvalidArgumentError("eval needs --text FILE");
  if (options.formats.empty()) return absl::InvalidArgumentError("eval needs at least one format");
  std::vector<std::optional<QuantizationConfig>> configs;
  for (const std::string& format : options.formats) {
    KBITD_ASSIGN_OR_RETURN(auto config, FormatConfig(format, options.compute_dtype));
    configs.push_back(std::move(config));
  }
  std::vector<std::string> texts;
  for (const std::string& path : options.text_files) {
    absl::StatusOr<std::string> text = ReadFileToString(path);
    if (!text.ok()) return absl::InvalidArgumentError(std::string(text.status().message()));
    texts.push_back(*std::move(text));
  }

  // The host, as the daemon sees it: one pool and one CPU backend (its thread pool) for every
  // format evaluated.
  DeviceSet::Options device_options;
  device_options.cpu_threads = options.num_threads;
  KBITD_ASSIGN_OR_RETURN(std::unique_ptr<DeviceSet> devices, DeviceSet::Create(device_options));
  KBITD_ASSIGN_OR_RETURN(Backend * backend, devices->BackendFor(Device::Cpu()));
  std::vector<EvalRow> rows;
  std::vector<std::vector<int32_t>> encoded;  // filled with the first model's tokenizer
  for (size_t f = 0; f < options.formats.size(); ++f) {
    EvalRow row;
    row.format = options.formats[f];
    LoadOptions load;
    load.name = "eval-" + row.format;
    load.path = options.model_dir;
    load.quantization = configs[f];
    load.compute_dtype = options.compute_dtype;
    load.devices = devices.get();
    auto started = std::chrono::steady_clock::now();
    KBITD_ASSIGN_OR_RETURN(std::shared_ptr<Model> model, LoadModel(load));
    row.load_seconds = SecondsSince(started);
    if (encoded.empty()) {
      for (size_t i = 0; i < texts.size(); ++i) {
        auto ids = model->tokenizer()->Encode(texts[i], /*add_special_tokens=*/true);
        if (!ids.ok()) {
          return absl::InvalidArgumentError(
              absl::StrCat(options.text_files[i], ": ", std::string(ids.status().message())));
        }
        encoded.push_back(*std::move(ids));
      }
    }
    row.parameters = model->parameter_count();
    row.weight_bytes = model->weight_bytes();
    started = std::chrono::steady_clock::now();
    NllSum total;
    for (size_t i = 0; i < encoded.size(); ++i) {
      PerplexityOptions score;
      score.window = options.window;
      const int64_t before = total.tokens;
      if (options.progress) {
        score.progress = [&](int64_t done, int64_t) {
          return options.progress(row.format, before + done, -1);
        };
      }
      auto sum = ScoreTokens(*model, *backend, encoded[i], score);
      if (!sum.ok()) {
        return absl::Status(sum.status().code(), absl::StrCat(options.text_files[i], ": ",
                                                              std::string(sum.status().message())));
      }
      total.nll += sum->nll;
      total.tokens += sum->tokens;
    }
    row.eval_seconds = SecondsSince(started);
    row.perplexity = total.Perplexity();
    row.mean_nll = total.nll / static_cast<double>(total.tokens);
    row.tokens = total.tokens;
    rows.push_back(row);
  }
  return rows;
}

std::string FormatEvalTable(const std::vector<EvalRow>& rows) {
  std::string out = absl::StrFormat("%-8s %12s %10s %10s %12s %9s %9s\n", "format", "perplexity",
                                    "vs first", "bits/param", "weights MB", "tokens", "seconds");
  for (const EvalRow& row : rows) {
    const double relative =
        rows.front().perplexity > 0 ? (row.perplexity / rows.front().perplexity - 1) * 100 : 0;
    absl::StrAppendFormat(&out, "%-8s %12.4f %+9.2f%% %10.3f %12.3f %9d %9.1f\n", row.format,
                          row.perplexity, relative,
                          8.0 * row.weight_bytes / static_cast<double>(row.parameters),
                          row.weight_bytes / 1e6, row.tokens, row.load_seconds + row.eval_seconds);
  }
  return out;
}

std::string EvalRowsToJson(const EvalOptions& options, const std::vector<EvalRow>& rows) {
  JsonValue::Array files, runs;
  for (const std::string& file : options.text_files) files.push_back(JsonValue::String(file));
  for (const EvalRow& row : rows) {
    runs.push_back(JsonValue::MakeObject({
        {"format", JsonValue::String(row.format)},
        {"perplexity", JsonValue::Number(row.perplexity)},
        {"mean_nll", JsonValue::Number(row.mean_nll)},
        {"tokens", JsonValue::Integer(row.tokens)},
        {"parameters", JsonValue::Integer(row.parameters)},
        {"weight_bytes", JsonValue::Integer(row.weight_bytes)},
        {"load_seconds", JsonValue::Number(row.load_seconds)},
        {"eval_seconds", JsonValue::Number(row.eval_seconds)},
    }));
  }
  JsonValue root = JsonValue::MakeObject({
      {"model", JsonValue::String(options.model_dir)},
      {"text_files", JsonValue::MakeArray(std::move(files))},
      {"window", JsonValue::Integer(options.window)},
      {"compute_dtype", options.compute_dtype.has_value()
                            ? JsonValue::String(std::string(TorchDtypeName(*options.compute_dtype)))
                            : JsonValue::String("checkpoint")},
      {"runs", JsonValue::MakeArray(std::move(runs))},
  });
  JsonValue::WriteOptions write;
  write.indent = 1;
  return root.Write(write) + "\n";
}

}  // namespace kbitd::runtime
