#include "multiproc/message_registry.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cxxabi.h>
#include <memory>
#include <map>
#include <unordered_map>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include "multiproc/log.hpp"

namespace multiproc {

struct message_registry::impl {
  std::unordered_map<type_id, message_type> by_id;
  std::unordered_map<std::type_index, type_id> by_type;
  std::unordered_map<uint16_t, type_id> by_caf_nr;
};

message_registry::impl& message_registry::data() const {
  static impl instance;
  return instance;
}

message_registry& message_registry::instance() {
  static message_registry registry;
  return registry;
}

void message_registry::add(message_type entry) {
  auto& d = data();
  auto i = d.by_id.find(entry.id);
  if (i != d.by_id.end()) {
    if (i->second.name == entry.name && i->second.type == entry.type)
      return; // the same registration seen from another translation unit
    logger()->critical("cannot register message type '{}' ({}): its name or "
                       "id is already taken by '{}' ({})",
                       entry.name, entry.type.name(), i->second.name,
                       i->second.type.name());
    std::abort();
  }
  auto j = d.by_type.find(entry.type);
  if (j != d.by_type.end()) {
    logger()->critical("type {} is registered twice, as '{}' and '{}'",
                       entry.type.name(), d.by_id.at(j->second).name,
                       entry.name);
    std::abort();
  }
  d.by_type.emplace(entry.type, entry.id);
  if (entry.caf_type_nr != 0)
    d.by_caf_nr.emplace(entry.caf_type_nr, entry.id);
  d.by_id.emplace(entry.id, std::move(entry));
}

// Messages come in runs of one type: each thread remembers its last hit.
// Entries are never removed and a node's address never changes, so a
// remembered pointer stays valid.

const message_type* message_registry::find(type_id id) const noexcept {
  thread_local const message_type* last = nullptr;
  if (last != nullptr && last->id == id)
    return last;
  auto& d = data();
  auto i = d.by_id.find(id);
  if (i == d.by_id.end())
    return nullptr;
  last = &i->second;
  return last;
}

const message_type*
message_registry::find(const std::type_info& type) const noexcept {
  thread_local const std::type_info* last_type = nullptr;
  thread_local const message_type* last = nullptr;
  if (last_type == &type)
    return last;
  auto& d = data();
  auto i = d.by_type.find(std::type_index{type});
  if (i == d.by_type.end())
    return nullptr;
  last_type = &type;
  last = find(i->second);
  return last;
}

const message_type*
message_registry::find(const std::string& name) const noexcept {
  return find(type_id_of(name));
}

const message_type* message_registry::find(const caf::message& msg,
                                           size_t pos) const noexcept {
  auto rtti = msg.type(pos);
  if (rtti.first != 0) {
    thread_local uint16_t last_nr = 0;
    thread_local const message_type* last = nullptr;
    if (rtti.first == last_nr)
      return last;
    auto& d = data();
    auto i = d.by_caf_nr.find(rtti.first);
    if (i == d.by_caf_nr.end())
      return nullptr;
    last = find(i->second);
    last_nr = rtti.first;
    return last;
  }
  return rtti.second != nullptr ? find(*rtti.second) : nullptr;
}

std::vector<std::string> message_registry::names() const {
  std::vector<std::string> result;
  for (auto& kvp : data().by_id)
    result.push_back(kvp.second.name);
  std::sort(result.begin(), result.end());
  return result;
}

uint64_t message_registry::fingerprint() const noexcept {
  uint64_t h = 0xcbf29ce484222325ull;
  for (auto& name : names()) {
    for (char c : name) {
      h ^= static_cast<uint8_t>(c);
      h *= 0x100000001b3ull;
    }
    h ^= 0xff;
    h *= 0x100000001b3ull;
  }
  return h;
}

// -- built-in types -----------------------------------------------------------

namespace {

const bool builtins_registered = [] {
  detail::register_message<bool>("bool");
  detail::register_message<int8_t>("i8");
  detail::register_message<int16_t>("i16");
  detail::register_message<int32_t>("i32");
  detail::register_message<int64_t>("i64");
  detail::register_message<uint8_t>("u8");
  detail::register_message<uint16_t>("u16");
  detail::register_message<uint32_t>("u32");
  detail::register_message<uint64_t>("u64");
  detail::register_message<float>("f32");
  detail::register_message<double>("f64");
  detail::register_message<std::string>("string");
  detail::register_message<std::vector<char>>("bytes");
  return true;
}();

} // namespace

std::string type_name_of(const std::type_info& type) {
  if (auto* entry = message_registry::instance().find(type))
    return "'" + entry->name + "'";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> name{
    abi::__cxa_demangle(type.name(), nullptr, nullptr, &status), std::free};
  return status == 0 && name ? name.get() : type.name();
}

} // namespace multiproc
