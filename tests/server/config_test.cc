#include "server/config.h"

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kbitd::server {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<v1::Config> Parse(std::string_view yaml) {
  ConfigBuilder builder;
  if (auto status = builder.ParseYaml(yaml, "kbitd.yaml"); !status.ok()) return status;
  return std::move(builder).Build();
}

TEST(ConfigTest, ParsesEveryKindOfFieldAndFillsDefaults) {
  auto config = Parse(R"(
listen_address: 127.0.0.1:0
model_root: /models
admin_token: secret
limits:
  max_queue: 8
models:
  - name: tiny
    path: tiny-llama
    quantization:
      load_in_4bit: true
      bnb_4bit_quant_type: nf4
      llm_int8_threshold: 5.5
      llm_int8_skip_modules: [lm_head, embed]
    placement:
      device_map: cpu
      max_memory: {cpu: 8GiB, 0: 20GiB}
)");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->listen_address(), "127.0.0.1:0");
  EXPECT_EQ(config->metrics_address(), "0.0.0.0:9400");
  EXPECT_EQ(config->limits().max_queue(), 8);
  EXPECT_EQ(config->limits().max_batch_tokens(), 2048);
  EXPECT_EQ(config->unload_grace_seconds(), 30);
  ASSERT_EQ(config->models_size(), 1);
  const auto& model = config->models(0);
  EXPECT_TRUE(model.quantization().load_in_4bit());
  EXPECT_FLOAT_EQ(model.quantization().llm_int8_threshold(), 5.5f);
  EXPECT_THAT(model.quantization().llm_int8_skip_modules(),
              ::testing::ElementsAre("lm_head", "embed"));
  EXPECT_EQ(model.placement().max_memory().at("0"), "20GiB");
  EXPECT_EQ(model.placement().max_memory().at("cpu"), "8GiB");
}

TEST(ConfigTest, UnknownKeyNamesLineAndKnownKeys) {
  auto config = Parse("model_root: /m\nlimits:\n  max_queue: 3\n  max_qeueu: 4\n");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(config.status().message(), HasSubstr("kbitd.yaml:4:3"));
  EXPECT_THAT(config.status().message(), HasSubstr("unknown key 'max_qeueu'"));
  EXPECT_THAT(config.status().message(), HasSubstr("max_queue"));
}

TEST(ConfigTest, WrongTypesAndRangesNameTheLine) {
  auto bad_int = Parse("model_root: /m\nlimits:\n  max_queue: lots\n");
  EXPECT_THAT(bad_int.status().message(), HasSubstr("kbitd.yaml:3:14"));
  EXPECT_THAT(bad_int.status().message(), HasSubstr("not a 32-bit integer"));

  auto out_of_range = Parse("model_root: /m\n\nlimits:\n  max_queue: -1\n");
  EXPECT_THAT(out_of_range.status().message(), HasSubstr("kbitd.yaml:4:14: limits.max_queue"));
  EXPECT_THAT(out_of_range.status().message(), HasSubstr("must be in [1,"));

  auto bad_interval = Parse("model_root: /m\nkernel_timing_interval_steps: -2\n");
  EXPECT_THAT(bad_interval.status().message(),
              HasSubstr("kbitd.yaml:2:31: kernel_timing_interval_steps"));
  EXPECT_TRUE(Parse("model_root: /m\nkernel_timing_interval_steps: 4\n").ok());

  auto bad_bool = Parse("model_root: /m\nallow_unauthenticated_admin: yes please\n");
  EXPECT_THAT(bad_bool.status().message(), HasSubstr("kbitd.yaml:2:30"));

  auto bad_quant = Parse(
      "model_root: /m\nmodels:\n- name: a\n  path: a\n  quantization:\n"
      "    bnb_4bit_quant_type: nf5\n");
  EXPECT_THAT(bad_quant.status().message(),
              HasSubstr("kbitd.yaml:6:26: models[0].quantization.bnb_4bit_quant_type"));

  auto bad_dtype = Parse("model_root: /m\nmodels:\n- name: a\n  path: a\n  dtype: float8\n");
  EXPECT_THAT(bad_dtype.status().message(), HasSubstr("kbitd.yaml:5:10: models[0].dtype"));
  EXPECT_THAT(bad_dtype.status().message(), HasSubstr("'float8' is not float32"));
  EXPECT_TRUE(Parse("model_root: /m\nmodels:\n- name: a\n  path: a\n  dtype: float32\n").ok());

  auto bad_kv = Parse("model_root: /m\nmodels:\n- name: a\n  path: a\n  kv_cache_bytes: 2 GiB\n");
  EXPECT_THAT(bad_kv.status().message(), HasSubstr("kbitd.yaml:5:19: models[0].kv_cache_bytes"));
  EXPECT_THAT(bad_kv.status().message(), HasSubstr("\"2 GiB\" is not a byte count"));
  for (const char* size : {"2GiB", "512MB", "1073741824"}) {
    auto kv = Parse(absl::StrCat(
        "model_root: /m\nmodels:\n- name: a\n  path: a\n  kv_cache_bytes: ", size, "\n"));
    ASSERT_TRUE(kv.ok()) << kv.status();
    EXPECT_EQ(kv->models(0).kv_cache_bytes(), size);
  }

  auto bad_address = Parse("model_root: /m\nlisten_address: nowhere\n");
  EXPECT_THAT(bad_address.status().message(), HasSubstr("kbitd.yaml:2:17: listen_address"));

  auto not_a_map = Parse("model_root: /m\nlimits: 5\n");
  EXPECT_THAT(not_a_map.status().message(), HasSubstr("expected a mapping"));
}

TEST(ConfigTest, DeviceMaxMemoryTakesAcceleratesKeysAndSizes) {
  auto good = Parse("model_root: /m\nmax_memory:\n  cpu: 64GiB\n  \"0\": 70GB\n");
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->max_memory().at("cpu"), "64GiB");
  auto bad_size = Parse("model_root: /m\nmax_memory:\n  cpu: lots\n");
  EXPECT_THAT(bad_size.status().message(), HasSubstr("max_memory.cpu"));
  auto bad_device = Parse("model_root: /m\nmax_memory:\n  tpu: 1GiB\n");
  EXPECT_THAT(bad_device.status().message(), HasSubstr("max_memory.tpu"));
}

