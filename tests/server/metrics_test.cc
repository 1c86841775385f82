#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <optional>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/loader.h"
#include "runtime/model.h"
#include "tests/test_util/test_devices.h"

namespace kbitd::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string HttpGet(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "";
  }
  const std::string request = "GET " + path + " HTTP/1.0\r\nHost: localhost\r\n\r\n";
  (void)!write(fd, request.data(), request.size());
  std::string response;
  char buffer[4096];
  for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) response.append(buffer, n);
  close(fd);
  return response;
}

// Fills a few series of model "tiny"; they live as long as the returned handle.
std::shared_ptr<ModelMetrics> Exercise(Metrics& metrics) {
  std::shared_ptr<ModelMetrics> m = metrics.AddModel("tiny");
  m->CountRequest(RequestOutcome::kStop);
  m->CountRequest(RequestOutcome::kRejected);
  m->prompt_tokens->Increment(12);
  m->generated_tokens->Increment(5);
  m->time_to_first_token->Observe(0.02);
  m->weight_bytes->Set(1000);
  metrics.SetModelCount("ready", 1);
  metrics.OnMemoryChanged(runtime::Device::Cpu(), "tiny", runtime::MemoryCategory::kWeights, 1000,
                          1500);
  return m;
}

TEST(MetricsTest, ServesConventionalNamesOnItsOwnPort) {
  auto metrics = Metrics::Create({.address = "127.0.0.1:0"});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_GT((*metrics)->port(), 0);
  auto tiny = Exercise(**metrics);
  const std::string body = HttpGet((*metrics)->port(), "/metrics");
  EXPECT_THAT(body, HasSubstr("200 OK"));
  EXPECT_THAT(body, HasSubstr("kbitd_requests_total{model=\"tiny\",outcome=\"stop\"} 1"));
  EXPECT_THAT(body, HasSubstr("kbitd_prompt_tokens_total{model=\"tiny\"} 12"));
  EXPECT_THAT(body,
              HasSubstr("kbitd_time_to_first_token_seconds_bucket{model=\"tiny\",le=\"0.032"));
  EXPECT_THAT(
      body,
      HasSubstr("kbitd_memory_bytes{category=\"weights\",device=\"cpu\",model=\"tiny\"} 1000"));
  EXPECT_THAT(body, HasSubstr("kbitd_device_memory_bytes{device=\"cpu\"} 1500"));
}

TEST(MetricsTest, ExpositionPassesPromtool) {
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ((*metrics)->port(), 0);
  auto tiny = Exercise(**metrics);
  const std::string path = ::testing::TempDir() + "/kbitd_metrics.txt";
  std::ofstream(path) << (*metrics)->Serialize();
  // promtool (Debian's prometheus package, installed by scripts/setup.sh) lints names and units.
  const std::string command = "promtool check metrics < " + path + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[512];
  while (fgets(buffer, sizeof(buffer), pipe)) output += buffer;
  const int rc = pclose(pipe);
  EXPECT_EQ(rc, 0) << output;
  EXPECT_EQ(output, "");
}

TEST(MetricsTest, FindModelNeverCreatesSeries) {
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  const std::string empty = (*metrics)->Serialize();
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ((*metrics)->FindModel("ghost-" + std::to_string(i)), nullptr);
  }
  EXPECT_EQ((*metrics)->Serialize(), empty);
  auto tiny = (*metrics)->AddModel("tiny");
  EXPECT_EQ((*metrics)->FindModel("tiny").get(), tiny.get());
}

