#include "coordinator/openai/client_watch.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>

#include <civetweb.h>

namespace moe::openai {
namespace {

thread_local ClientWatch* current_watch = nullptr;

// The address and port of one end of a socket, as civetweb prints a remote address.
bool End(int fd, bool peer, std::string& addr, int& port) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if ((peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len)) != 0) {
    return false;
  }
  char text[INET6_ADDRSTRLEN] = {0};
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
    port = ntohs(a->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
    port = ntohs(a->sin6_port);
  } else {
    return false;
  }
  addr = text;
  return true;
}

// The descriptor of the TCP connection from remote_addr:remote_port to our server_port, or -1.
int FindSocket(const mg_request_info& info) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* e = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
    std::string addr;
    int port = 0;
    if (!End(static_cast<int>(fd), /*peer=*/true, addr, port) || port != info.remote_port || addr != info.remote_addr) continue;
    if (!End(static_cast<int>(fd), /*peer=*/false, addr, port) || port != info.server_port) continue;
    found = static_cast<int>(fd);
    break;
  }
  closedir(dir);
  return found;
}

}  // namespace

ClientWatch::ClientWatch(const mg_connection* conn) {
  const mg_request_info* info = conn ? mg_get_request_info(conn) : nullptr;
  if (info == nullptr) return;
  fd_ = FindSocket(*info);
  if (fd_ < 0) return;
  wake_ = eventfd(0, EFD_CLOEXEC);
  if (wake_ < 0) {
    fd_ = -1;
    return;
  }
  try {
    thread_ = std::thread([this] { Watch(); });
  } catch (const std::system_error&) {  // no thread to spare: the request runs unwatched
    fd_ = -1;
  }
}

ClientWatch::~ClientWatch() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!write(wake_, &one, sizeof(one));
    thread_.join();
  }
  if (wake_ >= 0) close(wake_);
}

void ClientWatch::Watch() {
  // Only the hang-up: POLLIN would wake for bytes a client sends after its request.
  pollfd fds[2] = {{fd_, POLLRDHUP, 0}, {wake_, POLLIN, 0}};
  while (true) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;  // the request is done
    if ((fds[0].revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) break;
  }
  Cancel();
}

void ClientWatch::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  gone_ = true;
  for (grpc::ClientContext* c : calls_) c->TryCancel();
}

bool ClientWatch::cancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  return gone_;
}

void ClientWatch::Add(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.insert(ctx);
  if (gone_) ctx->TryCancel();
}

void ClientWatch::Remove(grpc::ClientContext* ctx) {
  std::lock_guard<std::mutex> lock(mu_);
  calls_.erase(ctx);
}

ClientWatch* ClientWatch::current() { return current_watch; }

ClientWatch::Current::Current(ClientWatch* watch) : previous_(current_watch) { current_watch = watch; }

ClientWatch::Current::~Current() { current_watch = previous_; }

}  // namespace moe::openai
