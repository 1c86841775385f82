#include "tools/kbitctl/commands.h"

#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <mutex>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/generic/generic_stub.h"
#include "kbitd/v1/inference_service.grpc.pb.h"
#include "kbitd/v1/model_service.grpc.pb.h"

// load
ABSL_FLAG(bool, load_in_4bit, false, "load: quantize to 4-bit (bnb_4bit_quant_type)");
ABSL_FLAG(bool, load_in_8bit, false, "load: quantize to 8-bit (LLM.int8())");
ABSL_FLAG(std::string, bnb_4bit_quant_type, "", "load: nf4 or fp4 (transformers' default fp4)");
ABSL_FLAG(bool, bnb_4bit_use_double_quant, false, "load: quantize the absmax statistics too");
ABSL_FLAG(std::string, bnb_4bit_compute_dtype, "", "load: float16, bfloat16 or float32");
ABSL_FLAG(std::string, bnb_4bit_quant_storage, "",
          "load: dtype the packed 4-bit bytes are stored as: uint8 (default), float16, bfloat16, "
          "float32");
ABSL_FLAG(std::string, llm_int8_threshold, "", "load: LLM.int8() outlier threshold (default 6.0)");
ABSL_FLAG(std::vector<std::string>, llm_int8_skip_modules, {},
          "load: modules kept unquantized, comma-separated (replaces the default lm_head)");
ABSL_FLAG(std::string, model_dtype, "",
          "load: activation dtype float32, bfloat16 or float16 (default: the checkpoint's)");
ABSL_FLAG(std::string, device_map, "", "load: auto, cpu, cuda:N");
ABSL_FLAG(std::vector<std::string>, max_memory, {},
          "load: device=size pairs, e.g. cpu=8GiB,0=20GiB");
ABSL_FLAG(bool, dry_run, false,
          "load: plan only (placement, bytes per device, dtype); nothing is loaded");
ABSL_FLAG(std::string, kv_cache_bytes, "",
          "load: KV cache size, e.g. 2GiB (default: an eighth of the device's free memory, "
          "between one and max_batch_size max-context sequences)");
// generate
ABSL_FLAG(int32_t, max_new_tokens, 0, "generate: tokens to generate (0 = daemon default)");
ABSL_FLAG(std::string, temperature, "", "generate: 0 = greedy (default 1)");
ABSL_FLAG(std::string, top_k, "", "generate: 0 = off");
ABSL_FLAG(std::string, top_p, "", "generate: 1 = off");
ABSL_FLAG(std::string, min_p, "", "generate: 0 = off");
ABSL_FLAG(std::string, repetition_penalty, "", "generate: 1 = off");
ABSL_FLAG(std::string, seed, "", "generate: sampling seed");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "generate: stop strings, comma-separated (use --stop_json for strings with commas)");
ABSL_FLAG(std::string, stop_json, "", "generate: stop strings as a JSON array, e.g. '[\"a,b\"]'");
ABSL_FLAG(std::vector<std::string>, stop_token_ids, {},
          "generate: stop token ids, comma-separated");
ABSL_FLAG(int32_t, logprobs, -1,
          "generate: print each token's logprob and this many alternatives (JSON lines on stdout "
          "instead of text; 0 = the chosen token only; -1 = off)");
ABSL_FLAG(bool, token_ids, false, "generate: PROMPT is comma-separated token ids, not text");
ABSL_FLAG(bool, usage, true, "generate: print usage to stderr at the end");
// dequantize, export
ABSL_FLAG(std::string, dtype, "",
          "dequantize, export: float32, float16 or bfloat16 (default: dequantize float32, export "
          "the model's original dtype)");
ABSL_FLAG(std::string, out, "", "dequantize: write the raw little-endian values to this file");

namespace kbitd::kbitctl {
namespace {

void Prepare(grpc::ClientContext* context, const CallOptions& options, bool admin) {
  if (admin && !options.admin_token.empty()) {
    context->AddMetadata("authorization", "Bearer " + options.admin_token);
  }
  if (options.timeout_seconds > 0) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(options.timeout_seconds)));
  }
}

