// kvcodec/_kvcodec — the Python extension over the C++ library (no codec logic of its own).
//
// The Python layer (python/kvcodec/__init__.py) turns tensors, arrays and cache objects into view
// descriptions (dicts of raw addresses, dtype, shape and element strides, see view_from) and keeps the
// objects alive during each call; this module builds kv_views over that memory and runs the library's
// encode/decode/eval with the GIL released. kvcodec::error kinds map to Python exception classes.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "kvcodec/eval/evaluate.hpp"
#include "kvcodec/format/shape_json.hpp"
#include "kvcodec/io/kv_profile.hpp"
#include "kvcodec/kvcodec.hpp"
#include "kvcodec/store/open.hpp"
#include "kvcodec/store/store.hpp"
#include "kvcodec/store/tiered.hpp"

namespace py = pybind11;
using namespace kvcodec;

namespace {

// ---- exceptions --------------------------------------------------------------------------------

PyObject* exc_error = nullptr;
PyObject* exc_bad_input = nullptr;
PyObject* exc_corrupt = nullptr;
PyObject* exc_usage = nullptr;
PyObject* exc_unsupported = nullptr;
PyObject* exc_io = nullptr;

PyObject* make_exception(py::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string full = std::string("kvcodec.") + name;
  PyObject* e = PyErr_NewExceptionWithDoc(full.c_str(), doc, bases, nullptr);
  if (!e) throw py::error_already_set();
  m.add_object(name, py::handle(e));
  return e;
}

PyObject* class_of(error_kind k) {
  switch (k) {
    case error_kind::bad_input: return exc_bad_input;
    case error_kind::corrupt: return exc_corrupt;
    case error_kind::usage: return exc_usage;
    case error_kind::unsupported: return exc_unsupported;
    case error_kind::io: return exc_io;
  }
  return exc_error;
}

/// A Python exception raised inside a callback while the GIL was released: carried out of the
/// library's worker threads and re-raised on the calling thread.
struct callback_failed {
  std::shared_ptr<py::error_already_set> err;
};

struct callback_state {
  std::mutex m;
  std::shared_ptr<py::error_already_set> err;
  void fail(py::error_already_set&& e) {
    std::lock_guard<std::mutex> lock(m);
    if (!err) err = std::make_shared<py::error_already_set>(std::move(e));
  }
};

/// Runs `f` with the GIL released; a Python error stashed by a callback is re-raised as itself.
template <class F>
auto without_gil(callback_state& cb, F&& f) -> decltype(f()) {
  try {
    py::gil_scoped_release release;
    return f();
  } catch (const callback_failed&) {
  } catch (const error&) {
    if (!cb.err) throw;
  }
  throw *cb.err;
}

/// The library's progress signature, calling a Python callable (GIL taken for the call only).
std::function<void(std::size_t, std::size_t)> progress_fn(const py::object& cb, callback_state& st) {
  if (cb.is_none()) return {};
  return [cb, &st](std::size_t done, std::size_t total) {
    py::gil_scoped_acquire gil;
    if (st.err) throw callback_failed{st.err};
    try {
      cb(done, total);
    } catch (py::error_already_set& e) {
      st.fail(std::move(e));
      throw callback_failed{st.err};
    }
  };
}

// ---- views -------------------------------------------------------------------------------------

dtype dtype_from(const std::string& s) {
  if (s == "f32") return dtype::f32;
  if (s == "f16") return dtype::f16;
  if (s == "bf16") return dtype::bf16;
  throw_bad_input("kv input", "dtype", "f32, f16 or bf16", s);
}

template <class T>
T get(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw_usage(std::string("internal view description lacks '") + key + "'");
  return d[key].cast<T>();
}

/// A view from the Python layer's description: {"k": [addr...], "v": [addr...], "dtype", "kv_heads",
/// "tokens", "head_dim", "s_head", "s_token", "s_dim", "extent"} plus, paged, {"block_size",
/// "s_block", "num_blocks", "block_table"}.
kv_view view_from(const py::dict& d) {
  kv_view w;
  for (auto a : get<std::vector<std::uintptr_t>>(d, "k")) w.k.push_back(reinterpret_cast<std::byte*>(a));
  for (auto a : get<std::vector<std::uintptr_t>>(d, "v")) w.v.push_back(reinterpret_cast<std::byte*>(a));
  w.layers = static_cast<std::int32_t>(w.k.size());
  w.dt = dtype_from(get<std::string>(d, "dtype"));
  w.kv_heads = get<std::int32_t>(d, "kv_heads");
  w.tokens = get<std::int64_t>(d, "tokens");
  w.head_dim = get<std::int32_t>(d, "head_dim");
  w.s_head = get<std::int64_t>(d, "s_head");
  w.s_token = get<std::int64_t>(d, "s_token");
  w.s_dim = get<std::int64_t>(d, "s_dim");
  w.extent = get<std::int64_t>(d, "extent");
  if (d.contains("block_size")) {
    w.block_size = get<std::int64_t>(d, "block_size");
    w.s_block = get<std::int64_t>(d, "s_block");
    w.num_blocks = get<std::int64_t>(d, "num_blocks");
    w.block_table = get<std::vector<std::int32_t>>(d, "block_table");
  }
  return w;
}

/// Queries for drop stages and attention metrics: {"q": [addr per layer], "dtype", "q_heads",
/// "s_head", "s_token", "s_dim"} with tokens and head_dim those of the cache.
void attach_queries(kv_cache& c, const py::dict& q) {
  const auto addrs = get<std::vector<std::uintptr_t>>(q, "q");
  const dtype dt = dtype_from(get<std::string>(q, "dtype"));
  const std::int32_t qh = get<std::int32_t>(q, "q_heads");
  const std::int64_t sh = get<std::int64_t>(q, "s_head"), st = get<std::int64_t>(q, "s_token"), sd = get<std::int64_t>(q, "s_dim");
  if (addrs.size() != static_cast<std::size_t>(c.shape.layers))
    throw_bad_input("queries", "layers", std::to_string(c.shape.layers), std::to_string(addrs.size()));
  if (qh <= 0 || qh % c.shape.kv_heads != 0)
    throw_bad_input("queries", "q_heads", "a positive multiple of kv_heads " + std::to_string(c.shape.kv_heads), std::to_string(qh));
  c.shape.q_heads = qh;
  const std::size_t T = static_cast<std::size_t>(c.shape.tokens), D = static_cast<std::size_t>(c.shape.head_dim);
  c.queries.assign(addrs.size(), std::vector<float>(static_cast<std::size_t>(qh) * T * D));
  const std::size_t es = dtype_size(dt);
  for (std::size_t l = 0; l < addrs.size(); ++l) {
    const auto* base = reinterpret_cast<const std::byte*>(addrs[l]);
    for (std::int32_t h = 0; h < qh; ++h)
      for (std::size_t t = 0; t < T; ++t)
        load_row(base + (h * sh + static_cast<std::int64_t>(t) * st) * static_cast<std::int64_t>(es), dt, sd, D,
                 c.queries[l].data() + (static_cast<std::size_t>(h) * T + t) * D);
  }
}

kv_cache cache_with_queries(const const_kv_view& w, const py::object& queries) {
  kv_cache c = to_cache(w);
  if (!queries.is_none()) attach_queries(c, queries.cast<py::dict>());
  return c;
}

// ---- output: a bytes object grown in place (no copy of the container at the end) ---------------

/// Appends to a Python bytes object, allocated at `reserve` bytes (pages never written are never
/// resident), doubled with _PyBytes_Resize when a container outgrows it (realloc: large blocks are
/// remapped, not copied) and trimmed at the end. Written from the calling thread only.
class pybytes_sink final : public byte_sink {
 public:
  explicit pybytes_sink(std::size_t reserve) : cap_(std::max<std::size_t>(reserve, std::size_t{1} << 16)) {
    py::gil_scoped_acquire gil;
    obj_ = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(cap_));
    if (!obj_) throw std::bad_alloc();
  }
  ~pybytes_sink() override {
    if (obj_) {
      py::gil_scoped_acquire gil;
      Py_DECREF(obj_);
    }
  }
  void write(std::span<const std::uint8_t> b) override {
    if (size_ + b.size() > cap_) {
      std::size_t cap = cap_;
      while (cap < size_ + b.size()) cap *= 2;
      resize(cap);
    }
    std::memcpy(PyBytes_AS_STRING(obj_) + size_, b.data(), b.size());
    size_ += b.size();
  }
  /// Trims to the written size and hands the object over (GIL held by the caller).
  py::bytes take() {
    if (_PyBytes_Resize(&obj_, static_cast<Py_ssize_t>(size_)) != 0) {
      obj_ = nullptr;
      throw py::error_already_set();
    }
    PyObject* o = obj_;
    obj_ = nullptr;
    return py::reinterpret_steal<py::bytes>(o);
  }

