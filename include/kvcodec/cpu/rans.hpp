// kvcodec/cpu/rans.hpp — stage `rans`: symbols -> interleaved rANS streams with static
// per-context models (cpu/entropy_model.hpp), stored self-describingly per block.
//
// Block stream (all varints LEB128):
//   varint planes; per plane: varint alphabet, rows, cols; [pred=linear, tables=chunk, rows >= 2:
//   the plane's per-column predictors, entropy_model.hpp]; then for each non-empty sub-plane
//   (anchor rows, then residual rows; see entropy_model.hpp) [model, when tables=chunk] and a
//   [lanes=0 (auto): varint lanes / 32] and a varint-length blob holding the rANS stream (core/rans.hpp layout over `lanes` lanes, symbol i
//   in column i % cols coded with the table of that column's group); finally the side bytes blob.
// Stage state (tables=shared): varint entries; per entry varint layer, u8 key, varint plane, u8
//   sub-plane, varint alphabet, varint cols, model. The entry for a block's (layer, K/V, plane,
//   sub-plane) must exist and match its alphabet and cols. With pred=linear the entries are followed
//   by varint count; per entry varint layer, u8 key, varint plane, varint alphabet, varint cols and
//   the per-column predictors fitted on every chunk of that (layer, K/V, plane).
// lanes, prob_bits, pred and group come from the spec; n = rows x cols from the plane header.
// Loading a state allocates nothing it has not checked: entry counts are bounded by the state's size,
// each (layer, K/V, plane, sub-plane) appears once, cols by the largest block of the cache's shape,
// and a model's column map and tables by the bytes that back them (entropy_model.hpp parse_model).
// Each table then expands to a decode table of 2^prob_bits entries (documented cost, at most one table
// per column or group of every distinct entry).
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <numeric>
#include <mutex>
#include <string>
#include <tuple>

#include "kvcodec/core/rans_batch.hpp"
#include "kvcodec/cpu/entropy_model.hpp"
#include "kvcodec/cpu/rans_codec.hpp"
#include "kvcodec/cpu/stage_impl.hpp"
#include "kvcodec/stage/rans.hpp"

namespace kvcodec::cpu {

namespace detail {
/// A fitted model with its coder tables built once.
struct ready_model {
  em::plane_model m;
  double bound_per_symbol = 0;  ///< tables=shared: empirical entropy of the context over the whole cache / symbols
  std::vector<encode_table> enc;
  void build_encoder() {
    if (enc.empty())
      for (const auto& t : m.tables) enc.push_back(make_encode_table(t));
  }
  /// The decoder tables (cols = 1 for a single-table model, else the model's columns), built on first
  /// use, once, by whichever thread asks first: an encoder never builds them, and a decode of some
  /// layers builds only theirs.
  /// The tables come from `arena` when given (it must outlive this model's decoder).
  const rans_ctx_decoder& decoder(table_arena* arena = nullptr) const {
    std::call_once(*dec_once_, [&] {
      const std::uint32_t zero = 0;
      const char* where = "make_rans_ctx_decoder";
      dec_ = m.groups == 1 ? make_rans_ctx_decoder(std::span<const freq_table>(m.tables), std::span<const std::uint32_t>(&zero, 1), where, arena)
                           : make_rans_ctx_decoder(std::span<const freq_table>(m.tables), std::span<const std::uint32_t>(m.group_of_col), where, arena);
    });
    return dec_;
  }

 private:
  mutable rans_ctx_decoder dec_;
  std::shared_ptr<std::once_flag> dec_once_ = std::make_shared<std::once_flag>();  // shared_ptr: the model is moved into maps
};

/// (layer, key, plane, sub) of symbols[j] in the pipeline's chunk-major block order.
inline std::pair<int, bool> block_of_index(std::size_t j, int layers) {
  const std::size_t seg = j / 2;
  return {static_cast<int>(seg % static_cast<std::size_t>(layers)), j % 2 == 0};
}
}  // namespace detail

class rans_entropy final : public stage_impl<entropy::rans, entropy_stage> {
 public:
  explicit rans_entropy(entropy::rans p) : stage_impl(std::move(p)) {
    mo_.ctx = p_.ctx;
    mo_.model = p_.model;
    mo_.prob_bits = p_.prob_bits;
    pk_ = em::parse_pred(p_.pred);
  }