grpc::Status Usage(const std::string& text) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "usage: kbitctl " + text);
}

void PrintJson(const google::protobuf::Message& message) {
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(message, &json, options);
  std::fputs(json.c_str(), stdout);
}

template <typename T, typename Set>
bool ParseOptional(const std::string& text, Set set) {
  if (text.empty()) return true;
  T value;
  bool ok;
  if constexpr (std::is_floating_point_v<T>) {
    double d;
    ok = absl::SimpleAtod(text, &d);
    value = static_cast<T>(d);
  } else {
    ok = absl::SimpleAtoi(text, &value);
  }
  if (ok) set(value);
  return ok;
}

grpc::Status Load(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                  const Args& args) {
  if (args.size() != 2) return Usage("load NAME PATH (PATH relative to the model root)");
  v1::LoadModelRequest request;
  request.set_name(args[0]);
  request.set_path(args[1]);
  v1::QuantizationConfig& q = *request.mutable_quantization();
  q.set_load_in_4bit(absl::GetFlag(FLAGS_load_in_4bit));
  q.set_load_in_8bit(absl::GetFlag(FLAGS_load_in_8bit));
  q.set_bnb_4bit_quant_type(absl::GetFlag(FLAGS_bnb_4bit_quant_type));
  q.set_bnb_4bit_use_double_quant(absl::GetFlag(FLAGS_bnb_4bit_use_double_quant));
  q.set_bnb_4bit_compute_dtype(absl::GetFlag(FLAGS_bnb_4bit_compute_dtype));
  q.set_bnb_4bit_quant_storage(absl::GetFlag(FLAGS_bnb_4bit_quant_storage));
  if (!ParseOptional<float>(absl::GetFlag(FLAGS_llm_int8_threshold),
                            [&](float v) { q.set_llm_int8_threshold(v); })) {
    return Usage("load: --llm_int8_threshold is not a number");
  }
  for (const std::string& module : absl::GetFlag(FLAGS_llm_int8_skip_modules)) {
    q.add_llm_int8_skip_modules(module);
  }
  request.set_dtype(absl::GetFlag(FLAGS_model_dtype));
  request.set_kv_cache_bytes(absl::GetFlag(FLAGS_kv_cache_bytes));
  request.set_dry_run(absl::GetFlag(FLAGS_dry_run));
  request.mutable_placement()->set_device_map(absl::GetFlag(FLAGS_device_map));
  for (const std::string& item : absl::GetFlag(FLAGS_max_memory)) {
    std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    (*request.mutable_placement()->mutable_max_memory())[kv.first] = kv.second;
  }
  grpc::ClientContext context;
  Prepare(&context, options, /*admin=*/true);
  v1::ModelInfo info;
  grpc::Status status = v1::ModelService::NewStub(channel)->LoadModel(&context, request, &info);
  if (status.ok()) PrintJson(info);
  return status;
}

grpc::Status Unload(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                    const Args& args) {
  if (args.size() != 1) return Usage("unload NAME");
  v1::UnloadModelRequest request;
  request.set_name(args[0]);
  grpc::ClientContext context;
  Prepare(&context, options, /*admin=*/true);
  v1::UnloadModelResponse response;
  grpc::Status status =
      v1::ModelService::NewStub(channel)->UnloadModel(&context, request, &response);
  if (status.ok()) PrintJson(response);
  return status;
}

grpc::Status List(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                  const Args& args) {
  if (!args.empty()) return Usage("list");
  grpc::ClientContext context;
  Prepare(&context, options, false);
  v1::ListModelsResponse response;
  grpc::Status status =
      v1::ModelService::NewStub(channel)->ListModels(&context, v1::ListModelsRequest(), &response);
  if (status.ok()) PrintJson(response);
  return status;
}

