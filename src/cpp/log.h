// A levelled log. Messages go to stderr unless a callback is installed (the C API and Python
// install one).
#pragma once

#include <string>

namespace g3e {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kNone = 4 };

using LogCallback = void (*)(LogLevel level, const char* message, void* user_data);

void set_log_callback(LogCallback callback, void* user_data);
void set_log_level(LogLevel min_level);
LogLevel log_level();
void log(LogLevel level, const std::string& message);

}  // namespace g3e
