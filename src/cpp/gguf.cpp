#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <limits>

#include "errors.h"
#include "kernels/quant_blocks.h"

namespace g3e {

namespace {

constexpr uint32_t kGGUFMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr int kMaxDims = 4;                  // ggml tensors have at most 4 dimensions
constexpr uint64_t kMaxArrayNesting = 1;     // arrays of arrays are read, deeper nesting is not
// Released GGUF files carry a few dozen metadata keys and at most a few thousand tensors. Each
// entry costs this reader about 200 bytes of bookkeeping while a one-byte metadata value takes
// only 13 bytes of file, so without these limits a crafted file could make the reader allocate
// about 15 times its own size.
constexpr uint64_t kMaxMetadataCount = 1 << 16;
constexpr uint64_t kMaxTensorCount = 1 << 16;
// Smallest encodings in bytes. A metadata pair is an empty key (8), its type (4) and a one-byte
// value. A tensor entry is an empty name (8), n_dims (4), one dimension (8), type (4) and offset (8).
constexpr uint64_t kMinMetadataBytes = 13;
constexpr uint64_t kMinTensorInfoBytes = 32;

// Bounds-checked little-endian cursor over the mapped file.
class Cursor {
 public:
  Cursor(const uint8_t* base, uint64_t size, const std::string& path)
      : base_(base), size_(size), path_(path) {}

  uint64_t position() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  const uint8_t* here() const { return base_ + pos_; }

  [[noreturn]] void fail(const std::string& what) const {
    throw ModelLoadError(path_ + ": " + what + " (at byte offset " + std::to_string(pos_) +
                         " of " + std::to_string(size_) + ")");
  }

