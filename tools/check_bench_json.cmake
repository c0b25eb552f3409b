# Runs `multiproc bench ... --json` and checks the object it prints on stdout:
# our figure METRIC, the peer's figure PEER and a target comparing the two,
# with a ratio and a verdict. The benchmark's progress lines (stderr) are shown.
#   cmake -DPROGRAM=<multiproc> -DARGS=bench@@pipe.rtt@@--json -DMETRIC=<ours>
#         -DPEER=<peer metric> [-DTIMEOUT=s] -P check_bench_json.cmake
if(NOT PROGRAM OR NOT ARGS OR NOT METRIC OR NOT PEER)
  message(FATAL_ERROR "usage: cmake -DPROGRAM=... -DARGS=... -DMETRIC=... "
                      "-DPEER=... -P check_bench_json.cmake")
endif()
if(NOT DEFINED TIMEOUT)
  set(TIMEOUT 55)
endif()
string(REPLACE "@@" ";" args "${ARGS}")
execute_process(COMMAND "${PROGRAM}" ${args}
  OUTPUT_VARIABLE out ERROR_VARIABLE err RESULT_VARIABLE rc TIMEOUT ${TIMEOUT})
message("${err}")
if(NOT rc STREQUAL "0")
  message(FATAL_ERROR "${PROGRAM} exited with '${rc}'\n${out}")
endif()

# Each GET fails the script with the path it could not find.
macro(get_json var)
  string(JSON ${var} ERROR_VARIABLE json_error GET "${out}" ${ARGN})
  if(json_error)
    message(FATAL_ERROR "no ${ARGN} in the JSON: ${json_error}\n${out}")
  endif()
endmacro()

get_json(ours metrics ${METRIC} median)
get_json(peer peers ${PEER} median)
get_json(peer_source peers ${PEER} source)
get_json(count targets)
string(JSON count LENGTH "${out}" targets)
set(found OFF)
math(EXPR last "${count} - 1")
foreach(i RANGE ${last})
  get_json(t_metric targets ${i} metric)
  get_json(t_peer targets ${i} peer)
  if(t_metric STREQUAL METRIC AND t_peer STREQUAL PEER)
    get_json(ratio targets ${i} ratio)
    get_json(verdict targets ${i} verdict)
    set(found ON)
    break()
  endif()
endforeach()
if(NOT found)
  message(FATAL_ERROR "no target ${METRIC} / ${PEER} in the JSON\n${out}")
endif()
if(NOT ratio MATCHES "^[0-9]+([.][0-9]+)?(e[-+]?[0-9]+)?$")
  message(FATAL_ERROR "target ${METRIC} / ${PEER}: ratio '${ratio}'\n${out}")
endif()
if(NOT verdict MATCHES "^(met|NOT met)$")
  message(FATAL_ERROR "target ${METRIC} / ${PEER}: verdict '${verdict}'")
endif()
message(STATUS "${METRIC} ${ours}, ${PEER} ${peer} (${peer_source}): "
               "ratio ${ratio}, ${verdict}")
