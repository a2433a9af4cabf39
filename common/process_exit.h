// How the programs that hold gRPC client channels end. gRPC's threads may still be at work when
// main returns (a channel that failed its TLS handshake keeps re-resolving and builds a new TLS
// context each time), and exit()'s handlers tear down OpenSSL under them: that crashed a worker
// that could not verify the coordinator, after its error was printed. A program whose work has
// ended (files closed, MPI finalized, links closed) ends through here instead, without exit
// handlers.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace moe {

[[noreturn]] inline void EndProcess(int code) {
  std::fflush(nullptr);
  std::_Exit(code);
}

}  // namespace moe