TEST(ConfigTest, DuplicateKeysAndModelsAreErrors) {
  EXPECT_THAT(Parse("model_root: /m\nmodel_root: /n\n").status().message(),
              HasSubstr("kbitd.yaml:2:1: model_root: duplicate key"));
  EXPECT_THAT(Parse("model_root: /m\nmodels:\n- {name: a, path: x}\n- {name: a, path: y}\n")
                  .status()
                  .message(),
              HasSubstr("kbitd.yaml:4:10: models[1].name: model 'a' listed twice"));
  EXPECT_THAT(Parse("model_root: /m\nmodels:\n- {name: ../a, path: x}\n").status().message(),
              HasSubstr("kbitd.yaml:3:10: models[0].name: model name '../a' starts with '.'"));
}

TEST(ConfigTest, SyntaxErrorNamesLine) {
  auto config = Parse("model_root: /m\nlimits: {max_queue: 3\n");
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("kbitd.yaml:"));
}

TEST(ConfigTest, NothingConfiguredServesTheBundledDefaultModel) {
  auto config = Parse("listen_address: a:1\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_root(), BundledModelRoot());
  ASSERT_EQ(config->models_size(), 1);
  EXPECT_EQ(config->models(0).name(), "default");
  EXPECT_EQ(config->models(0).path(), "default");
  EXPECT_EQ(config->models(0).dtype(), "float32");
}

TEST(ConfigTest, ModelRootWithoutModelsStartsEmpty) {
  auto config = Parse("model_root: /m\n");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->models_size(), 0);
}

TEST(ConfigTest, ModelRootIsRequiredWhenModelsAreListed) {
  EXPECT_THAT(Parse("models:\n- name: a\n  path: a\n").status().message(),
              HasSubstr("model_root: is required"));
}

TEST(ConfigTest, MissingBundledModelNeedsAModelRoot) {
  setenv("KBITD_BUNDLED_MODEL_ROOT", "/nonexistent/kbitd/models", 1);
  auto config = Parse("listen_address: a:1\n");
  unsetenv("KBITD_BUNDLED_MODEL_ROOT");
  EXPECT_THAT(config.status().message(), HasSubstr("model_root: is required"));
  EXPECT_THAT(config.status().message(), HasSubstr("KBITD_BUNDLED_MODEL_ROOT"));
}

TEST(ConfigTest, FlagsOverrideTheFile) {
  ConfigBuilder builder;
  ASSERT_TRUE(builder.ParseYaml("model_root: /m\nlimits: {max_queue: 3}\n", "kbitd.yaml").ok());
  ASSERT_TRUE(builder.Override("limits.max_queue", "7").ok());
  ASSERT_TRUE(builder.Override("listen_address", "127.0.0.1:0").ok());
  ASSERT_TRUE(builder.Override("tls.cert_file", "c.pem").ok());
  auto missing_key = builder.Override("limits.max_quue", "7");
  EXPECT_THAT(missing_key.message(), HasSubstr("unknown key 'max_quue'"));
  auto config = std::move(builder).Build();
  // tls.cert_file without key_file fails validation, naming the flag-free field path.
  ASSERT_FALSE(config.ok());
  EXPECT_THAT(config.status().message(), HasSubstr("cert_file and key_file"));

  ConfigBuilder ok_builder;
  ASSERT_TRUE(ok_builder.ParseYaml("model_root: /m\nlimits: {max_queue: 3}\n", "kbitd.yaml").ok());
  ASSERT_TRUE(ok_builder.Override("limits.max_queue", "7").ok());
  auto bad_value = ok_builder.Override("limits.max_batch_size", "-1");
  ASSERT_TRUE(bad_value.ok());
  auto result = std::move(ok_builder).Build();
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(result.status().message(),
              HasSubstr("flag --set limits.max_batch_size=-1:1:1: limits.max_batch_size"));
}

TEST(ConfigTest, ValidateModelName) {
  EXPECT_TRUE(ValidateModelName("tiny-llama_v1.2").ok());
  EXPECT_FALSE(ValidateModelName("").ok());
  EXPECT_FALSE(ValidateModelName(".hidden").ok());
  EXPECT_FALSE(ValidateModelName("a/b").ok());
  EXPECT_FALSE(ValidateModelName("a b").ok());
  EXPECT_FALSE(ValidateModelName(std::string(129, 'a')).ok());
}

}  // namespace
}  // namespace kbitd::server