  bytes fit(const std::vector<const symbols*>& all, const cache_info& info) override {
    clear_shared();
    if (p_.tables != "shared") return {};
    const int layers = std::max(info.shape.layers, 1);
    std::map<key_t, acc_t> acc;
    std::vector<std::uint16_t> sub[2];
    lin_.clear();
    lin_alpha_.clear();
    if (pk_ == em::pred_kind::linear) {
      std::map<key_t, em::linear_sums> sums;
      std::map<key_t, std::uint32_t> alpha;
      for (std::size_t j = 0; j < all.size(); ++j) {
        const auto [layer, key] = detail::block_of_index(j, layers);
        for (std::size_t pi = 0; pi < all[j]->planes.size(); ++pi) {
          const symbol_plane& p = all[j]->planes[pi];
          check_plane(p, "rans fit");
          const key_t k{layer, key, static_cast<int>(pi), 0};
          auto& sm = sums[k];
          if (!sm.n.empty() && (sm.n.size() != p.cols || alpha[k] != p.alphabet))
            throw_usage("rans:tables=shared: plane " + std::to_string(pi) + " of layer " + std::to_string(layer) +
                        " changes shape between chunks; use tables=chunk");
          alpha[k] = p.alphabet;
          sm.add(p);
        }
      }
      for (const auto& [k, sm] : sums) {
        lin_.emplace(k, sm.fit(static_cast<std::uint32_t>(sm.n.size()), alpha[k]));
        lin_alpha_[k] = alpha[k];
      }
    }
    // Blocks in (layer, K/V, chunk) order, so one context's histograms (up to cols x alphabet counters,
    // 1 MB for 1024 columns of 255 symbols) stay in cache while all its chunks are counted.
    std::vector<std::size_t> order(all.size());
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return detail::block_of_index(a, layers) < detail::block_of_index(b, layers);
    });
    for (const std::size_t j : order) {
      const auto [layer, key] = detail::block_of_index(j, layers);
      count_block(*all[j], layer, key, acc, sub, nullptr);
    }
    return finish_fit(acc);
  }

  /// tables=shared reads every block's symbols to fit its tables; tables=chunk fits nothing.
  bool fit_uses_symbols() const override { return p_.tables == "shared"; }
  /// Without linear prediction the shared tables are histograms: they can be counted block by block
  /// (fit_add from several threads at once) without holding the cache's symbols.
  bool fit_streaming() const override { return p_.tables == "shared" && pk_ != em::pred_kind::linear; }
  void fit_begin(const cache_info& info) override {
    clear_shared();
    lin_.clear();
    lin_alpha_.clear();
    stream_acc_.clear();
    stream_layers_ = std::max(info.shape.layers, 1);
  }
  void fit_add(std::size_t j, const symbols& s) override {
    const auto [layer, key] = detail::block_of_index(j, stream_layers_);
    std::vector<std::uint16_t> sub[2];
    count_block(s, layer, key, stream_acc_, sub, &stream_mutex_);
  }
  bytes fit_end(const cache_info&) override {
    bytes st = finish_fit(stream_acc_);
    stream_acc_.clear();
    return st;
  }

 private:
  using key_t = std::tuple<int, bool, int, int>;
  struct acc_t {
    std::uint32_t alphabet = 0, cols = 0;
    std::vector<std::uint32_t> hist;
  };

  /// Adds one block's symbols to the per-context histograms (under `m` when given).
  void count_block(const symbols& sy, int layer, bool key, std::map<key_t, acc_t>& acc, std::vector<std::uint16_t>* sub, std::mutex* m) {
    for (std::size_t pi = 0; pi < sy.planes.size(); ++pi) {
      const symbol_plane& p = sy.planes[pi];
      check_plane(p, "rans fit");
      const bool direct = split(p, sub, shared_linear(layer, key, static_cast<int>(pi), p));
      for (int s = 0; s < 2; ++s) {
        const std::uint16_t* sd = direct ? p.sym.data() : sub[s].data();
        const std::size_t sn = direct ? (s == 0 ? p.sym.size() : 0) : sub[s].size();
        if (sn == 0) continue;
        std::unique_lock<std::mutex> lock;
        if (m) lock = std::unique_lock<std::mutex>(*m);
        auto& a = acc[key_t{layer, key, static_cast<int>(pi), s}];
        if (a.hist.empty()) a.alphabet = p.alphabet, a.cols = p.cols, a.hist.assign(static_cast<std::size_t>(p.cols) * p.alphabet, 0);
        if (a.alphabet != p.alphabet || a.cols != p.cols)
          throw_usage("rans:tables=shared: plane " + std::to_string(pi) + " of layer " + std::to_string(layer) +
                      " changes shape between chunks; use tables=chunk");
        em::add_hist(sd, sn, p.cols, p.alphabet, nullptr, a.hist.data(), "rans fit");
      }
    }
  }

 public:
  /// Models from the histograms, serialised as the stage state (and kept for encoding).
  bytes finish_fit(std::map<key_t, acc_t>& acc) {
    bytes st;
    byte_writer w(st);
    w.put_varint(acc.size());
    const double weight = 1.0;
    for (auto& [k, a] : acc) {
      detail::ready_model rm;
      rm.m = em::fit_model(a.hist, a.cols, a.alphabet, mo_, weight);
      {
        const bool one = rm.m.groups == 1 || rm.m.group_of_col.size() != a.cols;
        const std::vector<std::uint32_t> gof = one ? std::vector<std::uint32_t>(a.cols, 0) : rm.m.group_of_col;
        const auto gh = em::group_hist(a.hist, a.alphabet, gof, one ? 1u : rm.m.groups);
        std::uint64_t total = 0;
        for (const auto c : gh) total += c;
        rm.bound_per_symbol = total > 0 ? em::grouped_entropy(gh, a.alphabet, one ? 1u : rm.m.groups) / static_cast<double>(total) : 0.0;
      }
      w.put_varint(static_cast<std::uint64_t>(std::get<0>(k)));
      w.put<std::uint8_t>(std::get<1>(k) ? 1 : 0);
      w.put_varint(static_cast<std::uint64_t>(std::get<2>(k)));
      w.put<std::uint8_t>(static_cast<std::uint8_t>(std::get<3>(k)));
      w.put_varint(a.alphabet);
      w.put_varint(a.cols);
      em::serialize_model(rm.m, st);
      rm.build_encoder();
      shared_.emplace(k, std::move(rm));
    }
    if (pk_ == em::pred_kind::linear) {
      w.put_varint(lin_.size());
      for (const auto& [k, lc] : lin_) {
        w.put_varint(static_cast<std::uint64_t>(std::get<0>(k)));
        w.put<std::uint8_t>(std::get<1>(k) ? 1 : 0);
        w.put_varint(static_cast<std::uint64_t>(std::get<2>(k)));
        w.put_varint(alpha_of_lin(k));
        w.put_varint(lc.centre.size());
        em::serialize_linear(lc, st);
      }
    }
    return st;
  }

  void load_state(std::span<const std::uint8_t> state, const cache_info& info) override {
    clear_shared();
    if (p_.tables != "shared") {
      stage::load_state(state, info);
      return;
    }
    byte_reader r(state, "rans shared tables");
    // No plane of any block of this cache has more columns than the largest block has symbols (the
    // bound decode() applies to every plane header), so a wider table could never be used.
    const std::uint64_t max_cols = std::min<std::uint64_t>(max_symbols_for(info.shape), 1u << 24);
    // Each entry takes at least 7 bytes (5 header bytes, a grouping and a model byte): the count is
    // backed by the state's size, and each (layer, K/V, plane, sub-plane) may appear once.
    const auto n = r.get_varint_max("entries", std::min<std::uint64_t>(1u << 24, r.remaining() / 7));
    for (std::uint64_t i = 0; i < n; ++i) {
      const int layer = static_cast<int>(r.get_varint_max("layer", static_cast<std::uint64_t>(std::max(info.shape.layers, 1) - 1)));
      const auto key = r.get<std::uint8_t>("key");
      const int plane = static_cast<int>(r.get_varint_max("plane", 64));
      const auto sub = r.get<std::uint8_t>("sub-plane");
      if (key > 1 || sub > 1) throw_corrupt(r.what(), "entry " + std::to_string(i) + ": key/sub-plane flag above 1");
      const auto A = static_cast<std::uint32_t>(r.get_varint_max("alphabet", rans_max_alphabet));
      const auto cols = static_cast<std::uint32_t>(r.get_varint_max("cols", max_cols));
      if (A == 0 || cols == 0) throw_corrupt(r.what(), "entry " + std::to_string(i) + ": zero alphabet or cols");
      const key_t k{layer, key == 1, plane, sub};
      if (shared_.count(k))
        throw_corrupt(r.what(), "entry " + std::to_string(i) + ": a second table for layer " + std::to_string(layer) + (key ? " K" : " V") +
                                    " plane " + std::to_string(plane) + " sub-plane " + std::to_string(sub));
      detail::ready_model rm;
      rm.m = em::parse_model(r, cols, A, p_.prob_bits);
      shared_.emplace(k, std::move(rm));
    }
    lin_.clear();
    lin_alpha_.clear();
    if (pk_ == em::pred_kind::linear) {
      const auto m = r.get_varint_max("linear predictor entries", std::min<std::uint64_t>(1u << 24, r.remaining() / 6));
      for (std::uint64_t i = 0; i < m; ++i) {
        const int layer = static_cast<int>(r.get_varint_max("layer", static_cast<std::uint64_t>(std::max(info.shape.layers, 1) - 1)));
        const auto key = r.get<std::uint8_t>("key");
        const int plane = static_cast<int>(r.get_varint_max("plane", 64));
        if (key > 1) throw_corrupt(r.what(), "linear predictor entry " + std::to_string(i) + ": key flag above 1");
        const auto A = static_cast<std::uint32_t>(r.get_varint_max("alphabet", rans_max_alphabet));
        const auto cols = static_cast<std::uint32_t>(r.get_varint_max("cols", max_cols));
        if (lin_.count(key_t{layer, key == 1, plane, 0}))
          throw_corrupt(r.what(), "linear predictor entry " + std::to_string(i) + ": a second entry for layer " + std::to_string(layer) +
                                      (key ? " K" : " V") + " plane " + std::to_string(plane));
        if (A == 0 || cols == 0) throw_corrupt(r.what(), "linear predictor entry " + std::to_string(i) + ": zero alphabet or cols");
        if (static_cast<std::uint64_t>(cols) * 2 > r.remaining())
          throw_corrupt(r.what(), "linear predictor entry " + std::to_string(i) + " claims " + std::to_string(cols) +
                                      " columns, more than the bytes left");
        lin_.emplace(key_t{layer, key == 1, plane, 0}, em::parse_linear(r, cols, A));
        lin_alpha_[key_t{layer, key == 1, plane, 0}] = A;
      }
    }
    r.expect_end();
  }

  void encode(const symbols& in, const block& ctx, bytes& out, coder_stats& st) const override {
    const std::size_t base = out.size();
    byte_writer w(out);
    w.put_varint(in.planes.size());
    double payload = 0, bound = 0;
    std::vector<std::uint16_t> sub[2];
    std::vector<std::uint32_t> colh;
    for (std::size_t pi = 0; pi < in.planes.size(); ++pi) {
      const symbol_plane& p = in.planes[pi];
      check_plane(p, "rans encode");
      w.put_varint(p.alphabet);
      w.put_varint(p.rows);
      w.put_varint(p.cols);
      em::linear_coefs local_lc;
      const em::linear_coefs* lc = nullptr;
      if (pk_ == em::pred_kind::linear && p.rows >= 2) {
        if (p_.tables == "shared") {
          lc = shared_linear(ctx.layer, ctx.key, static_cast<int>(pi), p);
        } else {
          em::linear_sums sm;
          sm.add(p);
          local_lc = sm.fit(p.cols, p.alphabet);
          em::serialize_linear(local_lc, out);
          lc = &local_lc;
        }
      }
      const bool direct = split(p, sub, lc);
      for (int s = 0; s < 2; ++s) {
        const std::uint16_t* sd = direct ? p.sym.data() : sub[s].data();
        const std::size_t sn = direct ? (s == 0 ? p.sym.size() : 0) : sub[s].size();
        if (sn == 0) continue;
        detail::ready_model local;
        const detail::ready_model* rm = nullptr;
        std::vector<std::uint32_t> gh;
        if (p_.tables == "shared") {
          // The shared tables' context spans every chunk: its empirical entropy over the whole cache,
          // attributed to blocks by symbol count (no second histogram pass per block).
          rm = find_shared(ctx, static_cast<int>(pi), s, p);
          bound += rm->bound_per_symbol * static_cast<double>(sn);
        } else {
          em::column_hist(sd, sn, p.cols, p.alphabet, colh, "rans encode");
          local.m = em::fit_model(colh, p.cols, p.alphabet, mo_);
          local.build_encoder();
          em::serialize_model(local.m, out);
          rm = &local;
          gh = em::group_hist(colh, p.alphabet, rm->m.group_of_col, rm->m.groups);
          bound += em::grouped_entropy(gh, p.alphabet, rm->m.groups);
        }
        const int lanes = p_.lanes > 0 ? p_.lanes : auto_lanes(sn);
        if (p_.lanes == 0) w.put_varint(static_cast<std::uint64_t>(lanes / rans_lane_multiple));
        const auto stream = rm->m.groups == 1 ? rans_encode(sd, sn, rm->enc[0], lanes)
                                              : rans_encode_ctx(sd, sn, p.cols, std::span<const encode_table>(rm->enc),
                                                                std::span<const std::uint32_t>(rm->m.group_of_col), lanes);
        w.put_blob(stream);
        payload += static_cast<double>(stream.size()) * 8.0;
      }
    }
    w.put_blob(in.side);
    st.add_stream(static_cast<double>(out.size() - base) * 8.0, payload, static_cast<double>(in.side.size()) * 8.0);
    st.entropy_bound_bits += bound;
  }

  // ---- batch encoding (pipeline/batch_encode.hpp: the CUDA encoder and its host emulation) -------
  // A batch encoder counts the histograms and codes the streams itself (core/rans_batch.hpp); the
  // stage fits the models and writes the block bytes, so the bytes are encode()'s.

  /// One block's model for a batch encoder: the shared one, or (tables=chunk) one fitted to the block.
  struct batch_model {
    const detail::ready_model* shared = nullptr;
    std::unique_ptr<detail::ready_model> local;
    bytes model_bytes;  ///< tables=chunk: the serialised model, written before the stream
    double bound = 0;   ///< entropy bound of the block's symbols, as encode() reports it
    int lanes = 32;
    const detail::ready_model& model() const { return shared != nullptr ? *shared : *local; }
  };
  /// One (layer, K/V) context's column histograms (cols x alphabet, em::column_hist's layout).
  struct batch_hist {
    int layer = 0;
    bool key = true;
    std::uint32_t alphabet = 0, cols = 0;
    std::vector<std::uint32_t> hist;
  };

  /// True when encode() codes every plane whole (no prediction): what a batch encoder can do.
  bool batch_encodable() const { return pk_ == em::pred_kind::none; }
  bool shared_tables() const { return p_.tables == "shared"; }
  /// The checks encode() makes of a plane's shape (bad_input naming `where`).
  void batch_check(std::uint32_t alphabet, std::uint32_t rows, std::uint32_t cols, const char* where) const {
    check_shape(alphabet, rows, cols, where);
  }
  /// tables=shared: the stage state fitted from the contexts' histograms (of the blocks with symbols),
  /// byte for byte what fit() makes from the symbols. Keeps the models for batch_model_of.
  bytes batch_fit_shared(std::vector<batch_hist>& hists) {
    clear_shared();
    lin_.clear();
    lin_alpha_.clear();
    std::map<key_t, acc_t> acc;
    for (auto& h : hists) {
      auto& a = acc[key_t{h.layer, h.key, 0, 0}];
      a.alphabet = h.alphabet;
      a.cols = h.cols;
      a.hist = std::move(h.hist);
    }
    return finish_fit(acc);
  }
  /// The model of a block's plane of n symbols: the shared one (after batch_fit_shared or
  /// load_state), or fitted on `colh` (tables=chunk).
  batch_model batch_model_of(const block& ctx, std::uint32_t alphabet, std::uint32_t cols, std::uint64_t n, const std::vector<std::uint32_t>& colh) const {
    batch_model bm;
    bm.lanes = p_.lanes > 0 ? p_.lanes : auto_lanes(static_cast<std::size_t>(n));
    if (p_.tables == "shared") {
      symbol_plane p;
      p.alphabet = alphabet;
      p.cols = cols;
      bm.shared = find_shared(ctx, 0, 0, p);
      bm.bound = bm.shared->bound_per_symbol * static_cast<double>(n);
      return bm;
    }
    bm.local = std::make_unique<detail::ready_model>();
    bm.local->m = em::fit_model(colh, cols, alphabet, mo_);
    bm.local->build_encoder();
    em::serialize_model(bm.local->m, bm.model_bytes);
    const auto gh = em::group_hist(colh, alphabet, bm.local->m.group_of_col, bm.local->m.groups);
    bm.bound = em::grouped_entropy(gh, alphabet, bm.local->m.groups);
    return bm;
  }
  /// Writes a block as encode() does: at most one plane (alphabet, rows, cols; its model `m` and rANS
  /// stream when it has symbols), then the side bytes.
  void batch_write(bool plane, std::uint32_t alphabet, std::uint32_t rows, std::uint32_t cols, const batch_model* m, std::span<const std::uint8_t> stream,
                   std::span<const std::uint8_t> side, bytes& out, coder_stats& st) const {
    const std::size_t base = out.size();
    byte_writer w(out);
    w.put_varint(plane ? 1 : 0);
    double payload = 0, bound = 0;
    if (plane) {
      w.put_varint(alphabet);
      w.put_varint(rows);
      w.put_varint(cols);
      if (static_cast<std::uint64_t>(rows) * cols > 0) {
        if (m == nullptr) throw_usage("rans batch_write: a plane with symbols needs its model");
        out.insert(out.end(), m->model_bytes.begin(), m->model_bytes.end());
        if (p_.lanes == 0) w.put_varint(static_cast<std::uint64_t>(m->lanes / rans_lane_multiple));
        w.put_blob(stream);
        payload = static_cast<double>(stream.size()) * 8.0;
        bound = m->bound;
      }
    }
    w.put_blob(side);
    st.add_stream(static_cast<double>(out.size() - base) * 8.0, payload, static_cast<double>(side.size()) * 8.0);
    st.entropy_bound_bits += bound;
  }

  symbols decode(std::span<const std::uint8_t> in, const block& ctx) const override {
    symbols out;
    decode_reusing(in, ctx, out);
    return out;
  }

  void decode_reusing(std::span<const std::uint8_t> in, const block& ctx, symbols& out) const override {
    std::vector<std::uint16_t> sub[2];
    bool direct = false, inplace = false;
    std::size_t counts[2] = {0, 0};
    walk(
        in, ctx, out,
        [&](std::size_t, symbol_plane& p, std::uint32_t na) {
          counts[0] = static_cast<std::size_t>(na) * p.cols;
          counts[1] = static_cast<std::size_t>(p.rows - na) * p.cols;
          // Without prediction every row is an anchor row: decode straight into the plane. Row-sequential
          // predictions also decode into the plane (anchor row first) and are restored in place.
          direct = counts[1] == 0;
          inplace = !direct && em::contiguous_pred(pk_);
          if (direct || inplace) p.sym.resize(counts[0] + counts[1]);
          p.sym_bound = 0;
          if (!direct && !inplace)
            for (int s = 0; s < 2; ++s) sub[s].resize(counts[s]);
        },
        [&](std::size_t, symbol_plane& p, int s, const rans_ctx_decoder& dec, int lanes, std::span<const std::uint8_t> stream,
            std::unique_ptr<detail::ready_model>&) {
          std::uint16_t* dst = direct ? p.sym.data() : inplace ? p.sym.data() + (s == 0 ? 0 : counts[0]) : sub[s].data();
          rans_decode_ctx(stream.data(), stream.size(), dec, lanes, dst, counts[s]);
          // Without prediction the plane is what the tables decoded: no symbol reaches their bound.
          p.sym_bound = direct ? dec.sym_bound : 0;
        },
        [&](std::size_t, symbol_plane& p, const em::linear_coefs* lc) {
          if (inplace)
            em::restore_rows_inplace(p, pk_, lc);
          else if (!direct)
            em::merge_plane(p, pk_, static_cast<std::uint32_t>(p_.group), sub[0], sub[1], lc);
        });
  }

  /// One rANS stream of a block as a batch decoder (core/rans_batch.hpp, the CUDA backend) takes it.
  struct stream_ref {
    std::size_t plane = 0;
    std::span<const std::uint8_t> bytes;
    const rans_ctx_decoder* dec = nullptr;  ///< the model's decoder tables (owned by the stage or the plan)
    int lanes = 32;
    std::size_t n = 0;  ///< symbols: the whole plane, or with prediction its sub-plane
    int sub = 0;        ///< with prediction: 0 the anchor rows, 1 the residual rows
  };
  /// A block's streams, parsed with decode_reusing's checks but not decoded: plane shapes (sym left
  /// empty), side bytes, one stream_ref per non-empty sub-plane, and per plane its anchor rows (all
  /// its rows without prediction) and pred=linear's predictors. Planes coded with prediction (residual
  /// rows) are a usage error unless the caller restores them (`predicted`: core/pred.hpp's step).
  struct block_plan {
    symbols headers;
    std::vector<stream_ref> streams;
    std::vector<std::unique_ptr<detail::ready_model>> owned;  ///< tables=chunk models
    std::vector<std::uint32_t> anchors;
    std::vector<em::linear_coefs> linear;  ///< per plane (empty without pred=linear)
  };
  block_plan plan(std::span<const std::uint8_t> in, const block& ctx, bool predicted = false) const {
    block_plan bp;
    walk(
        in, ctx, bp.headers,
        [&](std::size_t pi, symbol_plane& p, std::uint32_t na) {
          if (na != p.rows && !predicted)
            throw_usage("rans: plane " + std::to_string(pi) + " of layer " + std::to_string(ctx.layer) + " is coded with pred=" + p_.pred +
                        " residual rows, which this batch decoder does not restore; it takes pred=none streams");
          bp.anchors.push_back(na);
        },
        [&](std::size_t pi, symbol_plane& p, int sub, const rans_ctx_decoder& dec, int lanes, std::span<const std::uint8_t> stream,
            std::unique_ptr<detail::ready_model>& local) {
          if (local) bp.owned.push_back(std::move(local));  // a tables=chunk model: dec lives in it
          const std::size_t na = bp.anchors.back();
          bp.streams.push_back({pi, stream, &dec, lanes, static_cast<std::size_t>(sub == 0 ? na : p.rows - na) * p.cols, sub});
        },
        [&](std::size_t, symbol_plane&, const em::linear_coefs* lc) { bp.linear.push_back(lc != nullptr ? *lc : em::linear_coefs{}); });
    return bp;
  }
  /// The prediction (core/pred.hpp's kinds: 0 none, 1 prev, 2 anchor, 3 linear) and its group.
  std::uint32_t pred_code() const noexcept { return static_cast<std::uint32_t>(pk_); }
  std::uint32_t pred_group() const noexcept { return static_cast<std::uint32_t>(p_.group); }

 private:
  /// Parses a block's stream with every check, calling on_plane(pi, plane, anchor rows) after a
  /// plane's header, on_stream(pi, plane, sub, decoder, lanes, stream bytes, local model) for each
  /// non-empty sub-plane (local holds a tables=chunk model, null for shared ones; the callee may keep
  /// it), and plane_done(pi, plane, predictors); then reads the side bytes into out.side. A failure
  /// inside on_stream is reported as a corrupt plane of this block.
  template <class OnPlane, class OnStream, class PlaneDone>
  void walk(std::span<const std::uint8_t> in, const block& ctx, symbols& out, OnPlane&& on_plane, OnStream&& on_stream, PlaneDone&& plane_done) const {
    byte_reader r(in, "rans stream (layer " + std::to_string(ctx.layer) + (ctx.key ? " K" : " V") + ")");
    const std::uint64_t max_sym = max_symbols_for(ctx);
    out.planes.resize(static_cast<std::size_t>(r.get_varint_max("plane count", 64)));
    for (std::size_t pi = 0; pi < out.planes.size(); ++pi) {
      symbol_plane& p = out.planes[pi];
      p.alphabet = static_cast<std::uint32_t>(r.get_varint_max("alphabet", rans_max_alphabet));
      p.rows = static_cast<std::uint32_t>(r.get_varint_max("rows", max_sym));
      p.cols = static_cast<std::uint32_t>(r.get_varint_max("cols", max_sym));
      if (p.alphabet == 0) throw_corrupt(r.what(), "field 'alphabet': expected >= 1, found 0");
      if (static_cast<std::uint64_t>(p.rows) * p.cols > max_sym)
        throw_corrupt(r.what(), "plane of " + std::to_string(static_cast<std::uint64_t>(p.rows) * p.cols) + " symbols exceeds the block's " +
                                    std::to_string(max_sym));
      if (p.rows > 0 && p.cols == 0) throw_corrupt(r.what(), "field 'cols': expected >= 1, found 0");
      const std::uint32_t na = em::anchor_rows(pk_, static_cast<std::uint32_t>(p_.group), p.rows);
      em::linear_coefs local_lc;
      const em::linear_coefs* lc = nullptr;
      if (pk_ == em::pred_kind::linear && p.rows >= 2) {
        if (p_.tables == "shared") {
          lc = shared_linear(ctx.layer, ctx.key, static_cast<int>(pi), p);
        } else {
          if (static_cast<std::uint64_t>(p.cols) * 2 > r.remaining())
            throw_corrupt(r.what(), "plane of " + std::to_string(p.cols) + " columns: predictors truncated");
          local_lc = em::parse_linear(r, p.cols, p.alphabet);
          lc = &local_lc;
        }
      }
      on_plane(pi, p, na);
      const std::size_t counts[2] = {static_cast<std::size_t>(na) * p.cols, static_cast<std::size_t>(p.rows - na) * p.cols};
      for (int s = 0; s < 2; ++s) {
        if (counts[s] == 0) continue;
        std::unique_ptr<detail::ready_model> local;
        const detail::ready_model* rm = nullptr;
        if (p_.tables == "shared") {
          rm = find_shared(ctx, static_cast<int>(pi), s, p);
        } else {
          local = std::make_unique<detail::ready_model>();
          local->m = em::parse_model(r, p.cols, p.alphabet, p_.prob_bits);
          rm = local.get();
        }
        int lanes = p_.lanes;
        if (lanes == 0) lanes = static_cast<int>(r.get_varint_max("lanes / 32", rans_max_lanes / rans_lane_multiple)) * rans_lane_multiple;
        if (lanes == 0) throw_corrupt(r.what(), "field 'lanes / 32': expected 1.." + std::to_string(rans_max_lanes / rans_lane_multiple) + ", found 0");
        const auto stream = r.get_blob("rANS stream");
        try {
          const rans_ctx_decoder& dec = rm->decoder(local ? nullptr : &arena_);
          on_stream(pi, p, s, dec, lanes, std::span<const std::uint8_t>(stream.data(), stream.size()), local);
        } catch (const error& e) {
          throw_corrupt(r.what(), std::string("plane ") + std::to_string(pi) + ": " + e.what());
        }
      }
      plane_done(pi, p, lc);
    }
    const auto side = r.get_blob("side bytes");
    out.side.assign(side.begin(), side.end());
    r.expect_end();
  }

  /// lanes=0: 64 lanes for streams of at least 2^16 symbols (the AVX-512 decoder's best width),
  /// else 32 (the 4 bytes of final state per lane cost more than they save on short streams).
  static int auto_lanes(std::size_t n) { return n >= (std::size_t{1} << 16) ? 64 : 32; }

  /// Splits p into anchor and residual sub-planes; returns true (and copies nothing) when every
  /// row is an anchor row, i.e. the plane itself is sub-plane 0.
  bool split(const symbol_plane& p, std::vector<std::uint16_t>* sub, const em::linear_coefs* lc) const {
    const auto g = static_cast<std::uint32_t>(p_.group);
    if (em::anchor_rows(pk_, g, p.rows) == p.rows) return true;
    em::split_plane(p, pk_, g, sub[0], sub[1], lc);
    return false;
  }

  /// The shared predictors of (layer, key, plane) (pred=linear, tables=shared; nullptr otherwise).
  const em::linear_coefs* shared_linear(int layer, bool key, int plane, const symbol_plane& p) const {
    if (pk_ != em::pred_kind::linear || p.rows < 2) return nullptr;
    const auto it = lin_.find(key_t{layer, key, plane, 0});
    if (it == lin_.end() || it->second.centre.size() != p.cols || alpha_of_lin(it->first) != p.alphabet)
      throw_corrupt("rans shared predictors", "no linear predictors for layer " + std::to_string(layer) + (key ? " K" : " V") +
                                                  " plane " + std::to_string(plane) + " with alphabet " + std::to_string(p.alphabet) +
                                                  " and " + std::to_string(p.cols) + " columns");
    return &it->second;
  }
  std::uint32_t alpha_of_lin(const key_t& k) const {
    const auto it = lin_alpha_.find(k);
    return it == lin_alpha_.end() ? 0 : it->second;
  }

  void check_shape(std::uint32_t alphabet, std::uint32_t rows, std::uint32_t cols, const char* where) const {
    if (alphabet == 0 || alphabet > rans_max_alphabet || alphabet > (1u << p_.prob_bits))
      throw_bad_input(where, "alphabet", "1.." + std::to_string(std::min<std::uint32_t>(rans_max_alphabet, 1u << p_.prob_bits)) +
                                             " (rans:prob_bits=" + std::to_string(p_.prob_bits) + ")",
                      std::to_string(alphabet));
    if (rows > 0 && cols == 0) throw_bad_input(where, "cols", ">= 1", "0");
  }
  void check_plane(const symbol_plane& p, const char* where) const {
    if (p.alphabet == 0 || p.alphabet > rans_max_alphabet || p.alphabet > (1u << p_.prob_bits)) check_shape(p.alphabet, p.rows, p.cols, where);
    if (p.sym.size() != static_cast<std::size_t>(p.rows) * p.cols)
      throw_bad_input(where, "plane size", std::to_string(static_cast<std::size_t>(p.rows) * p.cols), std::to_string(p.sym.size()));
    check_shape(p.alphabet, p.rows, p.cols, where);
  }

  const detail::ready_model* find_shared(const block& ctx, int plane, int sub, const symbol_plane& p) const {
    const auto it = shared_.find(key_t{ctx.layer, ctx.key, plane, sub});
    if (it == shared_.end() || it->second.m.alphabet != p.alphabet || it->second.m.cols != p.cols)
      throw_corrupt("rans shared tables", "no table for layer " + std::to_string(ctx.layer) + (ctx.key ? " K" : " V") + " plane " +
                                              std::to_string(plane) + " with alphabet " + std::to_string(p.alphabet) + " and " +
                                              std::to_string(p.cols) + " columns");
    return &it->second;
  }

  void clear_shared() {
    shared_.clear();
    arena_.release_all();
  }

  em::model_options mo_;
  em::pred_kind pk_ = em::pred_kind::none;
  mutable table_arena arena_;  ///< the shared models' decode tables (declared first: outlives shared_)
  std::map<key_t, detail::ready_model> shared_;
  std::map<key_t, em::linear_coefs> lin_;
  std::map<key_t, std::uint32_t> lin_alpha_;
  std::map<key_t, acc_t> stream_acc_;  ///< fit_begin .. fit_end
  int stream_layers_ = 1;
  std::mutex stream_mutex_;
};


