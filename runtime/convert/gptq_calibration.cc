#include "runtime/convert/gptq_calibration.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "runtime/backend.h"
#include "runtime/device_set.h"
#include "runtime/loader.h"
#include "runtime/model_weights.h"
#include "runtime/perplexity.h"
#include "runtime/tokenizer/tokenizer.h"

namespace kbitd::runtime {
namespace {

// Forwards every op to `inner`; Linear also adds 2 x^T x of its input rows to the weight's H.
class HessianCapturingBackend : public Backend {
 public:
  HessianCapturingBackend(Backend& inner, std::map<std::string, std::vector<double>>* hessians)
      : inner_(inner), hessians_(hessians) {}

  const Device& device() const override { return inner_.device(); }
  ScalarType ActivationDtype(ScalarType c) const override { return inner_.ActivationDtype(c); }
  ScalarType KvCacheDtype(ScalarType c) const override { return inner_.KvCacheDtype(c); }
  absl::Status Embedding(const Tensor& e, const Tensor& t, Tensor out) override {
    return inner_.Embedding(e, t, out);
  }
  absl::Status Linear(const LinearWeight& weight, const Tensor& x, Tensor y) override {
    KBITD_RETURN_IF_ERROR(Accumulate(weight, x));
    return inner_.Linear(weight, x, y);
  }
  absl::Status RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor y) override {
    return inner_.RmsNorm(x, w, eps, y);
  }
  absl::Status Rope(Tensor q, Tensor k, int64_t head_dim, const Tensor& positions,
                    const Tensor& inv_freq) override {
    return inner_.Rope(q, k, head_dim, positions, inv_freq);
  }
  absl::Status WriteKv(KvCache& cache, int64_t layer, const Tensor& k, const Tensor& v,
                       const StepInputs& step) override {
    return inner_.WriteKv(cache, layer, k, v, step);
  }
  absl::Status Attention(const KvCache& cache, int64_t layer, const Tensor& q,
                         const StepInputs& step, const AttentionShape& shape, Tensor out) override {
    return inner_.Attention(cache, layer, q, step, shape, out);
  }
  absl::Status SiluMul(const Tensor& g, const Tensor& u, Tensor out) override {
    return inner_.SiluMul(g, u, out);
  }
  absl::Status Add(Tensor x, const Tensor& y) override { return inner_.Add(x, y); }
  absl::Status RoundTo(Tensor x, ScalarType dtype) override { return inner_.RoundTo(x, dtype); }
  absl::Status GatherRows(const Tensor& x, const Tensor& rows, Tensor out) override {
    return inner_.GatherRows(x, rows, out);
  }
  absl::Status GreedySample(const Tensor& l, Tensor t, Tensor p) override {
    return inner_.GreedySample(l, t, p);
  }
  absl::Status Quantize4bit(quant::FourBitType type, const Tensor& dense, int64_t blocksize,
                            Tensor packed, Tensor absmax) override {
    return inner_.Quantize4bit(type, dense, blocksize, packed, absmax);
  }
  absl::Status DoubleQuantize(const Tensor& absmax, Tensor codes, Tensor nested,
                              Tensor offset) override {
    return inner_.DoubleQuantize(absmax, codes, nested, offset);
  }
  absl::Status QuantizeRowwiseInt8(const Tensor& dense, Tensor cb, Tensor scb) override {
    return inner_.QuantizeRowwiseInt8(dense, cb, scb);
  }
  absl::Status CopyTo(const Tensor& src, Tensor dst) override { return inner_.CopyTo(src, dst); }
  absl::Status Synchronize() override { return inner_.Synchronize(); }
  absl::Status Prefetch(const LayerWeights& layer) override { return inner_.Prefetch(layer); }

 private:
  // The CPU backend's activations are host memory, rows of x.shape[1] at stride x.strides[0].
  absl::Status Accumulate(const LinearWeight& weight, const Tensor& x) {
    if (weight.name == "lm_head" || weight.name.ends_with(".lm_head")) return absl::OkStatus();
    const int64_t rows = x.shape[0], in = x.shape[1];
    if (x.rank != 2 || in != weight.in_features) {
      return absl::InternalError(absl::StrCat(weight.name, ": unexpected input shape"));
    }
    std::vector<double>& h = (*hessians_)[weight.name];
    if (h.empty()) h.assign(in * in, 0.0);
    std::vector<double> row(in);
    for (int64_t r = 0; r < rows; ++r) {
      const size_t base = static_cast<size_t>(r * x.strides[0]);
      for (int64_t k = 0; k < in; ++k) row[k] = LoadAsFloat(x.data, x.dtype, base + k);
      // Lower triangle only; mirrored at the end (H is symmetric).
      for (int64_t i = 0; i < in; ++i) {
        const double xi = 2.0 * row[i];
        double* hi = h.data() + i * in;
        for (int64_t j = 0; j <= i; ++j) hi[j] += xi * row[j];
      }
    }
    return absl::OkStatus();
  }

  Backend& inner_;
  std::map<std::string, std::vector<double>>* hessians_;
};

}  // namespace

absl::StatusOr<std::map<std::string, std::vector<double>>> CollectGptqHessians(
    const std::string& model_dir, const std::string& text_file,
    const GptqCalibrationOptions& options) {
  std::ifstream in(text_file, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration file ", text_file, " cannot be read"));
  }
  std::stringstream text;
  text << in.rdbuf();
  DeviceSet::Options device_options;
  device_options.cpu_threads = options.num_threads;
  KBITD_ASSIGN_OR_RETURN(std::unique_ptr<DeviceSet> devices, DeviceSet::Create(device_options));
  KBITD_ASSIGN_OR_RETURN(Backend * cpu, devices->BackendFor(Device::Cpu()));
  LoadOptions load;
  load.name = "gptq-calibration";
  load.path = model_dir;
  load.compute_dtype = ScalarType::kFloat32;  // GPTQ calibrates on the unrounded model
  load.devices = devices.get();
  KBITD_ASSIGN_OR_RETURN(std::shared_ptr<Model> model, LoadModel(load));
  auto ids = model->tokenizer()->Encode(text.str(), /*add_special_tokens=*/true);
  if (!ids.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(text_file, ": ", std::string(ids.status().message())));
  }
  if (ids->size() < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration file ", text_file, " has fewer than 2 tokens"));
  }
  std::map<std::string, std::vector<double>> hessians;
  HessianCapturingBackend capturing(*cpu, &hessians);
  PerplexityOptions score;
  score.window = options.window;
  KBITD_RETURN_IF_ERROR(ScoreTokens(*model, capturing, *ids, score).status());
  for (auto& [name, h] : hessians) {
    const int64_t n = static_cast<int64_t>(std::sqrt(static_cast<double>(h.size())));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) h[j * n + i] = h[i * n + j];
  }
  return hessians;
}

}  // namespace kbitd::runtime