 private:
  void resize(std::size_t cap) {
    py::gil_scoped_acquire gil;
    if (_PyBytes_Resize(&obj_, static_cast<Py_ssize_t>(cap)) != 0) {
      obj_ = nullptr;
      PyErr_Clear();
      throw std::bad_alloc();
    }
    cap_ = cap;
  }
  PyObject* obj_ = nullptr;
  std::size_t size_ = 0, cap_;
};

/// Hands each piece to a Python callable (bytes copy per piece; GIL taken for the call).
class pycall_sink final : public byte_sink {
 public:
  pycall_sink(py::object f, callback_state& st) : f_(std::move(f)), st_(&st) {}
  void write(std::span<const std::uint8_t> b) override {
    py::gil_scoped_acquire gil;
    try {
      f_(py::bytes(reinterpret_cast<const char*>(b.data()), b.size()));
    } catch (py::error_already_set& e) {
      st_->fail(std::move(e));
      throw callback_failed{st_->err};
    }
  }

 private:
  py::object f_;
  callback_state* st_;
};

py::dict report_dict(const encode_report& r) {
  py::dict d;
  d["spec"] = r.spec;
  d["container_bytes"] = r.container_bytes;
  d["codec_bytes"] = r.codec_bytes;
  d["state_bytes"] = r.state_bytes;
  d["mask_bytes"] = r.mask_bytes;
  d["kv_elements"] = r.kv_elements;
  d["bits_per_element"] = r.bits_per_element;
  d["segments"] = r.segments;
  return d;
}

