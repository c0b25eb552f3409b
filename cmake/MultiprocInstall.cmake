# Installation and the CMake package of multiproc (docs/building.md).
#
# `cmake --install <build> [--prefix <dir>]` installs:
#   <libdir>/libmultiproc_{runtime,serialization,actors}.a  static archives (the
#                                   default; BUILD_SHARED_LIBS=ON gives .so files)
#   <includedir>/multiproc/...      the headers of runtime/, serialization/ and
#                                   actors/, merged into one directory
#   <libdir>/cmake/multiproc/       multiprocTargets.cmake (multiproc::runtime,
#                                   multiproc::serialization, multiproc::actors,
#                                   multiproc::multiproc), multiprocConfig.cmake,
#                                   multiprocConfigVersion.cmake, FindCAF.cmake
#
# Included at the end of the top-level CMakeLists.txt, once every library
# target exists. tests/install checks the result from an outside project.

include(CMakePackageConfigHelpers)

set(MULTIPROC_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/multiproc"
    CACHE STRING "Where multiprocConfig.cmake is installed, relative to the prefix")
mark_as_advanced(MULTIPROC_INSTALL_CMAKEDIR)

set(_multiproc_libraries multiproc_runtime multiproc_serialization multiproc_actors)
set(_multiproc_areas runtime serialization actors)

# -- libraries ----------------------------------------------------------------

# Shared builds: the libraries find each other in their own directory, and
# CAF through the system's default search path.
if(BUILD_SHARED_LIBS)
  set_target_properties(${_multiproc_libraries} PROPERTIES INSTALL_RPATH "$ORIGIN")
endif()

install(TARGETS ${_multiproc_libraries} multiproc
  EXPORT multiprocTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}")

# -- headers ------------------------------------------------------------------

# The three include/multiproc/ directories become one; two areas shipping the
# same header path would silently overwrite each other, so that is an error.
set(_multiproc_seen_headers "")
foreach(area IN LISTS _multiproc_areas)
  set(_dir "${PROJECT_SOURCE_DIR}/${area}/include")
  file(GLOB_RECURSE _headers RELATIVE "${_dir}" "${_dir}/multiproc/*.hpp")
  foreach(header IN LISTS _headers)
    if(header IN_LIST _multiproc_seen_headers)
      message(FATAL_ERROR "multiproc: ${header} exists in more than one area's "
                          "include/ directory; installed headers would collide")
    endif()
    list(APPEND _multiproc_seen_headers "${header}")
  endforeach()
  install(DIRECTORY "${_dir}/multiproc"
    DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
    FILES_MATCHING PATTERN "*.hpp")
endforeach()

# -- package config -----------------------------------------------------------

# Packages behind namespaced targets in the exported link interface, beyond
# the three the config always finds (Threads, cereal, CAF). A static archive
# exports even its PRIVATE dependencies (as $<LINK_ONLY:...>), so e.g. spdlog
# linked privately into runtime must be found by consumers too.
set(_multiproc_link_interface "")
foreach(target IN LISTS _multiproc_libraries)
  get_target_property(_links ${target} INTERFACE_LINK_LIBRARIES)
  if(_links)
    list(APPEND _multiproc_link_interface ${_links})
  endif()
endforeach()
set(MULTIPROC_CONFIG_EXTRA_DEPENDENCIES "")
foreach(pkg IN ITEMS spdlog fmt nlohmann_json CLI11)
  if(_multiproc_link_interface MATCHES "(^|[;:<])${pkg}::")
    string(APPEND MULTIPROC_CONFIG_EXTRA_DEPENDENCIES "find_dependency(${pkg} CONFIG)\n")
  endif()
endforeach()

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/multiprocConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/multiprocConfig.cmake"
  INSTALL_DESTINATION "${MULTIPROC_INSTALL_CMAKEDIR}")

# 0.x releases: a minor version bump may break the API.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/multiprocConfigVersion.cmake"
  VERSION "${PROJECT_VERSION}"
  COMPATIBILITY SameMinorVersion)

install(EXPORT multiprocTargets
  NAMESPACE multiproc::
  DESTINATION "${MULTIPROC_INSTALL_CMAKEDIR}")

install(FILES
  "${PROJECT_BINARY_DIR}/multiprocConfig.cmake"
  "${PROJECT_BINARY_DIR}/multiprocConfigVersion.cmake"
  "${PROJECT_SOURCE_DIR}/cmake/FindCAF.cmake"
  DESTINATION "${MULTIPROC_INSTALL_CMAKEDIR}")