grpc::Status Get(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                 const Args& args) {
  if (args.size() != 1) return Usage("get NAME");
  v1::GetModelRequest request;
  request.set_name(args[0]);
  grpc::ClientContext context;
  Prepare(&context, options, false);
  v1::ModelInfo info;
  grpc::Status status = v1::ModelService::NewStub(channel)->GetModel(&context, request, &info);
  if (status.ok()) PrintJson(info);
  return status;
}

grpc::Status Generate(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                      const Args& args) {
  if (args.size() != 2) return Usage("generate MODEL PROMPT [--max_new_tokens N ...]");
  v1::GenerateRequest request;
  request.set_model(args[0]);
  if (absl::GetFlag(FLAGS_token_ids)) {
    for (absl::string_view id_text : absl::StrSplit(args[1], ',', absl::SkipWhitespace())) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(id_text, &id)) {
        return Usage("generate --token_ids MODEL ID,ID,... (ids are integers)");
      }
      request.add_prompt_token_ids(id);
    }
  } else {
    request.set_prompt(args[1]);
  }
  request.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  v1::SamplingParams& s = *request.mutable_sampling();
  const bool ok =
      ParseOptional<float>(absl::GetFlag(FLAGS_temperature),
                           [&](float v) { s.set_temperature(v); }) &&
      ParseOptional<int32_t>(absl::GetFlag(FLAGS_top_k), [&](int32_t v) { s.set_top_k(v); }) &&
      ParseOptional<float>(absl::GetFlag(FLAGS_top_p), [&](float v) { s.set_top_p(v); }) &&
      ParseOptional<float>(absl::GetFlag(FLAGS_min_p), [&](float v) { s.set_min_p(v); }) &&
      ParseOptional<float>(absl::GetFlag(FLAGS_repetition_penalty),
                           [&](float v) { s.set_repetition_penalty(v); }) &&
      ParseOptional<uint64_t>(absl::GetFlag(FLAGS_seed), [&](uint64_t v) { s.set_seed(v); });
  if (!ok) return Usage("generate: a sampling flag is not a number");
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) request.add_stop(stop);
  if (const std::string json = absl::GetFlag(FLAGS_stop_json); !json.empty()) {
    // Parsed as the `stop` field of a GenerateRequest, so the JSON rules are protobuf's.
    v1::GenerateRequest stops;
    if (!google::protobuf::util::JsonStringToMessage("{\"stop\": " + json + "}", &stops).ok()) {
      return Usage("generate: --stop_json must be a JSON array of strings");
    }
    for (const std::string& stop : stops.stop()) request.add_stop(stop);
  }
  for (const std::string& id_text : absl::GetFlag(FLAGS_stop_token_ids)) {
    int32_t id = 0;
    if (!absl::SimpleAtoi(id_text, &id)) return Usage("generate: --stop_token_ids are integers");
    request.add_stop_token_ids(id);
  }
  const int32_t logprobs = absl::GetFlag(FLAGS_logprobs);
  if (logprobs >= 0) {
    request.set_logprobs(true);
    request.set_top_logprobs(logprobs);
  }
  grpc::ClientContext context;
  Prepare(&context, options, false);
  auto reader = v1::InferenceService::NewStub(channel)->Generate(&context, request);
  v1::GenerateResponse response;
  v1::GenerateResponse last;
  while (reader->Read(&response)) {
    if (logprobs >= 0) {
      // One JSON object per response: token ids, text delta and their logprobs.
      std::string line;
      google::protobuf::util::JsonPrintOptions print;
      print.preserve_proto_field_names = true;
      (void)google::protobuf::util::MessageToJsonString(response, &line, print);
      std::fputs((line + "\n").c_str(), stdout);
    } else {
      std::fputs(response.text().c_str(), stdout);
    }
    std::fflush(stdout);
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) last = response;
  }
  grpc::Status status = reader->Finish();
  if (logprobs < 0) std::fputs("\n", stdout);
  if (status.ok() && absl::GetFlag(FLAGS_usage)) {
    const v1::Usage& u = last.usage();
    std::fprintf(stderr,
                 "[%s] prompt %d tokens, generated %d tokens, first token %.3f s, %.1f tokens/s, "
                 "total %.3f s\n",
                 v1::FinishReason_Name(last.finish_reason()).c_str(), u.prompt_tokens(),
                 u.completion_tokens(), u.time_to_first_token_seconds(), u.tokens_per_second(),
                 u.total_seconds());
  }
  return status;
}