py::object json_to_py(const nlohmann::json& j) {
  return py::module_::import("json").attr("loads")(j.dump());
}

/// Bytes-like input without a copy (bytes, bytearray, memoryview, numpy uint8...).
struct input_bytes {
  py::buffer_info info;
  explicit input_bytes(const py::buffer& b) : info(b.request()) {
    py::ssize_t step = info.itemsize;
    for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
      const auto i = static_cast<std::size_t>(d);
      if (info.shape[i] > 1 && info.strides[i] != step)
        throw_bad_input("kvcodec data", "buffer", "contiguous bytes", "a strided buffer (stride " + std::to_string(info.strides[i]) + " bytes)");
      step *= info.shape[i];
    }
  }
  std::span<const std::uint8_t> span() const {
    return {static_cast<const std::uint8_t*>(info.ptr), static_cast<std::size_t>(info.size * info.itemsize)};
  }
};

kv_extras extras_from(const py::object& metadata, const py::object& tokens, const py::object& positions, const py::object& source_dtype) {
  kv_extras ex;
  if (!metadata.is_none()) ex.metadata = metadata.cast<std::map<std::string, std::string>>();
  if (!tokens.is_none()) ex.tokens = tokens.cast<std::vector<std::int32_t>>();
  if (!positions.is_none()) ex.positions = positions.cast<std::vector<std::int32_t>>();
  if (!source_dtype.is_none()) ex.source_dtype = dtype_from(source_dtype.cast<std::string>());
  return ex;
}

py::object kept_to_py(const kept_sets& k) {
  if (k.empty()) return py::none();
  return py::cast(k);
}

py::dict result_dict(const decode_result& r) {
  py::dict d;
  d["token_begin"] = r.token_begin;
  d["token_end"] = r.token_end;
  d["kept"] = kept_to_py(r.kept);
  return d;
}

py::dict header_dict(const kvc_header& h) {
  py::dict d;
  d["version"] = h.version;
  d["codec"] = h.codec;
  d["shape"] = json_to_py(shape_json(h.shape));
  d["dtype"] = std::string(dtype_name(h.source_dtype));
  d["layout"] = h.layout;
  d["sparse"] = h.sparse;
  d["chunk_tokens"] = h.chunk_tokens;
  d["metadata"] = h.metadata;
  d["tokens"] = h.tokens;
  d["positions"] = h.positions;
  return d;
}

// ---- the streaming decoder ---------------------------------------------------------------------

class py_stream_decoder {
 public:
  /// `make(header dict) -> view dict` is called once, when the header has arrived.
  py_stream_decoder(py::object make, std::int64_t token_begin, std::int64_t token_end, py::object progress)
      : make_(std::move(make)), progress_(std::move(progress)) {
    decode_options o;
    o.token_begin = token_begin;
    o.token_end = token_end;
    o.name = "<stream>";
    o.progress = progress_fn(progress_, cb_);
    dec_ = std::make_unique<stream_decoder>(
        [this](const kvc_header& h) {
          py::gil_scoped_acquire gil;
          try {
            return view_from(make_(header_dict(h)).cast<py::dict>());
          } catch (py::error_already_set& e) {
            cb_.fail(std::move(e));
            throw callback_failed{cb_.err};
          }
        },
        std::move(o));
  }
  void push(const py::buffer& b) {
    if (finished_) throw_usage("Decoder: feed() after finish()");
    input_bytes in(b);
    without_gil(cb_, [&] { dec_->push(in.span()); });
  }
  py::dict finish() {
    if (finished_) throw_usage("Decoder: finish() called twice");
    finished_ = true;
    return result_dict(without_gil(cb_, [&] { return dec_->finish(); }));
  }
  bool header_ready() const { return dec_->header_ready(); }
  std::int64_t valid_tokens() const { return dec_->valid_tokens(); }
  py::object header() const { return dec_->header_ready() ? py::object(header_dict(dec_->header())) : py::object(py::none()); }