TEST(MetricsTest, SeriesLeaveWithTheLastHandle) {
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  auto registry_handle = Exercise(**metrics);
  auto request_handle = (*metrics)->FindModel("tiny");  // a request still finishing
  registry_handle.reset();                              // the unload is done
  request_handle->CountRequest(RequestOutcome::kCancelled);
  EXPECT_THAT((*metrics)->Serialize(),
              HasSubstr("kbitd_requests_total{model=\"tiny\",outcome=\"cancelled\"} 1"));
  request_handle.reset();
  std::string text = (*metrics)->Serialize();
  EXPECT_THAT(text, Not(HasSubstr("model=\"tiny\"")));
  EXPECT_THAT(text, HasSubstr("kbitd_device_memory_bytes{device=\"cpu\"} 1500"));
  // The model's weights are freed after its series left: that adds no series back.
  (*metrics)->OnMemoryChanged(runtime::Device::Cpu(), "tiny", runtime::MemoryCategory::kWeights, 0,
                              500);
  text = (*metrics)->Serialize();
  EXPECT_THAT(text, Not(HasSubstr("model=\"tiny\"")));
  EXPECT_THAT(text, HasSubstr("kbitd_device_memory_bytes{device=\"cpu\"} 500"));
}

TEST(MetricsTest, ModelLoadedAgainWhileOldHandlesLiveSharesTheirSeries) {
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  auto old_model = (*metrics)->AddModel("m");
  old_model->CountRequest(RequestOutcome::kStop);
  auto new_model = (*metrics)->AddModel("m");
  old_model.reset();  // the old model's last request ends after the new load started
  new_model->CountRequest(RequestOutcome::kStop);
  EXPECT_THAT((*metrics)->Serialize(),
              HasSubstr("kbitd_requests_total{model=\"m\",outcome=\"stop\"} 2"));
  new_model.reset();
  // Once all are gone, the next load starts from fresh series.
  auto fresh = (*metrics)->AddModel("m");
  EXPECT_THAT((*metrics)->Serialize(),
              HasSubstr("kbitd_requests_total{model=\"m\",outcome=\"stop\"} 0"));
}

TEST(MetricsTest, KernelObserverFillsTheKernelHistogramOfItsModel) {
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  auto tiny = (*metrics)->AddModel("tiny");
  runtime::KernelObserver* observer = &tiny->kernels;
  observer->OnKernel(runtime::KernelKind::kQuantizedMatmul, 0.0003);
  observer->OnKernel(runtime::KernelKind::kQuantizedMatmul, 0.0005);
  observer->OnKernel(runtime::KernelKind::kSampling, 0.00002);
  const std::string text = (*metrics)->Serialize();
  EXPECT_THAT(text, HasSubstr("kbitd_kernel_duration_seconds_count{kind=\"quantized_matmul\","
                              "model=\"tiny\"} 2"));
  EXPECT_THAT(text, HasSubstr("kbitd_kernel_duration_seconds_count{kind=\"sampling\","
                              "model=\"tiny\"} 1"));
  // Kinds not seen yet are there with zero counts, so dashboards have a series from the start.
  EXPECT_THAT(text, HasSubstr("kbitd_kernel_duration_seconds_count{kind=\"attention\","
                              "model=\"tiny\"} 0"));
  EXPECT_THAT(text, HasSubstr("kbitd_kernel_duration_seconds_bucket{kind=\"quantized_matmul\","
                              "model=\"tiny\",le=\"0.000512\"} 2"));
}

// The fp32 Llama of the test data, quantized on load per `quantization`.
std::shared_ptr<runtime::Model> LoadTestLlama(
    std::optional<runtime::QuantizationConfig> quantization = std::nullopt) {
  runtime::LoadOptions load;
  load.devices = &kbitd::test::TestDevices();
  load.path = std::string(KBITD_TEST_DATA_DIR) + "/models/llama/fp32";
  load.quantization = std::move(quantization);
  absl::StatusOr<std::shared_ptr<runtime::Model>> model = runtime::LoadModel(load);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *model : nullptr;
}

TEST(MetricsTest, UnquantizedModelSavedNoBytes) {
  // Its weights are fp32, more than fp16 would take, but quantization neither saved nor cost
  // anything.
  std::shared_ptr<runtime::Model> model = LoadTestLlama();
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(QuantizationSavedBytes(*model), 0);
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  auto series = (*metrics)->AddModel("dense");
  series->SetLoaded(0.5, *model);
  EXPECT_THAT((*metrics)->Serialize(),
              HasSubstr("kbitd_quantization_saved_bytes{model=\"dense\"} 0\n"));
}

