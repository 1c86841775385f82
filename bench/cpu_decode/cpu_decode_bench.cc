// CPU decode throughput of a 4-bit model against the memory-bandwidth bound of its weight bytes
// (read bandwidth measured in the same run with the same threads) and against the same model
// unquantized (fp32); also the loader's peak host memory for quantize-on-load.
// Usage: cpu_decode_bench [--hidden N] [--layers N] [--intermediate N] [--vocab N]
//                         [--threads N] [--tokens N] [--dir PATH] [--formats fp32,nf4,...]
// The bound is conservative: the best read bandwidth seen so far in the run, where the fp32
// decode itself (a pure weight stream) counts as a measurement, since on a shared VM a single
// read-bandwidth pass can land in a slow moment.
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "runtime/checkpoint/safetensors_writer.h"
#include "runtime/cpu/cpu_kernels.h"
#include "runtime/cpu/thread_pool.h"
#include "runtime/device_set.h"
#include "runtime/engine.h"
#include "runtime/loader.h"

namespace kbitd::runtime {
namespace {

struct Args {
  int64_t hidden = 1024, layers = 16, intermediate = 2816, vocab = 4096, heads = 16, kv_heads = 4;
  int threads = 0, tokens = 32;
  std::string dir = "/tmp/kbitd_cpu_decode_model";
  std::string formats = "fp32,nf4,nf4-dq,fp4";
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int64_t StatusKb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::atoll(line.c_str() + std::strlen(field));
  }
  return -1;
}

void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

absl::Status WriteModel(const Args& a) {
  std::filesystem::create_directories(a.dir);
  const int64_t hd = a.hidden / a.heads;
  std::ofstream(a.dir + "/config.json") << absl::StrCat(
      R"({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": )", a.vocab,
      R"(, "hidden_size": )", a.hidden, R"(, "intermediate_size": )", a.intermediate,
      R"(, "num_hidden_layers": )", a.layers, R"(, "num_attention_heads": )", a.heads,
      R"(, "num_key_value_heads": )", a.kv_heads,
      R"(, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "torch_dtype": "float32"})");
  auto writer = SafetensorsWriter::Create(a.dir + "/model.safetensors", {});
  if (!writer.ok()) return writer.status();
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool ones) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(n);
    for (float& x : v) x = ones ? 1.0f : normal(rng);
    return (*writer)->Add(name, ScalarType::kFloat32, shape,
                          {reinterpret_cast<const uint8_t*>(v.data()), v.size() * 4});
  };
  KBITD_RETURN_IF_ERROR(add("model.embed_tokens.weight", {a.vocab, a.hidden}, false));
  KBITD_RETURN_IF_ERROR(add("lm_head.weight", {a.vocab, a.hidden}, false));
  KBITD_RETURN_IF_ERROR(add("model.norm.weight", {a.hidden}, true));
  for (int64_t i = 0; i < a.layers; ++i) {
    std::string p = absl::StrCat("model.layers.", i, ".");
    KBITD_RETURN_IF_ERROR(add(p + "input_layernorm.weight", {a.hidden}, true));
    KBITD_RETURN_IF_ERROR(add(p + "post_attention_layernorm.weight", {a.hidden}, true));
    KBITD_RETURN_IF_ERROR(add(p + "self_attn.q_proj.weight", {a.hidden, a.hidden}, false));
    KBITD_RETURN_IF_ERROR(add(p + "self_attn.k_proj.weight", {a.kv_heads * hd, a.hidden}, false));
    KBITD_RETURN_IF_ERROR(add(p + "self_attn.v_proj.weight", {a.kv_heads * hd, a.hidden}, false));
    KBITD_RETURN_IF_ERROR(add(p + "self_attn.o_proj.weight", {a.hidden, a.hidden}, false));
    KBITD_RETURN_IF_ERROR(add(p + "mlp.gate_proj.weight", {a.intermediate, a.hidden}, false));
    KBITD_RETURN_IF_ERROR(add(p + "mlp.up_proj.weight", {a.intermediate, a.hidden}, false));
    KBITD_RETURN_IF_ERROR(add(p + "mlp.down_proj.weight", {a.hidden, a.intermediate}, false));
  }
  return (*writer)->Finish();
}

// Best of 5 passes of a multi-threaded streaming read over 512 MiB (the same thread pool and
// AVX-512 loads as the decode kernels), in bytes/s.
double ReadBandwidth(int threads) {
  const int64_t n = (1LL << 29) / 4;
  std::vector<float> buffer(n, 1.0f);
  ThreadPool pool(threads);
  std::atomic<float> sink{0};  // keeps the reads alive
  double best = 0;
  for (int pass = 0; pass < 5; ++pass) {
    double t0 = Now();
    pool.ParallelFor(n, 1 << 20, [&](int64_t b, int64_t e) {
      const float partial = cpu::Dot(buffer.data() + b, buffer.data() + b, e - b);
      float expected = sink.load(std::memory_order_relaxed);
      while (!sink.compare_exchange_weak(expected, expected + partial)) {
      }
    });
    best = std::max(best, n * 4.0 / (Now() - t0));
  }
  return best;
}

struct DecodeResult {
  double tokens_per_s;
  int64_t bytes_per_token;
};

