#include "server/batch_policy.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::server {
namespace {

TEST(BatchPolicyTest, BlocksFor) {
  EXPECT_EQ(BlocksFor(0, 16), 0);
  EXPECT_EQ(BlocksFor(1, 16), 1);
  EXPECT_EQ(BlocksFor(16, 16), 1);
  EXPECT_EQ(BlocksFor(17, 16), 2);
}

TEST(BatchPolicyTest, ReservesTheRestOfEachRunningBudget) {
  // 10 prompt tokens processed + 5 generated of a 64-token budget: 1 block (15 - 1 = 14 tokens)
  // counted allocated, 4 needed in all.
  std::vector<RunningItem> running = {{1, 0, 15, 64}, {2, 30, 0, 40}};
  EXPECT_EQ(ReservedBlocks(running, 16), 3 + 3);
}

TEST(BatchPolicyTest, AdmitsInOrderUntilKvOrSlotsRunOut) {
  BatchLimits limits{.max_batch_tokens = 64, .max_batch_size = 3, .prefill_chunk_tokens = 16};
  std::vector<QueuedItem> queue = {{10, 32}, {10, 32}, {10, 32}, {10, 32}};
  // 2 blocks each; 5 free blocks admit two.
  EXPECT_EQ(AdmitCount(queue, {}, limits, {.free_blocks = 5, .block_size = 16}), 2);
  // Plenty of KV: the batch size caps it.
  EXPECT_EQ(AdmitCount(queue, {}, limits, {.free_blocks = 100, .block_size = 16}), 3);
  std::vector<RunningItem> running = {{7, 0, 20, 48}};  // reserves 3 - 2 = 1 block
  EXPECT_EQ(AdmitCount(queue, running, limits, {.free_blocks = 5, .block_size = 16}), 2);
  EXPECT_EQ(AdmitCount(queue, running, limits, {.free_blocks = 4, .block_size = 16}), 1);
}

TEST(BatchPolicyTest, HeadOfQueueIsNotOvertaken) {
  BatchLimits limits{.max_batch_tokens = 64, .max_batch_size = 8, .prefill_chunk_tokens = 16};
  std::vector<QueuedItem> queue = {{100, 200}, {1, 2}};  // head needs 13 blocks
  EXPECT_EQ(AdmitCount(queue, {}, limits, {.free_blocks = 12, .block_size = 16}), 0);
}

TEST(BatchPolicyTest, DecodeFirstThenPrefillChunksUnderTheTokenBudget) {
  BatchLimits limits{.max_batch_tokens = 10, .max_batch_size = 8, .prefill_chunk_tokens = 4};
  std::vector<RunningItem> running = {
      {1, 9, 0, 64}, {2, 0, 12, 64}, {3, 2, 4, 64}, {4, 0, 30, 64}, {5, 20, 0, 64}};
  EXPECT_THAT(PlanStep(running, limits),
              ::testing::ElementsAre(StepItem{2, 1}, StepItem{4, 1}, StepItem{1, 4}, StepItem{3, 2},
                                     StepItem{5, 2}));
}

TEST(BatchPolicyTest, DecodeTokensAloneCanFillTheBudget) {
  BatchLimits limits{.max_batch_tokens = 2, .max_batch_size = 8, .prefill_chunk_tokens = 4};
  std::vector<RunningItem> running = {{1, 0, 3, 9}, {2, 0, 3, 9}, {3, 5, 0, 9}};
  EXPECT_THAT(PlanStep(running, limits), ::testing::ElementsAre(StepItem{1, 1}, StepItem{2, 1}));
  EXPECT_TRUE(PlanStep({}, limits).empty());
}

}  // namespace
}  // namespace kbitd::server
