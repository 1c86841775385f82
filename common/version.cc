#include "common/version.h"

#include <cstdio>

#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "kbitd_version_info.h"  // generated: build tree's generated/

namespace kbitd {

std::string_view Version() { return KBITD_VERSION_STRING; }

std::string_view Revision() { return KBITD_REVISION_STRING; }

std::string VersionLine(std::string_view program) {
  return std::string(program) + " " + std::string(Version()) + " (revision " +
         std::string(Revision()) + ")";
}

int HandleHelpAndVersion(int argc, char** argv, std::string_view program, std::string_view usage) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-h" || arg == "-help") {
      std::fwrite(usage.data(), 1, usage.size(), stdout);
      return 0;
    }
    if (arg == "--version" || arg == "-version") {
      std::printf("%s\n", VersionLine(program).c_str());
      return 0;
    }
  }
  absl::SetProgramUsageMessage(absl::string_view(usage.data(), usage.size()));
  absl::FlagsUsageConfig config;
  config.version_string = [line = VersionLine(program)] { return line + "\n"; };
  absl::SetFlagsUsageConfig(config);
  return -1;
}

}  // namespace kbitd
