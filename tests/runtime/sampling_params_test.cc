#include "runtime/sampling_params.h"

#include <cmath>
#include <limits>

#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

TEST(SamplingParamsTest, DefaultsAreValid) { EXPECT_TRUE(ValidateSamplingParams({}).ok()); }

TEST(SamplingParamsTest, RejectsOutOfRangeFieldsByName) {
  struct Case {
    SamplingParams params;
    const char* field;
  };
  SamplingParams p;
  std::vector<Case> cases;
  p = {};
  p.temperature = -0.1f;
  cases.push_back({p, "temperature"});
  p = {};
  p.temperature = std::numeric_limits<float>::quiet_NaN();
  cases.push_back({p, "temperature"});
  p = {};
  p.top_k = -1;
  cases.push_back({p, "top_k"});
  p = {};
  p.top_p = 0.0f;
  cases.push_back({p, "top_p"});
  p = {};
  p.top_p = 1.5f;
  cases.push_back({p, "top_p"});
  p = {};
  p.min_p = 1.01f;
  cases.push_back({p, "min_p"});
  p = {};
  p.repetition_penalty = 0.0f;
  cases.push_back({p, "repetition_penalty"});
  p = {};
  p.top_logprobs = 21;
  cases.push_back({p, "top_logprobs"});
  for (const Case& c : cases) {
    absl::Status status = ValidateSamplingParams(c.params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(std::string(status.message()).find(c.field), std::string::npos) << status;
  }
}

TEST(SamplingParamsTest, AcceptsBoundaries) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.top_p = 1.0f;
  p.min_p = 1.0f;
  p.top_logprobs = 20;
  p.top_k = 1;
  EXPECT_TRUE(ValidateSamplingParams(p).ok());
}

}  // namespace
}  // namespace kbitd::runtime
