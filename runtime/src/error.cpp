#include "multiproc/error.hpp"

#include <cstring>

#include <caf/atom.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace multiproc {

const char* to_string(errc x) noexcept {
  switch (x) {
    case errc::none: return "none";
    case errc::system_error: return "system_error";
    case errc::invalid_argument: return "invalid_argument";
    case errc::not_bootstrapped: return "not_bootstrapped";
    case errc::fork_unsafe: return "fork_unsafe";
    case errc::unknown_entry: return "unknown_entry";
    case errc::spawn_failed: return "spawn_failed";
    case errc::peer_closed: return "peer_closed";
    case errc::truncated_frame: return "truncated_frame";
    case errc::frame_too_large: return "frame_too_large";
    case errc::unknown_type: return "unknown_type";
    case errc::decode_failed: return "decode_failed";
    case errc::encode_failed: return "encode_failed";
    case errc::type_mismatch: return "type_mismatch";
    case errc::fingerprint_mismatch: return "fingerprint_mismatch";
    case errc::protocol_error: return "protocol_error";
    case errc::worker_died: return "worker_died";
    case errc::worker_exception: return "worker_exception";
    case errc::timeout: return "timeout";
    case errc::closed: return "closed";
    case errc::full: return "full";
    case errc::task_quarantined: return "task_quarantined";
    case errc::pool_broken: return "pool_broken";
    case errc::empty: return "empty";
    case errc::end_of_stream: return "end_of_stream";
    case errc::restart_intensity_exceeded: return "restart_intensity_exceeded";
    case errc::key_not_found: return "key_not_found";
    case errc::index_out_of_range: return "index_out_of_range";
    case errc::owner_died: return "owner_died";
    case errc::child_failed: return "child_failed";
    case errc::connection_lost: return "connection_lost";
    case errc::auth_failed: return "auth_failed";
  }
  return "unknown_errc";
}

caf::error make_error(errc code, std::string text) {
  return caf::error{static_cast<uint8_t>(code), caf::atom("multiproc"),
                    caf::make_message(std::move(text))};
}

caf::error make_system_error(const std::string& what, int err) {
  return make_error(errc::system_error, what + ": " + std::strerror(err));
}

errc code_of(const caf::error& x) noexcept {
  if (!x || x.category() != caf::atom("multiproc"))
    return errc::none;
  return static_cast<errc>(x.code());
}

std::string text_of(const caf::error& x) {
  if (x && x.category() == caf::atom("multiproc")) {
    auto& ctx = x.context();
    if (ctx.size() == 1 && ctx.match_element<std::string>(0))
      return ctx.get_as<std::string>(0);
    return {};
  }
  return describe(x);
}

std::string describe(const caf::error& x) {
  if (!x)
    return "no error";
  if (x.category() == caf::atom("multiproc")) {
    std::string result = to_string(static_cast<errc>(x.code()));
    auto text = text_of(x);
    if (!text.empty()) {
      result += ": ";
      result += text;
    }
    return result;
  }
  if (x.category() == caf::atom("system"))
    return caf::to_string(static_cast<caf::sec>(x.code()))
           + (x.context().empty() ? std::string{}
                                  : " " + caf::to_string(x.context()));
  return caf::to_string(x);
}

} // namespace multiproc
