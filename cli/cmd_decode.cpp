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
            const bytes file = io::read_file(o->in);
            const kvc_view v = parse_kvc(file, o->in);
            dtype out_dt = v.header.source_dtype;
            if (!o->dtype_name.empty()) {
              auto d = parse_dtype(o->dtype_name);
              if (!d || (*d != dtype::f32 && *d != dtype::f16 && *d != dtype::bf16))
                throw_usage("--dtype: expected f32, f16 or bf16, found '" + o->dtype_name + "'");
              out_dt = *d;
            }
            io::kv_layout layout = io::kv_layout::hf_4d;
            const std::string lname = o->layout_name.empty() ? v.header.layout : o->layout_name;
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
            kv_cache kv = decode(cpu::par(o->threads), file, dopt);
            if (o->rerotate) {
              if (kv.is_dense()) throw_usage("--rerotate-keys: the cache has no dropped tokens");
              cpu::rerotate_kept_keys(kv);
            }
            io::write_kv_dump(o->out, kv, layout, out_dt, o->compact, o->force);
            return 0;
          }};
}

}  // namespace kvcodec::cli
