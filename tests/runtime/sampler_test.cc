#include "runtime/sampler.h"

#include <cmath>
#include <map>

#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

std::vector<float> Logits() { return {1.0f, 3.0f, 2.0f, 0.5f, -1.0f}; }

TEST(SamplerTest, PhiloxIsCounterBasedAndUniform) {
  EXPECT_EQ(PhiloxUniform(1, 2), PhiloxUniform(1, 2));
  EXPECT_NE(PhiloxUniform(1, 2), PhiloxUniform(1, 3));
  EXPECT_NE(PhiloxUniform(1, 2), PhiloxUniform(2, 2));
  // Random123 known answer for philox4x32_10, counter 0 and key 0: words 6627e8d5 e169c58d.
  EXPECT_EQ(PhiloxUniform(0, 0), static_cast<double>((0x6627e8d5e169c58dull) >> 11) * 0x1.0p-53);
  double sum = 0;
  for (int i = 0; i < 100000; ++i) {
    double u = PhiloxUniform(7, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 100000, 0.5, 0.005);
}

TEST(SamplerTest, GreedyPicksArgmaxWithLogprobAndTopN) {
  SamplingParams p;
  p.temperature = 0;
  p.top_logprobs = 2;
  std::vector<float> l = Logits();
  SampleResult r = SampleToken(l, p, {}, 0);
  EXPECT_EQ(r.token, 1);
  double z = 0;
  for (float v : Logits()) z += std::exp(v);
  EXPECT_NEAR(r.logprob, 3.0 - std::log(z), 1e-5);
  ASSERT_EQ(r.top.size(), 2u);
  EXPECT_EQ(r.top[0].token, 1);
  EXPECT_EQ(r.top[1].token, 2);
}

TEST(SamplerTest, RepetitionPenaltyFollowsHf) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 4.0f;
  std::vector<float> l = Logits();
  SampleResult r = SampleToken(l, p, {1, 4}, 0);
  EXPECT_FLOAT_EQ(l[1], 0.75f);  // positive: divided
  EXPECT_FLOAT_EQ(l[4], -4.0f);  // negative: multiplied
  EXPECT_EQ(r.token, 2);
}

std::map<int32_t, int> Histogram(const SamplingParams& base, int draws) {
  std::map<int32_t, int> h;
  for (int i = 0; i < draws; ++i) {
    SamplingParams p = base;
    p.seed = 12345;
    std::vector<float> l = Logits();
    ++h[SampleToken(l, p, {}, i).token];
  }
  return h;
}

TEST(SamplerTest, FiltersRestrictTheCandidates) {
  SamplingParams p;
  p.top_k = 2;
  auto h = Histogram(p, 2000);
  EXPECT_EQ(h.size(), 2u);
  EXPECT_GT(h[1], h[2]);
  // probs ~ [0.086, 0.63, 0.23, 0.052, 0.012]: top_p 0.7 keeps {1, 2}.
  p = {};
  p.top_p = 0.7f;
  EXPECT_EQ(Histogram(p, 2000).size(), 2u);
  // min_p 0.1 keeps tokens with p >= 0.063: {0, 1, 2}.
  p = {};
  p.min_p = 0.1f;
  h = Histogram(p, 3000);
  EXPECT_EQ(h.size(), 3u);
  EXPECT_EQ(h.count(3), 0u);
  // Unfiltered sampling follows the softmax.
  p = {};
  h = Histogram(p, 20000);
  EXPECT_NEAR(h[1] / 20000.0, 0.63, 0.02);
  // Low temperature concentrates on the argmax.
  p = {};
  p.temperature = 0.1f;
  EXPECT_GT(Histogram(p, 1000)[1], 990);
}

}  // namespace
}  // namespace kbitd::runtime