TEST(MetricsTest, Nf4SavedBytesAreFp16LessCodesAndAbsmaxOfEachQuantizedLinear) {
  runtime::QuantizationConfig nf4;
  nf4.load_in_4bit = true;
  nf4.bnb_4bit_quant_type = "nf4";
  std::shared_ptr<runtime::Model> model = LoadTestLlama(nf4);
  ASSERT_NE(model, nullptr);
  const runtime::ModelConfig& c = model->config();
  // [out, in] of q, k, v, o, gate, up, down: what bitsandbytes quantizes in each layer (lm_head
  // stays unquantized, as in transformers).
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  const int64_t h = c.hidden_size, i = c.intermediate_size;
  const int64_t shapes[][2] = {{q, h}, {kv, h}, {kv, h}, {h, q}, {i, h}, {i, h}, {h, i}};
  int64_t expected = 0;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    for (const auto& [rows, cols] : shapes) {
      const int64_t n = rows * cols;
      const int64_t fp16 = 2 * n;
      const int64_t nf4_bytes = n / 2 + 4 * ((n + 63) / 64);  // 4-bit codes, fp32 absmax per 64
      expected += fp16 - nf4_bytes;
    }
  }
  EXPECT_GT(expected, 0);
  EXPECT_EQ(QuantizationSavedBytes(*model), expected);
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  auto series = (*metrics)->AddModel("nf4");
  series->SetLoaded(0.5, *model);
  EXPECT_THAT((*metrics)->Serialize(), HasSubstr("kbitd_quantization_saved_bytes{model=\"nf4\"} " +
                                                 std::to_string(expected) + "\n"));
}

TEST(MetricsTest, BusyPortIsAnError) {
  auto first = Metrics::Create({.address = "127.0.0.1:0"});
  ASSERT_TRUE(first.ok());
  auto second = Metrics::Create({.address = "127.0.0.1:" + std::to_string((*first)->port())});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kbitd::server

namespace kbitd::server {
namespace {

// The value of kbitd_device_memory_bytes{device="cpu"} on the exposition page.
double DeviceMemoryGauge(int port) {
  const std::string body = HttpGet(port, "/metrics");
  const std::string key = "kbitd_device_memory_bytes{device=\"cpu\"} ";
  const size_t at = body.find(key);
  return at == std::string::npos ? -1 : std::stod(body.substr(at + key.size()));
}

// With private per-model pools the gauge showed whichever model's pool changed last: half the
// total with two equal models loaded, 0 after one was unloaded. The daemon's one pool per device
// makes it the device's total.
TEST(MetricsTest, DeviceMemoryIsTheTotalOfEveryModelOnTheDevice) {
  auto metrics = Metrics::Create({.address = "127.0.0.1:0"});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  runtime::DeviceSet::Options options;
  options.observer = metrics->get();
  std::unique_ptr<runtime::DeviceSet> devices = kbitd::test::MakeTestDevices(options);
  auto load = [&](const std::string& name) {
    runtime::LoadOptions load;
    load.devices = devices.get();
    load.name = name;
    load.path = std::string(KBITD_TEST_DATA_DIR) + "/models/llama/fp32";
    absl::StatusOr<std::shared_ptr<runtime::Model>> model = runtime::LoadModel(load);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? *model : nullptr;
  };
  std::shared_ptr<runtime::Model> a = load("a");
  const int64_t one_model = devices->host_pool()->used_bytes();
  ASSERT_GT(one_model, 0);
  std::shared_ptr<runtime::Model> b = load("b");
  ASSERT_EQ(devices->host_pool()->used_bytes(), 2 * one_model);
  EXPECT_EQ(DeviceMemoryGauge((*metrics)->port()), 2 * one_model);
  b.reset();
  EXPECT_EQ(DeviceMemoryGauge((*metrics)->port()), one_model);
  a.reset();
  EXPECT_EQ(DeviceMemoryGauge((*metrics)->port()), 0);
}

}  // namespace
}  // namespace kbitd::server
