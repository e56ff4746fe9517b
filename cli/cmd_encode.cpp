// kvcodec encode -c SPEC IN OUT
#include "common.hpp"

namespace kvcodec::cli {

command add_encode(CLI::App& root) {
  auto* app = root.add_subcommand("encode", "Compress a KV dump into a .kvc container");
  struct opts {
    std::string spec = "zstd", in, out;
    std::int64_t chunk = 256;
    double max_kl = 0;
    int threads = 0;
    bool force = false, quiet = false;
  };
  auto o = std::make_shared<opts>();
  CLI::Option* copt = app->add_option("-c,--codec", o->spec, "Codec spec, e.g. 'raw:dtype=f16' or 'zstd:level=3' (see `kvcodec list`)")->capture_default_str();
  app->add_option("--max-kl", o->max_kl,
                 "Smallest kvc encoding whose attention KL stays under this (the dump's queries, else proxy queries shaped by its keys): "
                 "the same as -c kvc:target=KL")
      ->check(CLI::PositiveNumber);
  app->add_option("--chunk", o->chunk, "Tokens per independently decodable segment")->capture_default_str()->check(CLI::Range(1, 1 << 30));
  app->add_option("-j,--threads", o->threads, "Worker threads (0 = all cores)")->capture_default_str();
  app->add_flag("-f,--force", o->force, "Overwrite OUT if it exists");
  app->add_flag("-q,--quiet", o->quiet, "Print nothing on success");
  app->add_option("IN", o->in, "KV dump: .safetensors, .npz or .npy")->required();
  app->add_option("OUT", o->out, "Output .kvc file")->required();
  return {app, [o, copt] {
            check_output(o->in, o->out, o->force);
            if (o->max_kl > 0) {
              if (copt->count() > 0 && o->spec != "kvc")
                throw_usage("--max-kl chooses a kvc encoding: give it alone or with -c kvc, not with -c " + o->spec);
              char t[32];
              std::snprintf(t, sizeof t, "%.17g", o->max_kl);
              o->spec = std::string("kvc:target=") + t;
            }
            std::optional<io::kv_dump> whole;  // a kvc target is chosen on the whole dump, queries included
            if (kvc_target_of(o->spec)) {
              whole = io::read_kv_dump(o->in);
              target_choice tc;
              o->spec = resolve_target(o->spec, whole->cache, &tc, target_options{.threads = o->threads});
              if (!o->quiet)
                std::fprintf(stderr, "kvc target: attention KL <= %g: %d bins, KL %.4g on %s%s (%d trials)\n", tc.target, tc.bins, tc.kl,
                             tc.proxy ? "proxy queries (the dump has none)" : "the dump's queries",
                             tc.met ? "" : "; NOT met even at 4096 bins", tc.trials);
            }
            codec c = make_codec(o->spec);
            progress_bar bar("encode");
            encode_options eo;
            eo.chunk_tokens = o->chunk;
            eo.progress = bar.callback();
            io::atomic_output out(o->out, o->force);
            io::file_sink sink(out);
            encode_report rep;
            // Dense safetensors dumps are read a block of rows at a time (pread at the addresses the mapped
            // view gives: memory stays bounded; a quantizer whose steps follow the queries gets their
            // energies read the same way); other dumps, drop stages that score queries and kvc targets
            // read the dump whole.
            std::optional<io::kv_dump_view> dv;
            if (!c.drop && !whole) dv = io::open_kv_dump_view(o->in);
            if (dv && c.wants_query_energy()) dv->extras.query_energy = io::dump_query_energy(*dv, o->in);
            if (dv) {
              eo.layout = std::string(io::kv_layout_name(dv->layout));
              const const_kv_view& w = dv->view;
              // Rows are read with pread, not through the mapping: the kernel maps whole large folios
              // on a fault, so touching one chunk of every layer would map most of the file.
              const auto* base = reinterpret_cast<const std::byte*>(dv->file->bytes().data());
              eo.read_rows = [&](int l, bool key, int hh, std::int64_t t0, std::int64_t t1, float* out) {
                const std::size_t n = static_cast<std::size_t>(t1 - t0) * static_cast<std::size_t>(w.head_dim);
                thread_local std::vector<std::uint8_t> buf;
                buf.resize(n * w.elem_size());
                dv->file->file().read_at(static_cast<std::uint64_t>(w.row(l, key, hh, t0) - base), buf, "K/V rows");
                decode_floats(buf.data(), n, w.dt, out);
              };
              rep = encode_to(cpu::par(o->threads), c, w, sink, eo, dv->extras);
            } else {
              io::kv_dump d = whole ? std::move(*whole) : io::read_kv_dump(o->in);
              eo.layout = std::string(io::kv_layout_name(d.layout));
              rep = encode_to(cpu::par(o->threads), c, view_of(d.cache), sink, eo, extras_of(d.cache));
            }
            sink.flush();
            out.commit();
            if (!o->quiet)
              std::printf("%s: %s, %zu bytes (%.4f bits/element, %.2fx smaller than fp16)\n", o->out.c_str(), rep.spec.c_str(),
                          rep.container_bytes, rep.bits_per_element, 16.0 / rep.bits_per_element);
            return 0;
          }};
}

}  // namespace kvcodec::cli
