# Warnings for multiproc's own targets only (never for dependencies or consumers).
function(multiproc_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wno-unused-parameter)
endfunction()
