#include "coordinator/expert_load.h"

#include <google/protobuf/util/json_util.h>

#include "common/file_util.h"
#include "moe/v1/inference.pb.h"

namespace moe {

absl::StatusOr<std::vector<std::vector<double>>> ReadExpertLoad(const std::string& path, const ModelConfig& config) {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("--expert-load ", path, ": ", what));
  };
  const absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return bad(text.status().message());
  v1::Stats stats;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // a newer client's fields
  if (const auto parsed = google::protobuf::util::JsonStringToMessage(*text, &stats, options); !parsed.ok()) {
    return bad(absl::StrCat("not the JSON of GetStats' answer (moe-client stats): ", parsed.message().as_string()));
  }
  if (stats.layers_size() != config.num_layers) {
    return bad(absl::StrCat("has the load of ", stats.layers_size(), " layers; the model has ", config.num_layers,
                            stats.layers_size() == 0 ? " (is it moe-client stats output, taken after the cluster served requests?)" : ""));
  }
  std::vector<std::vector<double>> load(static_cast<size_t>(config.num_layers));
  double total = 0;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const v1::LayerLoad& layer = stats.layers(static_cast<int>(l));
    if (layer.layer() != l) return bad(absl::StrCat("layers[", l, "] is layer ", layer.layer(), "; expected ", l));
    if (layer.expert_tokens_size() != config.num_experts) {
      return bad(absl::StrCat("layers[", l, "].expert_tokens has ", layer.expert_tokens_size(), " counts; the model has ",
                              config.num_experts, " experts"));
    }
    for (int64_t e = 0; e < config.num_experts; ++e) {
      const int64_t tokens = layer.expert_tokens(static_cast<int>(e));
      if (tokens < 0) return bad(absl::StrCat("layers[", l, "].expert_tokens[", e, "] is negative"));
      load[l].push_back(static_cast<double>(tokens));
      total += static_cast<double>(tokens);
    }
  }
  if (total == 0) return bad("no tokens were routed to any expert (take it after the cluster has served requests)");
  return load;
}

}  // namespace moe
