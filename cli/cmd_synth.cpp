// kvcodec synth OUT — a synthetic cache with a real model's shape, for speed and scale only.
#include "common.hpp"
#include "kvcodec/eval/synth.hpp"

namespace kvcodec::cli {

command add_synth(CLI::App& root) {
  auto* app = root.add_subcommand(
      "synth",
      "Write a SYNTHETIC KV cache with a real model's shape and the known statistics of real caches (outlier key channels, "
      "RoPE, token correlation, heavy-tailed values). For speed and scale measurements only: quality claims need real dumps.");
  struct opts {
    std::string out, dt = "f16";
    eval::synth_options s;
    double size_mb = 0;
    bool force = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("--layers", o->s.layers, "Layers")->capture_default_str()->check(CLI::Range(1, 1024));
  app->add_option("--kv-heads", o->s.kv_heads, "KV heads")->capture_default_str()->check(CLI::Range(1, 1024));
  app->add_option("--q-heads", o->s.q_heads, "Query heads (0 = no queries)")->capture_default_str()->check(CLI::Range(0, 4096));
  app->add_option("--head-dim", o->s.head_dim, "Head dimension")->capture_default_str()->check(CLI::Range(2, 4096));
  app->add_option("--tokens", o->s.tokens, "Tokens")->capture_default_str()->check(CLI::Range(1, 1 << 24));
  app->add_option("--size-mb", o->size_mb, "Instead of --tokens: tokens for this many MB of K+V in the output dtype");
  app->add_option("--dtype", o->dt, "f32, f16 or bf16")->capture_default_str();
  app->add_option("--seed", o->s.seed, "Random seed")->capture_default_str();
  app->add_flag("-f,--force", o->force, "Overwrite OUT if it exists");
  app->add_option("OUT", o->out, "Output dump (.safetensors or .npz)")->required();
  return {app, [o] {
            auto d = parse_dtype(o->dt);
            if (!d || (*d != dtype::f32 && *d != dtype::f16 && *d != dtype::bf16)) throw_usage("--dtype: expected f32, f16 or bf16, found '" + o->dt + "'");
            o->s.dtype = *d;
            if (o->size_mb > 0) {
              const double per_token = 2.0 * o->s.layers * o->s.kv_heads * o->s.head_dim * static_cast<double>(dtype_size(*d));
              o->s.tokens = std::max<std::int64_t>(1, static_cast<std::int64_t>(o->size_mb * 1e6 / per_token + 0.5));
            }
            std::error_code ec;
            if (!o->force && std::filesystem::exists(o->out, ec)) throw error(error_kind::bad_input, o->out + ": exists; pass --force to overwrite it");
            kv_cache kv = eval::synth_cache(o->s);
            io::write_kv_dump(o->out, kv, io::kv_layout::hf_4d, *d, false, o->force);
            const double mb = static_cast<double>(kv.shape.kv_elements()) * static_cast<double>(dtype_size(*d)) / 1e6;
            std::printf("%s: synthetic cache, %d layers x %d kv heads x %lld tokens x %d head_dim, %s, %.1f MB of K+V\n", o->out.c_str(),
                        kv.shape.layers, kv.shape.kv_heads, static_cast<long long>(kv.shape.tokens), kv.shape.head_dim, o->dt.c_str(), mb);
            return 0;
          }};
}

}  // namespace kvcodec::cli