  void need(uint64_t n, const char* what) const {
    if (n > remaining()) {
      fail(std::string("file is truncated: ") + what + " needs " + std::to_string(n) +
           " bytes but only " + std::to_string(remaining()) + " remain");
    }
  }

  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T value;
    std::memcpy(&value, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

  std::string_view read_string(const char* what) {
    uint64_t length = read<uint64_t>(what);
    need(length, what);
    std::string_view s(reinterpret_cast<const char*>(base_ + pos_), length);
    pos_ += length;
    return s;
  }

  void skip(uint64_t n, const char* what) {
    need(n, what);
    pos_ += n;
  }

 private:
  const uint8_t* base_;
  uint64_t size_;
  const std::string& path_;
  uint64_t pos_ = 0;
};

// Size in bytes of a fixed-size scalar type, 0 for strings and arrays, -1 for an unknown type.
int scalar_size(uint32_t type) {
  switch (static_cast<GGUFValueType>(type)) {
    case GGUFValueType::kUint8:
    case GGUFValueType::kInt8:
    case GGUFValueType::kBool:
      return 1;
    case GGUFValueType::kUint16:
    case GGUFValueType::kInt16:
      return 2;
    case GGUFValueType::kUint32:
    case GGUFValueType::kInt32:
    case GGUFValueType::kFloat32:
      return 4;
    case GGUFValueType::kUint64:
    case GGUFValueType::kInt64:
    case GGUFValueType::kFloat64:
      return 8;
    case GGUFValueType::kString:
    case GGUFValueType::kArray:
      return 0;
  }
  return -1;
}

// Reads one scalar of `type` at p into value (integer/unsigned_integer/real).
void decode_scalar(GGUFValueType type, const uint8_t* p, GGUFValue& value) {
  auto load = [p](auto tag) {
    decltype(tag) v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  };
  switch (type) {
    case GGUFValueType::kUint8: value.unsigned_integer = load(uint8_t{}); value.integer = static_cast<int64_t>(value.unsigned_integer); break;
    case GGUFValueType::kInt8: value.integer = load(int8_t{}); value.unsigned_integer = static_cast<uint64_t>(value.integer); break;
    case GGUFValueType::kUint16: value.unsigned_integer = load(uint16_t{}); value.integer = static_cast<int64_t>(value.unsigned_integer); break;
    case GGUFValueType::kInt16: value.integer = load(int16_t{}); value.unsigned_integer = static_cast<uint64_t>(value.integer); break;
    case GGUFValueType::kUint32: value.unsigned_integer = load(uint32_t{}); value.integer = static_cast<int64_t>(value.unsigned_integer); break;
    case GGUFValueType::kInt32: value.integer = load(int32_t{}); value.unsigned_integer = static_cast<uint64_t>(value.integer); break;
    case GGUFValueType::kUint64: value.unsigned_integer = load(uint64_t{}); value.integer = static_cast<int64_t>(value.unsigned_integer); break;
    case GGUFValueType::kInt64: value.integer = load(int64_t{}); value.unsigned_integer = static_cast<uint64_t>(value.integer); break;
    case GGUFValueType::kBool: {
      uint8_t b = load(uint8_t{});
      value.integer = b != 0;
      value.unsigned_integer = b != 0;
      break;
    }
    case GGUFValueType::kFloat32: value.real = load(float{}); break;
    case GGUFValueType::kFloat64: value.real = load(double{}); break;
    default: break;
  }
  if (type != GGUFValueType::kFloat32 && type != GGUFValueType::kFloat64) {
    value.real = (type == GGUFValueType::kInt8 || type == GGUFValueType::kInt16 ||
                  type == GGUFValueType::kInt32 || type == GGUFValueType::kInt64)
                     ? static_cast<double>(value.integer)
                     : static_cast<double>(value.unsigned_integer);
  }
}

bool is_integer_type(GGUFValueType t) {
  return t == GGUFValueType::kUint8 || t == GGUFValueType::kInt8 || t == GGUFValueType::kUint16 ||
         t == GGUFValueType::kInt16 || t == GGUFValueType::kUint32 || t == GGUFValueType::kInt32 ||
         t == GGUFValueType::kUint64 || t == GGUFValueType::kInt64;
}

bool is_signed_type(GGUFValueType t) {
  return t == GGUFValueType::kInt8 || t == GGUFValueType::kInt16 || t == GGUFValueType::kInt32 ||
         t == GGUFValueType::kInt64;
}

// Reads a value of `type` at the cursor into value. Arrays of arrays are skipped over with
// their bounds checked but not kept (no model key uses them).
void read_value(Cursor& cur, uint32_t raw_type, GGUFValue& value, const std::string& key, uint64_t depth) {
  int size = scalar_size(raw_type);
  if (size < 0) {
    cur.fail("metadata key '" + key + "' has unknown value type " + std::to_string(raw_type) +
             " (expected 0-12)");
  }
  value.type = static_cast<GGUFValueType>(raw_type);
  if (size > 0) {
    cur.need(size, "metadata value");
    decode_scalar(value.type, cur.here(), value);
    cur.skip(size, "metadata value");
    return;
  }
  if (value.type == GGUFValueType::kString) {
    value.string = cur.read_string("metadata string");
    return;
  }
  // Array.
  uint32_t element_type = cur.read<uint32_t>("array element type");
  uint64_t count = cur.read<uint64_t>("array length");
  int element_size = scalar_size(element_type);
  if (element_size < 0) {
    cur.fail("metadata key '" + key + "' is an array of unknown element type " +
             std::to_string(element_type) + " (expected 0-12)");
  }
  value.array_type = static_cast<GGUFValueType>(element_type);
  value.array_count = count;
  value.array_data = cur.here();
  if (element_size > 0) {
    // Division keeps count * size from overflowing.
    if (count > cur.remaining() / static_cast<uint64_t>(element_size)) {
      cur.fail("metadata key '" + key + "' claims " + std::to_string(count) + " elements of " +
               std::to_string(element_size) + " bytes, more than the file holds");
    }
    cur.skip(count * element_size, "array data");
    return;
  }
  // Every string or array element takes at least 8 bytes (its length), which bounds count
  // before anything is reserved.
  if (count > cur.remaining() / 8) {
    cur.fail("metadata key '" + key + "' claims " + std::to_string(count) +
             " elements, more than the file holds");
  }
  if (value.array_type == GGUFValueType::kString) {
    // Checked here and read again by get_string_array(), which relies on these bounds.
    for (uint64_t i = 0; i < count; ++i) cur.read_string("array string");
    return;
  }
  if (depth >= kMaxArrayNesting) {
    cur.fail("metadata key '" + key + "' nests arrays deeper than this reader supports (" +
             std::to_string(kMaxArrayNesting + 1) + " levels)");
  }
  // Each element of an array of arrays is an array without a value-type tag of its own:
  // element type (uint32), count (uint64), elements, as gguf-py's GGUFWriter writes it.
  for (uint64_t i = 0; i < count; ++i) {
    GGUFValue inner;
    read_value(cur, static_cast<uint32_t>(GGUFValueType::kArray), inner, key, depth + 1);
  }
}

bool f32_bits_nonfinite(uint32_t bits) { return (bits & 0x7F800000u) == 0x7F800000u; }
bool f16_bits_nonfinite(uint16_t bits) { return (bits & 0x7C00u) == 0x7C00u; }
bool bf16_bits_nonfinite(uint16_t bits) { return (bits & 0x7F80u) == 0x7F80u; }

// Byte offsets of the fp16 scale fields inside one block of a quantized type: d, and the min
// or dmin where the type has one. The integer codes between them cannot be NaN.
struct ScaleFields {
  size_t offsets[2];
  int count;
};

bool scale_fields(GGMLType type, ScaleFields& out) {
  switch (type) {
    case GGMLType::Q4_0: out = {{offsetof(BlockQ4_0, d), 0}, 1}; return true;
    case GGMLType::Q4_1: out = {{offsetof(BlockQ4_1, d), offsetof(BlockQ4_1, m)}, 2}; return true;
    case GGMLType::Q5_0: out = {{offsetof(BlockQ5_0, d), 0}, 1}; return true;
    case GGMLType::Q5_1: out = {{offsetof(BlockQ5_1, d), offsetof(BlockQ5_1, m)}, 2}; return true;
    case GGMLType::Q8_0: out = {{offsetof(BlockQ8_0, d), 0}, 1}; return true;
    case GGMLType::Q8_1: out = {{0, 2}, 2}; return true;  // fp16 d and s, as ggml's block_q8_1
    case GGMLType::Q2_K: out = {{offsetof(BlockQ2_K, d), offsetof(BlockQ2_K, dmin)}, 2}; return true;
    case GGMLType::Q3_K: out = {{offsetof(BlockQ3_K, d), 0}, 1}; return true;
    case GGMLType::Q4_K: out = {{offsetof(BlockQ4_K, d), offsetof(BlockQ4_K, dmin)}, 2}; return true;
    case GGMLType::Q5_K: out = {{offsetof(BlockQ5_K, d), offsetof(BlockQ5_K, dmin)}, 2}; return true;
    case GGMLType::Q6_K: out = {{offsetof(BlockQ6_K, d), 0}, 1}; return true;
    default: return false;
  }
}

}  // namespace

int64_t first_nonfinite_element(const GGUFTensorInfo& t) {
  const uint8_t* p = t.data;
  switch (t.type) {
    case GGMLType::F32:
      for (int64_t i = 0; i < t.n_elements; ++i) {
        uint32_t bits;
        std::memcpy(&bits, p + 4 * i, 4);
        if (f32_bits_nonfinite(bits)) return i;
      }
      return -1;
    case GGMLType::F16:
    case GGMLType::BF16: {
      const bool half = t.type == GGMLType::F16;
      for (int64_t i = 0; i < t.n_elements; ++i) {
        uint16_t bits;
        std::memcpy(&bits, p + 2 * i, 2);
        if (half ? f16_bits_nonfinite(bits) : bf16_bits_nonfinite(bits)) return i;
      }
      return -1;
    }
    case GGMLType::Q8_K: {
      const int64_t n_blocks = t.n_elements / kQK_K;
      for (int64_t b = 0; b < n_blocks; ++b) {
        uint32_t bits;
        std::memcpy(&bits, p + b * sizeof(BlockQ8_K) + offsetof(BlockQ8_K, d), 4);
        if (f32_bits_nonfinite(bits)) return b * kQK_K;
      }
      return -1;
    }
    default:
      break;
  }
  ScaleFields fields;
  const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
  if (!info || !scale_fields(t.type, fields)) return -1;
  const int64_t n_blocks = t.n_elements / info->block_size;
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* block = p + b * info->type_size;
    for (int k = 0; k < fields.count; ++k) {
      uint16_t bits;
      std::memcpy(&bits, block + fields.offsets[k], 2);
      if (f16_bits_nonfinite(bits)) return b * info->block_size;
    }
  }
  return -1;
}

namespace {


}  // namespace

const char* gguf_value_type_name(GGUFValueType type) {
  switch (type) {
    case GGUFValueType::kUint8: return "uint8";
    case GGUFValueType::kInt8: return "int8";
    case GGUFValueType::kUint16: return "uint16";
    case GGUFValueType::kInt16: return "int16";
    case GGUFValueType::kUint32: return "uint32";
    case GGUFValueType::kInt32: return "int32";
    case GGUFValueType::kFloat32: return "float32";
    case GGUFValueType::kBool: return "bool";
    case GGUFValueType::kString: return "string";
    case GGUFValueType::kArray: return "array";
    case GGUFValueType::kUint64: return "uint64";
    case GGUFValueType::kInt64: return "int64";
    case GGUFValueType::kFloat64: return "float64";
  }
  return "unknown";
}

GGUFFile::GGUFFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    throw ModelLoadError(path + ": cannot open model file: " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw ModelLoadError(path + ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ < 24) {
    ::close(fd_);
    throw ModelLoadError(path + ": file is " + std::to_string(size_) +
                         " bytes, too small for a GGUF header (24 bytes)");
  }
  void* map = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
  if (map == MAP_FAILED) {
    ::close(fd_);
    throw ModelLoadError(path + ": mmap failed: " + std::strerror(errno));
  }
  base_ = static_cast<const uint8_t*>(map);
  try {
    parse();
  } catch (...) {
    ::munmap(const_cast<uint8_t*>(base_), size_);
    ::close(fd_);
    throw;
  }
}

GGUFFile::~GGUFFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
  if (fd_ >= 0) ::close(fd_);
}

