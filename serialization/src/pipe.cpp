#include "multiproc/pipe.hpp"

#include <cerrno>

namespace multiproc {

pipe_end::pipe_end(unique_fd socket, bool readable, bool writable,
                   channel_options opts)
  : ch_(std::make_unique<frame_channel>(std::move(socket), opts)),
    readable_(readable),
    writable_(writable) {
}

caf::error pipe_end::check_open(bool allowed, const char* what) const {
  if (!ch_)
    return make_error(errc::closed, std::string{what} + " a closed pipe end");
  if (!allowed)
    return make_error(errc::invalid_argument,
                      std::string{what} + " a one-way pipe end that does "
                        "not allow it");
  return caf::none;
}

caf::error pipe_end::send_frame(type_id type, std::string& buf,
                               const detail::gather_list* gather) {
  wire::envelope env;
  env.what = wire::kind::async;
  env.type = type;
  wire::write_envelope(env, buf.data());
  if (gather == nullptr)
    return ch_->send(buf);
  std::string_view parts[2 * detail::gather_list::max_refs + 1];
  auto n = gather->parts(buf, parts);
  return ch_->send(parts, n);
}

caf::error pipe_end::send_message(const caf::message& msg) {
  if (auto err = check_open(writable_, "send on"))
    return err;
  std::string buf(wire::envelope_size, '\0');
  type_id type = 0;
  if (auto err = encode_message(msg, type, buf))
    return err;
  return send_frame(type, buf);
}

caf::expected<caf::message>
pipe_end::recv_message(std::optional<std::chrono::milliseconds> timeout) {
  if (auto err = check_open(readable_, "recv on"))
    return err;
  if (stash_) {
    auto msg = std::move(*stash_);
    stash_.reset();
    return msg;
  }
  auto frame = ch_->receive(timeout);
  if (!frame) {
    if (frame.error() == errc::peer_closed)
      return make_error(errc::peer_closed,
                        "the pipe was closed by the other end");
    return std::move(frame.error());
  }
  std::string_view payload;
  auto env = wire::read_envelope(*frame, payload);
  if (!env)
    return std::move(env.error());
  if (env->what != wire::kind::async)
    return make_error(errc::protocol_error,
                      std::string{"unexpected "} + wire::to_string(env->what)
                        + " frame on a pipe");
  return decode_message(env->type, payload);
}

caf::expected<bool> pipe_end::poll(std::chrono::milliseconds timeout) {
  if (auto err = check_open(readable_, "poll on"))
    return err;
  if (stash_)
    return true;
  return ch_->poll(timeout);
}

void pipe_end::close() {
  ch_.reset();
  stash_.reset();
}

caf::expected<std::pair<pipe_end, pipe_end>> make_pipe(bool duplex) {
  unique_fd a;
  unique_fd b;
  if (!make_socketpair(a, b))
    return make_system_error("socketpair", errno);
  return std::make_pair(pipe_end{std::move(a), true, duplex},
                        pipe_end{std::move(b), duplex, true});
}

} // namespace multiproc
