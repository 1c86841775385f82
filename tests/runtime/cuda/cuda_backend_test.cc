// The CUDA device as the daemon sets it up: its pool's budget and arena, a bfloat16 model on the
// GPU against the CPU backend's bfloat16 emulation, and memory returned on unload. Skipped
// without a GPU.
#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/cuda/cuda_allocator.h"
#include "runtime/cuda/cuda_devices.h"
#include "runtime/device_set.h"
#include "runtime/engine.h"
#include "runtime/loader.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::runtime {
namespace {

const std::string kLlama = std::string(KBITD_TEST_DATA_DIR) + "/models/llama/fp32";

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DeviceSet::Options options;
    options.accelerators = cuda::DiscoverCudaDevices;
    auto devices = DeviceSet::Create(options);
    ASSERT_TRUE(devices.ok()) << devices.status();
    devices_ = std::move(*devices);
    if (!devices_->Contains(Device::Cuda(0))) GTEST_SKIP() << "no GPU";
  }

  std::shared_ptr<Model> Load(DeviceSet& devices, const std::string& device_map,
                              ScalarType compute_dtype) {
    LoadOptions options;
    options.devices = &devices;
    options.path = kLlama;
    options.name = "llama-" + device_map;
    options.placement.device_map = device_map;
    options.compute_dtype = compute_dtype;
    auto model = LoadModel(options);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? *model : nullptr;
  }

  std::unique_ptr<DeviceSet> devices_;
};

TEST_F(CudaBackendTest, TheGpuPoolHasTransformersDefaultBudget) {
  auto pool = *devices_->Pool(Device::Cuda(0));
  EXPECT_GT(pool->max_bytes(), int64_t{1} << 30);
  EXPECT_EQ(pool->device(), Device::Cuda(0));
}

TEST_F(CudaBackendTest, TheArenaReusesFreedRangesAndMergesNeighbours) {
  auto arena = cuda::NewCudaArenaAllocator(0, 1 << 20);
  void* a = *arena->Allocate(1000);
  void* b = *arena->Allocate(1000);
  void* c = *arena->Allocate(1000);
  EXPECT_EQ(static_cast<char*>(b) - static_cast<char*>(a), 1024);  // 256-byte granules
  arena->Free(b, 1000);
  EXPECT_EQ(*arena->Allocate(600), b);  // best fit: the hole b left
  arena->Free(b, 600);
  arena->Free(a, 1000);
  arena->Free(c, 1000);
  // Everything merged back into one range: the whole chunk is available from its start again.
  EXPECT_EQ(*arena->Allocate(1 << 20), a);
}

TEST_F(CudaBackendTest, ABfloat16ModelOnTheGpuAgreesWithTheCpuEmulation) {
  auto gpu_model = Load(*devices_, "cuda:0", ScalarType::kBFloat16);
  auto cpu_model = Load(kbitd::test::TestDevices(), "cpu", ScalarType::kBFloat16);
  ASSERT_NE(gpu_model, nullptr);
  ASSERT_NE(cpu_model, nullptr);
  EXPECT_EQ(gpu_model->device(), Device::Cuda(0));
  Engine::Options options;
  options.keep_last_logits = true;  // LastLogits is read below
  options.kv_cache_tokens = 256;
  auto gpu = Engine::Create(gpu_model, **devices_->BackendFor(Device::Cuda(0)), options);
  auto cpu = Engine::Create(cpu_model, kbitd::test::HostBackend(), options);
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  const std::vector<int32_t> prompt = {1, 17, 42, 300, 5, 99, 250, 8};
  SamplingParams greedy;
  greedy.temperature = 0;
  ASSERT_TRUE((*gpu)->AddSequence(1, prompt, greedy).ok());
  ASSERT_TRUE((*cpu)->AddSequence(1, prompt, greedy).ok());
  for (int step = 0; step < 4; ++step) {
    const int32_t tokens = step == 0 ? static_cast<int32_t>(prompt.size()) : 1;
    auto g = (*gpu)->Step({{1, tokens}});
    auto c = (*cpu)->Step({{1, tokens}});
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_TRUE(c.ok()) << c.status();
    const std::vector<float>& gl = (*gpu)->LastLogits(1);
    const std::vector<float>& cl = (*cpu)->LastLogits(1);
    ASSERT_EQ(gl.size(), cl.size());
    float max_abs = 0, max_diff = 0;
    for (size_t i = 0; i < cl.size(); ++i) {
      max_abs = std::max(max_abs, std::fabs(cl[i]));
      max_diff = std::max(max_diff, std::fabs(gl[i] - cl[i]));
    }
    // bfloat16 keeps 8 bits of mantissa; the two backends round at different points.
    EXPECT_LE(max_diff, 0.03f * max_abs) << "step " << step;
    if ((*g)[0].token != (*c)[0].token) break;  // a near tie: inputs diverge from here
  }
}

TEST_F(CudaBackendTest, UnloadingReturnsEveryByteToTheGpuPool) {
  auto pool = *devices_->Pool(Device::Cuda(0));
  const int64_t before = pool->used_bytes();
  {
    auto model = Load(*devices_, "cuda:0", ScalarType::kFloat32);
    ASSERT_NE(model, nullptr);
    EXPECT_GT(pool->owner_bytes("llama-cuda:0", MemoryCategory::kWeights), 0);
    Engine::Options options;
    options.keep_last_logits = true;  // LastLogits is read below
    options.kv_cache_tokens = 64;
    auto engine = Engine::Create(model, **devices_->BackendFor(Device::Cuda(0)), options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    EXPECT_GT(pool->owner_bytes("llama-cuda:0", MemoryCategory::kKvCache), 0);
  }
  EXPECT_EQ(pool->owner_bytes("llama-cuda:0"), 0);
  EXPECT_EQ(pool->used_bytes(), before);
}

TEST_F(CudaBackendTest, AGptqCheckpointOnTheGpuIsRefusedAtLoadNotAtGenerate) {
  LoadOptions options;
  options.devices = devices_.get();
  options.path = std::string(KBITD_TEST_DATA_DIR) + "/gptq/llama_gptq4";
  options.name = "gptq-on-gpu";
  options.placement.device_map = "cuda:0";
  const int64_t before = (*devices_->Pool(Device::Cuda(0)))->used_bytes();
  absl::StatusOr<std::shared_ptr<Model>> model = LoadModel(options);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kUnimplemented) << model.status();
  EXPECT_THAT(std::string(model.status().message()), ::testing::HasSubstr("device_map \"cpu\""));
  EXPECT_EQ((*devices_->Pool(Device::Cuda(0)))->used_bytes(), before);
}

}  // namespace
}  // namespace kbitd::runtime
