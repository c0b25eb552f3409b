#pragma once

// Relays between a local socket connection and an authenticated link
// (network_impl.hpp): the shared-state tunnels (state_tunnel.cpp) and the
// published queues (remote_queue.cpp) carry frames through them unchanged.

#include <atomic>
#include <cerrno>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/socket.h>
#include <unistd.h>

#include "multiproc/fd.hpp"
#include "multiproc/frame_channel.hpp"
#include "network_impl.hpp"

namespace multiproc::detail {

/// Carries frames both ways between a socket connection and a link until
/// either ends, then ends the other: the socket's peer sees EOF when the
/// link ends, the link's peer sees a goodbye when the socket closes. The
/// link's thread writes to the socket, the relay's thread reads from it.
class relay : public frame_handler {
public:
  /// Called with the code of the peer's goodbye, if it said one, when the
  /// link ends: before the socket's peer sees the end.
  using goodbye_fn = std::function<void(int code)>;

  relay(unique_fd fd, std::shared_ptr<link_state> link,
        goodbye_fn on_goodbye = {})
    : fd_(std::move(fd)),
      link_(std::move(link)),
      on_goodbye_(std::move(on_goodbye)) {
  }

  relay(const relay&) = delete;
  relay& operator=(const relay&) = delete;

  ~relay() override {
    end(bye_code_.load());
    if (reader_.joinable())
      reader_.join();
  }

  /// Ends both directions; the link's goodbye carries `code`.
  void end(int code) {
    bye_code_ = code;
    ::shutdown(fd_.get(), SHUT_RDWR);
  }

  void start() {
    link_->start(this);
    reader_ = std::thread{[this] { read_loop(); }};
  }

  /// Both directions have ended.
  bool done() const noexcept {
    return done_.load();
  }

  void on_frame(std::string_view body) override {
    char hdr[frame_header_size];
    write_frame_header(body.size(), hdr);
    out_.append(hdr, sizeof(hdr));
    out_.append(body.data(), body.size());
  }

  void on_batch_end() override {
    write_out();
  }

  void on_closed(const caf::error&) override {
    if (auto st = link_->peer_status(); st && on_goodbye_)
      on_goodbye_(st->code);
    write_out(); // what came before the end
    ::shutdown(fd_.get(), SHUT_RDWR);
  }

private:
  void write_out() {
    size_t pos = 0;
    while (pos < out_.size()) {
      auto n = ::send(fd_.get(), out_.data() + pos, out_.size() - pos,
                      MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0) {
        // The socket's peer is gone: the reader sees it and ends the link.
        ::shutdown(fd_.get(), SHUT_RDWR);
        break;
      }
      pos += static_cast<size_t>(n);
    }
    out_.clear();
  }

  void read_loop() {
    std::string in;
    char buf[65536];
    for (;;) {
      auto n = ::recv(fd_.get(), buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      in.append(buf, static_cast<size_t>(n));
      // Whole frames only: the peer's link splits each message into frames
      // and refuses one that ends inside a frame.
      size_t whole = 0;
      caf::error err;
      for (;;) {
        std::string_view body;
        auto used = split_frame(std::string_view{in}.substr(whole),
                                default_max_frame_size, body, err);
        if (used == 0)
          break;
        whole += used;
      }
      if (err)
        break; // a frame above the limit: the owner would refuse it too
      if (whole == 0)
        continue;
      if (link_->send_framed(std::string_view{in.data(), whole},
                             send_mode::immediate))
        break;
      in.erase(0, whole);
    }
    exit_status st;
    st.code = bye_code_.load();
    link_->stop(std::chrono::milliseconds{1000}, st);
    done_ = true;
  }

  unique_fd fd_;
  std::shared_ptr<link_state> link_;
  goodbye_fn on_goodbye_;
  std::string out_; // the link's thread only
  std::atomic<int> bye_code_{0};
  std::atomic<bool> done_{false};
  std::thread reader_;
};

/// Relays that end on their own; pruned as new ones start.
class relay_set {
public:
  /// Starts `r` unless the set is closing (then `r` ends at once).
  void add(std::unique_ptr<relay> r) {
    std::lock_guard<std::mutex> guard{mu_};
    if (closing_)
      return;
    std::vector<std::unique_ptr<relay>> keep;
    for (auto& x : relays_)
      if (!x->done())
        keep.push_back(std::move(x));
    relays_.swap(keep);
    r->start();
    relays_.push_back(std::move(r));
  }

  /// Ends every relay with `code` in its goodbye and waits for them.
  void close(int code) {
    std::vector<std::unique_ptr<relay>> all;
    {
      std::lock_guard<std::mutex> guard{mu_};
      closing_ = true;
      all.swap(relays_);
    }
    for (auto& r : all)
      r->end(code);
    all.clear();
  }

private:
  std::mutex mu_;
  bool closing_ = false;
  std::vector<std::unique_ptr<relay>> relays_;
};

inline std::string this_host() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0)
    return "unknown-host";
  return host;
}

} // namespace multiproc::detail
