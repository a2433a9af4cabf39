// Runs a function on a thread of its own with a stack of a chosen size and waits for it. For work
// on client input that recurses (the chat-template parser, JSON schemas, regular expressions, JSON
// documents) when the calling thread's stack is small: civetweb's worker threads, which serve
// moe-openai-server's requests, get about 100 KB, where a parser bounded to a few hundred levels
// needs around a megabyte.
#pragma once

#include <cstddef>
#include <functional>

namespace moe {

inline constexpr size_t kBigStackBytes = size_t{8} << 20;  // what the main thread gets on Linux

// Calls `fn` on a new thread whose stack is `stack_bytes` and returns when it has returned. An
// exception `fn` throws is thrown here; std::system_error when the thread cannot be made.
void RunWithStack(size_t stack_bytes, const std::function<void()>& fn);

}  // namespace moe
