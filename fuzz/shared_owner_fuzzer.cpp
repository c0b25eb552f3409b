// Fuzzes the shared-state owner's frame handling (actors/, the owner in
// shared_state_owner.cpp) without sockets: the input is the byte stream of one
// client connection, cut into frames as the owner's serve() does and handed
// to its handle() one by one, on a fresh set of cells. Operations decode
// their header and arguments with wire_input_archive and run the typed code
// of detail/shared_ops.hpp on cells of the types registered below.
//
// The owner keeps its frame handling inside its translation unit, so this
// file includes it; the harness links shared_ops.cpp and the serialization
// library, not the actors library (fuzz/CMakeLists.txt).
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shared_state_owner.cpp" // NOLINT: the owner's internals, see above

#include "fuzz_check.hpp"

using namespace multiproc;
using namespace multiproc::detail;

namespace {

// Cell types a program of clients could use (each a type key in frames).
const bool cells_registered
  = cell_type<int64_t>::registered && cell_type<double>::registered
    && cell_type<bool>::registered && cell_type<std::string>::registered
    && cell_type<std::vector<int64_t>>::registered
    && cell_type<std::vector<std::string>>::registered
    && cell_type<std::map<std::string, int64_t>>::registered
    && cell_type<std::map<int64_t, std::vector<double>>>::registered
    && cell_type<std::map<std::string, std::map<std::string, std::string>>>::
      registered;

int64_t add_to(int64_t& node, int64_t delta) {
  node += delta;
  return node;
}

void push_twice(std::vector<int64_t>& node, int64_t x) {
  node.push_back(x);
  node.push_back(x);
}

std::string describe_map(std::map<std::string, int64_t>& node,
                         std::string prefix) {
  for (auto& kv : node)
    prefix += kv.first + "=" + std::to_string(kv.second) + ";";
  return prefix;
}

const bool functions_registered
  = register_shared_fn("fuzz.add", &add_to)
    && register_shared_fn("fuzz.push_twice", &push_twice)
    && register_shared_fn("fuzz.describe", &describe_map);

// Every reply the owner wrote is a well-formed frame of an owner kind.
void check_output(const std::string& out) {
  std::string_view rest{out};
  while (!rest.empty()) {
    std::string_view body;
    caf::error err;
    auto used = split_frame(rest, max_frame, body, err);
    FUZZ_CHECK(!err && used > 0, "the owner wrote a broken frame");
    FUZZ_CHECK(body.size() >= 10, "a reply without its header");
    auto kind = static_cast<uint8_t>(body[0]);
    FUZZ_CHECK(kind == static_cast<uint8_t>(shared_frame::reply)
                 || kind == static_cast<uint8_t>(shared_frame::post_error)
                 || kind == static_cast<uint8_t>(shared_frame::change),
               "a reply of a client kind");
    FUZZ_CHECK(static_cast<uint8_t>(body[9]) <= 1, "a status above 1");
    rest.remove_prefix(used);
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FUZZ_CHECK(cells_registered && functions_registered, "registration");
  shared_owner::impl owner;
  auto conn = std::make_unique<connection>();
  conn->key = owner.next_key++;
  auto& c = *conn;
  owner.conns.emplace(c.key, std::move(conn));
  std::string_view rest{reinterpret_cast<const char*>(data), size};
  for (;;) {
    std::string_view body;
    caf::error err;
    auto used = split_frame(rest, max_frame, body, err);
    if (err || used == 0)
      break;
    owner.handle(c, body);
    check_output(c.out);
    c.out.clear();
    owner.dirty.clear();
    rest.remove_prefix(used);
  }
  return 0;
}
