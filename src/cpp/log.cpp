#include "log.h"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace g3e {

namespace {

std::mutex g_mutex;
LogCallback g_callback = nullptr;
void* g_user_data = nullptr;
std::atomic<int> g_min_level{static_cast<int>(LogLevel::kWarning)};

const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug: return "debug";
    case LogLevel::kInfo: return "info";
    case LogLevel::kWarning: return "warning";
    case LogLevel::kError: return "error";
    default: return "";
  }
}

}  // namespace

void set_log_callback(LogCallback callback, void* user_data) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_callback = callback;
  g_user_data = user_data;
}

void set_log_level(LogLevel min_level) { g_min_level = static_cast<int>(min_level); }

LogLevel log_level() { return static_cast<LogLevel>(g_min_level.load()); }

void log(LogLevel level, const std::string& message) {
  if (static_cast<int>(level) < g_min_level.load()) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_callback) {
    g_callback(level, message.c_str(), g_user_data);
  } else {
    std::fprintf(stderr, "gemma3-edge %s: %s\n", level_name(level), message.c_str());
  }
}

}  // namespace g3e
