// SentencePiece BPE encoding and decoding over a vocabulary read from a GGUF file.
//
// Encoding reproduces sentencepiece's BPE (src/bpe_model.cc, Model::SampleEncode) with Gemma 3's
// settings: identity normalization, spaces escaped as U+2581, no dummy prefix, user-defined
// pieces matched greedily (longest first) before BPE and never merged, byte fallback for
// characters outside the vocabulary. tests/test_tokenizer.py compares the ids with
// sentencepiece itself.
#include "tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <queue>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

namespace g3e {

namespace {

// UTF-8 validation following the Unicode standard (no overlong forms, surrogates or code points
// above U+10FFFF). An invalid sequence is replaced by one U+FFFD per maximal subpart, the same
// convention as Python's bytes.decode("utf-8", "replace").
namespace utf8 {

constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

enum class Status { kValid, kInvalid, kTruncated };

struct Sequence {
  size_t length;  // bytes of the character, of the maximal invalid subpart, or up to the text end
  Status status;
};

Sequence scan(std::string_view text, size_t pos) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  if (lead < 0x80) return {1, Status::kValid};
  size_t length = 0;
  unsigned char low = 0x80;  // allowed range of the second byte
  unsigned char high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead == 0xE0) {
    length = 3;
    low = 0xA0;  // excludes overlong forms
  } else if (lead == 0xED) {
    length = 3;
    high = 0x9F;  // excludes surrogates U+D800..U+DFFF
  } else if (lead >= 0xE1 && lead <= 0xEF) {
    length = 3;
  } else if (lead == 0xF0) {
    length = 4;
    low = 0x90;  // excludes overlong forms
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    length = 4;
  } else if (lead == 0xF4) {
    length = 4;
    high = 0x8F;  // excludes code points above U+10FFFF
  } else {
    return {1, Status::kInvalid};
  }
  for (size_t k = 1; k < length; ++k) {
    if (pos + k >= text.size()) return {k, Status::kTruncated};
    const auto byte = static_cast<unsigned char>(text[pos + k]);
    if (byte < low || byte > high) return {k, Status::kInvalid};
    low = 0x80;
    high = 0xBF;
  }
  return {length, Status::kValid};
}

// Returns the length of the valid character at text[pos], or 0 when the bytes there are invalid
// or cut off by the end of the text.
size_t valid_char_length(std::string_view text, size_t pos) {
  const Sequence s = scan(text, pos);
  return s.status == Status::kValid ? s.length : 0;
}

// Appends the characters of `bytes` to *out, with U+FFFD for invalid sequences, up to a
// sequence cut off by the end of `bytes`. Returns the number of bytes consumed.
size_t append_complete(std::string_view bytes, std::string* out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Sequence s = scan(bytes, pos);
    if (s.status == Status::kTruncated) break;
    if (s.status == Status::kValid) {
      out->append(bytes.substr(pos, s.length));
    } else {
      out->append(kReplacementCharacter);
    }
    pos += s.length;
  }
  return pos;
}

}  // namespace utf8

// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's spelling of a space inside pieces.
constexpr std::string_view kSpaceSymbol = "\xE2\x96\x81";

