// GGUF v2/v3 reader over a read-only memory map. Every count, length, offset and size read
// from the file is checked against the file before use; failures throw ModelLoadError
// naming the file and the field.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/ggml_types.h"

namespace g3e {

// Metadata value types, numbered as in the GGUF specification.
enum class GGUFValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

const char* gguf_value_type_name(GGUFValueType type);

struct GGUFValue {
  GGUFValueType type = GGUFValueType::kUint8;
  // Scalars: integers and bools in `integer` (signed types sign-extended), floats in `real`.
  int64_t integer = 0;
  uint64_t unsigned_integer = 0;
  double real = 0.0;
  std::string_view string;  // points into the memory map

  // Arrays: element type, count, and the elements' position in the file, which parse() has
  // checked. Elements are read on request (get_*_array), so a 262,144-piece vocabulary keeps
  // no index in memory while the model runs.
  GGUFValueType array_type = GGUFValueType::kUint8;
  uint64_t array_count = 0;
  const uint8_t* array_data = nullptr;
};

struct GGUFTensorInfo {
  std::string name;
  std::vector<int64_t> shape;  // ne[0] first: ne[0] is the contiguous (row) dimension
  GGMLType type = GGMLType::F32;
  uint64_t offset = 0;         // relative to the start of the data section
  int64_t n_elements = 0;
  int64_t n_bytes = 0;
  const uint8_t* data = nullptr;
};

class GGUFFile {
 public:
  explicit GGUFFile(const std::string& path);
  ~GGUFFile();
  GGUFFile(const GGUFFile&) = delete;
  GGUFFile& operator=(const GGUFFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t file_size() const { return size_; }
  uint64_t alignment() const { return alignment_; }

  bool has(const std::string& key) const { return metadata_.count(key) != 0; }
  const GGUFValue* find(const std::string& key) const;
  const std::map<std::string, GGUFValue>& metadata() const { return metadata_; }

  // Typed accessors: throw ModelLoadError naming the key when it is missing or of another type.
  std::string get_string(const std::string& key) const;
  uint64_t get_uint(const std::string& key) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  uint64_t get_uint_or(const std::string& key, uint64_t fallback) const;
  double get_float_or(const std::string& key, double fallback) const;
  bool get_bool_or(const std::string& key, bool fallback) const;
  std::vector<std::string_view> get_string_array(const std::string& key) const;
  std::vector<float> get_float_array(const std::string& key) const;
  std::vector<int64_t> get_int_array(const std::string& key) const;

  const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
  const GGUFTensorInfo* find_tensor(const std::string& name) const;
  // Throws ModelLoadError when the tensor is missing or its shape differs.
  const GGUFTensorInfo& require_tensor(const std::string& name, const std::vector<int64_t>& shape) const;

  // Lets the kernel drop the resident pages of a tensor's bytes (they are read again from the
  // file if touched). Called after a tensor was copied or repacked, so the mapping does not add
  // to the process's peak resident memory.
  void release_pages(const GGUFTensorInfo& tensor) const;
  // The same for bytes [offset, offset + n_bytes) of a tensor's data, clamped to the tensor:
  // lets a loader drop the rows it has repacked while it repacks the rest.
  void release_pages(const GGUFTensorInfo& tensor, int64_t offset, int64_t n_bytes) const;
  // The same for the whole file: metadata and tensor data stay readable, because the pages are
  // read again from the file when touched. Called once a loader has copied what it needs.
  void release_all_pages() const;

  // Message prefix "<path>: " for errors about this file.
  std::string where() const { return path_ + ": "; }

 private:
  void parse();

  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GGUFValue> metadata_;
  std::vector<GGUFTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Index of the first element of `t` that is NaN or infinite, or for a quantized type the first
// element of the first block whose floating-point scale (d, or its min) is; -1 when none is.
// The integer codes of quantized blocks are always finite, so they are not read.
int64_t first_nonfinite_element(const GGUFTensorInfo& t);

}  // namespace g3e
