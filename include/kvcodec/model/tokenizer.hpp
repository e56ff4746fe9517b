// kvcodec/model/tokenizer.hpp — the llama2.c tokenizer (tokenizer.bin format, sentencepiece-style BPE).
//
// File: int32 max_token_length, then per token: float32 score, int32 byte length, the bytes. Encoding
// follows llama2.c's run.c: optional BOS (1), a dummy-prefix " " token when the text is non-empty,
// one token per UTF-8 code point (or its raw bytes as <0xXX> tokens, id = byte + 3, when the code point
// is not in the vocabulary), then repeatedly merge the adjacent pair whose concatenation is the
// best-scoring vocabulary entry (first pair wins ties; BOS never merges), optional EOS (2). Decoding strips the leading
// space of a piece that follows BOS and maps <0xXX> pieces to the raw byte.
// Invariant: every token id inside a tokenizer is < size(); every piece length <= max_token_length.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <unordered_map>
#include <vector>

#include "kvcodec/core/error.hpp"

namespace kvcodec::model {

class tokenizer {
 public:
  static constexpr int bos_id = 1;
  static constexpr int eos_id = 2;
  static constexpr int byte_offset = 3;  ///< id of <0x00>; <0xXX> is byte_offset + XX

  tokenizer() = default;

  /// Parses tokenizer.bin bytes. `vocab_size` < 0 reads entries until the end of the data; otherwise
  /// exactly that many entries must fill the data.
  static tokenizer parse(const void* data, std::size_t size, int vocab_size = -1,
                         const std::string& where = "tokenizer") {
    const auto* p = static_cast<const unsigned char*>(data);
    if (size > 0 && p == nullptr) throw_usage(where + ": null data pointer with nonzero size");
    std::size_t off = 0;
    const auto need = [&](std::size_t n, const std::string& field) {
      if (size - off < n)
        throw_bad_input(where, field, std::to_string(n) + " more bytes at offset " + std::to_string(off),
                        std::to_string(size - off) + " bytes left");
    };
    const auto read_i32 = [&](const std::string& field) {
      need(4, field);
      std::int32_t v;
      std::memcpy(&v, p + off, 4);
      off += 4;
      return v;
    };
    tokenizer t;
    t.max_len_ = read_i32("max_token_length");
    if (t.max_len_ <= 0) throw_bad_input(where, "max_token_length", "> 0", std::to_string(t.max_len_));
    while (vocab_size < 0 ? off < size : static_cast<int>(t.pieces_.size()) < vocab_size) {
      const std::string idx = "token[" + std::to_string(t.pieces_.size()) + "]";
      need(4, idx + ".score");
      float score;
      std::memcpy(&score, p + off, 4);
      off += 4;
      if (score != score) throw_bad_input(where, idx + ".score", "a number", "NaN");
      const std::int32_t len = read_i32(idx + ".length");
      if (len < 0 || len > t.max_len_)
        throw_bad_input(where, idx + ".length", "0.." + std::to_string(t.max_len_), std::to_string(len));
      need(static_cast<std::size_t>(len), idx + ".bytes");
      t.pieces_.emplace_back(reinterpret_cast<const char*>(p + off), static_cast<std::size_t>(len));
      t.scores_.push_back(score);
      off += static_cast<std::size_t>(len);
    }
    if (off != size)
      throw_bad_input(where, "file size", std::to_string(off) + " bytes for " + std::to_string(t.pieces_.size()) + " tokens",
                      std::to_string(size) + " bytes");
    if (t.pieces_.size() <= static_cast<std::size_t>(eos_id))
      throw_bad_input(where, "vocab_size", "> " + std::to_string(eos_id) + " (BOS and EOS ids)", std::to_string(t.pieces_.size()));
    t.index_.reserve(t.pieces_.size());
    for (std::size_t i = 0; i < t.pieces_.size(); ++i) t.index_.emplace(t.pieces_[i], static_cast<int>(i));
    return t;
  }

