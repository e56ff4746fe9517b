// kvcodec decode IN OUT
#include "common.hpp"

namespace kvcodec::cli {

command add_decode(CLI::App& root) {
  auto* app = root.add_subcommand("decode", "Decode a .kvc container back into a KV dump (same layout and dtype as the original unless told)");
  struct opts {
    std::string in, out, dtype_name, layout_name;
    std::int64_t begin = 0, end = -1;
    int threads = 0;
    bool force = false, compact = false, rerotate = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("--dtype", o->dtype_name, "Output dtype: f32, f16 or bf16 (default: the original's)");
  app->add_option("--layout", o->layout_name, "Output layout: hf_4d, hf_3d, stacked (default: the original's)");
  app->add_flag("--compact", o->compact, "Write only kept tokens with their positions (token-dropped caches)");
  app->add_flag("--rerotate-keys", o->rerotate,
                "Move kept keys to contiguous RoPE positions 0..n-1 per head (as kvpress's KeyRerotation; token-dropped caches)");
  app->add_option("--tokens-from", o->begin, "First token to decode")->capture_default_str();
  app->add_option("--tokens-to", o->end, "One past the last token to decode (-1 = end)")->capture_default_str();
  app->add_option("-j,--threads", o->threads, "Worker threads (0 = all cores)")->capture_default_str();
  app->add_flag("-f,--force", o->force, "Overwrite OUT if it exists");
  app->add_option("IN", o->in, "Input .kvc file")->required();
  app->add_option("OUT", o->out, "Output dump: .safetensors, .npz or .npy")->required();
  return {app, [o] {
            check_output(o->in, o->out, o->force);
            // Refused before any decoding (it used to decode the whole cache, then fail on the write).
            if (const std::string ext = io::lower_extension(o->out); ext != ".safetensors" && ext != ".npz" && ext != ".npy")
              throw_usage(o->out + ": unknown KV dump extension '" + ext + "'; expected .safetensors, .npz or .npy");
            const io::kvc_file f(o->in);  // header, state and index only
            const kvc_header& h = f.header();
            dtype out_dt = h.source_dtype;
            if (!o->dtype_name.empty()) {
              auto d = parse_dtype(o->dtype_name);
              if (!d || (*d != dtype::f32 && *d != dtype::f16 && *d != dtype::bf16))
                throw_usage("--dtype: expected f32, f16 or bf16, found '" + o->dtype_name + "'");
              out_dt = *d;
            }
            io::kv_layout layout = io::kv_layout::hf_4d;
            const std::string lname = o->layout_name.empty() ? h.layout : o->layout_name;
            if (!lname.empty()) {
              auto l = io::parse_kv_layout(lname);
              if (!l) throw_usage("--layout: expected hf_4d, hf_3d or stacked, found '" + lname + "'");
              layout = *l;
            }
            if (layout == io::kv_layout::hf_compact) layout = io::kv_layout::hf_4d, o->compact = true;
            progress_bar bar("decode");
            decode_options dopt;
            dopt.token_begin = o->begin;
            dopt.token_end = o->end;
            dopt.name = o->in;
            dopt.progress = bar.callback();
            const auto pol = cpu::par(o->threads);
            if (!h.sparse && !o->compact && !o->rerotate && io::lower_extension(o->out) == ".safetensors") {
              // Streamed: only the needed segments are read, decoded into a buffer in the output dtype and
              // written to their place in the file.
              // plain variables, not a structured binding: the lambdas below capture them (clang 14
              // cannot capture bindings)
              const std::pair<std::int64_t, std::int64_t> range = detail::decode_range(h, dopt);
              const std::int64_t tb = range.first, te = range.second;
              kv_shape s = h.shape;
              s.q_heads = 0;
              s.tokens = te - tb;
              const std::map<std::string, std::string> md = h.metadata;
              const io::dense_dump_plan plan = io::plan_dense_dump(s, layout, out_dt, !h.tokens.empty(), !h.positions.empty(), md, o->out);
              io::atomic_output out(o->out, o->force);
              out.pwrite(0, plan.header);
              const segment_decoder dec(h, [&](std::size_t i) { return f.state_bytes(i); }, o->in);
              const std::size_t L = static_cast<std::size_t>(s.layers), H = static_cast<std::size_t>(s.kv_heads);
              const std::size_t D = static_cast<std::size_t>(s.head_dim), es = dtype_size(out_dt);
              // Layer by layer: every chunk of one layer decoded (in parallel) into a buffer of that layer,
              // then its K and V written as two sequential runs (a layer is 1/layers of the cache).
              // Not zero-filled: every token of the range is decoded into it, layer after layer.
              const std::unique_ptr<std::byte[]> stage(new std::byte[2 * H * static_cast<std::size_t>(te - tb) * D * es]);
              std::vector<segment_scratch> scratch(static_cast<std::size_t>(cpu::workers(pol.threads(), h.segments.size())));
              std::size_t done = 0;
              const auto todo = detail::segments_in(h, tb, te);
              for (std::size_t l = 0; l < L; ++l) {
                const std::size_t plane = H * static_cast<std::size_t>(te - tb) * D * es;
                // Every layer's base points at the buffer: only layer l's segments are decoded into it.
                const kv_view win = kv_view::hf(std::vector<std::byte*>(L, stage.get()), std::vector<std::byte*>(L, stage.get() + plane), out_dt,
                                                s.kv_heads, te - tb, s.head_dim);
                std::vector<std::size_t> mine;
                for (const auto i : todo)
                  if (static_cast<std::size_t>(h.segments[i].layer) == l) mine.push_back(i);
                cpu::parallel_for_worker(pol, mine.size(), [&](std::size_t j, int w) {
                  segment_scratch& sc = scratch[static_cast<std::size_t>(w)];
                  dec.decode_segment(h.segments[mine[j]], f.read_segment(mine[j], sc.read), win, tb, tb, te, nullptr, &sc);
                });
                out.pwrite(plan.row_offset(static_cast<int>(l), true, 0, 0), std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(stage.get()), plane));
                out.pwrite(plan.row_offset(static_cast<int>(l), false, 0, 0), std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(stage.get() + plane), plane));
                done += mine.size();
                if (dopt.progress) dopt.progress(done, todo.size());
              }
              // Token ids and positions follow the K/V tensors: written last, the file grows front to back.
              for (const auto& e : plan.entries) {
                if (e.name != "tokens" && e.name != "positions") continue;
                const auto& ids = e.name == "tokens" ? h.tokens : h.positions;
                out.pwrite(plan.header.size() + e.begin, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(ids.data() + tb),
                                                                                      static_cast<std::size_t>(te - tb) * 4));
              }
              out.commit();
              return 0;
            }
            kv_cache kv = decode(pol, f, dopt);
            if (o->rerotate) {
              if (kv.is_dense()) throw_usage("--rerotate-keys: the cache has no dropped tokens");
              cpu::rerotate_kept_keys(kv);
            }
            io::write_kv_dump(o->out, kv, layout, out_dt, o->compact, o->force);
            return 0;
          }};
}

}  // namespace kvcodec::cli
