#include "worker/comm/mpi_launch.h"

#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <exception>

#include "worker/comm/local_communicator.h"
#include "worker/comm/mpi_communicator.h"

namespace moe {

bool LaunchedByMpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK");
}

int RunAsJob(int& argc, char**& argv, const char* program, const std::function<int(Communicator&)>& body) {
  const bool mpi = LaunchedByMpirun();
  try {
    if (!mpi) {
      LocalCommunicator comm;
      return body(comm);
    }
    MPI_Init(&argc, &argv);
    int rc = 0;
    {
      MpiCommunicator comm(MPI_COMM_WORLD);
      rc = body(comm);
    }
    MPI_Finalize();
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: internal error: %s\n", program, e.what());
    if (mpi) MPI_Abort(MPI_COMM_WORLD, 1);
    return 1;
  }
}

}  // namespace moe
