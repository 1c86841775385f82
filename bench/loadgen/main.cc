// kbitd_loadgen: drives kbitd's Generate with C concurrent streams for each C in --concurrency and
// prints, side by side, throughput, time to first token, inter-token latency and end-to-end
// latency percentiles, plus the scheduler's time per step as a fraction of the engine's step time
// (from the daemon's kbitd_scheduler_overhead_seconds and kbitd_engine_step_duration_seconds).
//   kbitd_loadgen --address localhost:50051 --metrics localhost:9400 --model default
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/create_channel.h"
#include "kbitd/v1/inference_service.grpc.pb.h"

ABSL_FLAG(std::string, address, "localhost:50051", "kbitd gRPC address");
ABSL_FLAG(std::string, metrics, "", "kbitd metrics host:port (for the scheduler overhead)");
ABSL_FLAG(std::string, model, "default", "model name");
ABSL_FLAG(std::vector<std::string>, concurrency, std::vector<std::string>({"1", "8", "64"}),
          "concurrent streams per level");
ABSL_FLAG(int32_t, requests_per_stream, 4, "requests each stream sends one after another");
ABSL_FLAG(int32_t, max_new_tokens, 64, "tokens per request");
ABSL_FLAG(std::string, prompts, "", "file with one prompt per line (default: built-in prompts)");

namespace {

struct Sample {
  double ttft = 0, e2e = 0;
  int tokens = 0;
  std::vector<double> itl;
  bool ok = false;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

// Plain HTTP/1.0 GET of /metrics.
std::string Scrape(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  addrinfo hints{}, *res = nullptr;
  hints.ai_socktype = SOCK_STREAM;
  if (getaddrinfo(host_port.substr(0, colon).c_str(), host_port.substr(colon + 1).c_str(), &hints,
                  &res) != 0) {
    return "";
  }
  int fd = socket(res->ai_family, res->ai_socktype, 0);
  std::string body;
  if (connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\n\r\n";
    (void)!write(fd, request.data(), request.size());
    char buffer[8192];
    for (ssize_t n; (n = read(fd, buffer, sizeof(buffer))) > 0;) body.append(buffer, n);
  }
  close(fd);
  freeaddrinfo(res);
  return body;
}

double MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, series + " ")) {
      double v = 0;
      (void)absl::SimpleAtod(line.substr(series.size() + 1), &v);
      return v;
    }
  }
  return 0;
}

struct StepTotals {
  double overhead = 0, engine = 0, steps = 0;
};

StepTotals ReadSteps(const std::string& metrics, const std::string& model) {
  if (metrics.empty()) return {};
  const std::string text = Scrape(metrics);
  const std::string label = absl::StrCat("{model=\"", model, "\"}");
  return {MetricValue(text, "kbitd_scheduler_overhead_seconds_sum" + label),
          MetricValue(text, "kbitd_engine_step_duration_seconds_sum" + label),
          MetricValue(text, "kbitd_engine_step_duration_seconds_count" + label)};
}

