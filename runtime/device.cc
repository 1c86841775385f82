#include "runtime/device.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace kbitd::runtime {

std::string Device::ToString() const {
  return kind == Kind::kCpu ? std::string("cpu") : absl::StrCat("cuda:", index);
}

absl::StatusOr<Device> ParseDevice(const std::string& text) {
  if (text == "cpu") return Device::Cpu();
  if (text == "cuda") return Device::Cuda(0);
  std::string number = text.rfind("cuda:", 0) == 0 ? text.substr(5) : text;
  int index = 0;
  if (absl::SimpleAtoi(number, &index) && index >= 0) return Device::Cuda(index);
  return absl::InvalidArgumentError(
      absl::StrCat("device \"", text, "\" is not \"cpu\", \"cuda\", \"cuda:N\" or a GPU index"));
}

}  // namespace kbitd::runtime
