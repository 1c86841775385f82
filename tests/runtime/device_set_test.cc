#include "runtime/device_set.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/engine.h"
#include "runtime/loader.h"

namespace kbitd::runtime {
namespace {

using ::testing::HasSubstr;

const std::string kLlama = std::string(KBITD_TEST_DATA_DIR) + "/models/llama/fp32";

absl::StatusOr<std::shared_ptr<Model>> Load(const DeviceSet& devices, const std::string& name,
                                            int64_t model_max_memory = 0) {
  LoadOptions load;
  load.devices = &devices;
  load.name = name;
  load.path = kLlama;
  if (model_max_memory > 0) load.placement.max_memory["cpu"] = model_max_memory;
  return LoadModel(load);
}

TEST(DeviceSetTest, TheHostHasOnePoolAndOneBackend) {
  auto devices = DeviceSet::Create({});
  ASSERT_TRUE(devices.ok()) << devices.status();
  ASSERT_EQ((*devices)->devices().size(), 1u);
  EXPECT_TRUE((*devices)->devices()[0].is_cpu());
  auto pool = (*devices)->Pool(Device::Cpu());
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ(pool->get(), (*devices)->host_pool().get());
  auto backend = (*devices)->BackendFor(Device::Cpu());
  ASSERT_TRUE(backend.ok());
  EXPECT_TRUE((*backend)->device().is_cpu());
  // The same backend every time: engines on a device share it (and its thread pool).
  EXPECT_EQ(*(*devices)->BackendFor(Device::Cpu()), *backend);
  auto missing = (*devices)->BackendFor(Device::Cuda(0));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("cuda:0"));
  EXPECT_THAT(missing.status().message(), HasSubstr("(cpu)"));
  EXPECT_FALSE((*devices)->Contains(Device::Cuda(0)));
}

TEST(DeviceSetTest, MaxMemoryKeysMustNameDevicesThatAreHere) {
  DeviceSet::Options options;
  options.max_memory["cpu"] = 1 << 20;
  auto devices = DeviceSet::Create(options);
  ASSERT_TRUE(devices.ok());
  EXPECT_EQ((*devices)->host_pool()->max_bytes(), 1 << 20);
  options.max_memory = {{"cuda:0", 1 << 20}};
  EXPECT_THAT(DeviceSet::Create(options).status().message(),
              HasSubstr("names cuda:0, which this machine does not have"));
  options.max_memory = {{"tpu", 1 << 20}};
  EXPECT_EQ(DeviceSet::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
  options.max_memory.clear();
  options.cpu_threads = -1;
  EXPECT_EQ(DeviceSet::Create(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DeviceSetTest, ModelsShareTheDevicePoolSoItsMaxMemoryHoldsAcrossThem) {
  std::unique_ptr<DeviceSet> probe = *DeviceSet::Create({});
  int64_t one_model;
  {
    auto model = Load(*probe, "probe");
    ASSERT_TRUE(model.ok()) << model.status();
    one_model = probe->host_pool()->used_bytes();
  }
  DeviceSet::Options options;
  options.max_memory["cpu"] = one_model + one_model / 2;
  std::unique_ptr<DeviceSet> devices = *DeviceSet::Create(options);
  auto a = Load(*devices, "a");
  ASSERT_TRUE(a.ok()) << a.status();
  auto b = Load(*devices, "b");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(b.status().message(), HasSubstr("b does not fit"));
  EXPECT_EQ(devices->host_pool()->used_bytes(), one_model);  // the failed load left nothing
  EXPECT_EQ(devices->host_pool()->owner_bytes("b"), 0);
  a->reset();
  b = Load(*devices, "b");
  EXPECT_TRUE(b.ok()) << b.status();
}

TEST(DeviceSetTest, AModelsOwnMaxMemoryCapsItWhileItLives) {
  std::unique_ptr<DeviceSet> devices = *DeviceSet::Create({});
  auto a = Load(*devices, "a");
  ASSERT_TRUE(a.ok()) << a.status();
  const int64_t one_model = devices->host_pool()->used_bytes();
  a->reset();
  auto capped = Load(*devices, "capped", one_model / 2);
  EXPECT_EQ(capped.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(capped.status().message(), HasSubstr("capped does not fit"));
  EXPECT_EQ(devices->host_pool()->used_bytes(), 0);
  // The limit went with the failed load: the same name loads without one.
  EXPECT_TRUE(Load(*devices, "capped").ok());
  // A limit that fits the weights also caps the KV cache the engine takes from what is left.
  auto fits = Load(*devices, "fits", one_model + (64 << 10));
  ASSERT_TRUE(fits.ok()) << fits.status();
  Engine::Options engine_options;
  engine_options.kv_cache_bytes = int64_t{1} << 30;
  auto engine = Engine::Create(*fits, **devices->BackendFor(Device::Cpu()), engine_options);
  EXPECT_EQ(engine.status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace kbitd::runtime
