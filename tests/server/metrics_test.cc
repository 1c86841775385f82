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

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::server {
namespace {

using ::testing::HasSubstr;

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

void Exercise(Metrics& metrics) {
  const ModelMetrics& m = metrics.ForModel("tiny");
  m.CountRequest(RequestOutcome::kStop);
  m.CountRequest(RequestOutcome::kRejected);
  m.prompt_tokens->Increment(12);
  m.generated_tokens->Increment(5);
  m.time_to_first_token->Observe(0.02);
  m.weight_bytes->Set(1000);
  metrics.SetModelCount("ready", 1);
  metrics.OnMemoryChanged(runtime::Device::Cpu(), "tiny", runtime::MemoryCategory::kWeights, 1000,
                          1500);
}

TEST(MetricsTest, ServesConventionalNamesOnItsOwnPort) {
  auto metrics = Metrics::Create({.address = "127.0.0.1:0"});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  ASSERT_GT((*metrics)->port(), 0);
  Exercise(**metrics);
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
  Exercise(**metrics);
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

TEST(MetricsTest, UnloadZeroesGaugesAndKeepsCounters) {
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  Exercise(**metrics);
  (*metrics)->ModelUnloaded("tiny");
  const std::string text = (*metrics)->Serialize();
  EXPECT_THAT(text, HasSubstr("kbitd_model_weight_bytes{model=\"tiny\"} 0"));
  EXPECT_THAT(text, HasSubstr("kbitd_requests_total{model=\"tiny\",outcome=\"stop\"} 1"));
  // The same series come back for a model loaded again under the same name.
  EXPECT_EQ(&(*metrics)->ForModel("tiny"), &(*metrics)->ForModel("tiny"));
}

TEST(MetricsTest, KernelObserverFillsTheKernelHistogramOfItsModel) {
  auto metrics = Metrics::Create({.address = "off"});
  ASSERT_TRUE(metrics.ok());
  runtime::KernelObserver* observer = (*metrics)->KernelObserverFor("tiny");
  EXPECT_EQ(observer, (*metrics)->KernelObserverFor("tiny"));
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

TEST(MetricsTest, BusyPortIsAnError) {
  auto first = Metrics::Create({.address = "127.0.0.1:0"});
  ASSERT_TRUE(first.ok());
  auto second = Metrics::Create({.address = "127.0.0.1:" + std::to_string((*first)->port())});
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kbitd::server
