// kbitq: offline bitsandbytes-compatible checkpoint tool (inspect and dequantize read GPTQ too).
//   kbitq quantize --in DIR --out DIR --type nf4|fp4|int8 [--double-quant] [--blocksize N]
//         [--compute-dtype bf16|fp16|fp32] [--quant-storage uint8|bf16|fp16|fp32]
//         [--skip-modules lm_head,...] [--max-shard-size BYTES] [--quiet]
//   kbitq quantize --in DIR --out DIR --type gptq [--bits 2|3|4|8] [--group-size N|-1]
//         [--sym|--asym] [--calibration FILE [--act-order]] [--max-shard-size BYTES] [--quiet]
//   kbitq inspect DIR [--json]
//   kbitq dequantize --in DIR --out DIR [--dtype bf16|fp16|fp32] [--quiet]
//   kbitq eval --model DIR --text FILE[,FILE...] [--type none,nf4,nf4-dq,fp4,fp4-dq,int8]
//         [--compute-dtype bf16|fp16|fp32] [--window N] [--threads N] [--json FILE] [--quiet]
//   kbitq --help | --version
// Exit status: 0 success, 1 conversion error (message names the file/tensor), 2 usage error.
#include <signal.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "runtime/convert/dequantize_checkpoint.h"
#include "runtime/convert/gptq_calibration.h"
#include "runtime/convert/inspect_checkpoint.h"
#include "runtime/convert/quantize_checkpoint.h"
#include "runtime/convert/quantize_gptq_checkpoint.h"
#include "tools/kbitq/eval.h"

namespace kbitd::runtime {
namespace {

constexpr char kUsage[] =
    "kbitq: converts Hugging Face checkpoints offline to and from the formats bitsandbytes saves\n"
    "(NF4/FP4 blockwise 4-bit, optionally double-quantized, and LLM.int8()), inspects and\n"
    "dequantizes them and GPTQ checkpoints (bits 2/3/4/8), and compares the held-out perplexity\n"
    "of each format. The output loads in transformers with bitsandbytes and in kbitd.\n"
    "Exit status: 0 done, 1 conversion error, 2 usage error.\n"
    "\n"
    "usage:\n"
    "  kbitq quantize --in DIR --out DIR --type nf4|fp4|int8 [--double-quant] [--blocksize N]\n"
    "        [--compute-dtype bf16|fp16|fp32] [--quant-storage uint8|bf16|fp16|fp32]\n"
    "        [--skip-modules lm_head,...] [--max-shard-size BYTES] [--quiet]\n"
    "  kbitq quantize --in DIR --out DIR --type gptq [--bits 2|3|4|8] [--group-size N|-1]\n"
    "        [--sym|--asym] [--calibration FILE [--act-order]] [--max-shard-size BYTES] [--quiet]\n"
    "        (GPTQ layout; the GPTQ algorithm with --calibration text, else round-to-nearest;\n"
    "        defaults: 4 bits, group size 128, symmetric)\n"
    "  kbitq inspect DIR [--json]\n"
    "  kbitq dequantize --in DIR --out DIR [--dtype bf16|fp16|fp32] [--quiet]\n"
    "  kbitq eval --model DIR --text FILE[,FILE...] [--type none,nf4,nf4-dq,fp4,fp4-dq,int8]\n"
    "        [--compute-dtype bf16|fp16|fp32] [--window N] [--threads N] [--json FILE] [--quiet]\n"
    "  kbitq --help | --version\n"
    "\n"
    "examples:\n"
    "  kbitq quantize --in models/default --out /tmp/default-nf4 --type nf4 --double-quant\n"
    "  kbitq quantize --in models/default --out /tmp/default-gptq4 --type gptq --bits 4\n"
    "  kbitq inspect /tmp/default-nf4\n"
    "  kbitq eval --model models/default --text models/default/heldout.txt --type none,nf4,int8\n"
    "\n"
    "docs/kbitq.md has the details.\n";

struct Args {
  std::string command;
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;
};

absl::StatusOr<Args> Parse(int argc, char** argv, const std::set<std::string>& value_flags,
                           const std::set<std::string>& bool_flags) {
  Args args;
  args.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      args.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2), value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    if (bool_flags.count(name)) {
      if (has_value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      args.flags[name] = "1";
    } else if (value_flags.count(name)) {
      if (!has_value) {
        if (i + 1 >= argc)
          return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        value = argv[++i];
      }
      args.flags[name] = value;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown option --", name, " for ", args.command));
    }
  }
  return args;
}

absl::StatusOr<std::string> Required(const Args& args, const std::string& name) {
  auto it = args.flags.find(name);
  if (it == args.flags.end() || it->second.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(args.command, " needs --", name));
  }
  return it->second;
}

