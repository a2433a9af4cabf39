// Notices that an HTTP client has gone while its request waits on the cluster, and cancels the
// request's gRPC calls, so the coordinator stops its sequences and frees their KV blocks (as vLLM
// aborts a request whose client disconnected). A streamed answer also notices at its next write;
// a whole answer writes nothing until the end, and without this a client that gave up (a timeout,
// then a retry) would leave its generation running to max_tokens.
//
// civetweb does not hand out a connection's socket, so the watch finds it among the process's file
// descriptors by its two ends (the request's remote address and port, the server's port), then
// polls it for the peer's hang-up (POLLRDHUP: the client closed or reset its side) on a thread of
// its own until the request is done. A client that closed only its sending side (shutdown(SHUT_WR),
// as `nc -N` does) looks the same from here: it counts as gone, as in vLLM's server (uvicorn takes
// the end of the request stream as a disconnect), and reads 499 (kClientClosedRequest).
#pragma once

#include <grpcpp/client_context.h>

#include <mutex>
#include <set>
#include <thread>

struct mg_connection;

namespace moe::openai {

class ClientWatch {
 public:
  // Starts watching `conn`'s socket; a socket it cannot find (another platform, a unix socket) is
  // not watched, and the request runs as before.
  explicit ClientWatch(const mg_connection* conn);
  // A watch of no connection: its calls are cancelled by Cancel() alone (a background response's
  // calls, which its cancel request ends).
  ClientWatch() = default;
  ~ClientWatch();
  ClientWatch(const ClientWatch&) = delete;
  ClientWatch& operator=(const ClientWatch&) = delete;

  // The request's gRPC calls, cancelled when the client goes (a call added after that is
  // cancelled at once).
  void Add(grpc::ClientContext* ctx);
  void Remove(grpc::ClientContext* ctx);
  // Cancels the calls as a departed client would, and any added later.
  void Cancel();
  bool cancelled();

  // The watch of the request the calling thread serves (null: none), for the gRPC calls a request
  // makes (OpenAiServer::CallScope adds them). Set by a Current for the thread's lifetime in the
  // request; threads a request starts set it again from their parent's.
  static ClientWatch* current();
  class Current {
   public:
    explicit Current(ClientWatch* watch);
    ~Current();

   private:
    ClientWatch* previous_;
  };

 private:
  void Watch();

  int fd_ = -1;        // the connection's socket (not ours: civetweb closes it)
  int wake_ = -1;      // an eventfd: the destructor's write ends the watch
  std::thread thread_;
  std::mutex mu_;
  bool gone_ = false;
  std::set<grpc::ClientContext*> calls_;
};

}  // namespace moe::openai
