#include "tests/test_util/fake_backend.h"

namespace kbitd::test {

const std::vector<std::string>& FakeBackend::OpNames() {
  static const std::vector<std::string> names = {
      "Embedding", "Linear",  "RmsNorm",    "Rope",   "WriteKv",     "Attention", "SiluMul",
      "Add",       "RoundTo", "GatherRows", "CopyTo", "Synchronize", "Prefetch"};
  return names;
}

void FakeBackend::Fail(const std::string& op, absl::Status status, int64_t nth) {
  absl::MutexLock lock(&mu_);
  fail_op_ = op;
  fail_in_ = nth;
  fail_status_ = std::move(status);
}

void FakeBackend::SetHook(std::function<void(const std::string& op)> hook) {
  absl::MutexLock lock(&mu_);
  hook_ = std::move(hook);
}

std::vector<std::string> FakeBackend::ops() const {
  absl::MutexLock lock(&mu_);
  return ops_;
}

void FakeBackend::ClearOps() {
  absl::MutexLock lock(&mu_);
  ops_.clear();
}

absl::Status FakeBackend::Call(const std::string& op) {
  std::function<void(const std::string&)> hook;
  {
    absl::MutexLock lock(&mu_);
    hook = hook_;
  }
  if (hook) hook(op);
  absl::MutexLock lock(&mu_);
  ops_.push_back(op);
  if (op == fail_op_ && fail_in_ > 0 && --fail_in_ == 0) return fail_status_;
  return absl::OkStatus();
}

}  // namespace kbitd::test
