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
