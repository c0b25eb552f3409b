#pragma once

// Message types registered by the message harness and the corpus generator
// (make_corpus.cpp), which must agree on the registry's sorted names: byte 0
// of a message input indexes them.

#include <array>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <cereal/types/array.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include "multiproc/envelope.hpp"
#include "multiproc/message_registry.hpp"

namespace fuzz_types {

// A flat type: the flat archive understands it.
struct flat_record {
  int32_t id = 0;
  bool done = false;
  double weight = 0;
  std::string label;
  std::array<uint16_t, 3> tags{};
  template <class Archive>
  void serialize(Archive& ar) {
    ar(id, done, weight, label, tags);
  }
  bool operator==(const flat_record& other) const {
    return id == other.id && done == other.done
           && std::memcmp(&weight, &other.weight, sizeof(weight)) == 0
           && label == other.label && tags == other.tags;
  }
};

// A nested type: only Cereal's archive decodes it.
struct nested_record {
  std::vector<std::string> names;
  std::map<std::string, std::vector<int64_t>> groups;
  std::vector<std::pair<uint8_t, std::vector<char>>> blobs;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(names, groups, blobs);
  }
};

} // namespace fuzz_types

MULTIPROC_MESSAGE(fuzz_types::flat_record, "fuzz.flat_record")
MULTIPROC_MESSAGE(fuzz_types::nested_record, "fuzz.nested_record")
MULTIPROC_MESSAGE(multiproc::wire::hello, "fuzz.hello")
MULTIPROC_MESSAGE(multiproc::wire::wire_error, "fuzz.wire_error")
