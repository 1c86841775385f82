// GPU linear layers of Llama-3-8B's shapes, one decode step's worth: kbitd's fused 4-bit kernel
// (runtime/cuda/four_bit_linear.h) for NF4, NF4 + double quant and FP4, next to cuBLASLt bf16 on
// the same weights, the dequantize + cuBLASLt path kbitd used before, and the device's measured
// read bandwidth. Prints one JSON object per measurement; run_bench.py adds bitsandbytes (same
// shapes, same method) and prints the side-by-side table in docs/performance.md.
//
// Method (as ../shared/reference/h200-anchors.md §B, so the numbers compare): 32 layers of distinct
// weights per shape so the L2 cache cannot hold them; each measurement is one CUDA graph of all the
// calls (per shape: its 32 calls; per step: 224 calls in layer order), replayed `reps` times after
// a warm-up, CUDA events around each replay, the median reported. The bandwidth limit is a read of
// a 4 GiB buffer with 16-byte loads, timed the same way.
//
// usage: gpu_linear_bench [--layers=32] [--reps=20] [--rows=1,4,16] [--variants=W/U/C[/B],...|all]
//   --variants: also time the step with these launch shapes of the fused kernel (warps per block /
//   chunks in flight / decode-table copies / blocks per SM; runtime/cuda/four_bit_linear.h lists
//   those compiled).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/cuda/blockwise_4bit.h"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/double_quant.h"
#include "runtime/cuda/cublaslt.h"
#include "runtime/cuda/four_bit_linear.h"

namespace kbitd::bench {
namespace {

using quant::cuda::CudaStatus;
using runtime::cuda::FourBitLinearWeight;

struct Shape {
  const char* name;
  int64_t n, k;
};
// One Llama-3-8B decoder layer in forward order (out × in).
const Shape kLayerShapes[] = {{"q", 4096, 4096},    {"k", 1024, 4096},     {"v", 1024, 4096},
                              {"o", 4096, 4096},    {"gate", 14336, 4096}, {"up", 14336, 4096},
                              {"down", 4096, 14336}};

// Deterministic pseudo-normal weights (σ ≈ 0.02) without a host round trip.
__global__ void FillWeights(__nv_bfloat16* w, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    uint32_t h = static_cast<uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float u = (h & 0xFFFFFF) / 16777216.f;  // sum of two uniforms: a cheap bell shape
    const float v = ((h >> 8) & 0xFFFF) / 65536.f;
    w[i] = __float2bfloat16_rn((u + v - 1.f) * 0.035f);
  }
}

// Reads every 16 bytes of `data`; the result only defeats dead-code elimination.
__global__ void ReadAll(const uint4* data, int64_t count, uint32_t* sink) {
  uint32_t acc = 0;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    const uint4 v = __ldg(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) *sink = acc;
}

absl::StatusOr<void*> DeviceAlloc(size_t bytes) {
  void* p = nullptr;
  KBITD_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&p, bytes), "cudaMalloc"));
  return p;
}

// One layer's copy of one shape in every format.
struct Weights {
  Shape shape;
  void* dense = nullptr;  // bf16 [n, k]
  FourBitLinearWeight nf4, nf4_nested, fp4;
  int64_t nf4_bytes = 0, nested_bytes = 0, dense_bytes = 0;
};

struct Bench {
  cudaStream_t stream = nullptr;
  std::unique_ptr<runtime::cuda::CublasLtGemm> gemm;
  float* dynamic_map = nullptr;
  int reps = 20;
  void* x = nullptr;        // bf16 [16, 14336]
  void* y = nullptr;        // bf16 [16, 14336]
  void* scratch = nullptr;  // a dequantized bf16 weight (dequantize + cuBLAS path)
  float* absmax_scratch = nullptr;

