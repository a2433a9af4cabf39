// Watches the calls whose handlers wait in a Mailbox for client cancellation and deadlines, and
// wakes such a handler (Mailbox::Interrupt) once its call is cancelled. The sync gRPC API tells a
// handler of cancellation only when it asks (ServerContext::IsCancelled); one thread asking for
// every waiting call, every `period`, costs one wakeup a period, where a handler asking for itself
// on a timer cost one a period per request (a full queue: tens of thousands a second).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include <grpcpp/server_context.h>

#include "coordinator/mailbox.h"

namespace moe {

class CancelWatch {
 public:
  explicit CancelWatch(std::chrono::milliseconds period);
  ~CancelWatch();
  CancelWatch(const CancelWatch&) = delete;
  CancelWatch& operator=(const CancelWatch&) = delete;

  // While it lives, `mailbox` is interrupted (every period) once `context` is cancelled. It must
  // not outlive the call (the handler's scope).
  class Registration {
   public:
    Registration(CancelWatch& watch, const grpc::ServerContext* context, std::shared_ptr<Mailbox> mailbox);
    ~Registration();
    Registration(const Registration&) = delete;
    Registration& operator=(const Registration&) = delete;

   private:
    CancelWatch& watch_;
    uint64_t id_;
  };

 private:
  struct Entry {
    const grpc::ServerContext* context;
    std::shared_ptr<Mailbox> mailbox;
  };
  void Run();

  const std::chrono::milliseconds period_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Entry> entries_;
  std::thread thread_;
};

}  // namespace moe
