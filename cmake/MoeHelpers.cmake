# One helper per kind of target, so every library, program and test is declared the same way.

# GCC 12 reports false -Wrestrict warnings on inlined std::string concatenation (GCC bug 105329).
set(MOE_WARNINGS -Wall -Wextra $<$<CXX_COMPILER_ID:GNU>:-Wno-restrict>)

# moe_add_library(NAME SOURCES ... [DEPS ...])
function(moe_add_library name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${MOE_WARNINGS}>)
endfunction()

# moe_add_program(NAME SOURCES ... [DEPS ...])
function(moe_add_program name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  target_compile_options(${name} PRIVATE ${MOE_WARNINGS})
endfunction()

# moe_add_test(NAME SOURCES ... [DEPS ...] [LABELS ...])  (LABELS gpu: a GPU test)
# A GoogleTest executable registered with CTest. Tests find their data through MOE_SOURCE_DIR
# and the built programs through MOE_BINARY_DIR.
function(moe_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  target_compile_options(${name} PRIVATE ${MOE_WARNINGS})
  if(NOT "moe_test_support" IN_LIST ARG_DEPS)
    target_compile_definitions(${name} PRIVATE
      MOE_SOURCE_DIR="${PROJECT_SOURCE_DIR}" MOE_BINARY_DIR="${PROJECT_BINARY_DIR}")
  endif()
  add_test(NAME ${name} COMMAND ${name})
  # GPU tests carry the label gpu (they skip without a device); everything else is cpu.
  if("gpu" IN_LIST ARG_LABELS)
    set(labels ${ARG_LABELS})
  else()
    set(labels cpu ${ARG_LABELS})
  endif()
  set_tests_properties(${name} PROPERTIES LABELS "${labels}" TIMEOUT 600)
endfunction()

# moe_add_mpi_test(NAME RANKS N SOURCES ... [DEPS ...] [LABELS ...] [VARIANT V ENV VAR=VALUE ... ARGS ...])
# A GoogleTest executable run under `mpirun -np N --oversubscribe` by CTest (test NAME_npN). Its
# main() comes from tests/support/mpi_test_main.cc (every rank runs every test; any rank's failure
# fails the run). VARIANT runs the same program again as test NAME_V_npN, with ENV added to its
# environment and ARGS to its command line.
function(moe_add_mpi_test name)
  cmake_parse_arguments(ARG "" "RANKS;VARIANT" "SOURCES;DEPS;LABELS;ENV;ARGS" ${ARGN})
  if(NOT TARGET ${name})
    add_executable(${name} ${ARG_SOURCES})
    target_link_libraries(${name} PRIVATE ${ARG_DEPS} moe_mpi_test_main MPI::MPI_CXX GTest::gtest)
    target_compile_options(${name} PRIVATE ${MOE_WARNINGS})
    target_compile_definitions(${name} PRIVATE
      MOE_SOURCE_DIR="${PROJECT_SOURCE_DIR}" MOE_BINARY_DIR="${PROJECT_BINARY_DIR}")
  endif()
  set(test ${name})
  if(ARG_VARIANT)
    set(test ${name}_${ARG_VARIANT})
  endif()
  add_test(NAME ${test}_np${ARG_RANKS}
           COMMAND ${MPIRUN_EXECUTABLE} --oversubscribe -np ${ARG_RANKS} $<TARGET_FILE:${name}> ${ARG_ARGS})
  if("gpu" IN_LIST ARG_LABELS)  # GPU tests carry gpu, not cpu (they skip without devices)
    set(labels mpi ${ARG_LABELS})
  else()
    set(labels cpu mpi ${ARG_LABELS})
  endif()
  set_tests_properties(${test}_np${ARG_RANKS} PROPERTIES
    LABELS "${labels}" TIMEOUT 600
    ENVIRONMENT "OMPI_ALLOW_RUN_AS_ROOT=1;OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1;OMPI_MCA_rmaps_base_oversubscribe=1;${ARG_ENV}")
endfunction()
