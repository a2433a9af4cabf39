// How a program of this project runs as a job: started under mpirun it initialises MPI and runs
// with an MpiCommunicator (one rank of many); started plainly it runs as the single rank with a
// LocalCommunicator, without touching MPI. An internal error aborts the whole MPI job, so no rank
// is left waiting in a collective.
#pragma once

#include <functional>

#include "worker/comm/communicator.h"

namespace moe {

// True when this process was started by mpirun (Open MPI or a PMI launcher).
bool LaunchedByMpirun();

// Runs `body` with the job's communicator and returns its exit status; `program` names the
// program in the message printed for an uncaught exception (exit status 1).
int RunAsJob(int& argc, char**& argv, const char* program, const std::function<int(Communicator&)>& body);

}  // namespace moe