void GGUFFile::parse() {
  Cursor cur(base_, size_, path_);
  uint32_t magic = cur.read<uint32_t>("magic");
  if (magic != kGGUFMagic) {
    throw ModelLoadError(path_ + ": not a GGUF file (the first 4 bytes are not 'GGUF')");
  }
  version_ = cur.read<uint32_t>("version");
  if (version_ != 2 && version_ != 3) {
    throw ModelLoadError(path_ + ": GGUF version " + std::to_string(version_) +
                         " is not supported (expected 2 or 3); re-convert the model with a current converter");
  }
  uint64_t tensor_count = cur.read<uint64_t>("tensor count");
  uint64_t kv_count = cur.read<uint64_t>("metadata count");
  if (kv_count > cur.remaining() / kMinMetadataBytes) {
    cur.fail("metadata count " + std::to_string(kv_count) + " is larger than the file can hold");
  }
  if (kv_count > kMaxMetadataCount) {
    cur.fail("metadata count " + std::to_string(kv_count) + " exceeds the limit of " +
             std::to_string(kMaxMetadataCount) + " keys this reader accepts");
  }
  if (tensor_count > cur.remaining() / kMinTensorInfoBytes) {
    cur.fail("tensor count " + std::to_string(tensor_count) + " is larger than the file can hold");
  }
  if (tensor_count > kMaxTensorCount) {
    cur.fail("tensor count " + std::to_string(tensor_count) + " exceeds the limit of " +
             std::to_string(kMaxTensorCount) + " tensors this reader accepts");
  }

  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key(cur.read_string("metadata key"));
    uint32_t type = cur.read<uint32_t>("metadata value type");
    GGUFValue value;
    read_value(cur, type, value, key, 0);
    if (!metadata_.emplace(key, std::move(value)).second) {
      cur.fail("duplicate metadata key '" + key + "'");
    }
  }

  if (const GGUFValue* a = find("general.alignment")) {
    if (!is_integer_type(a->type)) {
      throw ModelLoadError(path_ + ": general.alignment has type " + gguf_value_type_name(a->type) +
                           ", expected an unsigned integer");
    }
    if (a->unsigned_integer == 0 ||
        (a->unsigned_integer & (a->unsigned_integer - 1)) != 0 || a->unsigned_integer > (1u << 20)) {
      throw ModelLoadError(path_ + ": general.alignment must be a power of two up to 2^20, got " +
                           std::to_string(a->unsigned_integer));
    }
    alignment_ = a->unsigned_integer;
  }

  tensors_.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GGUFTensorInfo info;
    info.name = std::string(cur.read_string("tensor name"));
    uint32_t n_dims = cur.read<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > kMaxDims) {
      cur.fail("tensor '" + info.name + "' has " + std::to_string(n_dims) +
               " dimensions (expected 1 to 4)");
    }
    int64_t n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim = cur.read<uint64_t>("tensor dimension");
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          static_cast<int64_t>(dim) > std::numeric_limits<int64_t>::max() / n_elements) {
        cur.fail("tensor '" + info.name + "' has dimension " + std::to_string(dim) +
                 " that is zero or makes the element count overflow");
      }
      info.shape.push_back(static_cast<int64_t>(dim));
      n_elements *= static_cast<int64_t>(dim);
    }
    uint32_t type = cur.read<uint32_t>("tensor type");
    const GGMLTypeInfo* type_info = ggml_type_info(type);
    if (!type_info) {
      cur.fail("tensor '" + info.name + "' has unknown ggml type " + std::to_string(type));
    }
    info.type = static_cast<GGMLType>(type);
    if (info.shape[0] % type_info->block_size != 0) {
      cur.fail("tensor '" + info.name + "' row length " + std::to_string(info.shape[0]) +
               " is not a multiple of the " + type_info->name + " block size " +
               std::to_string(type_info->block_size));
    }
    info.n_elements = n_elements;
    int64_t n_blocks = n_elements / type_info->block_size;
    if (n_blocks > std::numeric_limits<int64_t>::max() / type_info->type_size) {
      cur.fail("tensor '" + info.name + "' byte size overflows");
    }
    info.n_bytes = n_blocks * type_info->type_size;
    info.offset = cur.read<uint64_t>("tensor data offset");
    if (info.offset % alignment_ != 0) {
      cur.fail("tensor '" + info.name + "' data offset " + std::to_string(info.offset) +
               " is not a multiple of the alignment " + std::to_string(alignment_));
    }
    if (!tensor_index_.emplace(info.name, tensors_.size()).second) {
      cur.fail("duplicate tensor name '" + info.name + "'");
    }
    tensors_.push_back(std::move(info));
  }

  const uint64_t data_start = (cur.position() + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > size_) {
    throw ModelLoadError(path_ + ": file is truncated before the tensor data section");
  }
  uint64_t data_size = size_ - data_start;
  // Sorted by offset for the overlap and packing checks.
  std::vector<const GGUFTensorInfo*> by_offset;
  for (auto& t : tensors_) {
    if (t.offset > data_size || static_cast<uint64_t>(t.n_bytes) > data_size - t.offset) {
      throw ModelLoadError(path_ + ": tensor '" + t.name + "' (" + std::to_string(t.n_bytes) +
                           " bytes at data offset " + std::to_string(t.offset) +
                           ") extends past the end of the file (data section is " +
                           std::to_string(data_size) + " bytes); the file is truncated or corrupt");
    }
    t.data = base_ + data_start + t.offset;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const GGUFTensorInfo* a, const GGUFTensorInfo* b) { return a->offset < b->offset; });
  // ggml writes tensors back to back, each padded to the alignment, and its reader rejects any
  // other layout. Checking the same packing catches a type or shape that does not match the
  // bytes stored for a tensor, which bounds checks alone cannot see.
  if (!by_offset.empty() && by_offset[0]->offset != 0) {
    throw ModelLoadError(path_ + ": the first tensor in the data section, '" + by_offset[0]->name +
                         "', starts at data offset " + std::to_string(by_offset[0]->offset) +
                         ", expected 0");
  }
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const GGUFTensorInfo* prev = by_offset[i - 1];
    const GGUFTensorInfo* next = by_offset[i];
    // No overflow: prev->offset + prev->n_bytes <= data_size was checked above.
    const uint64_t prev_end = prev->offset + static_cast<uint64_t>(prev->n_bytes);
    const uint64_t expected = (prev_end + alignment_ - 1) / alignment_ * alignment_;
    if (next->offset < prev_end) {
      throw ModelLoadError(path_ + ": tensors '" + prev->name + "' and '" + next->name +
                           "' overlap in the data section");
    }
    if (next->offset != expected) {
      const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(prev->type));
      throw ModelLoadError(path_ + ": tensor '" + prev->name + "' (" + info->name + ", " +
                           std::to_string(prev->n_bytes) + " bytes at data offset " +
                           std::to_string(prev->offset) + ") is followed by tensor '" + next->name +
                           "' at data offset " + std::to_string(next->offset) + ", expected " +
                           std::to_string(expected) +
                           "; the tensor's type or shape does not match the bytes stored for it");
    }
  }

  // A NaN or infinite weight or block scale makes the forward pass return NaN or silently wrong
  // values, depending on where it sits, so such a file is rejected here. The check reads every
  // page of the data section, so each tensor's pages are released after it: otherwise the
  // whole file would stay resident until the loader repacks and releases it tensor by tensor.
  for (const GGUFTensorInfo& t : tensors_) {
    const int64_t at = first_nonfinite_element(t);
    release_pages(t);
    if (at < 0) continue;
    const GGMLTypeInfo* info = ggml_type_info(static_cast<uint32_t>(t.type));
    std::string where = info->block_size == 1
                            ? "at element " + std::to_string(at)
                            : "in the scale of the " + std::string(info->name) + " block holding elements " +
                                  std::to_string(at) + ".." + std::to_string(at + info->block_size - 1);
    throw ModelLoadError(path_ + ": tensor '" + t.name + "' contains NaN or infinite values (" + where +
                         "); expected finite weights, the file is corrupt");
  }
}