DecodeResult Decode(std::shared_ptr<Model> model, Backend& backend, const Args& a) {
  Engine::Options options;
  options.kv_cache_tokens = 1024;
  auto engine = *Engine::Create(model, backend, options);
  SamplingParams greedy;
  greedy.temperature = 0;
  std::vector<int32_t> prompt = {1, 2, 3, 4, 5, 6, 7, 8};
  (void)engine->AddSequence(1, prompt, greedy);
  (void)engine->Step({{1, 8}});
  for (int i = 0; i < 2; ++i) (void)engine->Step({{1, 1}});  // warm-up
  // Best of 3 rounds: the machine may be shared, and contention only ever slows a round down.
  double dt = 1e30;
  for (int round = 0; round < 3; ++round) {
    double t0 = Now();
    for (int i = 0; i < a.tokens; ++i) {
      auto s = engine->Step({{1, 1}});
      if (!s.ok()) std::fprintf(stderr, "%s\n", std::string(s.status().message()).c_str());
    }
    dt = std::min(dt, Now() - t0);
  }
  // Every decode token streams all weights except the embedding (one row of it).
  const ModelConfig& c = model->config();
  int64_t embed = c.vocab_size * c.hidden_size * 4;
  int64_t bytes = model->weight_bytes() - embed;
  return {a.tokens / dt, bytes};
}

int Main(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    int64_t v = std::atoll(argv[i + 1]);
    if (k == "--hidden")
      a.hidden = v;
    else if (k == "--layers")
      a.layers = v;
    else if (k == "--intermediate")
      a.intermediate = v;
    else if (k == "--vocab")
      a.vocab = v;
    else if (k == "--threads")
      a.threads = static_cast<int>(v);
    else if (k == "--tokens")
      a.tokens = static_cast<int>(v);
    else if (k == "--dir")
      a.dir = argv[i + 1];
    else if (k == "--formats")
      a.formats = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if (absl::Status s = WriteModel(a); !s.ok()) {
    std::fprintf(stderr, "%s\n", std::string(s.message()).c_str());
    return 1;
  }
  const int threads = ThreadPool(a.threads).num_threads();
  std::printf(
      "model: llama hidden %lld, %lld layers, intermediate %lld, vocab %lld; %d threads, "
      "AVX-512 %s\n",
      (long long)a.hidden, (long long)a.layers, (long long)a.intermediate, (long long)a.vocab,
      threads, cpu::HasAvx512() ? "yes" : "no");
  std::printf("%-8s %10s %8s %10s %10s %12s %9s %8s\n", "format", "weight MB", "tok/s", "streamed",
              "read GB/s", "bound tok/s", "of bound", "vs fp32");
  struct Variant {
    const char* name;
    std::optional<QuantizationConfig> q;
  };
  QuantizationConfig nf4;
  nf4.load_in_4bit = true;
  nf4.bnb_4bit_quant_type = "nf4";
  QuantizationConfig nf4dq = nf4;
  nf4dq.bnb_4bit_use_double_quant = true;
  QuantizationConfig fp4 = nf4;
  fp4.bnb_4bit_quant_type = "fp4";
  double fp32_tps = 0, best_bandwidth = 0;
  // The host as the daemon makes it: one pool and one CPU backend with a.threads threads.
  DeviceSet::Options device_options;
  device_options.cpu_threads = a.threads;
  std::unique_ptr<DeviceSet> devices = *DeviceSet::Create(device_options);
  Backend* backend = *devices->BackendFor(Device::Cpu());
  const std::vector<std::string> wanted = absl::StrSplit(a.formats, ',');
  for (const Variant& v : {Variant{"fp32", std::nullopt}, Variant{"nf4", nf4},
                           Variant{"nf4-dq", nf4dq}, Variant{"fp4", fp4}}) {
    if (std::find(wanted.begin(), wanted.end(), v.name) == wanted.end()) continue;
    LoadOptions options;
    options.devices = devices.get();
    options.path = a.dir;
    options.quantization = v.q;
    options.require_tokenizer = false;
    malloc_trim(0);  // hand the previous variant's memory back so RSS deltas are this load's
    int64_t rss_before = StatusKb("VmRSS:");
    ResetPeakRss();
    auto model = LoadModel(options);
    if (!model.ok()) {
      std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
      return 1;
    }
    int64_t peak = StatusKb("VmHWM:") - rss_before;
    int64_t growth = StatusKb("VmRSS:") - rss_before;
    // Bandwidth measured right before each variant's decode, under the same conditions.
    const double bw = ReadBandwidth(a.threads);
    DecodeResult r = Decode(*model, *backend, a);
    const double streamed = r.tokens_per_s * r.bytes_per_token;  // bytes/s this decode read
    best_bandwidth = std::max({best_bandwidth, bw, v.q == std::nullopt ? streamed : 0.0});
    if (v.q == std::nullopt) fp32_tps = r.tokens_per_s;
    const double bound = best_bandwidth / r.bytes_per_token;
    std::printf("%-8s %10.1f %8.1f %8.2f GB/s %10.2f %12.1f %8.0f%% %7.2fx\n", v.name,
                r.bytes_per_token / 1e6, r.tokens_per_s, streamed / 1e9, bw / 1e9, bound,
                100 * r.tokens_per_s / bound, fp32_tps > 0 ? r.tokens_per_s / fp32_tps : 0.0);
    const int64_t layer_fp32 =
        4 * (2 * a.hidden * a.hidden + 2 * a.kv_heads * (a.hidden / a.heads) * a.hidden +
             3 * a.hidden * a.intermediate);
    std::printf(
        "         load: host RSS peak +%.1f MB, after load +%.1f MB (transient %.1f MB; "
        "resident weights %.1f MB, one fp32 layer %.1f MB)\n",
        peak / 1024.0, growth / 1024.0, (peak - growth) / 1024.0, (*model)->weight_bytes() / 1e6,
        layer_fp32 / 1e6);
  }
  return 0;
}

}  // namespace
}  // namespace kbitd::runtime

int main(int argc, char** argv) { return kbitd::runtime::Main(argc, argv); }
