// A small leveled logger (Debian 12's Abseil has no absl/log). Thread-safe: each line is written
// with one call under a mutex. Level comes from KBITD_LOG_LEVEL (debug|info|warning|error) or
// SetMinLogLevel.
#pragma once

#include <sstream>
#include <string_view>

namespace kbitd {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
void EmitLogLine(LogLevel level, std::string_view file, int line, std::string_view message);

namespace internal {
// Collects one log line and emits it on destruction.
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line)
      : level_(level), file_(file), line_(line) {}
  ~LogMessage() { EmitLogLine(level_, file_, line_, stream_.str()); }
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  const char* file_;
  int line_;
  std::ostringstream stream_;
};
}  // namespace internal
}  // namespace kbitd

#define KBITD_LOG(level)                                      \
  if (::kbitd::LogLevel::k##level < ::kbitd::MinLogLevel()) { \
  } else                                                      \
    ::kbitd::internal::LogMessage(::kbitd::LogLevel::k##level, __FILE__, __LINE__).stream()