namespace {

// Drops the resident pages that overlap [begin, end) of a read-only shared file mapping. The
// page cache keeps them, so a later read is a minor fault, not disk I/O.
void release_range(const uint8_t* begin, const uint8_t* end) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t first = reinterpret_cast<uintptr_t>(begin) / page * page;
  const uintptr_t last = reinterpret_cast<uintptr_t>(end);
  if (last > first) {
    // Advice only: a failure leaves the pages resident, which is harmless.
    ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  }
}

}  // namespace

void GGUFFile::release_pages(const GGUFTensorInfo& tensor) const {
  release_range(tensor.data, tensor.data + tensor.n_bytes);
}

void GGUFFile::release_pages(const GGUFTensorInfo& tensor, int64_t offset, int64_t n_bytes) const {
  const int64_t begin = std::clamp<int64_t>(offset, 0, tensor.n_bytes);
  const int64_t end = std::clamp<int64_t>(offset + n_bytes, begin, tensor.n_bytes);
  release_range(tensor.data + begin, tensor.data + end);
}

void GGUFFile::release_all_pages() const { release_range(base_, base_ + size_); }

const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

[[noreturn]] void wrong_type(const GGUFFile& f, const std::string& key, const GGUFValue& v,
                             const char* expected) {
  throw ModelLoadError(f.where() + "metadata key '" + key + "' has type " +
                       gguf_value_type_name(v.type) + ", expected " + expected);
}

