#include "common/big_stack_thread.h"

#include <pthread.h>

#include <exception>
#include <system_error>

namespace moe {
namespace {

struct Call {
  const std::function<void()>* fn;
  std::exception_ptr error;
};

void* Run(void* arg) {
  auto* call = static_cast<Call*>(arg);
  try {
    (*call->fn)();
  } catch (...) {
    call->error = std::current_exception();
  }
  return nullptr;
}

}  // namespace

void RunWithStack(size_t stack_bytes, const std::function<void()>& fn) {
  pthread_attr_t attr;
  if (int e = pthread_attr_init(&attr); e != 0) throw std::system_error(e, std::generic_category(), "pthread_attr_init");
  Call call{&fn, nullptr};
  pthread_t thread;
  int e = pthread_attr_setstacksize(&attr, stack_bytes);
  if (e == 0) e = pthread_create(&thread, &attr, &Run, &call);
  pthread_attr_destroy(&attr);
  if (e != 0) throw std::system_error(e, std::generic_category(), "a thread for the request");
  pthread_join(thread, nullptr);
  if (call.error) std::rethrow_exception(call.error);
}

}  // namespace moe
