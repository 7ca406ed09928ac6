// SentencePiece BPE tokenizer built from the vocabulary stored in a GGUF file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace g3e {

// Token types as stored in tokenizer.ggml.token_type (SentencePiece's piece types).
enum class TokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct TokenizerSpec {
  std::vector<std::string> pieces;  // as stored in the GGUF file
  std::vector<float> scores;
  std::vector<int32_t> types;       // TokenType values
  int32_t bos_id = 2;
  int32_t eos_id = 1;
  int32_t unk_id = 3;
  int32_t pad_id = 0;
};

class Tokenizer {
 public:
  explicit Tokenizer(TokenizerSpec spec);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Encodes UTF-8 text to the ids sentencepiece gives. User-defined pieces (e.g. "\n", "<b>")
  // always match as whole pieces. With parse_special, control pieces written literally in the
  // text (e.g. "<start_of_turn>") also become their ids. NOTE: an invalid UTF-8 byte becomes its
  // byte piece, where sentencepiece substitutes U+FFFD. Safe to call from several threads.
  std::vector<int32_t> encode(std::string_view text, bool add_bos, bool parse_special) const;

  // Concatenated bytes of the pieces (byte tokens become their byte). Control tokens give "".
  // decode(encode(text)) == text, except that U+2581 in the text comes back as a space, because
  // sentencepiece encodes both to the same pieces. Throws std::out_of_range for a bad id.
  std::string decode(const std::vector<int32_t>& ids) const;
  // Bytes of one piece as decode() would emit them; control tokens give their literal text
  // when render_control is true.
  std::string piece_bytes(int32_t id, bool render_control = false) const;

  int32_t vocab_size() const;
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t unk_id() const;
  int32_t pad_id() const;  // -1 when the model has none
  TokenType type(int32_t id) const;
  float score(int32_t id) const;
  // Piece in SentencePiece's spelling, with U+2581 for each space.
  const std::string& piece(int32_t id) const;
  // Accepts a space spelled as U+2581 or as a plain space. Returns -1 when the piece is not in
  // the vocabulary.
  int32_t piece_to_id(std::string_view piece) const;

  struct Impl;

 private:
  Impl* impl_;
};

// Turns a stream of token ids into text, never emitting half of a UTF-8 character.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer);
  // Returns the text that became complete with this token (possibly empty).
  std::string push(int32_t id);
  // Returns what is left at the end of the stream; incomplete bytes become U+FFFD.
  std::string flush();

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace g3e
