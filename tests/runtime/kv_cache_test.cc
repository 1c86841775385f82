#include "runtime/kv_cache.h"

#include "gtest/gtest.h"
#include "runtime/cpu/thread_pool.h"

namespace kbitd::runtime {
namespace {

class RecordingObserver : public MemoryObserver {
 public:
  void OnMemoryChanged(const Device&, const std::string& owner, MemoryCategory category,
                       int64_t owner_bytes, int64_t device_bytes) override {
    last_owner = owner;
    last_category = category;
    last_owner_bytes = owner_bytes;
    last_device_bytes = device_bytes;
  }
  std::string last_owner;
  MemoryCategory last_category = MemoryCategory::kWorkspace;
  int64_t last_owner_bytes = -1, last_device_bytes = -1;
};

TEST(MemoryPoolTest, CountsPerCategoryAndOwnerAndEnforcesLimit) {
  RecordingObserver observer;
  MemoryPool::Options options;
  options.max_bytes = 1000;
  options.observer = &observer;
  auto pool = *MemoryPool::Create(std::move(options));
  {
    auto a = pool->Allocate(600, MemoryCategory::kWeights, "m1");
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(observer.last_owner, "m1");
    EXPECT_EQ(observer.last_owner_bytes, 600);
    auto b = pool->Allocate(500, MemoryCategory::kKvCache, "m2");
    EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_NE(std::string(b.status().message()).find("m2"), std::string::npos);
    auto c = pool->Allocate(300, MemoryCategory::kKvCache, "m2");
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(pool->used_bytes(), 900);
    EXPECT_EQ(pool->bytes(MemoryCategory::kKvCache), 300);
    EXPECT_EQ(pool->owner_bytes("m1"), 600);
    Buffer moved = std::move(*a);
    EXPECT_EQ(pool->used_bytes(), 900);
  }
  EXPECT_EQ(pool->used_bytes(), 0);
  EXPECT_EQ(observer.last_device_bytes, 0);
}

TEST(KvCacheTest, BlockTablesGrowAndFreeListRecycles) {
  auto pool = *MemoryPool::Create({});
  KvCache::Options o{.num_layers = 2, .num_kv_heads = 2, .head_dim = 4, .block_size = 4,
                     .num_blocks = 3};
  auto cache = *KvCache::Create(o, *pool, "m");
  EXPECT_EQ(pool->bytes(MemoryCategory::kKvCache), 2 * 2 * 3 * 4 * 2 * 4 * 4);
  ASSERT_TRUE(cache->Reserve(7, 5).ok());
  EXPECT_EQ(cache->BlockTable(7)->size(), 2u);
  EXPECT_EQ(cache->AdditionalBlocksNeeded(7, 8), 0);
  EXPECT_EQ(cache->AdditionalBlocksNeeded(7, 9), 1);
  EXPECT_EQ(cache->Reserve(8, 9).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache->BlockTable(8), nullptr);
  ASSERT_TRUE(cache->Reserve(8, 4).ok());
  const auto& t7 = *cache->BlockTable(7);
  // Distinct slots for different positions, layers and sequences.
  EXPECT_NE(cache->KeySlot(0, t7, 0), cache->KeySlot(0, t7, 1));
  EXPECT_NE(cache->KeySlot(0, t7, 4), cache->KeySlot(1, t7, 4));
  EXPECT_NE(cache->KeySlot(0, t7, 0), cache->KeySlot(0, *cache->BlockTable(8), 0));
  cache->Free(7);
  EXPECT_EQ(cache->num_free_blocks(), 2);
  ASSERT_TRUE(cache->Reserve(9, 8).ok());
  EXPECT_EQ(cache->num_free_blocks(), 0);
}

}  // namespace
}  // namespace kbitd::runtime
