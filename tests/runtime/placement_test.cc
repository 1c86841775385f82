// Placement: every device_map mode, max_memory, tied weights, whole decoder layers, explicit maps,
// models that do not fit and CPU-only machines. Expected devices and bytes are worked out by hand
// in the comments, following accelerate's infer_auto_device_map / get_balanced_memory.
#include "runtime/placement.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;

// embed 100, 8 layers of 50, norm 10, lm_head 100 (or tied: 0): 610 bytes untied, 510 tied.
ModuleSizes Model(bool tied = false) {
  ModuleSizes sizes;
  sizes.modules.push_back({"model.embed_tokens", 100});
  for (int i = 0; i < 8; ++i) {
    sizes.modules.push_back({absl::StrCat("model.layers.", i), 50, true, 9});
  }
  sizes.modules.push_back({"model.norm", 10});
  if (tied) {
    sizes.modules.push_back({"lm_head", 0, false, 0, "model.embed_tokens"});
  } else {
    sizes.modules.push_back({"lm_head", 100});
  }
  return sizes;
}

const Device kCpu = Device::Cpu();
const Device kGpu0 = Device::Cuda(0);
const Device kGpu1 = Device::Cuda(1);
const Device kGpu2 = Device::Cuda(2);

PlacementOptions Map(const std::string& device_map) {
  PlacementOptions options;
  options.device_map = device_map;
  return options;
}

// "device: module, module" per entry, to compare whole plans at a glance.
std::vector<std::string> Devices(const PlacementPlan& plan) {
  std::vector<std::string> out;
  for (const PlacementEntry& e : plan.entries) {
    out.push_back(absl::StrCat(e.module, "@", e.device.ToString(), e.offloaded ? "*" : ""));
  }
  return out;
}

std::vector<std::string> Expect(const std::vector<std::pair<int, std::string>>& runs) {
  // runs: (count, device) over embed, layers 0-7, norm, lm_head in order.
  static const std::vector<std::string> names = {
      "model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2",
      "model.layers.3",     "model.layers.4", "model.layers.5", "model.layers.6",
      "model.layers.7",     "model.norm",     "lm_head"};
  std::vector<std::string> out;
  for (const auto& [count, device] : runs) {
    for (int i = 0; i < count; ++i) out.push_back(names[out.size()] + "@" + device);
  }
  return out;
}

void ExpectError(const absl::Status& status, absl::StatusCode code, const std::string& text) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(text));
}

