// Unit tests of the tokenizer without Python: a made-up vocabulary whose expected pieces were
// checked against sentencepiece 0.2 (tests/test_tokenizer.py compares the real Gemma 3
// vocabulary with sentencepiece itself), decoding, the streaming decoder and input errors.
// Exits non-zero on a failure and ends with "N passed, N failed".
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "tokenizer.h"

using namespace g3e;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& description) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAIL: %s\n", description.c_str());
  }
}

template <typename Exception, typename Fn>
void check_throws(Fn&& fn, const std::string& description) {
  try {
    fn();
  } catch (const Exception&) {
    check(true, description);
    return;
  } catch (...) {
  }
  check(false, description + " (expected an exception)");
}

// Ids 0-3 are <pad> <eos> <bos> <unk>, 4-259 the byte pieces, then the pieces below. "e" is
// missing (byte fallback); "cd" and "ddd" are unused pieces, which sentencepiece splits back.
TokenizerSpec made_up_spec() {
  TokenizerSpec spec;
  auto add = [&spec](const std::string& piece, float score, TokenType type) {
    spec.pieces.push_back(piece);
    spec.scores.push_back(score);
    spec.types.push_back(static_cast<int32_t>(type));
  };

  add("<pad>", 0, TokenType::kControl);
  add("<eos>", 0, TokenType::kControl);
  add("<bos>", 0, TokenType::kControl);
  add("<unk>", 0, TokenType::kControl);  // as in Gemma 3's GGUF files
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    add(name, 0, TokenType::kByte);
  }

  const std::string space = "\xE2\x96\x81";
  for (const char* c : {"a", "b", "c", "d"}) add(c, -10, TokenType::kNormal);
  add(space, -10, TokenType::kNormal);
  add("ab", -1, TokenType::kNormal);
  add("bc", -1, TokenType::kNormal);
  add("abc", -2, TokenType::kNormal);
  add("cd", -0.5f, TokenType::kUnused);
  add("abcd", -3, TokenType::kNormal);
  add(space + "a", -1.5f, TokenType::kNormal);
  add("dd", -1, TokenType::kNormal);
  add("ddd", -2, TokenType::kUnused);
  add("dddd", -2.5f, TokenType::kNormal);
  add("da", -0.7f, TokenType::kNormal);

  add("<u>", 0, TokenType::kUserDefined);
  add("  ", 0, TokenType::kUserDefined);  // spelled with plain spaces, as llama.cpp writes it
  add("<c>", 0, TokenType::kControl);
  return spec;
}

std::string pieces_of(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) out += (out.empty() ? "" : " ") + tok.piece(id);
  return out;
}

void check_encode(const Tokenizer& tok, const std::string& text, bool parse_special,
                  const std::string& expected) {
  const std::vector<int32_t> ids = tok.encode(text, false, parse_special);
  const std::string got = pieces_of(tok, ids);
  check(got == expected, "encode '" + text + "': got [" + got + "], expected [" + expected + "]");
}

void test_encode(const Tokenizer& tok) {
  const std::string space = "\xE2\x96\x81";
  check_encode(tok, "abcd", false, "abcd");
  check_encode(tok, "cd", false, "c d");         // unused piece split back
  check_encode(tok, "ddd", false, "dd d");       // tie between two "dd": leftmost first
  check_encode(tok, "dddd", false, "dddd");
  check_encode(tok, "dab", false, "da b");       // "da" scores above "ab"
  check_encode(tok, "a e", false, "a " + space + " <0x65>");
  check_encode(tok, "  a", false, space + space + " a");  // user-defined run is never merged
  check_encode(tok, " a", false, space + "a");
  check_encode(tok, "<u>a", false, "<u> a");
  check_encode(tok, "<c>", false, "<0x3C> c <0x3E>");
  check_encode(tok, "<c>", true, "<c>");
  check_encode(tok, "a<c>b", true, "a <c> b");
  check_encode(tok, "\xFF", false, "<0xFF>");  // invalid UTF-8 byte
  check_encode(tok, "", false, "");
  check(tok.encode("ab", true, false) == std::vector<int32_t>{2, tok.piece_to_id("ab")},
        "add_bos puts bos first");
}

void test_decode(const Tokenizer& tok) {
  for (const std::string text : {"abcd e", "  a\xFF", "\xC3\xA9 dd", "<c><u>"}) {
    check(tok.decode(tok.encode(text, false, false)) == text, "decode(encode('" + text + "'))");
  }
  check(tok.decode({2, tok.piece_to_id("ab"), 1}) == "ab", "control tokens decode to nothing");
  check(tok.piece_bytes(tok.piece_to_id("<c>"), true) == "<c>", "render_control gives the text");
  check(tok.piece_to_id("  ") == tok.piece_to_id("\xE2\x96\x81\xE2\x96\x81"),
        "piece_to_id accepts both spellings of a space");
  check(tok.piece_to_id("zz") == -1, "piece_to_id of a missing piece");
  check(tok.type(3) == TokenType::kControl && tok.unk_id() == 3, "types as given");
}

void test_streaming(const Tokenizer& tok) {
  const int32_t c3 = tok.piece_to_id("<0xC3>");
  const int32_t a9 = tok.piece_to_id("<0xA9>");
  StreamingDecoder decoder(tok);
  check(decoder.push(tok.piece_to_id("a")) == "a", "stream: ASCII at once");
  check(decoder.push(c3).empty(), "stream: holds a lead byte");
  check(decoder.push(a9) == "\xC3\xA9", "stream: emits the completed character");
  check(decoder.push(c3).empty(), "stream: holds a second lead byte");
  check(decoder.push(tok.piece_to_id("b")) == "\xEF\xBF\xBD" "b", "stream: broken sequence is U+FFFD");
  check(decoder.push(c3).empty(), "stream: holds a third lead byte");
  check(decoder.flush() == "\xEF\xBF\xBD", "flush: incomplete tail is U+FFFD");
  check(decoder.flush().empty(), "flush: nothing left");
}

void test_errors() {
  const Tokenizer tok(made_up_spec());
  check_throws<std::out_of_range>([&] { tok.decode({0, 9999}); }, "decode rejects id 9999");
  check_throws<std::out_of_range>([&] { tok.piece_bytes(-1); }, "piece_bytes rejects id -1");
  check_throws<std::invalid_argument>(
      [] {
        TokenizerSpec spec = made_up_spec();
        spec.scores.pop_back();
        Tokenizer t(std::move(spec));
      },
      "constructor rejects a missing score");
  check_throws<std::invalid_argument>(
      [] {
        TokenizerSpec spec = made_up_spec();
        spec.types[270] = 0;
        Tokenizer t(std::move(spec));
      },
      "constructor rejects token type 0");
  check_throws<std::invalid_argument>(
      [] {
        TokenizerSpec spec = made_up_spec();
        spec.pieces.push_back("\xE2\x96\x81\xE2\x96\x81");
        spec.scores.push_back(0);
        spec.types.push_back(1);
        Tokenizer t(std::move(spec));
      },
      "constructor rejects a piece spelled twice");
  check_throws<std::invalid_argument>(
      [] {
        TokenizerSpec spec = made_up_spec();
        spec.unk_id = 100000;
        Tokenizer t(std::move(spec));
      },
      "constructor rejects unk_id out of range");
}

}  // namespace

int main() {
  try {
    const Tokenizer tok(made_up_spec());
    test_encode(tok);
    test_decode(tok);
    test_streaming(tok);
    test_errors();
  } catch (const std::exception& e) {
    std::printf("FAIL: unexpected exception: %s\n", e.what());
    ++g_failed;
  }
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
