// A Backend for tests of its callers: it computes nothing, records the ops called in order and
// fails a chosen call of a chosen op with a chosen status, so a test can check that the caller
// (LlamaForward, Engine, Scheduler) returns that status and issues no op after it. Outputs are
// left as they were (zeros in fresh pool memory). Thread-safe, so a test thread may read what the
// device worker recorded.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "runtime/backend.h"

namespace kbitd::test {

class FakeBackend : public runtime::Backend {
 public:
  // The op names ops() records: the Backend methods' names.
  static const std::vector<std::string>& OpNames();

  explicit FakeBackend(runtime::Device device = runtime::Device::Cpu()) : device_(device) {}

  // The `nth` call of `op` from now (1 = the next one) returns `status`; calls before and after
  // it succeed. A later Fail replaces an earlier one.
  void Fail(const std::string& op, absl::Status status, int64_t nth = 1);
  // Called with each op's name before it is recorded, on the calling thread and without the
  // backend's lock (a test may block the device worker inside an op).
  void SetHook(std::function<void(const std::string& op)> hook);
  std::vector<std::string> ops() const;
  void ClearOps();

  const runtime::Device& device() const override { return device_; }
  ScalarType ActivationDtype(ScalarType) const override { return ScalarType::kFloat32; }
  ScalarType KvCacheDtype(ScalarType) const override { return ScalarType::kFloat32; }

  absl::Status Embedding(const runtime::Tensor&, const runtime::Tensor&, runtime::Tensor) override {
    return Call("Embedding");
  }
  absl::Status Linear(const runtime::LinearWeight&, const runtime::Tensor&,
                      runtime::Tensor) override {
    return Call("Linear");
  }
  absl::Status RmsNorm(const runtime::Tensor&, const runtime::Tensor&, float,
                       runtime::Tensor) override {
    return Call("RmsNorm");
  }
  absl::Status Rope(runtime::Tensor, runtime::Tensor, int64_t, const runtime::Tensor&,
                    const runtime::Tensor&) override {
    return Call("Rope");
  }
  absl::Status WriteKv(runtime::KvCache&, int64_t, const runtime::Tensor&, const runtime::Tensor&,
                       const runtime::StepInputs&) override {
    return Call("WriteKv");
  }
  absl::Status Attention(const runtime::KvCache&, int64_t, const runtime::Tensor&,
                         const runtime::StepInputs&, const runtime::AttentionShape&,
                         runtime::Tensor) override {
    return Call("Attention");
  }
  absl::Status SiluMul(const runtime::Tensor&, const runtime::Tensor&, runtime::Tensor) override {
    return Call("SiluMul");
  }
  absl::Status Add(runtime::Tensor, const runtime::Tensor&) override { return Call("Add"); }
  absl::Status RoundTo(runtime::Tensor, ScalarType) override { return Call("RoundTo"); }
  absl::Status GatherRows(const runtime::Tensor&, const runtime::Tensor&,
                          runtime::Tensor) override {
    return Call("GatherRows");
  }
  absl::Status GreedySample(const runtime::Tensor&, runtime::Tensor, runtime::Tensor) override {
    return Call("GreedySample");
  }
  absl::Status Quantize4bit(quant::FourBitType, const runtime::Tensor&, int64_t, runtime::Tensor,
                            runtime::Tensor) override {
    return Call("Quantize4bit");
  }
  absl::Status DoubleQuantize(const runtime::Tensor&, runtime::Tensor, runtime::Tensor,
                              runtime::Tensor) override {
    return Call("DoubleQuantize");
  }
  absl::Status QuantizeRowwiseInt8(const runtime::Tensor&, runtime::Tensor,
                                   runtime::Tensor) override {
    return Call("QuantizeRowwiseInt8");
  }
  absl::Status CopyTo(const runtime::Tensor&, runtime::Tensor) override { return Call("CopyTo"); }
  absl::Status Synchronize() override { return Call("Synchronize"); }
  absl::Status Prefetch(const runtime::LayerWeights&) override { return Call("Prefetch"); }

 private:
  absl::Status Call(const std::string& op);

  const runtime::Device device_;
  mutable absl::Mutex mu_;
  std::vector<std::string> ops_ ABSL_GUARDED_BY(mu_);
  std::function<void(const std::string&)> hook_ ABSL_GUARDED_BY(mu_);
  std::string fail_op_ ABSL_GUARDED_BY(mu_);
  int64_t fail_in_ ABSL_GUARDED_BY(mu_) = 0;  // calls of fail_op_ until the failing one
  absl::Status fail_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kbitd::test