TEST(ParseMemorySizeTest, AccelerateUnits) {
  EXPECT_EQ(*ParseMemorySize("100"), 100);
  EXPECT_EQ(*ParseMemorySize("3B"), 3);
  EXPECT_EQ(*ParseMemorySize("1KB"), 1000);
  EXPECT_EQ(*ParseMemorySize("1KiB"), 1024);
  EXPECT_EQ(*ParseMemorySize("512MB"), 512'000'000);
  EXPECT_EQ(*ParseMemorySize("512MiB"), 512LL << 20);
  EXPECT_EQ(*ParseMemorySize("1.5GB"), 1'500'000'000);
  EXPECT_EQ(*ParseMemorySize("20GiB"), 20LL << 30);
  EXPECT_EQ(*ParseMemorySize("2TB"), 2'000'000'000'000);
  EXPECT_EQ(*ParseMemorySize("1TiB"), 1LL << 40);
  for (const char* bad : {"", "GiB", "-1", "1.5.5GB", "10 GB", "10gb", "1e9"}) {
    ExpectError(ParseMemorySize(bad).status(), absl::StatusCode::kInvalidArgument, "memory size");
  }
}

TEST(PlacementTest, CpuOnlyAutoPlacesEverythingOnTheHost) {
  for (const char* mode : {"auto", "balanced", "balanced_low_0", "sequential", "", "cpu"}) {
    SCOPED_TRACE(mode);
    auto plan = MakePlacementPlan(Map(mode), Model(), {{kCpu}});
    ASSERT_TRUE(plan.ok()) << plan.status();
    // Nothing runs on a GPU, so nothing is offloaded.
    EXPECT_EQ(Devices(*plan), Expect({{11, "cpu"}}));
    EXPECT_EQ(plan->BytesOn(kCpu), 610);
    EXPECT_FALSE(plan->offload_device.has_value());
  }
}

TEST(PlacementTest, CpuOnlyRefusesGpuMaps) {
  for (const char* mode : {"cuda:0", "cuda", "0", "cuda:1"}) {
    ExpectError(MakePlacementPlan(Map(mode), Model(), {{kCpu}}).status(),
                absl::StatusCode::kFailedPrecondition, "no CUDA device");
  }
  PlacementOptions options;
  options.explicit_map = {{"model", "cpu"}, {"lm_head", "cuda:0"}};
  ExpectError(MakePlacementPlan(options, Model(), {{kCpu}}).status(),
              absl::StatusCode::kFailedPrecondition,
              "device_map entry \"lm_head\" places modules on cuda:0, but there is no CUDA device");
}

TEST(PlacementTest, MissingGpuOnAGpuMachine) {
  ExpectError(
      MakePlacementPlan(Map("cuda:2"), Model(), {{kGpu0, 1000}, {kGpu1, 1000}, {kCpu}}).status(),
      absl::StatusCode::kFailedPrecondition, "no CUDA device cuda:2 (there are cuda:0, cuda:1)");
}

TEST(PlacementTest, SingleDevice) {
  auto plan = MakePlacementPlan(Map("1"), Model(), {{kGpu0, 1000}, {kGpu1, 1000}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Devices(*plan), Expect({{11, "cuda:1"}}));
  EXPECT_EQ(plan->BytesOn(kGpu1), 610);
  EXPECT_EQ(plan->BytesOn(kGpu0), 0);
  // 500 bytes on cuda:0: embed + 8 layers = 500 fill it exactly, the norm is one too many.
  ExpectError(MakePlacementPlan(Map("cuda:0"), Model(), {{kGpu0, 500}, {kCpu}}).status(),
              absl::StatusCode::kResourceExhausted,
              "device_map puts model.norm (10 bytes) on cuda:0, which has 0 of 500 bytes left");
  ExpectError(MakePlacementPlan(Map("gpu"), Model(), {{kCpu}}).status(),
              absl::StatusCode::kInvalidArgument, "device_map \"gpu\" is not \"auto\"");
}

TEST(PlacementTest, SequentialFillsGpusInOrderAndKeepsRoomForOffloadedModules) {
  // Without keeping room: cuda:0 embed + L0-1 (200), cuda:1 L2-5 (200), cpu the rest: offloads,
  // so it is redone keeping room on cuda:0 for the largest module still to place. embed: 100 +
  // lm_head's 100 kept <= 200, placed. L0: 100 + 50 + 100 kept > 200, so cuda:0 is done with 100
  // kept free. cuda:1 (keeps nothing): L0-3 = 200. cpu: L4-7, norm, lm_head = 310, offloaded.
  auto plan = MakePlacementPlan(Map("sequential"), Model(), {{kGpu0, 200}, {kGpu1, 200}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Devices(*plan), Expect({{1, "cuda:0"}, {4, "cuda:1"}, {6, "cpu*"}}));
  EXPECT_EQ(plan->BytesOn(kGpu0), 100);
  EXPECT_EQ(plan->BytesOn(kGpu1), 200);
  EXPECT_EQ(plan->BytesOn(kCpu), 310);
  EXPECT_EQ(plan->offload_device, kGpu0);
  // The largest offloaded module (lm_head, 100) fits next to what cuda:0 holds.
  EXPECT_LE(plan->BytesOn(kGpu0) + 100, 200);
}

TEST(PlacementTest, NoRoomIsKeptWhenNothingIsOffloaded) {
  // cuda:0 350: embed + L0-4 = 350 exactly; cuda:1 300: L5-7 150 + norm 10 + lm_head 100 = 260.
  // Keeping room for lm_head on cuda:0 would push L4 over; with nothing offloaded none is kept.
  auto plan = MakePlacementPlan(Map("sequential"), Model(), {{kGpu0, 350}, {kGpu1, 300}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Devices(*plan), Expect({{6, "cuda:0"}, {5, "cuda:1"}}));
  EXPECT_EQ(plan->BytesOn(kCpu), 0);
  EXPECT_FALSE(plan->offload_device.has_value());
}

TEST(PlacementTest, TiedHeadStaysWithTheEmbedding) {
  // Tied: lm_head (0 bytes) goes with the embedding. cuda:0 260, room kept for one layer (50):
  // embed 100 + 50 kept, L0 150 + 50, L1 200 + 50 <= 260, L2 250 + 50 > 260. cpu: L2-7 + norm.
  auto plan = MakePlacementPlan(Map("auto"), Model(/*tied=*/true), {{kGpu0, 260}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->DeviceFor("lm_head"), kGpu0);
  EXPECT_EQ(plan->DeviceFor("model.embed_tokens"), kGpu0);
  EXPECT_EQ(plan->DeviceFor("model.layers.1"), kGpu0);
  EXPECT_EQ(plan->DeviceFor("model.layers.2"), kCpu);
  EXPECT_EQ(plan->DeviceFor("model.norm"), kCpu);
  EXPECT_EQ(plan->BytesOn(kGpu0), 200);
  EXPECT_EQ(plan->BytesOn(kCpu), 310);
  EXPECT_TRUE(plan->entries.back().offloaded == false);  // lm_head is on the GPU
  EXPECT_TRUE(plan->entries[3].offloaded);               // model.layers.2

  PlacementOptions options;
  options.explicit_map = {{"model", "cuda:0"}, {"lm_head", "cpu"}};
  ExpectError(MakePlacementPlan(options, Model(true), {{kGpu0, 1000}, {kCpu}}).status(),
              absl::StatusCode::kInvalidArgument,
              "device_map puts lm_head on cpu and model.embed_tokens on cuda:0, but they share "
              "weights");
}

TEST(PlacementTest, LayersAreNeverSplit) {
  // cuda:0 125 holds the embedding and half a layer: L0 moves on to cuda:1 whole.
  auto plan = MakePlacementPlan(Map("sequential"), Model(), {{kGpu0, 125}, {kGpu1, 1000}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->BytesOn(kGpu0), 100);
  EXPECT_EQ(plan->BytesOn(kGpu1), 510);
  EXPECT_EQ(plan->DeviceFor("model.layers.0"), kGpu1);
  EXPECT_EQ(plan->DeviceFor("model.layers.0.mlp.down_proj"), kGpu1);
  EXPECT_EQ(plan->DeviceFor("model.layers.0.self_attn.q_proj"), kGpu1);
  EXPECT_EQ(plan->DeviceFor("model.embed_tokens.weight"), kGpu0);
  // A name is matched at component boundaries: "model.layers.1" does not contain "model.layers.10".
  PlacementPlan twelve;
  twelve.entries = {{"model.layers.1", kGpu0, 1}, {"model.layers.10", kGpu1, 1}};
  EXPECT_EQ(twelve.DeviceFor("model.layers.10.mlp"), kGpu1);
  EXPECT_EQ(twelve.DeviceFor("model.layers.1.mlp"), kGpu0);
  EXPECT_EQ(twelve.DeviceFor("model.layers.11"), kCpu);

  PlacementOptions options;
  options.explicit_map = {{"", "cuda:0"}, {"model.layers.1.mlp", "cpu"}};
  ExpectError(MakePlacementPlan(options, Model(), {{kGpu0, 1000}, {kCpu}}).status(),
              absl::StatusCode::kInvalidArgument,
              "device_map entry \"model.layers.1.mlp\" puts part of model.layers.1 on cpu");
  // An entry inside a module that agrees with it splits nothing.
  options.explicit_map = {{"", "cuda:0"}, {"model.layers.1.mlp", "cuda:0"}};
  EXPECT_TRUE(MakePlacementPlan(options, Model(), {{kGpu0, 1000}, {kCpu}}).ok());
}

TEST(PlacementTest, BalancedSpreadsOverGpus) {
  // total 610 over 2 GPUs: 305 + 1.25 x max(layer 50, mean leaf 610 / 75 leaves = 8) = 305 + 62
  // = 367 for every GPU but the last. cuda:0: embed + L0-4 = 350 (L5 would make 400).
  // cuda:1: L5-7, norm, lm_head = 260.
  for (const char* mode : {"balanced", "auto", ""}) {
    SCOPED_TRACE(mode);
    auto plan = MakePlacementPlan(Map(mode), Model(), {{kGpu0, 1000}, {kGpu1, 1000}, {kCpu}});
    ASSERT_TRUE(plan.ok()) << plan.status();
    EXPECT_EQ(Devices(*plan), Expect({{6, "cuda:0"}, {5, "cuda:1"}}));
    EXPECT_EQ(plan->BytesOn(kGpu0), 350);
    EXPECT_EQ(plan->BytesOn(kGpu1), 260);
  }
  // 3 GPUs: 610 / 3 + 62 = 265 for cuda:0 and cuda:1. cuda:0: embed + L0-2 = 250; cuda:1:
  // L3-7 + norm = 260 (a buffer of 1.0 x 50 would cap it at 253 and move the norm on);
  // cuda:2: lm_head.
  auto three = MakePlacementPlan(Map("balanced"), Model(),
                                 {{kGpu0, 1000}, {kGpu1, 1000}, {kGpu2, 1000}, {kCpu}});
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_EQ(Devices(*three), Expect({{4, "cuda:0"}, {6, "cuda:1"}, {1, "cuda:2"}}));
  // Small layers, large embedding and head: the mean leaf (2030 / 21 leaves = 96) beats the layer
  // (10), so the buffer is 120 and cuda:0 takes 1015 + 120 = 1135: embed, L0-1, norm (1030);
  // buffered by the layer alone (12) it would take 1027 and leave the norm to cuda:1.
  ModuleSizes wide;
  wide.modules = {{"model.embed_tokens", 1000},
                  {"model.layers.0", 10, true, 9},
                  {"model.layers.1", 10, true, 9},
                  {"model.norm", 10},
                  {"lm_head", 1000}};
  auto mean_leaf = MakePlacementPlan(Map("balanced"), wide, {{kGpu0, 5000}, {kGpu1, 5000}, {kCpu}});
  ASSERT_TRUE(mean_leaf.ok()) << mean_leaf.status();
  EXPECT_EQ(mean_leaf->DeviceFor("model.norm"), kGpu0);
  EXPECT_EQ(mean_leaf->DeviceFor("lm_head"), kGpu1);
  EXPECT_EQ(mean_leaf->BytesOn(kGpu0), 1030);
  // Sequential does not balance: everything fits on cuda:0.
  auto sequential =
      MakePlacementPlan(Map("sequential"), Model(), {{kGpu0, 1000}, {kGpu1, 1000}, {kCpu}});
  ASSERT_TRUE(sequential.ok());
  EXPECT_EQ(sequential->BytesOn(kGpu0), 610);
  // One GPU: nothing to balance.
  auto one = MakePlacementPlan(Map("balanced"), Model(), {{kGpu0, 1000}, {kCpu}});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(one->BytesOn(kGpu0), 610);
}

TEST(PlacementTest, BalancedLow0KeepsGpu0Empty) {
  // per_gpu = 610 / 2 + 62 = 367: cuda:1 capped at 367, cuda:2 (last) keeps 1000, and cuda:0
  // gets max(0, 610 - 1367) = 0. cuda:1: embed + L0-4 = 350; cuda:2: the other 260.
  auto plan = MakePlacementPlan(Map("balanced_low_0"), Model(),
                                {{kGpu0, 1000}, {kGpu1, 1000}, {kGpu2, 1000}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Devices(*plan), Expect({{6, "cuda:1"}, {5, "cuda:2"}}));
  EXPECT_EQ(plan->BytesOn(kGpu0), 0);
  // cuda:1 can only take 200 and cuda:2 300: cuda:0 gets 610 - 500 = 110 (the embedding).
  // cuda:1: L0-3 = 200; cuda:2: L4-7, norm = 210, lm_head would make 310 > 300: offloaded, so
  // redone keeping 100 free on cuda:0 for lm_head: embed 100 + 100 > 110 moves on. cuda:1:
  // embed + L0-1; cuda:2: L2-7 = 300; cpu: norm, lm_head.
  plan = MakePlacementPlan(Map("balanced_low_0"), Model(),
                           {{kGpu0, 1000}, {kGpu1, 200}, {kGpu2, 300}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Devices(*plan), Expect({{3, "cuda:1"}, {6, "cuda:2"}, {2, "cpu*"}}));
  EXPECT_EQ(plan->offload_device, kGpu0);
}

TEST(PlacementTest, MaxMemoryLimitsTheCallersBudget) {
  PlacementOptions options = Map("sequential");
  // "cuda:0" and "0" name the same device; the smaller of max_memory and the budget counts.
  options.max_memory = {{"0", 150}, {"cuda:1", 5000}, {"cpu", 1'000'000}};
  auto plan = MakePlacementPlan(options, Model(), {{kGpu0, 1000}, {kGpu1, 200}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  // cuda:0 150: embed + L0 = 150; cuda:1 200: L1-4; cpu: the rest, offloaded. Redone keeping
  // lm_head's 100 free on cuda:0: embed 100 + 100 > 150, so cuda:0 holds nothing and keeps its
  // room for running offloaded modules; cuda:1: embed + L0-1 = 200; cpu: L2-7, norm, lm_head.
  EXPECT_EQ(Devices(*plan), Expect({{3, "cuda:1"}, {8, "cpu*"}}));
  EXPECT_EQ(plan->offload_device, kGpu0);
  EXPECT_EQ(plan->MaxBytes(kGpu0), 150);
  EXPECT_EQ(plan->MaxBytes(kGpu1), 5000);
  EXPECT_EQ(plan->MaxBytes(kCpu), 1'000'000);
  EXPECT_EQ(plan->MaxBytes(kGpu2), 0);  // none given

  // 0 keeps a device empty, as in accelerate.
  options.max_memory = {{"cuda:0", 0}};
  plan = MakePlacementPlan(options, Model(), {{kGpu0, 1000}, {kGpu1, 1000}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Devices(*plan), Expect({{11, "cuda:1"}}));

  // A GPU that does not exist is ignored (the deploy examples set "0" on CPU-only machines).
  options.max_memory = {{"0", 20LL << 30}, {"cpu", 8LL << 30}};
  options.device_map = "auto";
  plan = MakePlacementPlan(options, Model(), {{kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->BytesOn(kCpu), 610);
  EXPECT_EQ(plan->MaxBytes(kCpu), 8LL << 30);

  options.max_memory = {{"cpu", -1}};
  ExpectError(MakePlacementPlan(options, Model(), {{kCpu}}).status(),
              absl::StatusCode::kInvalidArgument, "max_memory[\"cpu\"] must be >= 0");
  options.max_memory = {{"disk", 100}};
  ExpectError(MakePlacementPlan(options, Model(), {{kCpu}}).status(),
              absl::StatusCode::kInvalidArgument, "device \"disk\"");
}

TEST(PlacementTest, ExplicitMap) {
  PlacementOptions options;
  // Longest prefix wins; "model.rotary_emb" (in transformers' hf_device_map) holds no weights.
  options.explicit_map = {{"model", "0"},
                          {"model.layers.6", "cpu"},
                          {"model.layers.7", "cpu"},
                          {"model.rotary_emb", "0"},
                          {"lm_head", "cuda:1"}};
  auto plan = MakePlacementPlan(options, Model(), {{kGpu0, 1000}, {kGpu1, 1000}, {kCpu}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Devices(*plan), Expect({{7, "cuda:0"}, {2, "cpu*"}, {1, "cuda:0"}, {1, "cuda:1"}}));
  EXPECT_EQ(plan->BytesOn(kGpu0), 100 + 6 * 50 + 10);
  EXPECT_EQ(plan->BytesOn(kCpu), 100);
  EXPECT_EQ(plan->offload_device, kGpu0);

  options.explicit_map = {{"model", "cpu"}};
  ExpectError(MakePlacementPlan(options, Model(), {{kCpu}}).status(),
              absl::StatusCode::kInvalidArgument, "device_map places no device for module lm_head");
  options.explicit_map = {{"model.layers", "cpu"}, {"lm_head", "cpu"}};
  ExpectError(MakePlacementPlan(options, Model(), {{kCpu}}).status(),
              absl::StatusCode::kInvalidArgument,
              "device_map places no device for module model.embed_tokens");
  // The map is followed, but budgets still hold: cuda:0 200 takes embed + L0-1, not L2.
  options.explicit_map = {{"", "cuda:0"}};
  ExpectError(MakePlacementPlan(options, Model(), {{kGpu0, 200}, {kCpu}}).status(),
              absl::StatusCode::kResourceExhausted,
              "device_map puts model.layers.2 (50 bytes) on cuda:0, which has 0 of 200 bytes left");
  // A map entry's device string is checked too.
  options.explicit_map = {{"", "disk"}};
  ExpectError(MakePlacementPlan(options, Model(), {{kCpu}}).status(),
              absl::StatusCode::kInvalidArgument, "device \"disk\"");
}

TEST(PlacementTest, NotFittingNamesTheModuleAndWhatWasLeft) {
  // cuda:0 100: embed. cpu 300: L0-5. L6 fits nowhere.
  PlacementOptions options = Map("sequential");
  options.max_memory = {{"cpu", 300}};
  ExpectError(MakePlacementPlan(options, Model(), {{kGpu0, 100}, {kCpu}}).status(),
              absl::StatusCode::kResourceExhausted,
              "model.layers.6 (50 bytes) fits on no device: cuda:0 has 0 of 100 bytes left, cpu "
              "has 0 of 300 bytes left");
  // Host only, 500: embed + 8 layers, then the norm.
  options.max_memory = {{"cpu", 500}};
  ExpectError(MakePlacementPlan(options, Model(), {{kCpu}}).status(),
              absl::StatusCode::kResourceExhausted,
              "model.norm (10 bytes) fits on no device: cpu has 0 of 500 bytes left");
  // Fits only without keeping room for the offloaded modules: cuda:0 200 (embed, L0-1) + cpu 410
  // (L2-7, norm, lm_head) = 610. Keeping lm_head's 100 on cuda:0 leaves it the embedding only,
  // and cpu 410 then holds L0-7 and the norm but not lm_head.
  options.max_memory = {{"cpu", 410}};
  ExpectError(MakePlacementPlan(options, Model(), {{kGpu0, 200}, {kCpu}}).status(),
              absl::StatusCode::kResourceExhausted,
              "lm_head (100 bytes) fits on no device: cuda:0 has 100 of 200 bytes left (100 of "
              "them kept free to run offloaded modules), cpu has 0 of 410 bytes left");
}

TEST(PlacementTest, DeviceListIsChecked) {
  ExpectError(MakePlacementPlan(Map("auto"), Model(), {{kGpu0, 100}}).status(),
              absl::StatusCode::kInvalidArgument, "must include the host");
  ExpectError(MakePlacementPlan(Map("auto"), Model(), {{kCpu}, {kCpu}}).status(),
              absl::StatusCode::kInvalidArgument, "cpu is listed twice");
  ExpectError(MakePlacementPlan(Map("auto"), Model(), {{kGpu0, -5}, {kCpu}}).status(),
              absl::StatusCode::kInvalidArgument, "the budget of cuda:0 must be >= 0");
  // Order does not matter: GPUs by index, then the host.
  auto plan = MakePlacementPlan(Map("sequential"), Model(), {{kCpu}, {kGpu1, 110}, {kGpu0, 500}});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(Devices(*plan), Expect({{9, "cuda:0"}, {2, "cuda:1"}}));
}

TEST(PlacementTest, FormatOneLinePerDevice) {
  constexpr int64_t kMiB = 1 << 20;
  PlacementPlan plan;
  plan.offload_device = kGpu0;
  plan.entries = {
      {"model.embed_tokens", kGpu0, 64 * kMiB},   {"model.layers.0", kGpu0, 100 * kMiB},
      {"model.layers.1", kGpu0, 100 * kMiB},      {"model.layers.2", kGpu0, 100 * kMiB},
      {"model.layers.3", kGpu1, 100 * kMiB},      {"model.layers.4", kCpu, 100 * kMiB, true},
      {"model.layers.5", kCpu, 100 * kMiB, true}, {"model.layers.6", kGpu1, 100 * kMiB},
      {"model.norm", kCpu, 16 * 1024, true},      {"lm_head", kGpu0, 0}};
  EXPECT_EQ(FormatPlacementPlan(plan),
            "cuda:0: model.embed_tokens, model.layers.0-2, lm_head (364.00 MiB)\n"
            "cuda:1: model.layers.3, model.layers.6 (200.00 MiB)\n"
            "cpu: model.layers.4-5, model.norm (200.02 MiB, offloaded to cuda:0)");
  EXPECT_EQ(plan.BytesOn(kCpu), 200 * kMiB + 16 * 1024);
  EXPECT_EQ(FormatPlacementPlan(PlacementPlan{}), "");
}

TEST(PlacementTest, CompatibleOverloadChecksOptionsOnly) {
  PlacementOptions options = Map("cpu");
  options.max_memory = {{"cpu", 100000}};
  auto plan = MakePlacementPlan(options, /*have_cuda_backend=*/false);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->MaxBytes(kCpu), 100000);
  EXPECT_TRUE(plan->entries.empty());
  EXPECT_EQ(plan->DeviceFor("model.layers.0"), kCpu);
  EXPECT_TRUE(MakePlacementPlan(Map("auto"), false).ok());
  ExpectError(MakePlacementPlan(Map("cuda:0"), false).status(),
              absl::StatusCode::kFailedPrecondition, "no CUDA device");
  EXPECT_TRUE(MakePlacementPlan(Map("cuda:0"), true).ok());
  options.max_memory = {{"cpu", -1}};
  EXPECT_EQ(MakePlacementPlan(options, false).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kbitd::runtime