absl::StatusOr<ScalarType> DtypeFlag(const std::string& flag, const std::string& value,
                                     bool allow_uint8) {
  static const std::map<std::string, ScalarType> kNames = {
      {"bf16", ScalarType::kBFloat16}, {"bfloat16", ScalarType::kBFloat16},
      {"fp16", ScalarType::kFloat16},  {"float16", ScalarType::kFloat16},
      {"fp32", ScalarType::kFloat32},  {"float32", ScalarType::kFloat32},
      {"uint8", ScalarType::kUInt8}};
  auto it = kNames.find(value);
  if (it == kNames.end() || (it->second == ScalarType::kUInt8 && !allow_uint8)) {
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": unknown dtype \"", value, "\""));
  }
  return it->second;
}

// Set by SIGINT/SIGTERM: the conversion stops after the current tensor and removes its staging
// folder (a second signal kills at once: the handler is one-shot).
volatile std::sig_atomic_t g_interrupted = 0;

void OnSignal(int) { g_interrupted = 1; }

void InstallSignalHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  action.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

ConvertProgressFn MakeProgress(bool quiet) {
  InstallSignalHandlers();
  return [quiet](const ConvertProgress& p) {
    if (g_interrupted) return false;
    if (quiet) return true;
    std::fprintf(stderr, "[%*lld/%lld] %-10s %s\n",
                 static_cast<int>(std::to_string(p.total).size()), static_cast<long long>(p.done),
                 static_cast<long long>(p.total), p.action.c_str(), p.name.c_str());
    return true;
  };
}

void PrintSummary(const char* verb, const ConvertSummary& s, const std::string& out) {
  std::fprintf(stderr,
               "%s %lld modules, copied %lld tensors: %.2f MiB -> %.2f MiB in %d file(s) at %s\n",
               verb, static_cast<long long>(s.converted), static_cast<long long>(s.copied),
               s.bytes_read / 1048576.0, s.bytes_written / 1048576.0, s.shards, out.c_str());
}

absl::StatusOr<uint64_t> MaxShardSize(const Args& args, uint64_t fallback) {
  auto it = args.flags.find("max-shard-size");
  if (it == args.flags.end()) return fallback;
  uint64_t bytes = 0;
  if (!absl::SimpleAtoi(it->second, &bytes) || bytes == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-shard-size: \"", it->second, "\" is not a positive byte count"));
  }
  return bytes;
}

// --type gptq: its own flags; the bitsandbytes ones are refused rather than ignored.
absl::Status QuantizeGptq(const Args& args, const std::string& in, const std::string& out) {
  for (const char* flag :
       {"double-quant", "blocksize", "quant-storage", "compute-dtype", "skip-modules"}) {
    if (args.flags.count(flag)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " applies to nf4/fp4/int8 only"));
    }
  }
  if (args.flags.count("sym") && args.flags.count("asym")) {
    return absl::InvalidArgumentError("--sym and --asym exclude each other");
  }
  QuantizeGptqCheckpointOptions options;
  quant::GptqQuantizeOptions& q = options.quant;
  q.sym = args.flags.count("asym") == 0;
  if (auto it = args.flags.find("bits"); it != args.flags.end()) {
    if (!absl::SimpleAtoi(it->second, &q.bits)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--bits: \"", it->second, "\" is not a number"));
    }
  }
  KBITD_RETURN_IF_ERROR(quant::ValidateGptqBits(q.bits));
  if (auto it = args.flags.find("group-size"); it != args.flags.end()) {
    if (!absl::SimpleAtoi(it->second, &q.group_size)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--group-size: \"", it->second, "\" is not a number"));
    }
  }
  KBITD_RETURN_IF_ERROR(quant::ValidateGptqGroupSize(q.group_size));
  KBITD_ASSIGN_OR_RETURN(options.output.max_shard_bytes,
                         MaxShardSize(args, options.output.max_shard_bytes));
  q.act_order = args.flags.count("act-order") > 0;
  std::map<std::string, std::vector<double>> hessians;
  if (auto it = args.flags.find("calibration"); it != args.flags.end()) {
    if (!args.flags.count("quiet")) std::fprintf(stderr, "calibrating on %s\n", it->second.c_str());
    KBITD_ASSIGN_OR_RETURN(hessians, CollectGptqHessians(in, it->second, {}));
    options.hessians = &hessians;
  } else if (q.act_order) {
    return absl::InvalidArgumentError("--act-order needs --calibration (it orders by the inputs)");
  }
  options.progress = MakeProgress(args.flags.count("quiet") > 0);
  KBITD_ASSIGN_OR_RETURN(ConvertSummary summary, QuantizeGptqCheckpoint(in, out, options));
  PrintSummary("quantized", summary, out);
  return absl::OkStatus();
}

