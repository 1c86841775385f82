// Finds stop strings in text that arrives piece by piece and holds back the tail that might be
// the start of one, so a stop string is never streamed to the client (the OpenAI / vLLM
// semantics of `stop` without include_stop_str_in_output). Not thread-safe; one per request.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace kbitd::server {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);

  // Adds generated text and returns the text that is now safe to send. Once a stop string is
  // complete, returns the text before it, drops the rest and sets stopped().
  std::string Append(std::string_view text);
  // The held-back text, for the end of a generation that did not hit a stop string.
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string pending_;
  bool stopped_ = false;
};

}  // namespace kbitd::server
