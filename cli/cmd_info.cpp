// kvcodec info FILE
#include <cinttypes>

#include "common.hpp"
#include "kvcodec/format/shape_json.hpp"

namespace kvcodec::cli {

command add_info(CLI::App& root) {
  auto* app = root.add_subcommand("info", "Show a .kvc container's header, codec, sizes, bits/element and segment table");
  struct opts {
    std::string in;
    bool json = false, verify = false;
  };
  auto o = std::make_shared<opts>();
  app->add_flag("--json", o->json, "Print JSON instead of text");
  app->add_flag("--verify", o->verify, "Also verify every segment checksum");
  app->add_option("FILE", o->in, "A .kvc file")->required();
  return {app, [o] {
            const bytes file = io::read_file(o->in);
            const kvc_view v = parse_kvc(file, o->in);
            const auto& h = v.header;
            std::uint64_t codec_bytes = 0;
            for (const auto& s : h.segments) codec_bytes += s.size;
            for (const auto& s : h.states) codec_bytes += s.size;
            if (o->verify) {
              for (std::size_t i = 0; i < h.segments.size(); ++i) v.segment_bytes(i);
              for (std::size_t i = 0; i < h.states.size(); ++i) v.state_bytes(i);
            }
            const double bpe = static_cast<double>(codec_bytes) * 8.0 / static_cast<double>(h.shape.kv_elements());
            if (o->json) {
              nlohmann::json j;
              j["file"] = o->in;
              j["version"] = h.version;
              j["codec"] = h.codec;
              j["shape"] = shape_json(h.shape);
              j["dtype"] = std::string(dtype_name(h.source_dtype));
              j["layout"] = h.layout;
              j["sparse"] = h.sparse;
              j["chunk_tokens"] = h.chunk_tokens;
              j["metadata"] = h.metadata;
              j["container_bytes"] = v.file_size;
              j["codec_bytes"] = codec_bytes;
              j["bits_per_element"] = bpe;
              j["verified"] = o->verify;
              nlohmann::json segs = nlohmann::json::array();
              for (const auto& s : h.segments)
                segs.push_back({{"layer", s.layer}, {"t0", s.t0}, {"t1", s.t1}, {"offset", s.offset}, {"size", s.size}, {"checksum", s.checksum}});
              j["segments"] = segs;
              std::cout << j.dump(2) << "\n";
              return 0;
            }
            std::printf("file            %s\n", o->in.c_str());
            std::printf("format          kvc version %u\n", h.version);
            std::printf("codec           %s\n", h.codec.c_str());
            std::printf("shape           %d layers x %d kv heads x %lld tokens x %d head_dim (q_heads %d)\n", h.shape.layers, h.shape.kv_heads,
                        static_cast<long long>(h.shape.tokens), h.shape.head_dim, h.shape.q_heads);
            std::printf("source dtype    %s\n", std::string(dtype_name(h.source_dtype)).c_str());
            std::printf("layout          %s\n", h.layout.empty() ? "(none)" : h.layout.c_str());
            std::printf("token dropping  %s\n", h.sparse ? "yes (kept-token masks per segment)" : "no");
            std::printf("metadata        ");
            for (const auto& [k, val] : h.metadata) std::printf("%s=%s ", k.c_str(), val.c_str());
            std::printf("\n");
            std::printf("container       %zu bytes, version %u (%" PRIu64 " codec bytes, %" PRIu64 " header, index and framing bytes)\n", v.file_size,
                        h.version, codec_bytes, static_cast<std::uint64_t>(v.file_size) - codec_bytes);
            std::printf("bits/element    %.4f (%.2fx smaller than fp16)\n", bpe, 16.0 / bpe);
            std::printf("segments        %zu of %lld tokens%s\n", h.segments.size(), static_cast<long long>(h.chunk_tokens),
                        o->verify ? ", all checksums verified" : "");
            std::printf("  %5s %10s %10s %12s %10s %16s\n", "layer", "from", "to", "offset", "size", "xxh3-64");
            for (const auto& s : h.segments)
              std::printf("  %5d %10lld %10lld %12" PRIu64 " %10" PRIu64 " %016" PRIx64 "\n", s.layer, static_cast<long long>(s.t0),
                          static_cast<long long>(s.t1), s.offset, s.size, s.checksum);
            return 0;
          }};
}

}  // namespace kvcodec::cli