grpc::Status Tokenize(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                      const Args& args) {
  if (args.size() != 2) return Usage("tokenize MODEL TEXT");
  v1::TokenizeRequest request;
  request.set_model(args[0]);
  request.set_text(args[1]);
  grpc::ClientContext context;
  Prepare(&context, options, false);
  v1::TokenizeResponse response;
  grpc::Status status =
      v1::InferenceService::NewStub(channel)->Tokenize(&context, request, &response);
  if (status.ok()) std::printf("%s\n", absl::StrJoin(response.token_ids(), " ").c_str());
  return status;
}

grpc::Status Detokenize(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                        const Args& args) {
  if (args.size() < 2) return Usage("detokenize MODEL ID...");
  v1::DetokenizeRequest request;
  request.set_model(args[0]);
  for (size_t i = 1; i < args.size(); ++i) {
    int32_t id;
    if (!absl::SimpleAtoi(args[i], &id)) return Usage("detokenize MODEL ID... (ids are integers)");
    request.add_token_ids(id);
  }
  grpc::ClientContext context;
  Prepare(&context, options, false);
  v1::DetokenizeResponse response;
  grpc::Status status =
      v1::InferenceService::NewStub(channel)->Detokenize(&context, request, &response);
  if (status.ok()) std::printf("%s\n", response.text().c_str());
  return status;
}

// --dtype: "" (unspecified), float32, float16 or bfloat16.
bool ParseDtype(const std::string& text, v1::TensorDtype* dtype) {
  if (text.empty()) {
    *dtype = v1::TENSOR_DTYPE_UNSPECIFIED;
  } else if (text == "float32") {
    *dtype = v1::TENSOR_DTYPE_FLOAT32;
  } else if (text == "float16") {
    *dtype = v1::TENSOR_DTYPE_FLOAT16;
  } else if (text == "bfloat16") {
    *dtype = v1::TENSOR_DTYPE_BFLOAT16;
  } else {
    return false;
  }
  return true;
}

grpc::Status Dequantize(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                        const Args& args) {
  if (args.size() != 2) return Usage("dequantize MODEL TENSOR [--dtype float16] [--out FILE]");
  v1::DequantizeRequest request;
  request.set_model(args[0]);
  request.set_tensor(args[1]);
  v1::TensorDtype dtype;
  if (!ParseDtype(absl::GetFlag(FLAGS_dtype), &dtype)) {
    return Usage("dequantize: --dtype is float32, float16 or bfloat16");
  }
  request.set_dtype(dtype == v1::TENSOR_DTYPE_UNSPECIFIED ? v1::TENSOR_DTYPE_FLOAT32 : dtype);
  std::ofstream out;
  if (!absl::GetFlag(FLAGS_out).empty()) {
    out.open(absl::GetFlag(FLAGS_out), std::ios::binary);
    if (!out) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "cannot write --out file");
  }
  grpc::ClientContext context;
  Prepare(&context, options, false);
  auto reader = v1::ModelService::NewStub(channel)->Dequantize(&context, request);
  v1::DequantizeChunk chunk;
  int64_t bytes = 0;
  bool first = true;
  while (reader->Read(&chunk)) {
    if (first) {
      v1::DequantizeChunk head = chunk;
      head.clear_data();
      PrintJson(head);
      first = false;
    }
    bytes += static_cast<int64_t>(chunk.data().size());
    if (out.is_open()) out.write(chunk.data().data(), chunk.data().size());
  }
  grpc::Status status = reader->Finish();
  if (status.ok()) std::fprintf(stderr, "%lld bytes\n", static_cast<long long>(bytes));
  return status;
}