Sample RunOne(kbitd::v1::InferenceService::Stub& stub, const std::string& model,
              const std::string& prompt, int max_new_tokens) {
  kbitd::v1::GenerateRequest request;
  request.set_model(model);
  request.set_prompt(prompt);
  request.set_max_new_tokens(max_new_tokens);
  request.mutable_sampling()->set_temperature(0);
  grpc::ClientContext context;
  Sample sample;
  const absl::Time start = absl::Now();
  absl::Time last = start;
  auto reader = stub.Generate(&context, request);
  kbitd::v1::GenerateResponse response;
  while (reader->Read(&response)) {
    const absl::Time now = absl::Now();
    const int n = response.token_ids_size();
    if (n == 0) continue;
    if (sample.tokens == 0) {
      sample.ttft = absl::ToDoubleSeconds(now - start);
    } else {
      // Tokens that arrive merged in one message share the gap.
      for (int i = 0; i < n; ++i) sample.itl.push_back(absl::ToDoubleSeconds(now - last) / n);
    }
    sample.tokens += n;
    last = now;
  }
  sample.ok = reader->Finish().ok();
  sample.e2e = absl::ToDoubleSeconds(absl::Now() - start);
  return sample;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::vector<std::string> prompts = {"def fibonacci(n):",
                                      "import os\n",
                                      "class Parser:",
                                      "# Return the sum of",
                                      "for line in open(path):",
                                      "if __name__ == '__main__':",
                                      "def __init__(self, name):",
                                      "try:\n    import json"};
  if (!absl::GetFlag(FLAGS_prompts).empty()) {
    prompts.clear();
    std::ifstream in(absl::GetFlag(FLAGS_prompts));
    for (std::string line; std::getline(in, line);) {
      if (!line.empty()) prompts.push_back(line);
    }
  }
  auto channel =
      grpc::CreateChannel(absl::GetFlag(FLAGS_address), grpc::InsecureChannelCredentials());
  auto stub = kbitd::v1::InferenceService::NewStub(channel);
  const std::string model = absl::GetFlag(FLAGS_model);
  const int max_new = absl::GetFlag(FLAGS_max_new_tokens);
  // Warm-up: one request, not counted.
  RunOne(*stub, model, prompts[0], 8);

  std::printf("%-6s %6s %7s %9s %8s | %9s %9s %9s | %9s %9s | %9s %9s | %11s %9s\n", "conc", "reqs",
              "errors", "tokens", "tok/s", "ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p99",
              "e2e_p50", "e2e_p99", "sched/step", "overhead");
  for (const std::string& level : absl::GetFlag(FLAGS_concurrency)) {
    int concurrency = 1;
    if (!absl::SimpleAtoi(level, &concurrency) || concurrency < 1) return 2;
    std::vector<Sample> samples;
    std::mutex mu;
    const StepTotals before = ReadSteps(absl::GetFlag(FLAGS_metrics), model);
    const absl::Time start = absl::Now();
    std::vector<std::thread> threads;
    for (int t = 0; t < concurrency; ++t) {
      threads.emplace_back([&, t] {
        for (int r = 0; r < absl::GetFlag(FLAGS_requests_per_stream); ++r) {
          Sample s = RunOne(*stub, model, prompts[(t + r) % prompts.size()], max_new);
          std::lock_guard<std::mutex> lock(mu);
          samples.push_back(std::move(s));
        }
      });
    }
    for (auto& thread : threads) thread.join();
    const double wall = absl::ToDoubleSeconds(absl::Now() - start);
    const StepTotals after = ReadSteps(absl::GetFlag(FLAGS_metrics), model);
    std::vector<double> ttft, itl, e2e;
    int64_t tokens = 0;
    int errors = 0;
    for (const Sample& s : samples) {
      if (!s.ok) ++errors;
      tokens += s.tokens;
      ttft.push_back(s.ttft);
      e2e.push_back(s.e2e);
      itl.insert(itl.end(), s.itl.begin(), s.itl.end());
    }
    const double steps = after.steps - before.steps;
    const double engine = after.engine - before.engine;
    const double overhead = after.overhead - before.overhead;
    const std::string per_step =
        steps > 0 ? absl::StrCat(static_cast<int>(1e6 * overhead / steps), " us") : "n/a";
    const std::string fraction =
        engine > 0 ? absl::StrCat(static_cast<int>(1000 * overhead / engine) / 10.0, " %") : "n/a";
    std::printf(
        "%-6d %6zu %7d %9lld %8.1f | %8.1fms %8.1fms %8.1fms | %8.2fms %8.2fms | %8.0fms %8.0fms "
        "| %11s %9s\n",
        concurrency, samples.size(), errors, static_cast<long long>(tokens), tokens / wall,
        1e3 * Percentile(ttft, 0.5), 1e3 * Percentile(ttft, 0.9), 1e3 * Percentile(ttft, 0.99),
        1e3 * Percentile(itl, 0.5), 1e3 * Percentile(itl, 0.99), 1e3 * Percentile(e2e, 0.5),
        1e3 * Percentile(e2e, 0.99), per_step.c_str(), fraction.c_str());
    std::fflush(stdout);
  }
  return 0;
}