absl::Status Quantize(const Args& args) {
  KBITD_ASSIGN_OR_RETURN(std::string in, Required(args, "in"));
  KBITD_ASSIGN_OR_RETURN(std::string out, Required(args, "out"));
  KBITD_ASSIGN_OR_RETURN(std::string type, Required(args, "type"));
  if (type == "gptq") return QuantizeGptq(args, in, out);
  for (const char* flag : {"bits", "group-size", "sym", "asym", "calibration", "act-order"}) {
    if (args.flags.count(flag)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, " applies to --type gptq only"));
    }
  }
  QuantizeCheckpointOptions options;
  QuantizationConfig& c = options.config;
  if (type == "int8") {
    c.load_in_8bit = true;
    for (const char* flag : {"double-quant", "blocksize", "quant-storage", "compute-dtype"}) {
      if (args.flags.count(flag)) {
        return absl::InvalidArgumentError(absl::StrCat("--", flag, " applies to nf4/fp4 only"));
      }
    }
  } else if (type == "nf4" || type == "fp4") {
    c.load_in_4bit = true;
    c.bnb_4bit_quant_type = type;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--type: unknown type \"", type, "\" (nf4, fp4, int8 or gptq)"));
  }
  c.bnb_4bit_use_double_quant = args.flags.count("double-quant") > 0;
  if (auto it = args.flags.find("blocksize"); it != args.flags.end()) {
    if (!absl::SimpleAtoi(it->second, &c.blocksize)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--blocksize: \"", it->second, "\" is not a number"));
    }
  }
  if (auto it = args.flags.find("compute-dtype"); it != args.flags.end()) {
    KBITD_ASSIGN_OR_RETURN(c.bnb_4bit_compute_dtype, DtypeFlag("compute-dtype", it->second, false));
  }
  if (auto it = args.flags.find("quant-storage"); it != args.flags.end()) {
    KBITD_ASSIGN_OR_RETURN(c.bnb_4bit_quant_storage, DtypeFlag("quant-storage", it->second, true));
  }
  if (auto it = args.flags.find("skip-modules"); it != args.flags.end()) {
    std::vector<std::string> names = absl::StrSplit(it->second, ',', absl::SkipWhitespace());
    c.llm_int8_skip_modules = names;
  }
  KBITD_ASSIGN_OR_RETURN(options.output.max_shard_bytes,
                         MaxShardSize(args, options.output.max_shard_bytes));
  KBITD_RETURN_IF_ERROR(ValidateQuantizationConfig(c));
  options.progress = MakeProgress(args.flags.count("quiet") > 0);
  KBITD_ASSIGN_OR_RETURN(ConvertSummary summary, QuantizeCheckpoint(in, out, options));
  PrintSummary("quantized", summary, out);
  return absl::OkStatus();
}

absl::Status Dequantize(const Args& args) {
  KBITD_ASSIGN_OR_RETURN(std::string in, Required(args, "in"));
  KBITD_ASSIGN_OR_RETURN(std::string out, Required(args, "out"));
  DequantizeCheckpointOptions options;
  if (auto it = args.flags.find("dtype"); it != args.flags.end()) {
    KBITD_ASSIGN_OR_RETURN(ScalarType dtype, DtypeFlag("dtype", it->second, false));
    options.dtype = dtype;
  }
  options.progress = MakeProgress(args.flags.count("quiet") > 0);
  KBITD_ASSIGN_OR_RETURN(ConvertSummary summary, DequantizeCheckpoint(in, out, options));
  PrintSummary("dequantized", summary, out);
  return absl::OkStatus();
}