/// Adds a planned block's streams to a batch (core/rans_batch.hpp) for the batch decoder (the CUDA
/// kernel or its host emulation). The builder copies the bytes and tables. Models are added once per
/// decoder, remembered by address in `models` across blocks: keep the plans (and the stage) alive
/// while `models` is in use. Returns each stream's first output symbol.
/// Compact entries (Entry = uint32_t) need tables that fit them (prob_bits <= 12, alphabet <= 256).
template <class Entry>
std::vector<std::uint64_t> add_to_batch(const rans_entropy::block_plan& bp, rans_batch_builder<Entry>& b,
                                        std::map<const rans_ctx_decoder*, std::uint32_t>& models) {
  std::vector<std::uint64_t> first;
  for (const auto& sr : bp.streams) {
    const rans_ctx_decoder& d = *sr.dec;
    auto it = models.find(&d);
    if (it == models.end()) {
      std::vector<Entry> e;
      if constexpr (std::is_same_v<Entry, std::uint32_t>) {
        if (d.entry32.empty()) throw_usage("rans: tables of prob_bits " + std::to_string(d.prob_bits) + " or alphabets over 256 need 64-bit batch entries");
        e.assign(d.entry32.begin(), d.entry32.end());
      } else if (!d.entry64.empty()) {
        e.assign(d.entry64.begin(), d.entry64.end());
      } else {
        e.reserve(d.entry32.size());
        for (std::uint32_t v : d.entry32) e.push_back(rans_dec_entry_pack(rans_dec32_symbol(v), rans_dec32_freq(v), rans_dec32_offset(v)));
      }
      it = models.emplace(&d, b.add_model(std::span<const Entry>(e), std::span<const std::uint32_t>(d.col_off.data(), d.cols), d.prob_bits)).first;
    }
    first.push_back(b.add_stream(sr.bytes, sr.n, sr.lanes, it->second, static_cast<std::uint32_t>(d.cols), d.prob_bits));
  }
  return first;
}

}  // namespace kvcodec::cpu
