// Times kbitd's CUDA quantization kernels on one tensor next to the device's copy bandwidth, and
// prints one JSON object per measurement. bench/quant_cuda/run_bench.py runs it and bitsandbytes on
// the same tensor and prints the side-by-side table (docs/performance.md).
//
// Method (/work/.library/device/METHOD.md): CUDA events around every call, warm-up first, a spin
// kernel ahead of each batch so launches queue up and no host gap is timed, median over
// trials x reps calls, rotation over enough buffer sets that the working set exceeds 4x the L2.
//
// usage: quant_cuda_bench --rows=R --cols=C [--dtype=bf16|f16|f32] [--blocksize=64]
//          [--quant=nf4|fp4] [--input=raw.bin] [--dump=DIR] [--reps=20] [--trials=7]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "quant/blockwise_4bit.h"
#include "quant/codebooks.h"
#include "quant/cuda/blockwise_4bit.h"
#include "quant/cuda/blockwise_8bit.h"
#include "quant/cuda/blockwise_kernels.cuh"
#include "quant/cuda/cuda_check.h"
#include "quant/cuda/device.h"
#include "quant/cuda/double_quant.h"
#include "quant/cuda/encode_select.cuh"
#include "quant/cuda/int8_rowwise.h"
#include "quant/encode.h"

namespace kbitd::quant::cuda {
namespace {

struct Options {
  int64_t rows = 4096;
  int64_t cols = 4096;
  ScalarType dtype = ScalarType::kBFloat16;
  int64_t blocksize = 64;
  FourBitType type = FourBitType::kNf4;
  std::string input;
  std::string dump;
  int reps = 20;
  int trials = 7;
};

absl::Status ParseArgs(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("expected --name=value, got ", arg));
    }
    const std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    if (name == "rows") {
      o.rows = std::stoll(value);
    } else if (name == "cols") {
      o.cols = std::stoll(value);
    } else if (name == "dtype") {
      if (value == "bf16")
        o.dtype = ScalarType::kBFloat16;
      else if (value == "f16" || value == "fp16")
        o.dtype = ScalarType::kFloat16;
      else if (value == "f32" || value == "fp32")
        o.dtype = ScalarType::kFloat32;
      else
        return absl::InvalidArgumentError(absl::StrCat("unknown --dtype ", value));
    } else if (name == "blocksize") {
      o.blocksize = std::stoll(value);
    } else if (name == "quant") {
      KBITD_ASSIGN_OR_RETURN(o.type, FourBitTypeFromName(value));
    } else if (name == "input") {
      o.input = value;
    } else if (name == "dump") {
      o.dump = value;
    } else if (name == "reps") {
      o.reps = std::stoi(value);
    } else if (name == "trials") {
      o.trials = std::stoi(value);
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  if (o.rows <= 0 || o.cols <= 0 || o.reps <= 0 || o.trials <= 0) {
    return absl::InvalidArgumentError("rows, cols, reps and trials must be positive");
  }
  return absl::OkStatus();
}

__global__ void SpinKernel(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}

// Other encoders for the same codes, to show what the shared-memory trees gain: the reference
// comparison tree of quant/encode.h (bnb's divergent form) and the branch-free selects.
template <uint8_t (*kEncode)(float)>
struct PlainCodec {
  static constexpr int kBits = 4;
  static constexpr internal::CodecTable kTable = internal::CodecTable::kNone;
  static internal::Lut16 HostTree() { return {}; }
  __device__ static uint8_t Encode(const float*, float x) { return kEncode(x); }
};
__device__ uint8_t RefNf4(float x) { return EncodeNf4(x); }
__device__ uint8_t RefFp4(float x) { return EncodeFp4(x); }
__device__ uint8_t SelectNf4(float x) { return internal::EncodeNf4Select(x); }
__device__ uint8_t SelectFp4(float x) { return internal::EncodeFp4Select(x); }

class Bench {
 public:
  explicit Bench(const Options& o) : o_(o), n_(o.rows * o.cols) {}

