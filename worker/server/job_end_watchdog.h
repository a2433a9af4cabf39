// Once a rank's job has ended (the coordinator sent Shutdown, or its Serve stream closed) the rank
// leaves within a step, or, while it loads, within a layer. A peer that hangs without dying (SIGSTOP,
// a host that vanished, a network cut) would hold it for ever in the collective where they next
// meet (the all-reduce after the load, a step's exchange, MPI_Finalize): MPI has no timeout there.
// The watchdog, a thread of its own, sees the job's end in the rank's inbox (JobEndIn) and, if the
// rank is still here `grace` later (whatever holds it: a hung peer, or a slow exit), calls `leave`
// naming why: moe-worker prints it and ends the process without MPI (exit 1), and mpirun then ends
// the job's other ranks, the hung one included. The job has ended either way: nothing is lost.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "worker/server/inbox.h"

namespace moe {

class JobEndWatchdog {
 public:
  // `leave` runs at most once, on the watchdog's thread, with a sentence saying when and how the
  // job ended. grace <= 0: never (the watchdog does not start).
  JobEndWatchdog(std::shared_ptr<const Inbox> inbox, std::chrono::milliseconds grace,
                 std::function<void(const std::string& why)> leave);
  ~JobEndWatchdog();  // stops watching (without calling `leave`)

  JobEndWatchdog(const JobEndWatchdog&) = delete;
  JobEndWatchdog& operator=(const JobEndWatchdog&) = delete;

  // How often the inbox is looked at: the grace is kept to within this.
  static constexpr std::chrono::milliseconds kPollInterval{100};

 private:
  void Watch();

  const std::shared_ptr<const Inbox> inbox_;
  const std::chrono::milliseconds grace_;
  const std::function<void(const std::string&)> leave_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace moe
