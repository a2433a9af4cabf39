// The MoE layer of one rank: route -> dispatch -> expert compute -> combine, with the token
// exchange between the stages done by a Communicator. With one rank the exchanges are copies; with
// many, rows travel to the ranks that own their experts and come back weighted.
#pragma once

#include <cstdint>
#include <vector>

#include "coordinator/placement.h"
#include "worker/comm/communicator.h"
#include "worker/model/config.h"
#include "worker/model/weights.h"
#include "worker/moe/experts.h"
#include "worker/moe/load_stats.h"
#include "worker/moe/router.h"

namespace moe {

class MoeLayer {
 public:
  MoeLayer(const ModelConfig& c, const PlacementPlan& plan, Communicator& comm, LoadStats& stats)
      : c_(c), plan_(plan), comm_(comm), stats_(stats), experts_(c) {}

  // A collective: every rank calls it for every layer, with T = 0 when it has no rows.
  // h: the normalised hidden states [T, H]; out: the layer's output [T, H].
  // When `record` is given, the router logits [T, E] and the routing are kept there.
  struct Record {
    std::vector<float> router_logits;
    Routing routing;
  };
  void Forward(int64_t layer, const MoeWeights& w, const float* h, int64_t T, float* out, Record* record = nullptr);

 private:
  const ModelConfig& c_;
  const PlacementPlan& plan_;
  Communicator& comm_;
  LoadStats& stats_;
  ExpertRunner experts_;
  std::vector<float> logits_, send_, recv_, computed_, returned_;
  std::vector<int64_t> recv_counts_, recv_rows_;
};

}  // namespace moe
