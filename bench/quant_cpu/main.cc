// CPU throughput of kbitd's bitsandbytes-compatible quantizers, in GB/s of 16-bit (fp16/bf16) data,
// printed side by side with memcpy of the same bytes on the same machine (single thread).
// Usage: bench_quant_cpu [elements (default 16777216)] [repetitions (default 5)]
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "quant/blockwise_4bit.h"
#include "quant/blockwise_8bit.h"
#include "quant/codebooks.h"
#include "quant/int8_rowwise.h"

namespace {

using kbitd::ScalarType;
using namespace kbitd::quant;

// CPU time of this thread, so that time spent descheduled on a busy machine does not count.
double ThreadSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Best thread CPU time of `reps` runs, in seconds.
double BestSeconds(int reps, const std::function<void()>& fn) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double start = ThreadSeconds();
    fn();
    best = std::min(best, ThreadSeconds() - start);
  }
  return best;
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t n = argc > 1 ? std::atoll(argv[1]) : (int64_t{1} << 24);
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  if (n <= 0 || reps <= 0) {
    std::fprintf(stderr, "usage: %s [elements > 0] [repetitions > 0]\n", argv[0]);
    return 2;
  }
  const double bytes16 = 2.0 * static_cast<double>(n);
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<uint16_t> f16(n), bf16(n), out16(n);
  for (int64_t i = 0; i < n; ++i) {
    const float v = dist(rng);
    f16[i] = kbitd::FloatToHalf(v);
    bf16[i] = kbitd::FloatToBFloat16(v);
  }
  std::vector<uint8_t> packed(Packed4bitBytes(n)), codes(n);
  std::vector<float> absmax(NumBlocks(n, 64));
  std::vector<int8_t> cb(n);
  const int64_t cols = 4096, rows = n / cols;
  std::vector<float> scb(rows);

  const double memcpy_s =
      BestSeconds(reps, [&] { std::memcpy(out16.data(), f16.data(), n * sizeof(uint16_t)); });
  const double memcpy_gbs = bytes16 / memcpy_s / 1e9;

  struct Row {
    std::string name;
    double seconds;
  };
  std::vector<Row> rows_out;
  for (const auto& input : {std::tuple{ScalarType::kFloat16, f16.data(), "fp16"},
                            std::tuple{ScalarType::kBFloat16, bf16.data(), "bf16"}}) {
    // Variables, not structured bindings: clang 14 cannot capture those in the lambdas below.
    const ScalarType dtype = std::get<0>(input);
    const auto* data = std::get<1>(input);
    const char* label = std::get<2>(input);
    for (FourBitType type : {FourBitType::kNf4, FourBitType::kFp4}) {
      const std::string t(FourBitTypeName(type));
      rows_out.push_back(
          {"quantize " + t + " bs64 " + label, BestSeconds(reps, [&] {
             Check(Quantize4bit(type, data, dtype, n, 64, packed.data(), absmax.data()));
           })});
      rows_out.push_back(
          {"dequantize " + t + " bs64 -> " + label, BestSeconds(reps, [&] {
             Check(Dequantize4bit(type, packed.data(), absmax.data(), n, 64, dtype, out16.data()));
           })});
    }
    rows_out.push_back(
        {std::string("quantize 8-bit dynamic bs4096 ") + label, BestSeconds(reps, [&] {
           Check(QuantizeBlockwise8bit(DynamicMap().data(), data, dtype, n, 4096, codes.data(),
                                       absmax.data()));
         })});
    rows_out.push_back(
        {std::string("dequantize 8-bit dynamic bs4096 -> ") + label, BestSeconds(reps, [&] {
           Check(DequantizeBlockwise8bit(DynamicMap().data(), codes.data(), absmax.data(), n, 4096,
                                         dtype, out16.data()));
         })});
    rows_out.push_back({std::string("quantize int8 rowwise ") + label, BestSeconds(reps, [&] {
                          Check(
                              QuantizeRowwiseInt8(data, dtype, rows, cols, cb.data(), scb.data()));
                        })});
    rows_out.push_back(
        {std::string("dequantize int8 rowwise -> ") + label, BestSeconds(reps, [&] {
           Check(DequantizeRowwiseInt8(cb.data(), scb.data(), rows, cols, dtype, out16.data()));
         })});
  }

  // LLM.int8 decode step (m = 1): the int8 weight [rows, cols] is read once; reported as GB/s of
  // the fp16 weight it replaces, like the rows above.
  std::vector<uint16_t> act(cols), y(rows);
  for (int64_t i = 0; i < cols; ++i) act[i] = f16[i];
  Check(QuantizeRowwiseInt8(f16.data(), ScalarType::kFloat16, rows, cols, cb.data(), scb.data()));
  rows_out.push_back({"int8 linear m=1 fp16 (LLM.int8, t=6.0)", BestSeconds(reps, [&] {
                        Check(Int8Linear(act.data(), ScalarType::kFloat16, 1, cols, cb.data(),
                                         scb.data(), rows, nullptr, 6.0f, y.data()));
                      })});

  std::printf(
      "kbitd quant CPU benchmark: %lld elements (%.0f MiB of 16-bit data), best of %d, "
      "1 thread, thread CPU time\n",
      static_cast<long long>(n), bytes16 / (1 << 20), reps);
  std::printf("%-40s %10s %12s\n", "operation", "GB/s", "vs memcpy");
  std::printf("%-40s %10.2f %11.3fx\n", "memcpy (16-bit data)", memcpy_gbs, 1.0);
  for (const Row& r : rows_out) {
    const double gbs = bytes16 / r.seconds / 1e9;
    std::printf("%-40s %10.2f %11.3fx\n", r.name.c_str(), gbs, gbs / memcpy_gbs);
  }
  return 0;
}
