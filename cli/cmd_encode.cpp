// kvcodec encode -c SPEC IN OUT
#include "common.hpp"

namespace kvcodec::cli {

command add_encode(CLI::App& root) {
  auto* app = root.add_subcommand("encode", "Compress a KV dump into a .kvc container");
  struct opts {
    std::string spec = "zstd", in, out;
    std::int64_t chunk = 256;
    int threads = 0;
    bool force = false, quiet = false;
  };
  auto o = std::make_shared<opts>();
  app->add_option("-c,--codec", o->spec, "Codec spec, e.g. 'raw:dtype=f16' or 'zstd:level=3' (see `kvcodec list`)")->capture_default_str();
  app->add_option("--chunk", o->chunk, "Tokens per independently decodable segment")->capture_default_str()->check(CLI::Range(1, 1 << 30));
  app->add_option("-j,--threads", o->threads, "Worker threads (0 = all cores)")->capture_default_str();
  app->add_flag("-f,--force", o->force, "Overwrite OUT if it exists");
  app->add_flag("-q,--quiet", o->quiet, "Print nothing on success");
  app->add_option("IN", o->in, "KV dump: .safetensors, .npz or .npy")->required();
  app->add_option("OUT", o->out, "Output .kvc file")->required();
  return {app, [o] {
            check_output(o->in, o->out, o->force);
            io::kv_dump d = io::read_kv_dump(o->in);
            codec c = make_codec(o->spec);
            progress_bar bar("encode");
            encode_options eo;
            eo.chunk_tokens = o->chunk;
            eo.layout = std::string(io::kv_layout_name(d.layout));
            eo.progress = bar.callback();
            encoded e = encode(cpu::par(o->threads), c, d.cache, eo);
            io::write_file_atomic(o->out, e.data, o->force);
            if (!o->quiet)
              std::printf("%s: %s, %zu bytes (%.4f bits/element, %.2fx smaller than fp16)\n", o->out.c_str(), e.report.spec.c_str(),
                          e.report.container_bytes, e.report.bits_per_element, 16.0 / e.report.bits_per_element);
            return 0;
          }};
}

}  // namespace kvcodec::cli