  absl::StatusOr<Weights> Make(const Shape& s, uint32_t seed) {
    Weights w;
    w.shape = s;
    const int64_t count = s.n * s.k, blocks = quant::NumBlocks(count, 64);
    w.dense_bytes = count * 2;
    KBITD_ASSIGN_OR_RETURN(w.dense, DeviceAlloc(count * 2));
    FillWeights<<<1024, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(w.dense), count, seed);
    for (auto [type, target] : {std::pair{quant::FourBitType::kNf4, &w.nf4},
                                std::pair{quant::FourBitType::kFp4, &w.fp4}}) {
      KBITD_ASSIGN_OR_RETURN(void* packed, DeviceAlloc(count / 2));
      KBITD_ASSIGN_OR_RETURN(void* absmax, DeviceAlloc(blocks * 4));
      KBITD_RETURN_IF_ERROR(quant::cuda::Quantize4bit(type, w.dense, ScalarType::kBFloat16, count,
                                                      64, static_cast<uint8_t*>(packed),
                                                      static_cast<float*>(absmax), stream));
      *target = FourBitLinearWeight{
          .packed = static_cast<const uint8_t*>(packed),
          .n = s.n,
          .k = s.k,
          .blocksize = 64,
          .code = type == quant::FourBitType::kNf4 ? quant::Nf4Code() : quant::Fp4Code(),
          .absmax = static_cast<const float*>(absmax)};
    }
    w.nf4_bytes = count / 2 + blocks * 4;
    // Double quant of the NF4 absmax (the packed codes are shared with plain NF4).
    const int64_t nested_blocks = quant::NumBlocks(blocks, quant::kNestedBlocksize);
    KBITD_ASSIGN_OR_RETURN(void* codes, DeviceAlloc(blocks));
    KBITD_ASSIGN_OR_RETURN(void* nested, DeviceAlloc(nested_blocks * 4));
    KBITD_ASSIGN_OR_RETURN(void* offset, DeviceAlloc(4));
    KBITD_RETURN_IF_ERROR(quant::cuda::DoubleQuantizeAbsmax(
        w.nf4.absmax, blocks, dynamic_map, static_cast<uint8_t*>(codes),
        static_cast<float*>(nested), static_cast<float*>(offset), stream));
    float host_offset = 0;
    KBITD_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(&host_offset, offset, 4, cudaMemcpyDeviceToHost, stream), "offset"));
    KBITD_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream), "quantize"));
    w.nf4_nested = w.nf4;
    w.nf4_nested.absmax = nullptr;
    w.nf4_nested.absmax_codes = static_cast<const uint8_t*>(codes);
    w.nf4_nested.nested_absmax = static_cast<const float*>(nested);
    w.nf4_nested.nested_code = dynamic_map;
    w.nf4_nested.nested_offset = host_offset;
    w.nested_bytes = count / 2 + blocks + nested_blocks * 4;
    return w;
  }

  // Median milliseconds of one replay of a graph of `calls`.
  absl::StatusOr<double> Time(const std::function<absl::Status()>& calls) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    KBITD_RETURN_IF_ERROR(CudaStatus(
        cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "begin capture"));
    const absl::Status captured = calls();
    KBITD_RETURN_IF_ERROR(CudaStatus(cudaStreamEndCapture(stream, &graph), "end capture"));
    KBITD_RETURN_IF_ERROR(captured);
    KBITD_RETURN_IF_ERROR(CudaStatus(cudaGraphInstantiate(&exec, graph, 0), "instantiate"));
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    std::vector<double> ms;
    for (int r = 0; r < reps + 3; ++r) {
      cudaEventRecord(start, stream);
      cudaGraphLaunch(exec, stream);
      cudaEventRecord(stop, stream);
      KBITD_RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(stop), "replay"));
      float t = 0;
      cudaEventElapsedTime(&t, start, stop);
      if (r >= 3) ms.push_back(t);
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }

  // y = x · dense_weightᵀ through cuBLASLt, for `w`'s shape.
  absl::Status Bf16Gemm(const void* dense_weight, const Weights& w, int64_t m) {
    return gemm->Run({.x = x,
                      .w = dense_weight,
                      .y = y,
                      .input_dtype = ScalarType::kBFloat16,
                      .output_dtype = ScalarType::kBFloat16,
                      .m = m,
                      .n = w.shape.n,
                      .k = w.shape.k},
                     stream);
  }

  absl::Status Call(const std::string& path, const Weights& w, int64_t m,
                    const runtime::cuda::FourBitLinearTuning& tuning = {}) {
    if (path == "bf16") return Bf16Gemm(w.dense, w, m);
    if (path == "nf4_dequant_cublas") {
      KBITD_RETURN_IF_ERROR(quant::cuda::Dequantize4bit(quant::FourBitType::kNf4, w.nf4.packed,
                                                        w.nf4.absmax, w.shape.n * w.shape.k, 64,
                                                        ScalarType::kBFloat16, scratch, stream));
      return Bf16Gemm(scratch, w, m);
    }
    const FourBitLinearWeight& f = path == "nf4" ? w.nf4 : path == "nf4_dq" ? w.nf4_nested : w.fp4;
    return runtime::cuda::LaunchFourBitLinear(f, x, m, ScalarType::kBFloat16, y,
                                              ScalarType::kBFloat16, stream, tuning);
  }

  int64_t BytesRead(const std::string& path, const Weights& w, int64_t m) const {
    const int64_t activations = m * (w.shape.k + w.shape.n) * 2;
    if (path == "bf16") return w.dense_bytes + activations;
    if (path == "nf4_dq") return w.nested_bytes + activations;
    return w.nf4_bytes + activations;  // nf4, fp4; the dequantize path is charged the same bytes
  }
};

