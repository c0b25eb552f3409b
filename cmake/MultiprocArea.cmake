# multiproc_add_area(<area> SOURCES <files...> DEPENDS <targets...>)
# Declares one area library: target multiproc_<area>, alias multiproc::<area>,
# public headers in <area>/include (installed under include/multiproc/).
function(multiproc_add_area area)
  cmake_parse_arguments(arg "" "" "SOURCES;DEPENDS" ${ARGN})
  set(target multiproc_${area})
  add_library(${target} ${arg_SOURCES})
  add_library(multiproc::${area} ALIAS ${target})
  set_target_properties(${target} PROPERTIES EXPORT_NAME ${area} OUTPUT_NAME ${target})
  target_include_directories(${target} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_link_libraries(${target} PUBLIC ${arg_DEPENDS})
  multiproc_set_warnings(${target})
endfunction()
