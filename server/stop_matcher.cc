#include "server/stop_matcher.h"

#include <algorithm>

namespace kbitd::server {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
  for (const auto& stop : stops_) longest_ = std::max(longest_, stop.size());
}

std::string StopMatcher::Append(std::string_view text) {
  if (stopped_) return {};
  pending_.append(text);
  size_t first = std::string::npos;
  for (const auto& stop : stops_) first = std::min(first, pending_.find(stop));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, first);
    pending_.clear();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  const size_t max_hold = std::min(pending_.size(), longest_ == 0 ? 0 : longest_ - 1);
  for (size_t k = max_hold; k > 0 && hold == 0; --k) {
    std::string_view tail(pending_.data() + pending_.size() - k, k);
    for (const auto& stop : stops_) {
      if (stop.size() > k && std::string_view(stop).substr(0, k) == tail) {
        hold = k;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopMatcher::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace kbitd::server
