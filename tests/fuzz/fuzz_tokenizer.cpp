// libFuzzer target for the tokenizer: encoding with and without parsing of control tokens,
// decoding, and the streaming decoder, on the real Gemma 3 vocabulary (the GGUF file named by
// G3E_FUZZ_MODEL) or, without it, a small made-up vocabulary with byte fallback.
//
// Input: byte 0 selects the mode (bit 0: parse control tokens, bit 1: add BOS, bit 2: treat the
// rest as little-endian uint32 token ids taken modulo the vocabulary size instead of text).
// Checked properties, besides the absence of crashes and sanitizer reports:
//   - every id is inside the vocabulary, and BOS comes first when requested;
//   - without control-token parsing, decode(encode(text)) == text unless the text contains
//     U+2581, which SentencePiece encodes like a space (tokenizer.h states both);
//   - the streaming decoder emits valid UTF-8 only, and exactly decode(ids) when that is valid.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "errors.h"
#include "gguf.h"
#include "tokenizer.h"

using namespace g3e;

namespace {

std::unique_ptr<Tokenizer> g_tokenizer;

TokenizerSpec spec_from_gguf(const std::string& path) {
  GGUFFile file(path);
  TokenizerSpec spec;
  for (std::string_view piece : file.get_string_array("tokenizer.ggml.tokens")) spec.pieces.emplace_back(piece);
  spec.scores = file.get_float_array("tokenizer.ggml.scores");
  for (int64_t type : file.get_int_array("tokenizer.ggml.token_type")) spec.types.push_back(static_cast<int32_t>(type));
  spec.bos_id = static_cast<int32_t>(file.get_uint_or("tokenizer.ggml.bos_token_id", 2));
  spec.eos_id = static_cast<int32_t>(file.get_uint_or("tokenizer.ggml.eos_token_id", 1));
  spec.unk_id = static_cast<int32_t>(file.get_uint_or("tokenizer.ggml.unknown_token_id", 3));
  spec.pad_id = static_cast<int32_t>(file.get_uint_or("tokenizer.ggml.padding_token_id", 0));
  return spec;
}

TokenizerSpec made_up_spec() {
  TokenizerSpec spec;
  auto add = [&spec](const std::string& piece, float score, TokenType type) {
    spec.pieces.push_back(piece);
    spec.scores.push_back(score);
    spec.types.push_back(static_cast<int32_t>(type));
  };
  for (const char* control : {"<pad>", "<eos>", "<bos>", "<unk>"}) add(control, 0, TokenType::kControl);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    add(name, 0, TokenType::kByte);
  }
  const std::string space = "\xE2\x96\x81";
  float score = -1;
  for (const std::string& piece : {space, std::string("a"), std::string("b"), std::string("ab"), space + "a",
                                   space + "ab", std::string("\xC3\xA9"), std::string("\xE6\x97\xA5"),
                                   std::string("\xF0\x9F\x98\x80"), std::string("\n\n")}) {
    add(piece, score--, TokenType::kNormal);
  }
  add("\n", 0, TokenType::kUserDefined);
  add("<start_of_turn>", 0, TokenType::kControl);
  add("<end_of_turn>", 0, TokenType::kControl);
  return spec;
}

bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t length = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    if (length == 0 || i + length > s.size()) return false;
    uint32_t code = length == 1 ? c : c & (0x7F >> length);
    for (size_t k = 1; k < length; ++k) {
      const unsigned char next = static_cast<unsigned char>(s[i + k]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3F);
    }
    const uint32_t minimum[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (code < minimum[length] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += length;
  }
  return true;
}

[[noreturn]] void fail(const char* property, const std::string& detail) {
  std::fprintf(stderr, "fuzz_tokenizer: %s: %s\n", property, detail.c_str());
  std::abort();
}

void check_streaming(const std::vector<int32_t>& ids) {
  StreamingDecoder decoder(*g_tokenizer);
  std::string streamed;
  for (int32_t id : ids) {
    const std::string piece = decoder.push(id);
    if (!valid_utf8(piece)) fail("streaming decoder emitted invalid UTF-8", piece);
    streamed += piece;
  }
  const std::string rest = decoder.flush();
  if (!valid_utf8(rest)) fail("streaming decoder flushed invalid UTF-8", rest);
  streamed += rest;
  const std::string whole = g_tokenizer->decode(ids);
  if (valid_utf8(whole) && streamed != whole) fail("streamed text differs from decode()", whole);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* path = std::getenv("G3E_FUZZ_MODEL");
  g_tokenizer = std::make_unique<Tokenizer>(path && *path ? spec_from_gguf(path) : made_up_spec());
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool parse_special = data[0] & 1;
  const bool add_bos = data[0] & 2;
  const bool as_ids = data[0] & 4;
  const int32_t vocab = g_tokenizer->vocab_size();

  if (as_ids) {
    std::vector<int32_t> ids;
    for (size_t i = 1; i + 4 <= size; i += 4) {
      uint32_t raw;
      std::memcpy(&raw, data + i, 4);
      ids.push_back(static_cast<int32_t>(raw % static_cast<uint32_t>(vocab)));
    }
    check_streaming(ids);
    return 0;
  }

  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::vector<int32_t> ids = g_tokenizer->encode(text, add_bos, parse_special);
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab) fail("id outside the vocabulary", std::to_string(id));
  }
  if (add_bos && (ids.empty() || ids[0] != g_tokenizer->bos_id())) fail("BOS missing", text);
  if (!parse_special && text.find("\xE2\x96\x81") == std::string::npos && g_tokenizer->decode(ids) != text) {
    fail("decode(encode(text)) differs from text", text);
  }
  check_streaming(ids);
  return 0;
}