  absl::Status Run() {
    KBITD_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    const int max_events = o_.reps + 1;
    events_.resize(max_events);
    for (auto& e : events_) KBITD_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e));
    int device = 0;
    cudaDeviceProp prop{};
    KBITD_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
    KBITD_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
    int clock_khz = 0;
    KBITD_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device));
    spin_cycles_ = static_cast<long long>(clock_khz) * 3;  // ~3 ms
    const size_t in_bytes = n_ * ScalarTypeSize(o_.dtype);
    // Enough sets that the smallest 4-bit working set (16-bit tensor + packed + absmax) rotates
    // through 4x the L2 before a set comes back.
    const int64_t footprint = in_bytes + Packed4bitBytes(n_) + 4 * NumBlocks(n_, o_.blocksize);
    sets_ = static_cast<int>(
        std::max<int64_t>(2, (4 * int64_t{prop.l2CacheSize} + footprint - 1) / footprint));
    std::printf("{\"device\": \"%s\", \"sms\": %d, \"l2_bytes\": %d, \"sets\": %d}\n", prop.name,
                prop.multiProcessorCount, prop.l2CacheSize, sets_);

    KBITD_RETURN_IF_ERROR(Allocate(in_bytes));
    KBITD_RETURN_IF_ERROR(Measure());
    KBITD_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    KBITD_RETURN_IF_ERROR(Dump());
    for (auto& e : events_) cudaEventDestroy(e);
    cudaStreamDestroy(stream_);
    return absl::OkStatus();
  }

 private:
  struct Set {
    DeviceBuffer input, output, packed, absmax, codes8, absmax8, nested_codes, nested_absmax,
        offset, cb, scb;
  };

  absl::Status Allocate(size_t in_bytes) {
    std::vector<uint8_t> host(in_bytes);
    if (!o_.input.empty()) {
      std::ifstream f(o_.input, std::ios::binary);
      if (!f.read(reinterpret_cast<char*>(host.data()), static_cast<std::streamsize>(in_bytes))) {
        return absl::InvalidArgumentError(
            absl::StrCat(o_.input, ": cannot read ", in_bytes, " bytes"));
      }
    } else {
      std::mt19937 rng(1234);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (int64_t i = 0; i < n_; ++i) StoreFromFloat(host.data(), o_.dtype, i, normal(rng));
    }
    const int64_t nblocks = NumBlocks(n_, o_.blocksize);
    const int64_t nblocks8 = NumBlocks(n_, 4096);
    for (int s = 0; s < sets_; ++s) {
      Set set;
      KBITD_ASSIGN_OR_RETURN(set.input, DeviceBuffer::Allocate(in_bytes));
      KBITD_ASSIGN_OR_RETURN(set.output, DeviceBuffer::Allocate(in_bytes));
      KBITD_ASSIGN_OR_RETURN(set.packed, DeviceBuffer::Allocate(Packed4bitBytes(n_)));
      KBITD_ASSIGN_OR_RETURN(set.absmax, DeviceBuffer::Allocate(4 * nblocks));
      KBITD_ASSIGN_OR_RETURN(set.codes8, DeviceBuffer::Allocate(n_));
      KBITD_ASSIGN_OR_RETURN(set.absmax8, DeviceBuffer::Allocate(4 * nblocks8));
      KBITD_ASSIGN_OR_RETURN(set.nested_codes, DeviceBuffer::Allocate(nblocks));
      KBITD_ASSIGN_OR_RETURN(set.nested_absmax,
                             DeviceBuffer::Allocate(4 * NumBlocks(nblocks, 256)));
      KBITD_ASSIGN_OR_RETURN(set.offset, DeviceBuffer::Allocate(4));
      KBITD_ASSIGN_OR_RETURN(set.cb, DeviceBuffer::Allocate(n_));
      KBITD_ASSIGN_OR_RETURN(set.scb, DeviceBuffer::Allocate(4 * o_.rows));
      KBITD_RETURN_IF_ERROR(set.input.CopyFromHost(host.data(), in_bytes));
      KBITD_RETURN_IF_ERROR(set.output.Fill(0x5A));
      sets_data_.push_back(std::move(set));
    }
    const auto& map = DynamicMap();
    KBITD_ASSIGN_OR_RETURN(code_, DeviceBuffer::Allocate(256 * sizeof(float)));
    return code_.CopyFromHost(map.data(), 256 * sizeof(float));
  }

  // Median microseconds of fn(set index) over trials x reps timed calls.
  absl::StatusOr<double> Time(const std::function<absl::Status(Set&)>& fn) {
    for (int w = 0; w < 3; ++w) KBITD_RETURN_IF_ERROR(fn(sets_data_[w % sets_]));
    std::vector<double> us;
    int next = 0;
    for (int t = 0; t < o_.trials; ++t) {
      SpinKernel<<<1, 1, 0, stream_>>>(spin_cycles_);
      KBITD_RETURN_IF_ERROR(LaunchStatus("SpinKernel"));
      for (int r = 0; r < o_.reps; ++r) {
        KBITD_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[r], stream_));
        KBITD_RETURN_IF_ERROR(fn(sets_data_[next++ % sets_]));
      }
      KBITD_CUDA_RETURN_IF_ERROR(cudaEventRecord(events_[o_.reps], stream_));
      KBITD_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events_[o_.reps]));
      for (int r = 0; r < o_.reps; ++r) {
        float ms = 0;
        KBITD_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, events_[r], events_[r + 1]));
        us.push_back(1000.0 * ms);
      }
    }
    std::sort(us.begin(), us.end());
    return us[us.size() / 2];
  }

  absl::Status Report(const std::string& op, const std::string& variant, double bytes_moved,
                      const std::function<absl::Status(Set&)>& fn) {
    KBITD_ASSIGN_OR_RETURN(const double us, Time(fn));
    std::printf(
        "{\"op\": \"%s\", \"impl\": \"kbitd\", \"variant\": \"%s\", \"us\": %.3f, \"n\": %lld, "
        "\"bytes_moved\": %.0f}\n",
        op.c_str(), variant.c_str(), us, static_cast<long long>(n_), bytes_moved);
    std::fflush(stdout);
    return absl::OkStatus();
  }

  absl::Status Measure() {
    const ScalarType t = o_.dtype;
    const FourBitType q = o_.type;
    const int64_t bs = o_.blocksize, nblocks = NumBlocks(n_, bs);
    const double in_bytes = static_cast<double>(n_ * ScalarTypeSize(t));
    const double packed_bytes = static_cast<double>(Packed4bitBytes(n_));
    const double moved4 = in_bytes + packed_bytes + 4.0 * nblocks;
    void* s = stream_;

    KBITD_RETURN_IF_ERROR(Report("copy", "cudaMemcpyAsync", 2 * in_bytes, [&](Set& set) {
      return CudaStatus(
          cudaMemcpyAsync(set.output.data(), set.input.data(), static_cast<size_t>(in_bytes),
                          cudaMemcpyDeviceToDevice, stream_),
          "cudaMemcpyAsync");
    }));
    KBITD_RETURN_IF_ERROR(Report("quantize", "api", moved4, [&](Set& set) {
      return Quantize4bit(q, set.input.data(), t, n_, bs, set.packed.as<uint8_t>(),
                          set.absmax.as<float>(), s);
    }));
    using RefCodecs = std::pair<PlainCodec<RefNf4>, PlainCodec<RefFp4>>;
    using SelectCodecs = std::pair<PlainCodec<SelectNf4>, PlainCodec<SelectFp4>>;
    KBITD_RETURN_IF_ERROR(QuantVariant<RefCodecs>("reference-tree", moved4));
    KBITD_RETURN_IF_ERROR(QuantVariant<SelectCodecs>("select", moved4));
    KBITD_RETURN_IF_ERROR(Report("dequantize", "api", moved4, [&](Set& set) {
      return Dequantize4bit(q, set.packed.as<uint8_t>(), set.absmax.as<float>(), n_, bs, t,
                            set.output.data(), s);
    }));
    // The API's kDequantIters steps per thread against its neighbours.
    KBITD_RETURN_IF_ERROR(DequantVariant<2>(moved4));
    KBITD_RETURN_IF_ERROR(DequantVariant<8>(moved4));

    // Nested (double-quantized) absmax: quantize = 4-bit + double quant; dequantize = reconstruct
    // + 4-bit dequant.
    const double moved_nested = moved4 + 4.0 * nblocks + nblocks;
    KBITD_RETURN_IF_ERROR(Report("quantize_nested", "api", moved_nested, [&](Set& set) {
      KBITD_RETURN_IF_ERROR(Quantize4bit(q, set.input.data(), t, n_, bs, set.packed.as<uint8_t>(),
                                         set.absmax.as<float>(), s));
      return DoubleQuantizeAbsmax(set.absmax.as<float>(), nblocks, code_.as<float>(),
                                  set.nested_codes.as<uint8_t>(), set.nested_absmax.as<float>(),
                                  set.offset.as<float>(), s);
    }));
    KBITD_RETURN_IF_ERROR(Report("dequantize_nested", "api", moved_nested, [&](Set& set) {
      KBITD_RETURN_IF_ERROR(ReconstructAbsmax(set.nested_codes.as<uint8_t>(),
                                              set.nested_absmax.as<float>(), code_.as<float>(),
                                              0.01f, nblocks, set.absmax.as<float>(), s));
      return Dequantize4bit(q, set.packed.as<uint8_t>(), set.absmax.as<float>(), n_, bs, t,
                            set.output.data(), s);
    }));

    const double moved8 = in_bytes + n_ + 4.0 * NumBlocks(n_, 4096);
    KBITD_RETURN_IF_ERROR(Report("quantize_8bit", "api", moved8, [&](Set& set) {
      return QuantizeBlockwise8bit(code_.as<float>(), set.input.data(), t, n_, 4096,
                                   set.codes8.as<uint8_t>(), set.absmax8.as<float>(), s);
    }));
    KBITD_RETURN_IF_ERROR(Report("dequantize_8bit", "api", moved8, [&](Set& set) {
      return DequantizeBlockwise8bit(code_.as<float>(), set.codes8.as<uint8_t>(),
                                     set.absmax8.as<float>(), n_, 4096, t, set.output.data(), s);
    }));
    const double moved_int8 = in_bytes + n_ + 4.0 * o_.rows;
    KBITD_RETURN_IF_ERROR(Report("quantize_int8", "api", moved_int8, [&](Set& set) {
      return QuantizeRowwiseInt8(set.input.data(), t, o_.rows, o_.cols, set.cb.as<int8_t>(),
                                 set.scb.as<float>(), s);
    }));
    return Report("dequantize_int8", "api", moved_int8, [&](Set& set) {
      return DequantizeRowwiseInt8(set.cb.as<int8_t>(), set.scb.as<float>(), o_.rows, o_.cols, t,
                                   set.output.data(), s);
    });
  }

  template <typename Codecs>
  absl::Status QuantVariant(const char* name, double moved) {
    using Nf4 = typename Codecs::first_type;
    using Fp4 = typename Codecs::second_type;
    return Report("quantize", name, moved, [&](Set& set) {
      internal::QuantizeParams p{};
      p.input = set.input.data();
      p.n = n_;
      p.log2_blocksize = internal::Log2Blocksize(o_.blocksize);
      p.codes = set.packed.as<uint8_t>();
      p.absmax = set.absmax.as<float>();
      p.vectorized = true;
      return internal::DispatchElem(o_.dtype, [&](auto in) {
        using In = decltype(in);
        return o_.type == FourBitType::kNf4
                   ? internal::LaunchQuantize<In, Nf4>(p, stream_, "quantize variant")
                   : internal::LaunchQuantize<In, Fp4>(p, stream_, "quantize variant");
      });
    });
  }

  template <int kIters>
  absl::Status DequantVariant(double moved) {
    const FourBitType q = o_.type;
    return Report("dequantize", absl::StrCat("iters", kIters), moved, [&](Set& set) {
      internal::DequantizeParams p{};
      p.codes = set.packed.as<uint8_t>();
      p.absmax = set.absmax.as<float>();
      p.n = n_;
      p.log2_blocksize = internal::Log2Blocksize(o_.blocksize);
      p.output = set.output.data();
      const auto& bits = q == FourBitType::kNf4 ? kNf4CodeBits : kFp4CodeBits;
      for (int i = 0; i < 16; ++i) p.lut16.v[i] = FloatFromBits(bits[i]);
      p.vectorized = true;
      return internal::DispatchElem(o_.dtype, [&](auto out) {
        return internal::LaunchDequantize<decltype(out), 4, kIters>(p, stream_, "dequant variant");
      });
    });
  }

  // Our packed codes and absmax of set 0 (recomputed), for the driver's byte comparison with bnb.
  absl::Status Dump() {
    if (o_.dump.empty()) return absl::OkStatus();
    Set& set = sets_data_[0];
    const int64_t nblocks = NumBlocks(n_, o_.blocksize);
    KBITD_RETURN_IF_ERROR(Quantize4bit(o_.type, set.input.data(), o_.dtype, n_, o_.blocksize,
                                       set.packed.as<uint8_t>(), set.absmax.as<float>(), stream_));
    KBITD_RETURN_IF_ERROR(Dequantize4bit(o_.type, set.packed.as<uint8_t>(), set.absmax.as<float>(),
                                         n_, o_.blocksize, o_.dtype, set.output.data(), stream_));
    KBITD_RETURN_IF_ERROR(SynchronizeStream(stream_));
    std::vector<uint8_t> packed(Packed4bitBytes(n_)), absmax(4 * nblocks),
        output(n_ * ScalarTypeSize(o_.dtype));
    KBITD_RETURN_IF_ERROR(set.packed.CopyToHost(packed.data(), packed.size()));
    KBITD_RETURN_IF_ERROR(set.absmax.CopyToHost(absmax.data(), absmax.size()));
    KBITD_RETURN_IF_ERROR(set.output.CopyToHost(output.data(), output.size()));
    for (auto [name, bytes] : {std::pair{"packed.bin", &packed}, std::pair{"absmax.bin", &absmax},
                               std::pair{"dequant.bin", &output}}) {
      std::ofstream f(o_.dump + "/" + name, std::ios::binary);
      f.write(reinterpret_cast<const char*>(bytes->data()),
              static_cast<std::streamsize>(bytes->size()));
      if (!f) return absl::InternalError(absl::StrCat("cannot write ", o_.dump, "/", name));
    }
    return absl::OkStatus();
  }

  Options o_;
  int64_t n_;
  int sets_ = 2;
  long long spin_cycles_ = 0;
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> events_;
  std::vector<Set> sets_data_;
  DeviceBuffer code_;
};

}  // namespace
}  // namespace kbitd::quant::cuda

namespace kbitd::quant::cuda {
namespace {
absl::Status Main(int argc, char** argv) {
  Options options;
  KBITD_RETURN_IF_ERROR(ParseArgs(argc, argv, options));
  if (DeviceCount() == 0) return absl::FailedPreconditionError("no CUDA device");
  return Bench(options).Run();
}
}  // namespace
}  // namespace kbitd::quant::cuda

int main(int argc, char** argv) {
  const absl::Status status = kbitd::quant::cuda::Main(argc, argv);
  if (!status.ok()) {
    std::fprintf(stderr, "quant_cuda_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