const GGUFValue& require(const GGUFFile& f, const std::string& key) {
  const GGUFValue* v = f.find(key);
  if (!v) throw ModelLoadError(f.where() + "required metadata key '" + key + "' is missing");
  return *v;
}

}  // namespace

std::string GGUFFile::get_string(const std::string& key) const {
  const GGUFValue& v = require(*this, key);
  if (v.type != GGUFValueType::kString) wrong_type(*this, key, v, "string");
  return std::string(v.string);
}

uint64_t GGUFFile::get_uint(const std::string& key) const {
  const GGUFValue& v = require(*this, key);
  if (!is_integer_type(v.type)) wrong_type(*this, key, v, "an integer");
  if (is_signed_type(v.type) && v.integer < 0) {
    throw ModelLoadError(where() + "metadata key '" + key + "' is negative (" +
                         std::to_string(v.integer) + ")");
  }
  return v.unsigned_integer;
}

double GGUFFile::get_float(const std::string& key) const {
  const GGUFValue& v = require(*this, key);
  if (v.type != GGUFValueType::kFloat32 && v.type != GGUFValueType::kFloat64 && !is_integer_type(v.type)) {
    wrong_type(*this, key, v, "a number");
  }
  return v.real;
}

bool GGUFFile::get_bool(const std::string& key) const {
  const GGUFValue& v = require(*this, key);
  if (v.type != GGUFValueType::kBool) wrong_type(*this, key, v, "bool");
  return v.integer != 0;
}

