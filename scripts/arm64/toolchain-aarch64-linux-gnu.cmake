# CMake toolchain for cross-compiling to 64-bit Arm Linux with Debian's cross compiler
# (apt-get install g++-aarch64-linux-gnu). Programs built with it run on x86-64 under
# qemu-user: `qemu-aarch64 -L /usr/aarch64-linux-gnu ./program` (apt-get install qemu-user).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Debian installs the target's libc and libstdc++ here.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# BOTH so find_package() also finds packages installed under a prefix outside the sysroot
# (the gemma3_edge package that the ARM64 script installs into its build folder).
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# try_run() and ctest run target programs through qemu-user.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /usr/aarch64-linux-gnu)