absl::StatusOr<int32_t> PositiveFlag(const Args& args, const std::string& name, int32_t fallback,
                                     bool allow_zero) {
  auto it = args.flags.find(name);
  if (it == args.flags.end()) return fallback;
  int32_t value = 0;
  if (!absl::SimpleAtoi(it->second, &value) || value < 0 || (value == 0 && !allow_zero)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": \"", it->second, "\" is not a ",
                                                   allow_zero ? "non-negative" : "positive",
                                                   " number"));
  }
  return value;
}

absl::Status Eval(const Args& args) {
  EvalOptions options;
  KBITD_ASSIGN_OR_RETURN(options.model_dir, Required(args, "model"));
  KBITD_ASSIGN_OR_RETURN(std::string text, Required(args, "text"));
  options.text_files = absl::StrSplit(text, ',', absl::SkipWhitespace());
  if (auto it = args.flags.find("type"); it != args.flags.end()) {
    options.formats = absl::StrSplit(it->second, ',', absl::SkipWhitespace());
  }
  if (auto it = args.flags.find("compute-dtype"); it != args.flags.end()) {
    KBITD_ASSIGN_OR_RETURN(ScalarType dtype, DtypeFlag("compute-dtype", it->second, false));
    options.compute_dtype = dtype;
  }
  KBITD_ASSIGN_OR_RETURN(options.window, PositiveFlag(args, "window", 512, false));
  KBITD_ASSIGN_OR_RETURN(options.num_threads, PositiveFlag(args, "threads", 0, true));
  InstallSignalHandlers();
  const bool quiet = args.flags.count("quiet") > 0;
  options.progress = [quiet](const std::string& format, int64_t done, int64_t) {
    if (g_interrupted) return false;
    if (!quiet)
      std::fprintf(stderr, "\r%-8s %lld tokens scored", format.c_str(),
                   static_cast<long long>(done));
    return true;
  };
  KBITD_ASSIGN_OR_RETURN(std::vector<EvalRow> rows, RunEval(options));
  if (!quiet) std::fprintf(stderr, "\n");
  std::cout << FormatEvalTable(rows);
  if (auto it = args.flags.find("json"); it != args.flags.end()) {
    std::ofstream out(it->second, std::ios::binary | std::ios::trunc);
    out << EvalRowsToJson(options, rows);
    out.close();
    if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot write ", it->second));
  }
  return absl::OkStatus();
}

absl::Status Inspect(const Args& args) {
  if (args.positional.size() != 1) {
    return absl::InvalidArgumentError("inspect needs exactly one checkpoint folder");
  }
  KBITD_ASSIGN_OR_RETURN(CheckpointReport report, InspectCheckpoint(args.positional[0]));
  std::cout << (args.flags.count("json") ? ReportToJson(report) : FormatReport(report));
  return absl::OkStatus();
}

int Main(int argc, char** argv) {
  if (int status = HandleHelpAndVersion(argc, argv, "kbitq", kUsage); status >= 0) return status;
  if (argc < 2 || std::string(argv[1]) == "help") {
    (argc < 2 ? std::cerr : std::cout) << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  absl::StatusOr<Args> args;
  absl::Status (*run)(const Args&) = nullptr;
  if (command == "quantize") {
    args = Parse(argc, argv,
                 {"in", "out", "type", "blocksize", "compute-dtype", "quant-storage",
                  "skip-modules", "max-shard-size", "bits", "group-size", "calibration"},
                 {"double-quant", "quiet", "sym", "asym", "act-order"});
    run = Quantize;
  } else if (command == "dequantize") {
    args = Parse(argc, argv, {"in", "out", "dtype"}, {"quiet"});
    run = Dequantize;
  } else if (command == "eval") {
    args =
        Parse(argc, argv, {"model", "text", "type", "compute-dtype", "window", "threads", "json"},
              {"quiet"});
    run = Eval;
  } else if (command == "inspect") {
    args = Parse(argc, argv, {}, {"json"});
    run = Inspect;
  } else {
    std::cerr << "kbitq: unknown command \"" << command << "\"\n" << kUsage;
    return 2;
  }
  if (args.ok() && command != "inspect" && !args->positional.empty()) {
    args = absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", args->positional[0], "\""));
  }
  if (!args.ok()) {
    std::cerr << "kbitq: " << args.status().message() << "\n" << kUsage;
    return 2;
  }
  absl::Status status = run(*args);
  if (!status.ok()) {
    std::cerr << "kbitq " << command << ": error: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace kbitd::runtime

int main(int argc, char** argv) { return kbitd::runtime::Main(argc, argv); }
