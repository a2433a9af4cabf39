# MOE_CUDA: AUTO builds the CUDA parts whenever a CUDA compiler is found (CI has nvcc but no GPU,
# so it compiles them and the GPU tests skip); ON requires the toolkit; OFF skips it.
# Sets MOE_WITH_CUDA and, with it, the CUDA language, CUDA::cudart / CUDA::cublas / CUDA::cublasLt
# and the imported target moe::nccl.
set(MOE_WITH_CUDA OFF)
if(NOT MOE_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(MOE_WITH_CUDA ON)
  elseif(MOE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "MOE_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER)")
  endif()
endif()

if(MOE_WITH_CUDA)
  # Hopper (H100/H200) machine code plus portable PTX for newer GPUs.
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES "90-real;90-virtual")
  endif()
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)  # CMake 3.25 does not know nvcc's C++20 flag; the kernels need 17
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS} /usr/local/include /usr/include)
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR} /usr/local/lib /usr/lib/x86_64-linux-gnu)
  if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
    message(FATAL_ERROR "CUDA found but NCCL (nccl.h, libnccl) was not")
  endif()
  add_library(moe::nccl UNKNOWN IMPORTED)
  set_target_properties(moe::nccl PROPERTIES IMPORTED_LOCATION ${NCCL_LIBRARY}
                                             INTERFACE_INCLUDE_DIRECTORIES ${NCCL_INCLUDE_DIR})
  message(STATUS "CUDA backend: ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}, NCCL ${NCCL_LIBRARY})")
else()
  message(STATUS "CUDA backend: OFF")
endif()