  static tokenizer load(const std::string& path, int vocab_size = -1) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw error(error_kind::io, path + ": cannot open tokenizer");
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw error(error_kind::io, path + ": read failed");
    return parse(bytes.data(), bytes.size(), vocab_size, path);
  }

  int size() const noexcept { return static_cast<int>(pieces_.size()); }
  int max_token_length() const noexcept { return max_len_; }
  const std::string& piece(int id) const { return pieces_.at(check(id, "piece")); }
  float score(int id) const { return scores_.at(check(id, "score")); }
  /// Id of an exact piece, or -1 (the lowest id when a piece repeats).
  int lookup(const std::string& s) const {
    const auto it = index_.find(s);
    return it == index_.end() ? -1 : it->second;
  }

  std::vector<int> encode(const std::string& text, bool bos, bool eos) const {
    std::vector<int> ids;
    ids.reserve(text.size() + 3);
    if (bos) ids.push_back(bos_id);
    const auto push_piece = [&](const std::string& s) {
      const int id = lookup(s);
      if (id >= 0) {
        ids.push_back(id);
        return;
      }
      for (unsigned char b : s) {
        const int bid = byte_offset + b;
        if (bid >= size())
          throw_bad_input("tokenizer encode", "byte fallback", "a <0x..> token for byte " + std::to_string(b),
                          "vocab of " + std::to_string(size()));
        ids.push_back(bid);
      }
    };
    if (!text.empty()) push_piece(" ");
    std::string cp;
    for (std::size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if ((c & 0xC0) != 0x80) cp.clear();
      cp.push_back(static_cast<char>(c));
      const bool next_cont = i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (next_cont && cp.size() < 4) continue;
      push_piece(cp);
      cp.clear();
    }
    const std::size_t first = bos ? 1 : 0;
    std::string pair;
    for (;;) {
      float best = -1e10f;
      int best_id = -1;
      std::size_t best_at = 0;
      for (std::size_t i = first; i + 1 < ids.size(); ++i) {
        pair.assign(pieces_[static_cast<std::size_t>(ids[i])]);
        pair += pieces_[static_cast<std::size_t>(ids[i + 1])];
        const int id = lookup(pair);
        if (id >= 0 && scores_[static_cast<std::size_t>(id)] > best) {
          best = scores_[static_cast<std::size_t>(id)];
          best_id = id;
          best_at = i;
        }
      }
      if (best_id < 0) break;
      ids[best_at] = best_id;
      ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
    }
    if (eos) ids.push_back(eos_id);
    return ids;
  }

  /// The text of `token` when it follows `prev` (leading space dropped after BOS; <0xXX> -> the byte).
  std::string decode(int prev, int token) const {
    const std::string& s = pieces_.at(check(token, "decode"));
    std::size_t start = (prev == bos_id && !s.empty() && s[0] == ' ') ? 1 : 0;
    int byte = 0;
    if (s.size() - start == 6 && parse_byte_piece(s.data() + start, byte)) return std::string(1, static_cast<char>(byte));
    return s.substr(start);
  }

  /// Concatenated decode of `ids`; `prev` is the token before ids[0] (BOS by default).
  std::string decode(const std::vector<int>& ids, int prev = bos_id) const {
    std::string out;
    for (int id : ids) {
      out += decode(prev, id);
      prev = id;
    }
    return out;
  }

 private:
  std::size_t check(int id, const char* what) const {
    if (id < 0 || id >= size())
      throw_bad_input(std::string("tokenizer ") + what, "token id", "0.." + std::to_string(size() - 1), std::to_string(id));
    return static_cast<std::size_t>(id);
  }

  static bool parse_byte_piece(const char* s, int& out) noexcept {
    if (s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return false;
    int v = 0;
    for (int i = 3; i < 5; ++i) {
      const char c = s[i];
      int d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else return false;
      v = v * 16 + d;
    }
    out = v;
    return true;
  }

  std::int32_t max_len_ = 0;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int> index_;
};

}  // namespace kvcodec::model