grpc::Status Export(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                    const Args& args) {
  if (args.size() != 2) return Usage("export MODEL OUTPUT_PATH [--dtype bfloat16]");
  v1::ExportDequantizedRequest request;
  request.set_model(args[0]);
  request.set_output_path(args[1]);
  v1::TensorDtype dtype;
  if (!ParseDtype(absl::GetFlag(FLAGS_dtype), &dtype)) {
    return Usage("export: --dtype is float32, float16 or bfloat16");
  }
  request.set_dtype(dtype);
  grpc::ClientContext context;
  Prepare(&context, options, /*admin=*/true);
  v1::ExportDequantizedResponse response;
  grpc::Status status =
      v1::ModelService::NewStub(channel)->ExportDequantized(&context, request, &response);
  if (status.ok()) PrintJson(response);
  return status;
}

// grpc.health.v1.Health/Check with hand-encoded messages (HealthCheckRequest{string service = 1},
// HealthCheckResponse{ServingStatus status = 1}; grpc/grpc doc/health-checking.md), so kbitctl
// needs no copy of health.proto.
grpc::Status Health(const std::shared_ptr<grpc::Channel>& channel, const CallOptions& options,
                    const Args& args) {
  if (args.size() > 1) return Usage("health [SERVICE or MODEL]");
  const std::string service = args.empty() ? "" : args[0];
  if (service.size() > 127) return Usage("health: name too long");
  std::string wire;
  if (!service.empty()) {
    wire.push_back(0x0A);
    wire.push_back(static_cast<char>(service.size()));
    wire += service;
  }
  grpc::Slice slice(wire);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext context;
  Prepare(&context, options, false);
  if (options.timeout_seconds <= 0) {
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  }
  grpc::GenericStub stub(channel);
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> lock(mu);
                   status = s;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return status;
  std::vector<grpc::Slice> slices;
  (void)response.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  const int value = bytes.size() >= 2 && bytes[0] == 0x08 ? bytes[1] : 0;
  static const char* kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  std::printf("%s\n", value >= 0 && value <= 3 ? kNames[value] : "UNKNOWN");
  return value == 1 ? grpc::Status::OK
                    : grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                   kNames[value >= 0 && value <= 3 ? value : 0]);
}

struct Entry {
  const char* name;
  Command command;
  const char* help;
};
constexpr Entry kCommands[] = {
    {"load", Load, "load NAME PATH [--load_in_4bit --bnb_4bit_quant_type nf4 ...] (admin)"},
    {"unload", Unload, "unload NAME (admin)"},
    {"list", List, "list"},
    {"get", Get, "get NAME"},
    {"generate", Generate, "generate MODEL PROMPT [--max_new_tokens N --temperature T ...]"},
    {"tokenize", Tokenize, "tokenize MODEL TEXT"},
    {"detokenize", Detokenize, "detokenize MODEL ID..."},
    {"dequantize", Dequantize, "dequantize MODEL TENSOR [--dtype float16] [--out FILE]"},
    {"export", Export,
     "export MODEL OUTPUT_PATH [--dtype bfloat16] (admin; a plain checkpoint inside the model "
     "root)"},
    {"health", Health, "health [SERVICE or MODEL]"},
};

}  // namespace

Command FindCommand(const std::string& name) {
  for (const Entry& entry : kCommands) {
    if (name == entry.name) return entry.command;
  }
  return nullptr;
}

std::string CommandHelp() {
  std::string help;
  for (const Entry& entry : kCommands) absl::StrAppend(&help, "  ", entry.help, "\n");
  return help;
}

const char* StatusCodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index <= 16 ? kNames[index] : "UNKNOWN";
}

}  // namespace kbitd::kbitctl