absl::StatusOr<double> ReadBandwidth(Bench& b) {
  const int64_t bytes = int64_t{4} << 30;
  KBITD_ASSIGN_OR_RETURN(void* data, DeviceAlloc(bytes));
  KBITD_ASSIGN_OR_RETURN(void* sink, DeviceAlloc(4));
  KBITD_RETURN_IF_ERROR(CudaStatus(cudaMemsetAsync(data, 1, bytes, b.stream), "fill"));
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  KBITD_ASSIGN_OR_RETURN(double ms, b.Time([&] {
    ReadAll<<<sms * 8, 512, 0, b.stream>>>(static_cast<const uint4*>(data), bytes / 16,
                                           static_cast<uint32_t*>(sink));
    return quant::cuda::LaunchStatus("ReadAll");
  }));
  cudaFree(data);
  cudaFree(sink);
  return bytes / (ms * 1e-3) / 1e9;
}

// Largest |fused − (dequantize + cuBLAS)| relative to max |reference|: a sanity line per format.
absl::StatusOr<double> Agreement(Bench& b, const Weights& w, const std::string& path, int64_t m) {
  const int64_t count = m * w.shape.n;
  std::vector<uint16_t> fused(count), reference(count);
  KBITD_RETURN_IF_ERROR(b.Call(path, w, m));
  KBITD_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(fused.data(), b.y, count * 2, cudaMemcpyDeviceToHost, b.stream), "y"));
  const bool fp4 = path == "fp4";
  const float* absmax = w.nf4.absmax;
  if (path == "nf4_dq") {
    KBITD_RETURN_IF_ERROR(quant::cuda::ReconstructAbsmax(
        w.nf4_nested.absmax_codes, w.nf4_nested.nested_absmax, b.dynamic_map,
        w.nf4_nested.nested_offset, quant::NumBlocks(w.shape.n * w.shape.k, 64), b.absmax_scratch,
        b.stream));
    absmax = b.absmax_scratch;
  }
  KBITD_RETURN_IF_ERROR(quant::cuda::Dequantize4bit(
      fp4 ? quant::FourBitType::kFp4 : quant::FourBitType::kNf4, fp4 ? w.fp4.packed : w.nf4.packed,
      fp4 ? w.fp4.absmax : absmax, w.shape.n * w.shape.k, 64, ScalarType::kBFloat16, b.scratch,
      b.stream));
  KBITD_RETURN_IF_ERROR(b.Bf16Gemm(b.scratch, w, m));
  KBITD_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(reference.data(), b.y, count * 2, cudaMemcpyDeviceToHost, b.stream), "y"));
  KBITD_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(b.stream), "agreement"));
  double worst = 0, scale = 0;
  for (int64_t i = 0; i < count; ++i) {
    const double r = BFloat16ToFloat(reference[i]), f = BFloat16ToFloat(fused[i]);
    worst = std::max(worst, std::abs(r - f));
    scale = std::max(scale, std::abs(r));
  }
  return worst / scale;
}