uint64_t GGUFFile::get_uint_or(const std::string& key, uint64_t fallback) const {
  return has(key) ? get_uint(key) : fallback;
}
double GGUFFile::get_float_or(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}
bool GGUFFile::get_bool_or(const std::string& key, bool fallback) const {
  return has(key) ? get_bool(key) : fallback;
}

std::vector<std::string_view> GGUFFile::get_string_array(const std::string& key) const {
  const GGUFValue& v = require(*this, key);
  if (v.type != GGUFValueType::kArray || v.array_type != GGUFValueType::kString) {
    wrong_type(*this, key, v, "an array of strings");
  }
  // parse() checked every length against the file, so this walk stays inside the mapping.
  std::vector<std::string_view> out;
  out.reserve(v.array_count);
  const uint8_t* p = v.array_data;
  for (uint64_t i = 0; i < v.array_count; ++i) {
    uint64_t length;
    std::memcpy(&length, p, sizeof length);
    out.emplace_back(reinterpret_cast<const char*>(p + sizeof length), length);
    p += sizeof length + length;
  }
  return out;
}

std::vector<float> GGUFFile::get_float_array(const std::string& key) const {
  const GGUFValue& v = require(*this, key);
  if (v.type != GGUFValueType::kArray ||
      (v.array_type != GGUFValueType::kFloat32 && v.array_type != GGUFValueType::kFloat64)) {
    wrong_type(*this, key, v, "an array of floats");
  }
  std::vector<float> out(v.array_count);
  int size = scalar_size(static_cast<uint32_t>(v.array_type));
  for (uint64_t i = 0; i < v.array_count; ++i) {
    GGUFValue element;
    decode_scalar(v.array_type, v.array_data + i * size, element);
    out[i] = static_cast<float>(element.real);
  }
  return out;
}

