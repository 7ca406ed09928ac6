# CMake toolchain for cross-compiling to 64-bit Arm Linux with clang (--target=aarch64-linux-gnu)
# against the aarch64 libc and libstdc++ of Debian's cross compiler (apt-get install clang
# g++-aarch64-linux-gnu), which clang finds on its own. Sysroot, search modes and the qemu-user
# emulator are those of the GCC toolchain file.
include(${CMAKE_CURRENT_LIST_DIR}/toolchain-aarch64-linux-gnu.cmake)

set(CMAKE_C_COMPILER clang)
set(CMAKE_CXX_COMPILER clang++)
set(CMAKE_C_COMPILER_TARGET aarch64-linux-gnu)
set(CMAKE_CXX_COMPILER_TARGET aarch64-linux-gnu)
