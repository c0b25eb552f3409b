// Uses an installed multiproc from outside its source tree: prints
// "timeout: x" (the rendering of a multiproc error) and exits 0.
#include <iostream>

#include <multiproc/error.hpp>

int main() {
  auto err = multiproc::make_error(multiproc::errc::timeout, "x");
  std::cout << multiproc::describe(err) << "\n";
  return err == multiproc::errc::timeout ? 0 : 1;
}