std::vector<int64_t> GGUFFile::get_int_array(const std::string& key) const {
  const GGUFValue& v = require(*this, key);
  if (v.type != GGUFValueType::kArray || !is_integer_type(v.array_type)) {
    wrong_type(*this, key, v, "an array of integers");
  }
  std::vector<int64_t> out(v.array_count);
  int size = scalar_size(static_cast<uint32_t>(v.array_type));
  for (uint64_t i = 0; i < v.array_count; ++i) {
    GGUFValue element;
    decode_scalar(v.array_type, v.array_data + i * size, element);
    out[i] = element.integer;
  }
  return out;
}

const GGUFTensorInfo* GGUFFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GGUFTensorInfo& GGUFFile::require_tensor(const std::string& name,
                                               const std::vector<int64_t>& shape) const {
  const GGUFTensorInfo* t = find_tensor(name);
  if (!t) throw ModelLoadError(where() + "required tensor '" + name + "' is missing");
  if (t->shape != shape) {
    auto fmt = [](const std::vector<int64_t>& s) {
      std::string out = "[";
      for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
      return out + "]";
    };
    throw ModelLoadError(where() + "tensor '" + name + "' has shape " + fmt(t->shape) +
                         ", expected " + fmt(shape));
  }
  return *t;
}

}  // namespace g3e
