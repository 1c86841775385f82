#include "runtime/host_memory.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

constexpr char kMeminfo[] =
    "MemTotal:       24576000 kB\n"
    "MemFree:         1000000 kB\n"
    "MemAvailable:   20000000 kB\n"
    "Buffers:          100000 kB\n";
constexpr int64_t kAvailable = int64_t{20000000} * 1024;

TEST(HostMemoryTest, MemAvailableWithoutACgroupLimit) {
  absl::StatusOr<HostMemory> memory = HostMemoryFrom(kMeminfo, "", "", "");
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ(memory->available_bytes, kAvailable);
  EXPECT_EQ(memory->source, "MemAvailable of /proc/meminfo");
  // cgroup v2 "max" and v1's near-2^63 value both mean no limit.
  EXPECT_EQ(HostMemoryFrom(kMeminfo, "max\n", "123\n", "")->available_bytes, kAvailable);
  EXPECT_EQ(HostMemoryFrom(kMeminfo, "9223372036854771712\n", "123\n", "")->available_bytes,
            kAvailable);
}

TEST(HostMemoryTest, ACgroupLimitBelowMemAvailableWinsLessItsWorkingSet) {
  // v2: 4 GB limit, 3 GB charged of which 1 GB is inactive page cache: 2 GB left.
  absl::StatusOr<HostMemory> memory =
      HostMemoryFrom(kMeminfo, "4000000000\n", "3000000000\n",
                     "anon 1500000000\nfile 1500000000\ninactive_file 1000000000\n");
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_EQ(memory->available_bytes, 2000000000);
  EXPECT_EQ(memory->source, "cgroup memory limit 4000000000 minus working set 2000000000");
  // v1: the hierarchical total_inactive_file matches the hierarchical usage.
  memory = HostMemoryFrom(kMeminfo, "4000000000\n", "3000000000\n",
                          "inactive_file 5\ntotal_inactive_file 500000000\n");
  EXPECT_EQ(memory->available_bytes, 1500000000);
  // Over the limit (reclaim pending): nothing left, not a negative count.
  EXPECT_EQ(HostMemoryFrom(kMeminfo, "1000\n", "5000\n", "")->available_bytes, 0);
  // A limit above MemAvailable leaves MemAvailable in charge.
  EXPECT_EQ(HostMemoryFrom(kMeminfo, "900000000000\n", "1000\n", "")->available_bytes, kAvailable);
}

TEST(HostMemoryTest, UnreadableInputsAreErrors) {
  EXPECT_EQ(HostMemoryFrom("MemTotal: 5 kB\n", "", "", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<HostMemory> memory = HostMemoryFrom(kMeminfo, "lots\n", "1\n", "");
  EXPECT_EQ(memory.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(memory.status().message(), ::testing::HasSubstr("'lots'"));
}

TEST(HostMemoryTest, ThisHostHasSomeMemoryFree) {
  absl::StatusOr<HostMemory> memory = ReadHostMemory();
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_GT(memory->available_bytes, 0);
  EXPECT_FALSE(memory->source.empty());
}

}  // namespace
}  // namespace kbitd::runtime
