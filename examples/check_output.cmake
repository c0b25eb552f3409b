# Runs a program and checks its output: cmake -DPROGRAM=<path> [-DARGS=a@@b]
# -DEXPECT=<regex>@@<regex>... [-DORDERED=OFF] [-DEXIT_CODE=n] [-DTIMEOUT=s] -P check_output.cmake
# stdout and stderr are merged in write order (2>&1). The program must exit 0
# (or EXIT_CODE) and print a match for every regex; with ORDERED (the default) each match
# must come after the previous one. "@@" separates list items so that regexes
# may contain ';' and brackets.

if(NOT PROGRAM OR NOT DEFINED EXPECT)
  message(FATAL_ERROR "usage: cmake -DPROGRAM=... -DEXPECT=... -P check_output.cmake")
endif()
if(NOT DEFINED ORDERED)
  set(ORDERED ON)
endif()
if(NOT DEFINED EXIT_CODE)
  set(EXIT_CODE 0)
endif()
# Seconds the program may run (keep it below the test's TIMEOUT).
if(NOT DEFINED TIMEOUT)
  set(TIMEOUT 55)
endif()

set(args "")
if(ARGS)
  string(REPLACE "@@" ";" args "${ARGS}")
endif()

execute_process(
  COMMAND /bin/sh -c "exec \"$0\" \"$@\" 2>&1" "${PROGRAM}" ${args}
  OUTPUT_VARIABLE output
  RESULT_VARIABLE result
  TIMEOUT ${TIMEOUT})
message("${output}")
if(NOT result STREQUAL "${EXIT_CODE}")
  message(FATAL_ERROR "${PROGRAM} exited with '${result}', expected ${EXIT_CODE}")
endif()

# Walk the patterns one by one (no list splitting: regexes hold brackets).
set(rest "${output}")
set(patterns "${EXPECT}@@")
while(NOT patterns STREQUAL "")
  string(FIND "${patterns}" "@@" sep)
  string(SUBSTRING "${patterns}" 0 ${sep} pattern)
  math(EXPR next "${sep} + 2")
  string(SUBSTRING "${patterns}" ${next} -1 patterns)
  if(pattern STREQUAL "")
    continue()
  endif()
  if(ORDERED)
    set(haystack "${rest}")
  else()
    set(haystack "${output}")
  endif()
  string(REGEX MATCH "${pattern}" found "${haystack}")
  if(found STREQUAL "")
    if(ORDERED)
      message(FATAL_ERROR "expected /${pattern}/ after the previous match; not found")
    endif()
    message(FATAL_ERROR "expected /${pattern}/ in the output; not found")
  endif()
  if(ORDERED)
    string(FIND "${rest}" "${found}" at)
    string(LENGTH "${found}" len)
    math(EXPR after "${at} + ${len}")
    string(SUBSTRING "${rest}" ${after} -1 rest)
  endif()
endwhile()
