# Every dependency comes from the system (Debian packages, scripts/install-deps.sh).
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(nlohmann_json CONFIG REQUIRED)
find_package(MPI REQUIRED COMPONENTS CXX)
find_package(GTest CONFIG REQUIRED)
find_package(PkgConfig REQUIRED)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# OpenBLAS for the CPU GEMMs (cblas_sgemm). Its pkg-config file names the library and headers.
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)

find_program(MPIRUN_EXECUTABLE NAMES mpirun REQUIRED)

# gRPC and protobuf (Debian: libgrpc++-dev, protobuf-compiler-grpc, libprotobuf-dev).
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)
find_program(MOE_PROTOC NAMES protoc REQUIRED)
find_program(MOE_GRPC_CPP_PLUGIN NAMES grpc_cpp_plugin REQUIRED)
find_program(MOE_GRPC_PYTHON_PLUGIN NAMES grpc_python_plugin REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)