absl::Status Run(int layers, int reps, const std::vector<int64_t>& rows,
                 const std::vector<runtime::cuda::FourBitLinearTuning>& variants) {
  Bench b;
  b.reps = reps;
  KBITD_RETURN_IF_ERROR(
      CudaStatus(cudaStreamCreateWithFlags(&b.stream, cudaStreamNonBlocking), "stream"));
  KBITD_ASSIGN_OR_RETURN(b.gemm, runtime::cuda::CublasLtGemm::Create());
  KBITD_ASSIGN_OR_RETURN(void* map, DeviceAlloc(256 * 4));
  b.dynamic_map = static_cast<float*>(map);
  KBITD_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpy(map, quant::DynamicMap().data(), 256 * 4, cudaMemcpyHostToDevice), "map"));
  KBITD_ASSIGN_OR_RETURN(b.x, DeviceAlloc(16 * 14336 * 2));
  KBITD_ASSIGN_OR_RETURN(b.y, DeviceAlloc(16 * 14336 * 2));
  KBITD_ASSIGN_OR_RETURN(b.scratch, DeviceAlloc(14336 * 4096 * 2));
  KBITD_ASSIGN_OR_RETURN(void* absmax_scratch, DeviceAlloc(14336 * 4096 / 64 * 4));
  b.absmax_scratch = static_cast<float*>(absmax_scratch);
  FillWeights<<<64, 256, 0, b.stream>>>(static_cast<__nv_bfloat16*>(b.x), 16 * 14336, 7);

  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, 0);
  KBITD_ASSIGN_OR_RETURN(const double read_gbps, ReadBandwidth(b));
  std::printf("{\"device\": \"%s\", \"sms\": %d, \"read_GBps\": %.0f, \"layers\": %d}\n", prop.name,
              prop.multiProcessorCount, read_gbps, layers);

  // weights[layer][shape]
  std::vector<std::vector<Weights>> weights(layers);
  for (int l = 0; l < layers; ++l) {
    for (const Shape& s : kLayerShapes) {
      KBITD_ASSIGN_OR_RETURN(Weights w, b.Make(s, 1000 * l + s.n + s.k));
      weights[l].push_back(w);
    }
  }
  for (const char* path : {"nf4", "nf4_dq", "fp4"}) {
    for (int64_t m : {int64_t{1}, int64_t{16}}) {
      KBITD_ASSIGN_OR_RETURN(double diff, Agreement(b, weights[0][4], path, m));
      std::printf(
          "{\"check\": \"%s vs dequantize + cuBLAS\", \"m\": %lld, \"max_rel_diff\": %.2e}\n", path,
          static_cast<long long>(m), diff);
    }
  }

  // A graph of `path` over the given shapes (indices into kLayerShapes) of every layer, in
  // forward order: its median time and the bytes it reads.
  struct Timing {
    double ms = 0;
    int64_t bytes = 0;
    double pct() const { return 100 * bytes / (ms * 1e-3) / 1e9 / read_gbps_; }
    double read_gbps_ = 0;
  };
  const auto time_calls =
      [&](const std::string& path, int64_t m, const std::vector<size_t>& shapes,
          const runtime::cuda::FourBitLinearTuning& tuning) -> absl::StatusOr<Timing> {
    Timing t{.read_gbps_ = read_gbps};
    KBITD_ASSIGN_OR_RETURN(t.ms, b.Time([&]() -> absl::Status {
      for (int l = 0; l < layers; ++l) {
        for (size_t s : shapes) KBITD_RETURN_IF_ERROR(b.Call(path, weights[l][s], m, tuning));
      }
      return absl::OkStatus();
    }));
    for (int l = 0; l < layers; ++l) {
      for (size_t s : shapes) t.bytes += b.BytesRead(path, weights[l][s], m);
    }
    return t;
  };
  const std::vector<size_t> step = {0, 1, 2, 3, 4, 5, 6};

  // Launch-shape variants of the fused kernel: the whole step only.
  for (const auto& tuning : variants) {
    for (const char* path : {"nf4", "nf4_dq"}) {
      for (int64_t m : rows) {
        KBITD_ASSIGN_OR_RETURN(Timing t, time_calls(path, m, step, tuning));
        std::printf(
            "{\"variant\": \"%d/%d/%d/%d\", \"path\": \"%s\", \"m\": %lld, \"ms\": %.3f, "
            "\"pct_read\": %.1f}\n",
            tuning.warps, tuning.unroll, tuning.table_copies, tuning.min_blocks, path,
            static_cast<long long>(m), t.ms, t.pct());
        std::fflush(stdout);
      }
    }
  }

  const std::vector<std::string> paths = {"bf16", "nf4", "nf4_dq", "fp4", "nf4_dequant_cublas"};
  for (int64_t m : rows) {
    for (const std::string& path : paths) {
      if (path == "nf4_dequant_cublas" && m != 1 && m != 16) continue;
      // Per shape: a graph of its `layers` calls (v and up time like k and gate).
      for (size_t s : {0, 1, 3, 4, 6}) {
        KBITD_ASSIGN_OR_RETURN(Timing t, time_calls(path, m, {s}, {}));
        std::printf(
            "{\"path\": \"%s\", \"m\": %lld, \"shape\": \"%s\", \"n\": %lld, \"k\": %lld, "
            "\"us_per_call\": %.2f, \"GBps\": %.0f, \"pct_read\": %.1f}\n",
            path.c_str(), static_cast<long long>(m), kLayerShapes[s].name,
            static_cast<long long>(kLayerShapes[s].n), static_cast<long long>(kLayerShapes[s].k),
            t.ms * 1e3 / layers, t.bytes / (t.ms * 1e-3) / 1e9, t.pct());
      }
      KBITD_ASSIGN_OR_RETURN(Timing t, time_calls(path, m, step, {}));
      std::printf(
          "{\"path\": \"%s\", \"m\": %lld, \"shape\": \"step\", \"calls\": %d, \"ms\": %.3f, "
          "\"GB\": %.3f, \"GBps\": %.0f, \"pct_read\": %.1f}\n",
          path.c_str(), static_cast<long long>(m), layers * 7, t.ms, t.bytes / 1e9,
          t.bytes / (t.ms * 1e-3) / 1e9, t.pct());
      std::fflush(stdout);
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace kbitd::bench

int main(int argc, char** argv) {
  int layers = 32, reps = 20;
  std::vector<int64_t> rows = {1, 4, 16};
  std::vector<kbitd::runtime::cuda::FourBitLinearTuning> variants;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    std::pair<std::string, std::string> kv = absl::StrSplit(arg, absl::MaxSplits('=', 1));
    bool ok = true;
    if (kv.first == "--layers") {
      ok = absl::SimpleAtoi(kv.second, &layers) && layers > 0;
    } else if (kv.first == "--reps") {
      ok = absl::SimpleAtoi(kv.second, &reps) && reps > 0;
    } else if (kv.first == "--rows") {
      rows.clear();
      for (absl::string_view r : absl::StrSplit(kv.second, ',')) {
        int64_t m = 0;
        ok = ok && absl::SimpleAtoi(r, &m) && m >= 1 && m <= 16;
        rows.push_back(m);
      }
    } else if (kv.first == "--variants" && kv.second == "all") {
      variants = kbitd::runtime::cuda::FourBitLinearVariants();
    } else if (kv.first == "--variants") {
      // warps/unroll/copies[/blocks],...
      for (absl::string_view v : absl::StrSplit(kv.second, ',')) {
        std::vector<std::string> parts = absl::StrSplit(v, '/');
        kbitd::runtime::cuda::FourBitLinearTuning t;
        ok = ok && (parts.size() == 3 || parts.size() == 4) &&
             absl::SimpleAtoi(parts[0], &t.warps) && absl::SimpleAtoi(parts[1], &t.unroll) &&
             absl::SimpleAtoi(parts[2], &t.table_copies) &&
             (parts.size() == 3 || absl::SimpleAtoi(parts[3], &t.min_blocks));
        variants.push_back(t);
      }
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr,
                   "usage: gpu_linear_bench [--layers=32] [--reps=20] [--rows=1,4,16] "
                   "[--variants=8/4/32/1,8/2/32/3,...]\n");
      return 2;
    }
  }
  const absl::Status status = kbitd::bench::Run(layers, reps, rows, variants);
  if (!status.ok()) {
    std::fprintf(stderr, "gpu_linear_bench: %s\n", std::string(status.message()).c_str());
    return 1;
  }
  return 0;
}
