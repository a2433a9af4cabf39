// The MPI tests' communicator over all ranks (MPI is initialised by tests/support/mpi_test_main.cc).
#pragma once

#include <mpi.h>

#include "worker/comm/mpi_communicator.h"

namespace moe::testing_ref {

inline MpiCommunicator& World() {
  static MpiCommunicator comm(MPI_COMM_WORLD);
  return comm;
}

}  // namespace moe::testing_ref