 private:
  py::object make_, progress_;
  callback_state cb_;
  std::unique_ptr<stream_decoder> dec_;
  bool finished_ = false;
};

// ---- the KV store (include/kvcodec/store): kvcodec.Store's engine ---------------------------------

/// One store::kv_store. Every call runs with the GIL released under the object's own mutex (a kv_store
/// is used by one thread at a time; Python threads sharing a Store object take turns).
class py_store {
 public:
  py_store(const std::string& url, const std::string& model, std::int64_t chunk_tokens, int threads, std::size_t pipeline_depth, double alpha) {
    store::store_options o;
    o.model = model;
    o.chunk_tokens = chunk_tokens;
    o.threads = threads;
    o.pipeline_depth = pipeline_depth;
    py::gil_scoped_release release;  // opening a redis:// URL connects now
    if (store::is_tiered_url(url)) {
      store::tiered_options to;
      to.store = std::move(o);
      to.alpha = alpha;
      ts_ = std::make_unique<store::tiered_store>(store::parse_tiered_url(url), std::move(to));
      url_ = url;
    } else {
      st_ = std::make_unique<store::kv_store>(store::open_backend(url), std::move(o));
    }
  }
  bool tiered() const { return ts_ != nullptr; }

  /// tiered:// only: profile = [(spec, bytes, kl, decode_s), ...] or None (the default proxy).
  py::dict put_tiered(const std::vector<std::int32_t>& tokens, const py::dict& view, const std::string& spec, const py::object& profile, double weight) {
    if (!ts_) throw_usage("Store.put: profile= and weight= need a tiered:// store");
    const const_kv_view w = view_from(view);
    std::optional<store::context_profile> prof;
    if (!profile.is_none()) {
      prof.emplace();
      for (const auto& item : profile) {
        const auto t = item.cast<std::tuple<std::string, double, double, double>>();
        prof->levels.push_back({std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t)});
      }
    }
    const store::tiered_put_result r = locked([&] { return ts_->put(tokens, w, spec, prof ? &*prof : nullptr, weight); });
    py::dict d = put_dict(r.put);
    d["level"] = r.level, d["tier"] = r.tier, d["planned_tier"] = r.planned_tier, d["utility"] = r.utility, d["already"] = r.already;
    return d;
  }
  std::size_t close() {
    return ts_ ? locked([&] { return ts_->close(); }) : 0;
  }

  py::dict put(const std::vector<std::int32_t>& tokens, const py::dict& view, const std::string& spec) {
    if (ts_) return put_tiered(tokens, view, spec, py::none(), 1.0);
    const const_kv_view w = view_from(view);
    const store::put_result r = locked([&] { return st_->put(tokens, w, spec); });
    return put_dict(r);
  }
  static py::dict put_dict(const store::put_result& r) {
    py::dict d;
    d["spec"] = r.spec;
    d["entry_key"] = r.entry_key;
    d["tokens"] = r.tokens;
    d["chunks"] = r.chunks;
    d["chunks_written"] = r.chunks_written;
    d["chunks_present"] = r.chunks_present;
    d["bytes_written"] = r.bytes_written;
    d["seconds"] = r.seconds;
    return d;
  }

  py::dict get(const std::vector<std::int32_t>& tokens, const py::dict& view) {
    const kv_view w = view_from(view);
    std::optional<store::tiered_get_result> tr;
    const store::get_result r = locked([&] {
      if (!ts_) return st_->get(tokens, w);
      tr = ts_->get(tokens, w);
      return tr->get;
    });
    py::dict d;
    if (tr) {
      d["tier"] = tr->tier ? py::object(py::int_(*tr->tier)) : py::object(py::none());
      d["promoted_to"] = tr->promoted_to ? py::object(py::int_(*tr->promoted_to)) : py::object(py::none());
      d["level"] = tr->level;
    }
    d["tokens"] = r.tokens;
    d["chunks"] = r.chunks;
    d["spec"] = r.spec;
    d["bytes"] = r.bytes;
    d["problems"] = r.problems;
    d["fetch_seconds"] = r.fetch_seconds;
    d["decode_seconds"] = r.decode_seconds;
    d["seconds"] = r.seconds;
    return d;
  }

  py::tuple contains(const std::vector<std::int32_t>& tokens, std::int32_t layers, std::int32_t kv_heads, std::int32_t head_dim) {
    const auto r = locked([&] {
      return ts_ ? ts_->contains(tokens, store::store_shape{layers, kv_heads, head_dim}) : st_->contains(tokens, store::store_shape{layers, kv_heads, head_dim});
    });
    return py::make_tuple(r.first, r.second);
  }

  std::size_t remove(const std::vector<std::int32_t>& tokens, std::int32_t layers, std::int32_t kv_heads, std::int32_t head_dim) {
    return locked([&] {
      return ts_ ? ts_->remove(tokens, store::store_shape{layers, kv_heads, head_dim}) : st_->remove(tokens, store::store_shape{layers, kv_heads, head_dim});
    });
  }
  std::size_t remove_entry(const std::string& key) {
    return locked([&] { return ts_ ? std::size_t{ts_->remove_entry(key)} : st_->remove_entry(key); });
  }

  py::list entries(bool all) {
    if (ts_) {
      const auto es = locked([&] { return ts_->entries(); });
      py::list out;
      for (const auto& e : es) out.append(tiered_dict(e));
      return out;
    }
    const auto es = locked([&] { return st_->entries(all); });
    py::list out;
    for (const auto& e : es) out.append(entry_dict(e));
    return out;
  }
  py::object entry(const std::string& key) {
    if (ts_) {
      const auto e = locked([&] { return ts_->entry(key); });
      return e ? py::object(tiered_dict(*e)) : py::object(py::none());
    }
    const auto e = locked([&] { return st_->entry(key); });
    return e ? py::object(entry_dict(*e)) : py::object(py::none());
  }

  py::dict stats() {
    if (ts_) {
      const auto ss = locked([&] { return ts_->stats(); });
      py::dict d;
      d["gets"] = ts_->gets(), d["misses"] = ts_->misses();
      py::list tiers;
      for (const auto& t : ss) {
        py::dict x;
        x["url"] = t.url, x["capacity_bytes"] = t.capacity_bytes, x["bandwidth_bytes_s"] = t.bandwidth_bytes_s, x["latency_s"] = t.latency_s;
        x["bytes"] = t.bytes, x["contexts"] = t.contexts, x["hits"] = t.hits, x["puts"] = t.puts;
        x["promoted_in"] = t.promoted_in, x["promoted_out"] = t.promoted_out, x["demoted_in"] = t.demoted_in, x["demoted_out"] = t.demoted_out;
        x["evicted"] = t.evicted, x["errors"] = t.errors;
        tiers.append(x);
      }
      d["tiers"] = tiers;
      return d;
    }
    const store::store_stats s = locked([&] { return st_->stats(); });
    py::dict d;
    d["puts"] = s.puts, d["chunks_written"] = s.chunks_written, d["chunks_skipped"] = s.chunks_skipped, d["bytes_written"] = s.bytes_written;
    d["gets"] = s.gets, d["hits"] = s.hits, d["misses"] = s.misses, d["tokens_served"] = s.tokens_served;
    d["chunks_read"] = s.chunks_read, d["bytes_read"] = s.bytes_read, d["rejected_chunks"] = s.rejected_chunks;
    return d;
  }

  std::string url() const { return ts_ ? url_ : st_->storage().url(); }
  const std::string& model() const { return ts_ ? ts_->options().store.model : st_->options().model; }
  std::int64_t chunk_tokens() const { return ts_ ? ts_->options().store.chunk_tokens : st_->options().chunk_tokens; }

 private:
  template <class F>
  auto locked(F&& f) -> decltype(f()) {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(m_);
    return f();
  }
  static py::dict entry_dict(const store::entry_info& e) {
    py::dict d;
    d["key"] = e.key, d["model"] = e.model, d["spec"] = e.spec, d["tokens"] = e.tokens, d["chunks"] = e.chunks;
    d["chunk_tokens"] = e.chunk_tokens, d["layers"] = e.layers, d["kv_heads"] = e.kv_heads, d["head_dim"] = e.head_dim;
    d["chunk_keys"] = e.chunk_keys, d["bytes"] = e.bytes, d["final"] = e.final;
    return d;
  }
  static py::dict tiered_dict(const store::tiered_entry& e) {
    py::dict d;
    d["key"] = e.key, d["spec"] = e.spec, d["level"] = e.level, d["tokens"] = e.tokens, d["chunks"] = e.chunk_keys.size();
    d["layers"] = e.shape.layers, d["kv_heads"] = e.shape.kv_heads, d["head_dim"] = e.shape.head_dim;
    d["chunk_keys"] = e.chunk_keys, d["bytes"] = e.bytes, d["tier"] = e.tier, d["hits"] = e.hits, d["weight"] = e.weight, d["final"] = true;
    return d;
  }
  std::mutex m_;
  std::unique_ptr<store::kv_store> st_;
  std::unique_ptr<store::tiered_store> ts_;
  std::string url_;
};

}  // namespace

