// Keepalive pings (HTTP/2 PINGs) on the cluster port's connections, between the coordinator and its
// worker ranks. gRPC's own threads answer them, so a rank busy loading its shard (its Serve stream
// idle for minutes) or a coordinator busy with other work still answers; a host that vanished
// without closing its connection (power loss, network cut, a stopped process) does not, and the
// side that pinged it breaks the connection, which ends the Serve stream: the coordinator counts
// the rank lost, the rank sees its coordinator lost. Without them gRPC notices such a peer only
// after TCP's own keepalive, about 2 h.
#pragma once

#include <algorithm>
#include <chrono>

namespace moe {

struct ClusterKeepAlive {
  std::chrono::milliseconds time;     // a ping once the connection has been this long without one
  std::chrono::milliseconds timeout;  // and the connection breaks when its answer takes longer
};

// The coordinator's pings to each rank, from its --heartbeat-timeout-s (the one knob for "how long
// a silent rank may live on"): every half timeout, each answered within the timeout, so a vanished
// rank is lost within about 1.5 timeouts, as a serving rank whose heartbeats stop is. At least 1 s
// each: a connection of a loaded host must not break for a ping answered a few ms late. At most
// 10^6 s (gRPC takes milliseconds as an int).
inline ClusterKeepAlive CoordinatorKeepAlive(double heartbeat_timeout_s) {
  const auto ms = [](double s) { return std::chrono::milliseconds(static_cast<long long>(std::min(s, 1e6) * 1000)); };
  return {std::max(ms(heartbeat_timeout_s / 2), std::chrono::milliseconds(1000)),
          std::max(ms(heartbeat_timeout_s), std::chrono::milliseconds(1000))};
}

// A rank's pings to the coordinator: fixed, as a rank connects before it could learn the
// coordinator's timeout. A vanished coordinator is seen within about 90 s; generous, because a
// coordinator stopped (a suspended VM, a debugger) for longer than the timeout loses its whole
// worker job this way, where a shorter stop costs nothing.
inline constexpr ClusterKeepAlive kWorkerKeepAlive{std::chrono::seconds(30), std::chrono::seconds(60)};

// How often the coordinator accepts a rank's pings while it sends the rank no data (a loading
// rank): gRPC's default, 5 min, would count the ranks' pings as abuse and close their connections
// (GOAWAY too_many_pings). Half the ranks' interval leaves room for timer jitter.
inline constexpr std::chrono::milliseconds kMinWorkerPingInterval = kWorkerKeepAlive.time / 2;

}  // namespace moe
