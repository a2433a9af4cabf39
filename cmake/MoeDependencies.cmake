# Every dependency comes from the system (Debian packages, scripts/install-deps.sh).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(GTest CONFIG REQUIRED)

# SentencePiece and OpenBLAS (cblas_sgemm for the CPU GEMMs) are found by file rather than through
# pkg-config, so that packages unpacked under a prefix (the GPU machine: scripts/device-deps.sh)
# work as well as installed ones. Debian keeps OpenBLAS in an openblas-pthread subfolder.
function(moe_find_library target header library)
  string(TOUPPER ${target} var)
  find_path(${var}_INCLUDE_DIR ${header} PATH_SUFFIXES openblas-pthread openblas REQUIRED)
  find_library(${var}_LIBRARY ${library} PATH_SUFFIXES openblas-pthread openblas REQUIRED)
  add_library(${target} UNKNOWN IMPORTED GLOBAL)
  set_target_properties(${target} PROPERTIES IMPORTED_LOCATION ${${var}_LIBRARY}
                                             INTERFACE_INCLUDE_DIRECTORIES ${${var}_INCLUDE_DIR})
  message(STATUS "${target}: ${${var}_LIBRARY}")
endfunction()
moe_find_library(moe_openblas cblas.h openblas)

find_program(MPIRUN_EXECUTABLE NAMES mpirun REQUIRED)

# gRPC and protobuf (Debian: libgrpc++-dev, protobuf-compiler-grpc, libprotobuf-dev).
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_program(MOE_PROTOC NAMES protoc REQUIRED)
find_program(MOE_GRPC_CPP_PLUGIN NAMES grpc_cpp_plugin REQUIRED)
find_program(MOE_GRPC_PYTHON_PLUGIN NAMES grpc_python_plugin REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)
# civetweb (Debian: libcivetweb-dev; prometheus-cpp's exposer is built on it): moe-openai-server's HTTP.
find_package(civetweb CONFIG REQUIRED)
