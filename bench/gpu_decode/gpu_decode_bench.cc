// GPU decode throughput of kbitd's engine (the forward pass, KV cache, sampling and the host work
// the daemon does per step, without gRPC) on a checkpoint folder, for bf16 and 4-bit formats at
// several batch sizes, against the roofline: the bytes one step must read (every resident weight
// except the embedding table, of which one row per token is read) over the device's read
// bandwidth, which gpu_linear_bench measures in the same run (pass it with --read_gbps).
//
// usage: gpu_decode_bench --dir CHECKPOINT [--formats bf16,nf4,nf4-dq,fp4] [--batch 1,8]
//                         [--tokens 64] [--prompt 16] [--read_gbps N]
// Prints one JSON object per measurement (load seconds, tokens/s, ms per step, % of roofline).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "runtime/cuda/cuda_devices.h"
#include "runtime/device_set.h"
#include "runtime/engine.h"
#include "runtime/loader.h"

namespace kbitd::runtime {
namespace {

struct Args {
  std::string dir;
  std::vector<std::string> formats = {"bf16", "nf4", "nf4-dq"};
  std::vector<int> batches = {1, 8};
  int tokens = 64;
  int prompt = 16;
  double read_gbps = 0;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

absl::StatusOr<std::optional<QuantizationConfig>> Quantization(const std::string& format) {
  if (format == "bf16") return std::optional<QuantizationConfig>();
  QuantizationConfig q;
  q.load_in_4bit = true;
  q.bnb_4bit_compute_dtype = ScalarType::kBFloat16;
  if (format == "nf4" || format == "nf4-dq") {
    q.bnb_4bit_quant_type = "nf4";
    q.bnb_4bit_use_double_quant = format == "nf4-dq";
  } else if (format == "fp4") {
    q.bnb_4bit_quant_type = "fp4";
  } else {
    return absl::InvalidArgumentError("unknown format " + format);
  }
  return std::optional<QuantizationConfig>(q);
}

// Decodes `tokens` steps of `batch` sequences after their prompts; median-free: best of 2 rounds
// (a VM only ever slows a round down).
absl::StatusOr<double> StepSeconds(const std::shared_ptr<Model>& model, Backend& backend,
                                   const Args& a, int batch) {
  Engine::Options options;
  options.max_batch_size = batch;
  options.max_context = a.prompt + 2 * a.tokens + 16;
  options.kv_cache_tokens = int64_t{batch} * options.max_context;
  KBITD_ASSIGN_OR_RETURN(auto engine, Engine::Create(model, backend, options));
  SamplingParams greedy;
  greedy.temperature = 0;
  double best = 1e30;
  for (int round = 0; round < 2; ++round) {
    std::vector<SequenceWork> prefill, decode;
    for (int s = 0; s < batch; ++s) {
      const uint64_t id = round * 1000 + s;
      std::vector<int32_t> prompt(a.prompt);
      for (int i = 0; i < a.prompt; ++i) prompt[i] = 1 + (s * 131 + i * 17) % 1000;
      KBITD_RETURN_IF_ERROR(engine->AddSequence(id, prompt, greedy));
      prefill.push_back({id, a.prompt});
      decode.push_back({id, 1});
    }
    KBITD_RETURN_IF_ERROR(engine->Step(prefill).status());
    for (int i = 0; i < 2; ++i) KBITD_RETURN_IF_ERROR(engine->Step(decode).status());  // warm-up
    const double t0 = Now();
    for (int i = 0; i < a.tokens; ++i) KBITD_RETURN_IF_ERROR(engine->Step(decode).status());
    best = std::min(best, (Now() - t0) / a.tokens);
    for (const SequenceWork& w : decode) engine->RemoveSequence(w.sequence_id);
  }
  return best;
}

absl::Status Run(const Args& a) {
  DeviceSet::Options device_options;
  device_options.accelerators = cuda::DiscoverCudaDevices;
  KBITD_ASSIGN_OR_RETURN(std::unique_ptr<DeviceSet> devices, DeviceSet::Create(device_options));
  if (!devices->Contains(Device::Cuda(0))) return absl::FailedPreconditionError("no GPU");
  KBITD_ASSIGN_OR_RETURN(Backend * backend, devices->BackendFor(Device::Cuda(0)));
  for (const std::string& format : a.formats) {
    LoadOptions options;
    options.devices = devices.get();
    options.path = a.dir;
    options.name = format;
    options.require_tokenizer = false;
    options.placement.device_map = "cuda:0";
    options.compute_dtype = ScalarType::kBFloat16;
    KBITD_ASSIGN_OR_RETURN(options.quantization, Quantization(format));
    const double t0 = Now();
    KBITD_ASSIGN_OR_RETURN(std::shared_ptr<Model> model, LoadModel(options));
    const double load_s = Now() - t0;
    const ModelConfig& c = model->config();
    const int64_t embedding = c.vocab_size * c.hidden_size * 2;  // bf16 table, one row read
    const int64_t step_bytes = model->weight_bytes() - (c.tie_word_embeddings ? 0 : embedding);
    for (int batch : a.batches) {
      KBITD_ASSIGN_OR_RETURN(double step_s, StepSeconds(model, *backend, a, batch));
      const double roofline_s = a.read_gbps > 0 ? step_bytes / (a.read_gbps * 1e9) : 0;
      std::printf(
          "{\"format\": \"%s\", \"batch\": %d, \"load_s\": %.2f, \"weight_GB\": %.3f, "
          "\"step_GB\": %.3f, \"ms_per_step\": %.3f, \"tokens_per_s\": %.1f, "
          "\"pct_roofline\": %.1f}\n",
          format.c_str(), batch, load_s, model->weight_bytes() / 1e9, step_bytes / 1e9,
          step_s * 1e3, batch / step_s, roofline_s > 0 ? 100 * roofline_s / step_s : 0.0);
      std::fflush(stdout);
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace kbitd::runtime

int main(int argc, char** argv) {
  kbitd::runtime::Args a;
  bool ok = argc > 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--dir") {
      a.dir = v;
    } else if (k == "--formats") {
      a.formats = absl::StrSplit(v, ',');
    } else if (k == "--batch") {
      a.batches.clear();
      for (absl::string_view b : absl::StrSplit(v, ',')) {
        int n = 0;
        ok = ok && absl::SimpleAtoi(b, &n) && n > 0;
        a.batches.push_back(n);
      }
    } else if (k == "--tokens") {
      ok = ok && absl::SimpleAtoi(v, &a.tokens) && a.tokens > 0;
    } else if (k == "--prompt") {
      ok = ok && absl::SimpleAtoi(v, &a.prompt) && a.prompt > 0;
    } else if (k == "--read_gbps") {
      ok = ok && absl::SimpleAtod(v, &a.read_gbps);
    } else {
      ok = false;
    }
  }
  if (!ok || a.dir.empty()) {
    std::fprintf(stderr,
                 "usage: gpu_decode_bench --dir CHECKPOINT [--formats bf16,nf4,nf4-dq,fp4] "
                 "[--batch 1,8] [--tokens 64] [--prompt 16] [--read_gbps N]\n");
    return 2;
  }
  const absl::Status status = kbitd::runtime::Run(a);
  if (!status.ok()) {
    std::fprintf(stderr, "gpu_decode_bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
