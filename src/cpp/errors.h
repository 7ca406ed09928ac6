// Exception types thrown by the core. The binding maps them to Python classes.
#pragma once

#include <stdexcept>
#include <string>

namespace g3e {

// A model file is missing, malformed, or describes a model this runtime cannot run.
class ModelLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller passed an invalid argument (maps to ValueError).
class InvalidArgument : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

}  // namespace g3e
