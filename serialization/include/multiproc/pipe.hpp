#pragma once

/// \file
/// pipe_end: one end of a typed, message-preserving channel between two
/// processes (or threads), the counterpart of a Python `Connection` from
/// `multiprocessing.Pipe()`. Any type registered with MULTIPROC_MESSAGE can
/// be sent; each send arrives as one message.
///
/// Thread safety: send() may be called from several threads; recv()/poll()
/// from one thread at a time.
///
/// EOF: once the peer has closed its end and every message it sent has been
/// received, recv() fails with errc::peer_closed. A recv<T>() that finds a
/// message of another type fails with type_mismatch and keeps the message for
/// the next recv: nothing is lost.
///
/// Lifetimes: an end owns its socket; destroying it or close() closes it
/// (the peer sees EOF). A moved-from or closed end is closed: its calls fail
/// with errc::closed; a call that a one-way end does not allow fails with
/// invalid_argument.
///
/// Errors are values (caf::error, caf::expected); nothing throws (a Cereal
/// exception becomes encode_failed or decode_failed).

#include <chrono>
#include <optional>
#include <string>
#include <utility>

#include <caf/expected.hpp>
#include <caf/message.hpp>

#include "multiproc/envelope.hpp"
#include "multiproc/fd.hpp"
#include "multiproc/frame_channel.hpp"
#include "multiproc/message_registry.hpp"

namespace multiproc {

/// One end of a pipe; the contract is at the top of this header. Move-only.
class pipe_end {
public:
  /// A closed end (is_open() false).
  pipe_end() = default;

  /// Wraps a connected SOCK_STREAM socket. A one-way end may only receive
  /// (`readable`) or only send (`writable`).
  explicit pipe_end(unique_fd socket, bool readable = true,
                    bool writable = true, channel_options opts = {});

  /// Takes over `other`'s socket; `other` is closed.
  pipe_end(pipe_end&&) noexcept = default;
  /// Closes this end, then takes over `other`'s socket.
  pipe_end& operator=(pipe_end&&) noexcept = default;

  /// Sends one value. Fails at the call site with unknown_type or
  /// encode_failed (nothing is sent), frame_too_large, or peer_closed.
  template <class T>
  caf::error send(const T& value) {
    if (auto err = check_open(writable_, "send on"))
      return err;
    auto* entry = message_registry::instance().find(typeid(T));
    if (entry == nullptr)
      return make_error(errc::unknown_type,
                        std::string{"type "} + typeid(T).name()
                          + " is not registered; add MULTIPROC_MESSAGE(T, "
                            "\"name\")");
    std::string buf(wire::envelope_size, '\0');
    detail::gather_list gather;
    try {
      detail::encode_value_gather<T>(&value, buf, &gather);
    } catch (const std::exception& e) {
      return make_error(errc::encode_failed, "cannot encode a value of type '"
                                               + entry->name + "': " + e.what());
    }
    return send_frame(entry->id, buf, &gather);
  }

  /// Sends a CAF message holding zero or one registered value. Errors as
  /// send().
  caf::error send_message(const caf::message& msg);

  /// Receives one value of type T; waits at most `timeout` (forever if
  /// nullopt). Errors: timeout, peer_closed (EOF), type_mismatch,
  /// unknown_type, decode_failed, truncated_frame, frame_too_large.
  template <class T>
  caf::expected<T> recv(std::optional<std::chrono::milliseconds> timeout
                        = std::nullopt) {
    auto msg = recv_message(timeout);
    if (!msg)
      return std::move(msg.error());
    if (msg->template match_elements<T>())
      return msg->template get_as<T>(0);
    auto got = caf::to_string(*msg);
    stash_ = std::move(*msg);
    return make_error(errc::type_mismatch,
                      std::string{"expected a "} + typeid(T).name()
                        + ", the next message is " + got);
  }

  /// Receives the next message whatever its type. Errors as recv(), without
  /// type_mismatch; protocol_error for a frame that is not a message.
  caf::expected<caf::message>
  recv_message(std::optional<std::chrono::milliseconds> timeout = std::nullopt);

  /// True if recv() would return at once (a message, EOF or an error).
  caf::expected<bool> poll(std::chrono::milliseconds timeout
                           = std::chrono::milliseconds{0});

  /// Closes this end; the peer sees EOF after draining.
  void close();

  /// False once closed, moved from or default-constructed.
  bool is_open() const noexcept { return ch_ != nullptr; }
  /// True if this end may receive.
  bool readable() const noexcept { return readable_; }
  /// True if this end may send.
  bool writable() const noexcept { return writable_; }

private:
  caf::error check_open(bool allowed, const char* what) const;
  caf::error send_frame(type_id type, std::string& buf,
                        const detail::gather_list* gather = nullptr);

  std::unique_ptr<frame_channel> ch_;
  std::optional<caf::message> stash_;
  bool readable_ = false;
  bool writable_ = false;
};

/// Python's `Pipe(duplex)`: two connected ends. With duplex == false the
/// first end only receives and the second only sends. Errors: system_error
/// (socketpair failed).
caf::expected<std::pair<pipe_end, pipe_end>> make_pipe(bool duplex = true);

} // namespace multiproc
