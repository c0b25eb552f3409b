#pragma once

// `multiproc info`: start methods, limits, library and protocol versions.

/// Prints the information to stdout; returns the process exit code.
int run_info();
