// 5 worker processes each do `x += 1` on a shared namespace and append the
// new x to a shared list. In Python, `ns.x += 1` on a Manager().Namespace()
// is a read and a write, and two processes can read the same x; here
// fetch_add runs inside the owner, so every process gets a distinct x.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "multiproc/bootstrap.hpp"
#include "multiproc/function.hpp"
#include "multiproc/shared_state.hpp"

using namespace std::chrono_literals;

constexpr int workers = 5;

/// Runs in each worker: x += 1 atomically, then appends the new x to
/// `values`. (Appends may arrive in another order than the increments.)
int increment(multiproc::shared_namespace ns) {
  auto x = ns.field<int64_t>("x");
  auto values = ns.list<int64_t>("values");
  if (!x || !values) {
    std::cerr << "fields: "
              << multiproc::describe(!x ? x.error() : values.error()) << '\n';
    return 2;
  }
  auto before = x->fetch_add(1);
  if (!before) {
    std::cerr << "fetch_add: " << multiproc::describe(before.error()) << '\n';
    return 3;
  }
  if (auto err = values->append(*before + 1)) {
    std::cerr << "append: " << multiproc::describe(err) << '\n';
    return 4;
  }
  return 0;
}

MULTIPROC_FUNCTION("increment", increment)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  auto state = multiproc::shared_state::start();
  if (!state) {
    std::cerr << "cannot start the shared state: "
              << multiproc::describe(state.error()) << '\n';
    return 1;
  }
  // The fields exist before any worker runs (x = 0, values = []).
  auto ns = state->make_namespace("ns");
  auto x = ns.field<int64_t>("x", 0);
  auto values = ns.list<int64_t>("values");
  if (!x || !values) {
    std::cerr << "cannot create the fields: "
              << multiproc::describe(!x ? x.error() : values.error()) << '\n';
    return 1;
  }
  std::vector<multiproc::process> children;
  for (int i = 0; i < workers; ++i) {
    multiproc::process_options opts;
    opts.name = "incrementer-" + std::to_string(i);
    auto child = multiproc::start_function("increment", opts, ns);
    if (!child) {
      std::cerr << "cannot start " << opts.name << ": "
                << multiproc::describe(child.error()) << '\n';
      return 1; // the process destructors kill and reap the others
    }
    children.push_back(std::move(*child));
  }
  if (auto err = multiproc::join_all(children, 45s)) {
    std::cerr << multiproc::describe(err) << '\n';
    return 1;
  }
  auto final_x = x->load();
  auto seen = values->snapshot();
  if (!final_x || !seen) {
    std::cerr << "load: "
              << multiproc::describe(!final_x ? final_x.error() : seen.error())
              << '\n';
    return 1;
  }
  std::sort(seen->begin(), seen->end());
  bool distinct = std::adjacent_find(seen->begin(), seen->end())
                  == seen->end();
  std::cout << "x = " << *final_x << '\n' << "values = [";
  for (size_t i = 0; i < seen->size(); ++i)
    std::cout << (i == 0 ? "" : ", ") << (*seen)[i];
  std::cout << "]\n"
            << seen->size() << " values, "
            << (distinct ? "all distinct" : "SOME REPEATED") << '\n';
  return *final_x == workers && seen->size() == size_t{workers} && distinct
           ? 0
           : 1;
}