std::string replace_spaces(std::string_view text, std::string_view with) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    if (c == ' ') {
      out.append(with);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string replace_space_symbols(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  size_t pos = 0;
  while (pos < piece.size()) {
    if (piece.compare(pos, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      out.push_back(' ');
      pos += kSpaceSymbol.size();
    } else {
      out.push_back(piece[pos]);
      ++pos;
    }
  }
  return out;
}

// Parses a byte piece "<0xHH>" (two upper- or lower-case hex digits). Returns -1 for any
// other piece.
int parse_byte_piece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = piece[i];
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (c >= 'A' && c <= 'F') digit = c - 'A' + 10;
    if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

std::string quoted(std::string_view piece) {
  std::string out = "'";
  for (unsigned char c : piece) {
    if (c < 0x20 || c == 0x7F) {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  out += "'";
  return out;
}

// Byte trie giving the longest key that starts at a position of a text.
class PrefixTrie {
 public:
  PrefixTrie() : nodes_(1) {}

  void insert(std::string_view key, int32_t id) {
    int32_t node = 0;
    for (unsigned char c : key) {
      int32_t child = find_child(node, c);
      if (child < 0) {
        child = static_cast<int32_t>(nodes_.size());
        nodes_[node].edges.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    nodes_[node].id = id;
    empty_ = false;
  }

  // Returns the byte length of the longest key that text[pos..] starts with (0 when none) and
  // stores that key's id in *id.
  size_t longest_match(std::string_view text, size_t pos, int32_t* id) const {
    if (empty_) return 0;
    size_t best_length = 0;
    int32_t node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = find_child(node, static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      if (nodes_[node].id >= 0) {
        best_length = i - pos + 1;
        *id = nodes_[node].id;
      }
    }
    return best_length;
  }

 private:
  struct Node {
    int32_t id = -1;
    std::vector<std::pair<unsigned char, int32_t>> edges;  // (byte, child node), few per node
  };

  int32_t find_child(int32_t node, unsigned char c) const {
    for (const auto& [byte, child] : nodes_[node].edges) {
      if (byte == c) return child;
    }
    return -1;
  }

  std::vector<Node> nodes_;
  bool empty_ = true;
};

// Open-addressing hash table from piece bytes to id. BPE looks up every adjacent pair of
// symbols, so lookups (mostly misses) dominate encoding time. A slot stores 32 bits of the hash
// next to the id, which settles most misses without touching the piece bytes.
class PieceTable {
 public:
  // Returns -1 when `pieces` has no duplicates, else the id of the first piece seen twice.
  int32_t build(const std::vector<std::string>& pieces, int32_t* first_id) {
    offsets_.assign(1, 0);
    blob_.clear();
    for (const std::string& p : pieces) {
      blob_ += p;
      offsets_.push_back(static_cast<uint32_t>(blob_.size()));
    }
    size_t capacity = 16;
    while (capacity < 2 * pieces.size()) capacity *= 2;  // load factor at most 0.5
    slots_.assign(capacity, 0);
    mask_ = capacity - 1;
    for (size_t i = 0; i < pieces.size(); ++i) {
      const int32_t existing = find(pieces[i]);
      if (existing >= 0) {
        *first_id = existing;
        return static_cast<int32_t>(i);
      }
      const uint64_t h = hash(pieces[i]);
      size_t slot = h & mask_;
      while (slots_[slot] != 0) slot = (slot + 1) & mask_;
      slots_[slot] = (h & 0xFFFFFFFF00000000ull) | (static_cast<uint64_t>(i) + 1);
    }
    return -1;
  }

  int32_t find(std::string_view key) const {
    const uint64_t h = hash(key);
    const uint64_t tag = h & 0xFFFFFFFF00000000ull;
    for (size_t slot = h & mask_;; slot = (slot + 1) & mask_) {
      const uint64_t entry = slots_[slot];
      if (entry == 0) return -1;
      if ((entry & 0xFFFFFFFF00000000ull) != tag) continue;
      const auto id = static_cast<uint32_t>(entry - 1);  // low 32 bits hold id + 1
      const uint32_t begin = offsets_[id];
      const uint32_t length = offsets_[id + 1] - begin;
      if (length == key.size() && std::memcmp(blob_.data() + begin, key.data(), length) == 0) {
        return static_cast<int32_t>(id);
      }
    }
  }

 private:
  // FNV-1a over the bytes, then a 64-bit finalizer (from MurmurHash3) so that the low bits used
  // for the slot and the high bits used for the tag both depend on every byte.
  static uint64_t hash(std::string_view key) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : key) h = (h ^ c) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
  }

  std::vector<uint64_t> slots_;    // 0 = empty, else (hash & 0xFFFFFFFF00000000) | (id + 1)
  std::string blob_;               // all pieces back to back
  std::vector<uint32_t> offsets_;  // piece id spans blob_[offsets_[id], offsets_[id + 1])
  uint64_t mask_ = 0;
};

// One symbol of the BPE work list: a byte range of the normalized text, linked to its live
// neighbours. A symbol merged into its left neighbour gets length 0.
struct Symbol {
  uint32_t begin;
  uint32_t length;
  int32_t prev;
  int32_t next;
  int32_t fixed_id;  // id of a user-defined piece or of an invalid byte's byte piece; -1 otherwise
};

// A candidate merge of symbols[left] with symbols[right] (its next) into a piece of `length`
// bytes. Stale entries are recognised by a length mismatch, as in sentencepiece.
struct MergeCandidate {
  float score;
  int32_t left;
  int32_t right;
  uint32_t length;
};

// Orders the heap so that the highest score comes first and, among equal scores, the leftmost.
struct LowerPriority {
  bool operator()(const MergeCandidate& a, const MergeCandidate& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

}  // namespace

struct Tokenizer::Impl {
  std::vector<std::string> pieces;    // SentencePiece spelling: spaces respelled as U+2581
  std::vector<std::string> surfaces;  // bytes that decode() emits for each id
  std::vector<float> scores;
  std::vector<TokenType> types;
  PieceTable piece_ids;  // all pieces in SentencePiece spelling
  PrefixTrie user_defined;  // matched in all text before BPE
  PrefixTrie special;       // control and unknown pieces, matched only with parse_special
  std::array<int32_t, 256> byte_ids{};
  bool has_unused = false;
  int32_t bos_id = 0;
  int32_t eos_id = 0;
  int32_t unk_id = 0;
  int32_t pad_id = 0;

  int32_t find(std::string_view piece) const { return piece_ids.find(piece); }

  // Pieces that BPE may produce by merging; sentencepiece keeps the others (control, unknown,
  // byte) in a separate map that merges never consult.
  bool is_mergeable(int32_t id) const {
    const TokenType t = types[id];
    return t == TokenType::kNormal || t == TokenType::kUserDefined || t == TokenType::kUnused;
  }

  void check_id(int32_t id) const {
    if (id < 0 || id >= static_cast<int32_t>(pieces.size())) {
      throw std::out_of_range("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(pieces.size()) + ")");
    }
  }

  void encode_text(std::string_view text, std::vector<int32_t>& out) const;
  void merge_and_emit(std::string_view normalized, std::vector<Symbol>& symbols,
                      std::vector<int32_t>& out) const;
  void emit_piece(std::string_view piece, std::vector<int32_t>& out,
                  const std::unordered_map<std::string_view,
                                           std::pair<std::string_view, std::string_view>>&
                      unused_splits) const;
  void emit_bytes(std::string_view bytes, std::vector<int32_t>& out) const {
    for (unsigned char b : bytes) out.push_back(byte_ids[b]);
  }
};

// Encodes text that contains no special pieces to be parsed.
void Tokenizer::Impl::encode_text(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  // Normalization is identity apart from escaping spaces.
  const std::string normalized = replace_spaces(text, kSpaceSymbol);
  if (normalized.size() > UINT32_MAX / 2) {
    throw std::length_error("text of " + std::to_string(text.size()) +
                            " bytes is too long to encode at once; split it into parts below 2 GB");
  }

  // User-defined pieces and invalid bytes never merge, so when the vocabulary has no unused
  // pieces they split the text into runs that BPE can process one at a time with the same result.
  // Unused pieces make sentencepiece's resegmentation depend on the order of all merges in the
  // text, so then the whole text is one run.
  std::vector<Symbol> symbols;
  const std::string_view view(normalized);
  size_t pos = 0;
  while (pos < view.size()) {
    int32_t fixed_id = -1;
    size_t length = user_defined.longest_match(view, pos, &fixed_id);
    if (length == 0) {
      length = utf8::valid_char_length(view, pos);
      if (length == 0) {
        // NOTE: sentencepiece replaces each invalid byte with U+FFFD; byte fallback keeps the
        // input bytes so that decode(encode(text)) == text for any bytes.
        length = 1;
        fixed_id = byte_ids[static_cast<unsigned char>(view[pos])];
      }
    }
    if (fixed_id >= 0 && !has_unused) {
      merge_and_emit(view, symbols, out);
      symbols.clear();
      out.push_back(fixed_id);
    } else {
      const int32_t index = static_cast<int32_t>(symbols.size());
      symbols.push_back(Symbol{static_cast<uint32_t>(pos), static_cast<uint32_t>(length),
                               index - 1, index + 1, fixed_id});
    }
    pos += length;
  }
  merge_and_emit(view, symbols, out);
}

// Runs sentencepiece's BPE over `symbols` (consecutive ranges of `normalized`) and appends the ids.
void Tokenizer::Impl::merge_and_emit(std::string_view normalized, std::vector<Symbol>& symbols,
                                     std::vector<int32_t>& out) const {
  if (symbols.empty()) return;
  symbols.back().next = -1;

  std::priority_queue<MergeCandidate, std::vector<MergeCandidate>, LowerPriority> agenda;
  // Split of each unused piece at the time it was last proposed (sentencepiece's rev_merge).
  std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>
      unused_splits;

  auto text_of = [&](const Symbol& s) { return normalized.substr(s.begin, s.length); };
  auto propose = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    if (l.fixed_id >= 0 || r.fixed_id >= 0) return;
    const std::string_view merged = normalized.substr(l.begin, l.length + r.length);
    const int32_t id = find(merged);
    if (id < 0 || !is_mergeable(id)) return;
    agenda.push(MergeCandidate{scores[id], left, right, l.length + r.length});
    if (types[id] == TokenType::kUnused) unused_splits[merged] = {text_of(l), text_of(r)};
  };

  for (size_t i = 1; i < symbols.size(); ++i) {
    propose(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
  }

  while (!agenda.empty()) {
    const MergeCandidate top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    if (left.length == 0 || right.length == 0 || left.length + right.length != top.length) {
      continue;  // one side changed since this candidate was proposed
    }
    left.length += right.length;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.length = 0;
    propose(left.prev, top.left);
    propose(top.left, left.next);
  }

  for (int32_t index = 0; index >= 0; index = symbols[index].next) {
    const Symbol& s = symbols[index];
    if (s.fixed_id >= 0) {
      out.push_back(s.fixed_id);
    } else {
      emit_piece(text_of(s), out, unused_splits);
    }
  }
}

// Appends the id of one BPE result, splitting unused pieces back into the pieces they were
// merged from and turning pieces outside the vocabulary into byte pieces.
void Tokenizer::Impl::emit_piece(
    std::string_view piece, std::vector<int32_t>& out,
    const std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>>&
        unused_splits) const {
  const int32_t id = find(piece);
  if (id < 0 || id == unk_id || types[id] == TokenType::kUnknown) {
    emit_bytes(piece, out);
    return;
  }
  if (types[id] == TokenType::kUnused) {
    const auto it = unused_splits.find(piece);
    if (it != unused_splits.end()) {
      emit_piece(it->second.first, out, unused_splits);
      emit_piece(it->second.second, out, unused_splits);
      return;
    }
  }
  out.push_back(id);
}

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(new Impl) {
  Impl& m = *impl_;
  const size_t n = spec.pieces.size();
  try {
    if (n == 0) throw std::invalid_argument("tokenizer vocabulary is empty");
    if (n > static_cast<size_t>(INT32_MAX)) {
      throw std::invalid_argument("tokenizer vocabulary of " + std::to_string(n) +
                                  " pieces exceeds the int32 id range");
    }
    if (spec.scores.size() != n || spec.types.size() != n) {
      throw std::invalid_argument("tokenizer vocabulary has " + std::to_string(n) + " pieces but " +
                                  std::to_string(spec.scores.size()) + " scores and " +
                                  std::to_string(spec.types.size()) +
                                  " token types; all three lists need one entry per piece");
    }
    const int32_t vocab = static_cast<int32_t>(n);
    auto check_special = [vocab](const char* name, int32_t id, bool optional) {
      if ((optional && id == -1) || (id >= 0 && id < vocab)) return;
      throw std::invalid_argument(std::string(name) + " " + std::to_string(id) +
                                  " is outside the vocabulary [0, " + std::to_string(vocab) + ")" +
                                  (optional ? "; use -1 when the model has none" : ""));
    };
    check_special("bos_id", spec.bos_id, false);
    check_special("eos_id", spec.eos_id, false);
    check_special("unk_id", spec.unk_id, false);
    check_special("pad_id", spec.pad_id, true);
    m.bos_id = spec.bos_id;
    m.eos_id = spec.eos_id;
    m.unk_id = spec.unk_id;
    m.pad_id = spec.pad_id;

    m.scores = std::move(spec.scores);
    m.types.resize(n);
    m.pieces.resize(n);
    m.surfaces.resize(n);
    m.byte_ids.fill(m.unk_id);  // sentencepiece also gives unk when a byte piece is missing
    for (size_t i = 0; i < n; ++i) {
      const int32_t raw_type = spec.types[i];
      if (raw_type < 1 || raw_type > 6) {
        throw std::invalid_argument("token " + std::to_string(i) + " has type " +
                                    std::to_string(raw_type) +
                                    "; expected 1 (normal) to 6 (byte) as in tokenizer.ggml.token_type");
      }
      const TokenType type = static_cast<TokenType>(raw_type);
      const std::string& stored = spec.pieces[i];
      if (stored.empty()) {
        throw std::invalid_argument("token " + std::to_string(i) + " has an empty piece");
      }
      m.types[i] = type;
      // llama.cpp's GGUF files spell the whitespace-run pieces with plain spaces while
      // sentencepiece matches on U+2581; normalized text never contains a plain space.
      m.pieces[i] = replace_spaces(stored, kSpaceSymbol);
      if (type == TokenType::kByte) {
        const int value = parse_byte_piece(stored);
        if (value < 0) {
          throw std::invalid_argument("byte token " + std::to_string(i) + " is spelled " +
                                      quoted(stored) + "; expected <0xHH>");
        }
        m.byte_ids[value] = static_cast<int32_t>(i);
        m.surfaces[i] = std::string(1, static_cast<char>(value));
      } else if (type == TokenType::kControl || type == TokenType::kUnknown) {
        m.surfaces[i].clear();
      } else {
        m.surfaces[i] = replace_space_symbols(m.pieces[i]);
      }
      if (type == TokenType::kUnused) m.has_unused = true;
    }
    int32_t first_id = -1;
    const int32_t duplicate_id = m.piece_ids.build(m.pieces, &first_id);
    if (duplicate_id >= 0) {
      throw std::invalid_argument("tokens " + std::to_string(first_id) + " and " +
                                  std::to_string(duplicate_id) + " are both " +
                                  quoted(m.pieces[duplicate_id]) +
                                  " (a plain space and U+2581 spell the same piece)");
    }
    for (size_t i = 0; i < n; ++i) {
      const TokenType type = m.types[i];
      if (type == TokenType::kUserDefined) m.user_defined.insert(m.pieces[i], static_cast<int32_t>(i));
      if (type == TokenType::kControl || type == TokenType::kUnknown) {
        // Control pieces are matched in their stored spelling: parse_special works on raw text.
        m.special.insert(spec.pieces[i], static_cast<int32_t>(i));
      }
    }
  } catch (...) {
    delete impl_;
    throw;
  }
}

Tokenizer::~Tokenizer() { delete impl_; }

Tokenizer::Tokenizer(Tokenizer&& other) noexcept : impl_(other.impl_) { other.impl_ = nullptr; }

Tokenizer& Tokenizer::operator=(Tokenizer&& other) noexcept {
  if (this != &other) {
    delete impl_;
    impl_ = other.impl_;
    other.impl_ = nullptr;
  }
  return *this;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos,
                                       bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos) out.push_back(impl_->bos_id);
  if (!parse_special) {
    impl_->encode_text(text, out);
    return out;
  }
  // Leftmost-longest matches of control pieces; the text between them is encoded as usual.
  size_t start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    int32_t id = -1;
    const size_t length = impl_->special.longest_match(text, pos, &id);
    if (length == 0) {
      pos += std::max<size_t>(1, utf8::valid_char_length(text, pos));
      continue;
    }
    impl_->encode_text(text.substr(start, pos - start), out);
    out.push_back(id);
    pos += length;
    start = pos;
  }
  impl_->encode_text(text.substr(start), out);
  return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    impl_->check_id(id);
    out += impl_->surfaces[id];
  }
  return out;
}

std::string Tokenizer::piece_bytes(int32_t id, bool render_control) const {
  impl_->check_id(id);
  const TokenType type = impl_->types[id];
  if (render_control && (type == TokenType::kControl || type == TokenType::kUnknown)) {
    return replace_space_symbols(impl_->pieces[id]);
  }
  return impl_->surfaces[id];
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->pieces.size()); }
int32_t Tokenizer::bos_id() const { return impl_->bos_id; }
int32_t Tokenizer::eos_id() const { return impl_->eos_id; }
int32_t Tokenizer::unk_id() const { return impl_->unk_id; }
int32_t Tokenizer::pad_id() const { return impl_->pad_id; }

TokenType Tokenizer::type(int32_t id) const {
  impl_->check_id(id);
  return impl_->types[id];
}

float Tokenizer::score(int32_t id) const {
  impl_->check_id(id);
  return impl_->scores[id];
}

const std::string& Tokenizer::piece(int32_t id) const {
  impl_->check_id(id);
  return impl_->pieces[id];
}

int32_t Tokenizer::piece_to_id(std::string_view piece) const {
  const int32_t id = impl_->find(piece);
  if (id >= 0 || piece.find(' ') == std::string_view::npos) return id;
  return impl_->find(replace_spaces(piece, kSpaceSymbol));
}

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

std::string StreamingDecoder::push(int32_t id) {
  pending_ += tokenizer_->piece_bytes(id);
  std::string out;
  const size_t consumed = utf8::append_complete(pending_, &out);
  pending_.erase(0, consumed);
  return out;
}

std::string StreamingDecoder::flush() {
  std::string out;
  const size_t consumed = utf8::append_complete(pending_, &out);
  if (consumed < pending_.size()) out += utf8::kReplacementCharacter;
  pending_.clear();
  return out;
}

}  // namespace g3e