PYBIND11_MODULE(_kvcodec, m) {
  m.doc() = "kvcodec's C++ library (the Python API is the kvcodec package)";

  exc_error = make_exception(m, "Error", PyExc_Exception, "Base class of kvcodec's errors; the message is the library's.");
  exc_bad_input = make_exception(m, "BadInputError", py::make_tuple(py::handle(exc_error), py::handle(PyExc_ValueError)).release().ptr(),
                                 "A tensor, cache or file that is not what it claims or not a KV cache.");
  exc_corrupt = make_exception(m, "CorruptError", py::make_tuple(py::handle(exc_error), py::handle(PyExc_ValueError)).release().ptr(),
                               "A checksum or structural check of an encoded container failed.");
  exc_usage = make_exception(m, "UsageError", py::make_tuple(py::handle(exc_error), py::handle(PyExc_ValueError)).release().ptr(),
                             "A bad codec spec, parameter or option.");
  exc_unsupported = make_exception(m, "UnsupportedError",
                                   py::make_tuple(py::handle(exc_error), py::handle(PyExc_NotImplementedError)).release().ptr(),
                                   "Valid input that this build cannot handle (e.g. CUDA tensors without the CUDA backend).");
  exc_io = make_exception(m, "IOError", py::make_tuple(py::handle(exc_error), py::handle(PyExc_OSError)).release().ptr(),
                          "The operating system refused a read or write.");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const error& e) {
      PyErr_SetString(class_of(e.kind()), e.what());
    } catch (const callback_failed& e) {
      if (e.err) e.err->restore();
      else PyErr_SetString(exc_error, "a callback failed");
    }
  });

  m.def(
      "encode",
      [](const std::string& spec, const py::dict& view, std::int64_t chunk_tokens, int threads, const std::string& layout, py::object metadata,
         py::object tokens, py::object positions, py::object source_dtype, py::object queries, py::object progress, py::object write) -> py::tuple {
        callback_state cb;
        const bool targeted = kvc_target_of(spec).has_value();
        std::optional<codec> made;
        if (!targeted) made = make_codec(spec);
        const const_kv_view w = view_from(view);
        encode_options o;
        o.chunk_tokens = chunk_tokens;
        o.layout = layout;
        o.progress = progress_fn(progress, cb);
        kv_extras ex = extras_from(metadata, tokens, positions, source_dtype);
        std::optional<kv_cache> full;  // queries: drop stages score them (the library copies the cache otherwise too)
        if (!queries.is_none()) {
          w.validate("encode input");
          full = cache_with_queries(w, queries);
          full->source_dtype = ex.source_dtype.value_or(w.dt);
          full->tokens = ex.tokens;
          full->positions = ex.positions;
          full->metadata = ex.metadata;
          ex.cache = &*full;
          ex.q_heads = full->shape.q_heads;
        }
        std::optional<target_choice> chosen;
        if (targeted) {  // kvc:target=KL: chosen on this cache (its queries when given, else proxy queries)
          w.validate("encode input");
          std::optional<kv_cache> copy;
          if (!full) copy = to_cache(w);
          target_choice tc;
          const std::string actual = without_gil(cb, [&] { return resolve_target(spec, full ? *full : *copy, &tc, target_options{.threads = threads}); });
          chosen = tc;
          made = make_codec(actual);
        }
        codec& c = *made;
        auto report = [&](const encode_report& r) {
          py::dict d = report_dict(r);
          if (chosen)
            d["target"] = py::dict(py::arg("asked_kl") = chosen->target, py::arg("bins") = chosen->bins, py::arg("kl") = chosen->kl,
                                   py::arg("proxy") = chosen->proxy, py::arg("met") = chosen->met, py::arg("trials") = chosen->trials);
          return d;
        };
        if (!write.is_none()) {
          pycall_sink sink(write, cb);
          const encode_report r = without_gil(cb, [&] { return encode_to(cpu::par(threads), c, w, sink, o, ex); });
          return py::make_tuple(py::none(), report(r));
        }
        std::optional<pybytes_sink> sink;
        // reserved at the cache's size in its dtype plus slack: most containers fit without regrowth
        sink.emplace(static_cast<std::size_t>(w.shape().kv_elements()) * w.elem_size() + (std::size_t{1} << 20));
        const encode_report r = without_gil(cb, [&] { return encode_to(cpu::par(threads), c, w, *sink, o, ex); });
        return py::make_tuple(sink->take(), report(r));
      },
      py::arg("spec"), py::arg("view"), py::arg("chunk_tokens") = 256, py::arg("threads") = 0, py::arg("layout") = "",
      py::arg("metadata") = py::none(), py::arg("tokens") = py::none(), py::arg("positions") = py::none(), py::arg("source_dtype") = py::none(),
      py::arg("queries") = py::none(), py::arg("progress") = py::none(), py::arg("write") = py::none());

  m.def(
      "decode_into",
      [](const py::buffer& data, const py::dict& view, std::int64_t token_begin, std::int64_t token_end, int threads, py::object progress) {
        callback_state cb;
        input_bytes in(data);
        const kv_view w = view_from(view);
        decode_options o;
        o.token_begin = token_begin;
        o.token_end = token_end;
        o.progress = progress_fn(progress, cb);
        return result_dict(without_gil(cb, [&] { return decode_into(cpu::par(threads), in.span(), w, o); }));
      },
      py::arg("data"), py::arg("view"), py::arg("token_begin") = 0, py::arg("token_end") = -1, py::arg("threads") = 0,
      py::arg("progress") = py::none());

  m.def(
      "info",
      [](const py::buffer& data, bool verify) {
        input_bytes in(data);
        const kvc_view v = parse_kvc(in.span(), "<bytes>");
        const auto& h = v.header;
        std::uint64_t codec_bytes = 0;
        for (const auto& s : h.segments) codec_bytes += s.size;
        for (const auto& s : h.states) codec_bytes += s.size;
        if (verify) {
          py::gil_scoped_release release;
          for (std::size_t i = 0; i < h.segments.size(); ++i) v.segment_bytes(i);
          for (std::size_t i = 0; i < h.states.size(); ++i) v.state_bytes(i);
        }
        py::dict d = header_dict(h);
        d["container_bytes"] = v.file_size;
        d["codec_bytes"] = codec_bytes;
        d["bits_per_element"] = static_cast<double>(codec_bytes) * 8.0 / static_cast<double>(h.shape.kv_elements());
        d["verified"] = verify;
        py::list segs;
        for (const auto& s : h.segments) {
          py::dict e;
          e["layer"] = s.layer, e["t0"] = s.t0, e["t1"] = s.t1, e["offset"] = s.offset, e["size"] = s.size, e["checksum"] = s.checksum;
          segs.append(e);
        }
        d["segments"] = segs;
        return d;
      },
      py::arg("data"), py::arg("verify") = false);

  m.def("list_codecs", [] {
    const registry& r = builtin_registry();
    py::list out;
    auto add = [&](const std::string& name, const std::string& kind, const std::string& summary, const auto& params) {
      py::list p;
      for (const auto& x : params) {
        py::dict e;
        e["key"] = x.key, e["default"] = x.default_value, e["help"] = x.help;
        p.append(e);
      }
      py::dict e;
      e["name"] = name, e["kind"] = kind, e["summary"] = summary, e["params"] = p;
      out.append(e);
    };
    for (const auto& e : r.stages()) add(e.name, std::string(stage_kind_name(e.kind)), e.summary, e.params);
    for (const auto& e : r.presets()) add(e.name, "preset", e.summary, e.params);
    return out;
  });

  m.def(
      "load_profile",
      [](const std::string& path) {
        const auto p = io::profile_registry::instance().load(path);
        py::dict d;
        d["hash"] = io::profile_hash_text(p->hash);
        d["model"] = p->model;
        d["layers"] = p->layers;
        d["kv_heads"] = p->kv_heads;
        d["head_dim"] = p->head_dim;
        d["rope"] = p->rope;
        d["dumps"] = p->dumps;
        return d;
      },
      py::arg("path"));
  m.def("unload_profiles", [] { io::profile_registry::instance().clear(); });
  m.def(
      "canonical_spec", [](const std::string& spec) { return make_codec(spec).spec(); }, py::arg("spec"));
  m.def(
      "spec_has_drop", [](const std::string& spec) { return static_cast<bool>(make_codec(spec).drop); }, py::arg("spec"));

  m.def(
      "eval",
      [](const std::string& spec, const py::dict& view, py::object queries, std::int64_t chunk_tokens, int threads, int repeats) {
        const const_kv_view w = view_from(view);
        w.validate("eval input");
        if (w.space != memory_space::host) throw_usage("eval: the CPU backend reads host memory");
        kv_cache c = cache_with_queries(w, queries);
        eval::eval_options o;
        o.encode.chunk_tokens = chunk_tokens;
        o.threads = threads;
        o.repeats = repeats;
        nlohmann::json j;
        {
          py::gil_scoped_release release;
          j = eval::to_json(eval::evaluate(spec, c, o));
        }
        return json_to_py(j);
      },
      py::arg("spec"), py::arg("view"), py::arg("queries") = py::none(), py::arg("chunk_tokens") = 256, py::arg("threads") = 0,
      py::arg("repeats") = 0);

  // The C++ library's own time for encode + decode of a view (for bench/python_overhead.py): the same
  // calls the Python API makes, timed inside C++, the container in a std::vector reserved to the cache's
  // size (no regrowth copies: the fastest way to hold it in C++).
  m.def(
      "cpp_timing",
      [](const std::string& spec, const py::dict& view, const py::dict& out_view, std::int64_t chunk_tokens, int threads, const std::string& layout) {
        const const_kv_view w = view_from(view);
        const kv_view dst = view_from(out_view);
        py::gil_scoped_release release;
        using clock = std::chrono::steady_clock;
        codec c = make_codec(spec);
        encode_options o;
        o.chunk_tokens = chunk_tokens;
        o.layout = layout;
        const auto t0 = clock::now();
        bytes file;
        file.reserve(static_cast<std::size_t>(w.shape().kv_elements()) * w.elem_size());
        memory_sink sink(file);
        encode_to(cpu::par(threads), c, w, sink, o);
        const auto t1 = clock::now();
        decode_into(cpu::par(threads), file, dst);
        const auto t2 = clock::now();
        return std::make_tuple(std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count(), file.size());
      },
      py::arg("spec"), py::arg("view"), py::arg("out_view"), py::arg("chunk_tokens") = 256, py::arg("threads") = 0, py::arg("layout") = "");

  py::class_<py_stream_decoder>(m, "StreamDecoder")
      .def(py::init<py::object, std::int64_t, std::int64_t, py::object>(), py::arg("make_view"), py::arg("token_begin") = 0,
           py::arg("token_end") = -1, py::arg("progress") = py::none())
      .def("push", &py_stream_decoder::push, py::arg("data"))
      .def("finish", &py_stream_decoder::finish)
      .def_property_readonly("header_ready", &py_stream_decoder::header_ready)
      .def_property_readonly("valid_tokens", &py_stream_decoder::valid_tokens)
      .def_property_readonly("header", &py_stream_decoder::header);

  py::class_<py_store>(m, "Store")
      .def(py::init<const std::string&, const std::string&, std::int64_t, int, std::size_t, double>(), py::arg("url"), py::arg("model"),
           py::arg("chunk_tokens") = 256, py::arg("threads") = 0, py::arg("pipeline_depth") = 2, py::arg("alpha") = 1.0)
      .def("put", &py_store::put, py::arg("tokens"), py::arg("view"), py::arg("spec"))
      .def("put_tiered", &py_store::put_tiered, py::arg("tokens"), py::arg("view"), py::arg("spec"), py::arg("profile"), py::arg("weight"))
      .def("close", &py_store::close)
      .def_property_readonly("tiered", &py_store::tiered)
      .def("get", &py_store::get, py::arg("tokens"), py::arg("view"))
      .def("contains", &py_store::contains, py::arg("tokens"), py::arg("layers"), py::arg("kv_heads"), py::arg("head_dim"))
      .def("remove", &py_store::remove, py::arg("tokens"), py::arg("layers"), py::arg("kv_heads"), py::arg("head_dim"))
      .def("remove_entry", &py_store::remove_entry, py::arg("key"))
      .def("entries", &py_store::entries, py::arg("all") = false)
      .def("entry", &py_store::entry, py::arg("key"))
      .def("stats", &py_store::stats)
      .def_property_readonly("url", &py_store::url)
      .def_property_readonly("model", &py_store::model)
      .def_property_readonly("chunk_tokens", &py_store::chunk_tokens);

  m.attr("cuda_backend") = false;
  m.attr("__version__") = "0.1.0";
}
