#include "runtime/kv_cache.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/cpu/thread_pool.h"
#include "runtime/host_memory.h"
#include "tests/test_util/fake_allocator.h"

namespace kbitd::runtime {
namespace {

TEST(KvCacheTest, BlockTablesGrowAndFreeListRecycles) {
  auto pool = *MemoryPool::Create({});
  KvCache::Options o{
      .num_layers = 2, .num_kv_heads = 2, .head_dim = 4, .block_size = 4, .num_blocks = 3};
  auto cache = *KvCache::Create(o, *pool, "m");
  EXPECT_EQ(pool->bytes(MemoryCategory::kKvCache), 2 * 2 * 3 * 4 * 2 * 4 * 4);
  ASSERT_TRUE(cache->Reserve(7, 5).ok());
  EXPECT_EQ(cache->BlockTable(7)->size(), 2u);
  EXPECT_EQ(cache->AdditionalBlocksNeeded(7, 8), 0);
  EXPECT_EQ(cache->AdditionalBlocksNeeded(7, 9), 1);
  EXPECT_EQ(cache->Reserve(8, 9).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache->BlockTable(8), nullptr);
  ASSERT_TRUE(cache->Reserve(8, 4).ok());
  // The tables as a step exports them: padded with zeros, distinct blocks per sequence.
  int32_t row7[3] = {-1, -1, -1}, row8[3] = {-1, -1, -1};
  ASSERT_TRUE(cache->FillBlockTable(7, 3, row7).ok());
  ASSERT_TRUE(cache->FillBlockTable(8, 3, row8).ok());
  EXPECT_EQ(row7[0], (*cache->BlockTable(7))[0]);
  EXPECT_EQ(row7[1], (*cache->BlockTable(7))[1]);
  EXPECT_EQ(row7[2], 0);
  EXPECT_NE(row7[0], row7[1]);
  EXPECT_NE(row8[0], row7[0]);
  EXPECT_NE(row8[0], row7[1]);
  EXPECT_EQ(cache->FillBlockTable(7, 1, row7).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->FillBlockTable(99, 3, row7).code(), absl::StatusCode::kInvalidArgument);
  // Per layer K and V views [blocks, block_size, kv_heads, head_dim], layers back to back.
  const Tensor k0 = cache->keys(0), k1 = cache->keys(1);
  EXPECT_EQ(k0.rank, 4);
  EXPECT_EQ(k0.dim(0), o.num_blocks);
  EXPECT_EQ(k0.dim(1), o.block_size);
  EXPECT_EQ(k0.dtype, ScalarType::kFloat32);
  EXPECT_EQ(static_cast<char*>(k1.data) - static_cast<char*>(k0.data), k0.bytes());
  EXPECT_NE(cache->values(0).data, k0.data);
  cache->Free(7);
  EXPECT_EQ(cache->num_free_blocks(), 2);
  ASSERT_TRUE(cache->Reserve(9, 8).ok());
  EXPECT_EQ(cache->num_free_blocks(), 0);
}

// 2 layers x 4 tokens x 2 kv heads x 4 floats, keys and values: 512 bytes a block; a max_context
// of 8 tokens is 2 blocks (1024 bytes).
constexpr KvCache::Options kShape{
    .num_layers = 2, .num_kv_heads = 2, .head_dim = 4, .block_size = 4};
constexpr int64_t kBlockBytes = 512;

KvCacheBudget Budget(int64_t available) {
  return KvCacheBudget{.max_context = 8,
                       .max_batch_size = 64,
                       .device = "cpu",
                       .available_bytes = available,
                       .available_source = "test budget"};
}

TEST(KvCacheSizingTest, BlockBytesCountKeysAndValuesOfEveryLayer) {
  EXPECT_EQ(KvCache::BlockBytes(kShape), kBlockBytes);
}

TEST(KvCacheSizingTest, ExplicitBytesGiveTheWholeBlocksThatFit) {
  KvCacheBudget budget = Budget(1 << 20);
  budget.bytes = 9 * kBlockBytes + 100;
  budget.tokens = 4;  // the deprecated token count loses to bytes
  EXPECT_EQ(*KvCacheBlocks(kShape, budget), 9);
  budget.bytes = 2 * kBlockBytes;  // exactly one max_context sequence
  EXPECT_EQ(*KvCacheBlocks(kShape, budget), 2);
}

TEST(KvCacheSizingTest, ExplicitBytesBelowOneSequenceAreRefused) {
  KvCacheBudget budget = Budget(1 << 20);
  budget.bytes = 2 * kBlockBytes - 1;
  absl::StatusOr<int64_t> blocks = KvCacheBlocks(kShape, budget);
  EXPECT_EQ(blocks.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(blocks.status().message(),
              ::testing::HasSubstr("holds 4 tokens, less than one max_context sequence of 8 "
                                   "tokens (1024 bytes)"));
}

TEST(KvCacheSizingTest, ExplicitBytesPastTheAvailableMemoryAreResourceExhausted) {
  KvCacheBudget budget = Budget(4000);
  budget.bytes = 9 * kBlockBytes;
  absl::StatusOr<int64_t> blocks = KvCacheBlocks(kShape, budget);
  EXPECT_EQ(blocks.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(blocks.status().message(),
              ::testing::HasSubstr("cpu: kv_cache_bytes 4608 needs 4608 bytes (36 tokens) but only "
                                   "4000 bytes are available (test budget)"));
  budget.available_bytes = 9 * kBlockBytes;  // exactly what it needs
  EXPECT_EQ(*KvCacheBlocks(kShape, budget), 9);
}

TEST(KvCacheSizingTest, DeprecatedTokensRoundUpToBlocksWithoutAMinimum) {
  KvCacheBudget budget = Budget(1 << 20);
  budget.tokens = 5;
  EXPECT_EQ(*KvCacheBlocks(kShape, budget), 2);
  budget.tokens = 3;  // less than one sequence: honoured as before
  EXPECT_EQ(*KvCacheBlocks(kShape, budget), 1);
  budget.tokens = 4096;  // 512 KiB of the 1 MiB: fits
  EXPECT_EQ(*KvCacheBlocks(kShape, budget), 1024);
  budget.tokens = 1 << 20;  // 128 MiB: does not
  EXPECT_EQ(KvCacheBlocks(kShape, budget).status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(KvCacheSizingTest, DefaultTakesAnEighthOfTheAvailableMemory) {
  EXPECT_EQ(*KvCacheBlocks(kShape, Budget(40 * kBlockBytes)), 5);
  EXPECT_EQ(*KvCacheBlocks(kShape, Budget(47 * kBlockBytes)), 5);  // whole blocks, rounded down
}

TEST(KvCacheSizingTest, DefaultStopsAtMaxBatchSizeSequences) {
  KvCacheBudget budget = Budget(int64_t{1} << 40);
  budget.max_batch_size = 3;
  EXPECT_EQ(*KvCacheBlocks(kShape, budget), 6);
  budget.max_context = 7;  // a partial last block still counts whole
  EXPECT_EQ(*KvCacheBlocks(kShape, budget), 6);
}

TEST(KvCacheSizingTest, DefaultIsNeverBelowOneSequence) {
  // An eighth is 1 block; one max_context sequence is 2 and still fits.
  EXPECT_EQ(*KvCacheBlocks(kShape, Budget(8 * kBlockBytes)), 2);
  EXPECT_EQ(*KvCacheBlocks(kShape, Budget(2 * kBlockBytes)), 2);
}

TEST(KvCacheSizingTest, DefaultIsRefusedWhenOneSequenceDoesNotFit) {
  absl::StatusOr<int64_t> blocks = KvCacheBlocks(kShape, Budget(2 * kBlockBytes - 1));
  EXPECT_EQ(blocks.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(blocks.status().message(),
              ::testing::HasSubstr("cpu: the smallest KV cache, one max_context sequence of 8 "
                                   "tokens, needs 1024 bytes (8 tokens) but only 1023 bytes are "
                                   "available (test budget)"));
}

TEST(KvCacheSizingTest, BadShapesAndBudgetsAreInvalid) {
  KvCacheBudget budget = Budget(1 << 20);
  budget.max_batch_size = 0;
  EXPECT_EQ(KvCacheBlocks(kShape, budget).status().code(), absl::StatusCode::kInvalidArgument);
  budget = Budget(1 << 20);
  budget.bytes = -1;
  EXPECT_EQ(KvCacheBlocks(kShape, budget).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KvCacheSizingTest, AvailableMemoryIsTheHostsCutToWhatMaxMemoryLeaves) {
  MemoryPool::Options options;
  options.max_bytes = 1 << 20;
  auto pool = *MemoryPool::Create(std::move(options));
  auto held = pool->Allocate(1000, MemoryCategory::kWeights, "m");
  ASSERT_TRUE(held.ok());
  KvCacheBudget budget;
  ASSERT_TRUE(SetAvailableMemory(*pool, "m", &budget).ok());
  EXPECT_EQ(budget.device, "cpu");
  EXPECT_EQ(budget.available_bytes, (1 << 20) - 1000);
  EXPECT_EQ(budget.available_source,
            "what is left of max_memory for m on cpu: 1000 bytes of the device in use, 1000 of "
            "them by m");

  // A model's own limit within the device's: what is left of it counts when smaller.
  std::shared_ptr<void> limit = pool->LimitOwner("m", 5000);
  ASSERT_TRUE(SetAvailableMemory(*pool, "m", &budget).ok());
  EXPECT_EQ(budget.available_bytes, 4000);
  ASSERT_TRUE(SetAvailableMemory(*pool, "other", &budget).ok());
  EXPECT_EQ(budget.available_bytes, (1 << 20) - 1000);

  // No max_memory: what the host has free, which is more than this test holds.
  auto unlimited = *MemoryPool::Create({});
  ASSERT_TRUE(SetAvailableMemory(*unlimited, "m", &budget).ok());
  absl::StatusOr<HostMemory> host = ReadHostMemory();
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(budget.available_source, host->source);
  EXPECT_GT(budget.available_bytes, 1 << 20);
}

TEST(KvCacheSizingTest, AGpuGivesWhatIsLeftOfItsBudget) {
  MemoryPool::Options options;
  options.device = Device::Cuda(0);
  options.max_bytes = 1000;
  options.allocator = std::make_unique<kbitd::test::FakeAllocator>();
  auto pool = *MemoryPool::Create(std::move(options));
  auto limit = pool->LimitOwner("m", 600);
  Buffer weights = *pool->Allocate(100, MemoryCategory::kWeights, "m");
  Buffer other = *pool->Allocate(450, MemoryCategory::kWeights, "other");
  KvCacheBudget budget;
  ASSERT_TRUE(SetAvailableMemory(*pool, "m", &budget).ok());
  EXPECT_EQ(budget.device, "cuda:0");
  EXPECT_EQ(budget.available_bytes, 1000 - 550);  // the device's budget binds before m's 500
  EXPECT_NE(budget.available_source.find("cuda:0"), std::string::npos);
}

TEST(KvCacheSizingTest, AGpuWithoutABudgetIsAnError) {
  MemoryPool::Options options;
  options.device = Device::Cuda(0);
  options.allocator = std::make_unique<kbitd::test::FakeAllocator>();
  auto pool = *MemoryPool::Create(std::move(options));
  KvCacheBudget budget;
  EXPECT_EQ(SetAvailableMemory(*pool, "m", &budget).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kbitd::runtime
