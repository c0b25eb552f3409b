# Driver of the install.consumer_builds test (cmake -P; see CMakeLists.txt):
#   1. cmake --install MULTIPROC_BUILD_DIR --prefix STAGE_DIR
#   2. checks the installed layout (package config files, headers)
#   3. configures, builds and runs the consumer project against STAGE_DIR
#   4. checks the consumer's output
# Every step's output is printed when it fails.

foreach(var MULTIPROC_BUILD_DIR STAGE_DIR CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR
            GENERATOR CXX_COMPILER EXPECTED_VERSION)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check_install.cmake: -D${var}=... is required")
  endif()
endforeach()

# Runs a command; on failure prints its output and stops the test. Leaves its
# stdout in step_output (stderr, e.g. sanitizer notes, is not compared).
function(run_step name)
  message(STATUS "[install test] ${name}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE rc
    OUTPUT_VARIABLE out
    ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmdline "${ARGN}")
    message(FATAL_ERROR "[install test] ${name} failed (${rc}):\n  ${cmdline}\n"
                        "stdout:\n${out}\nstderr:\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

set(config_args "")
if(NOT "${BUILD_TYPE}" STREQUAL "")
  set(config_args --config "${BUILD_TYPE}")
endif()

# A stale stage or consumer build must not make a broken install look good;
# DESTDIR from the caller's environment would move the stage elsewhere.
file(REMOVE_RECURSE "${STAGE_DIR}" "${CONSUMER_BINARY_DIR}")
unset(ENV{DESTDIR})

# -- 1. install ---------------------------------------------------------------
run_step("cmake --install"
  "${CMAKE_COMMAND}" --install "${MULTIPROC_BUILD_DIR}" --prefix "${STAGE_DIR}" ${config_args})

# -- 2. layout ----------------------------------------------------------------
# The libdir is lib/ or lib/<multiarch>/ depending on the configured prefix.
file(GLOB_RECURSE config_file "${STAGE_DIR}/multiprocConfig.cmake")
list(LENGTH config_file n)
if(NOT n EQUAL 1)
  message(FATAL_ERROR "[install test] expected one multiprocConfig.cmake under "
                      "${STAGE_DIR}, found ${n}: ${config_file}")
endif()
get_filename_component(package_dir "${config_file}" DIRECTORY)
foreach(f multiprocConfigVersion.cmake multiprocTargets.cmake FindCAF.cmake)
  if(NOT EXISTS "${package_dir}/${f}")
    message(FATAL_ERROR "[install test] ${package_dir}/${f} was not installed")
  endif()
endforeach()
foreach(f multiproc/error.hpp)
  if(NOT EXISTS "${STAGE_DIR}/include/${f}")
    message(FATAL_ERROR "[install test] ${STAGE_DIR}/include/${f} was not installed")
  endif()
endforeach()

# -- 3. consumer --------------------------------------------------------------
set(configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BINARY_DIR}"
  -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
  "-DCMAKE_PREFIX_PATH=${STAGE_DIR}"
  "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}"
  "-DCMAKE_EXE_LINKER_FLAGS=${EXE_LINKER_FLAGS}"
  "-DMULTIPROC_EXPECTED_DIR=${package_dir}"
  "-DMULTIPROC_EXPECTED_VERSION=${EXPECTED_VERSION}"
  # The user package registry could point at some other multiproc.
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(DEFINED MAKE_PROGRAM AND NOT "${MAKE_PROGRAM}" STREQUAL "")
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(NOT "${BUILD_TYPE}" STREQUAL "")
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
  # Single-config generators: the flags of this build type, e.g. -O2 of the
  # release preset instead of CMake's default -O3.
  if(NOT "${CXX_FLAGS_BUILD_TYPE}" STREQUAL "")
    string(TOUPPER "${BUILD_TYPE}" build_type_upper)
    list(APPEND configure_args "-DCMAKE_CXX_FLAGS_${build_type_upper}=${CXX_FLAGS_BUILD_TYPE}")
  endif()
endif()
run_step("configure consumer" "${CMAKE_COMMAND}" ${configure_args})
run_step("build consumer"
  "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}" ${config_args} --parallel 2)

# -- 4. run -------------------------------------------------------------------
set(exe "${CONSUMER_BINARY_DIR}/consumer")
if(NOT EXISTS "${exe}" AND NOT "${BUILD_TYPE}" STREQUAL "")
  set(exe "${CONSUMER_BINARY_DIR}/${BUILD_TYPE}/consumer")
endif()
run_step("run consumer" "${exe}")
set(expected "7^2 = 49")
string(STRIP "${step_output}" actual)
if(NOT actual STREQUAL expected)
  message(FATAL_ERROR "[install test] consumer printed\n  '${actual}'\nexpected\n  '${expected}'")
endif()
message(STATUS "[install test] consumer printed '${actual}': ok")
