// The owner's event loop: accepts connections (same user only), reads
// frames, applies each to the cells, writes replies and change frames.
// Everything runs on the thread of run(); stop() only writes an eventfd.

#include "shared_state_owner.hpp"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <map>
#include <unordered_map>
#include <vector>

#include <endian.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "multiproc/detail/shared_ops.hpp"
#include "multiproc/error.hpp"
#include "multiproc/frame_channel.hpp"

namespace multiproc::detail {

size_t abstract_address(const std::string& address, void* out) {
  auto* sa = static_cast<sockaddr_un*>(out);
  std::memset(sa, 0, sizeof(*sa));
  sa->sun_family = AF_UNIX;
  if (address.empty() || address.size() + 1 > sizeof(sa->sun_path))
    return 0;
  std::memcpy(sa->sun_path + 1, address.data(), address.size());
  return offsetof(sockaddr_un, sun_path) + 1 + address.size();
}

namespace {

constexpr size_t max_frame = default_max_frame_size;

struct connection {
  unique_fd fd;
  uint64_t key = 0;
  std::string in;
  size_t in_pos = 0;
  std::string out;
  size_t out_pos = 0;
  bool writable_armed = false;
  bool dead = false;
};

struct subscriber {
  uint64_t conn;
  uint64_t sub;
};

struct cell_entry {
  std::unique_ptr<shared_cell> cell;
  std::vector<subscriber> subscribers;
};

uint64_t read_u64(std::string_view bytes, size_t at) {
  uint64_t x;
  std::memcpy(&x, bytes.data() + at, sizeof(x));
  return le64toh(x);
}

void append_u64(std::string& out, uint64_t x) {
  x = htole64(x);
  out.append(reinterpret_cast<const char*>(&x), sizeof(x));
}

/// The outcome of one operation.
struct outcome {
  caf::error err;
  std::string payload;
  const std::string* mutated = nullptr; // the cell it may have changed
};

} // namespace

struct shared_owner::impl {
  unique_fd listener;
  unique_fd wake;
  unique_fd ep;
  std::string address;
  uint64_t next_key = 1;
  std::unordered_map<uint64_t, std::unique_ptr<connection>> conns;
  std::unordered_map<std::string, cell_entry> cells;
  std::vector<connection*> dirty;

  // -- frames out --

  void send(connection& c, shared_frame kind, uint64_t id, bool ok,
            std::string_view payload) {
    if (c.dead)
      return;
    char hdr[frame_header_size];
    write_frame_header(10 + payload.size(), hdr);
    c.out.append(hdr, sizeof(hdr));
    c.out.push_back(static_cast<char>(kind));
    append_u64(c.out, id);
    c.out.push_back(ok ? 0 : 1);
    c.out.append(payload.data(), payload.size());
    if (c.out.size() - c.out_pos == 14 + payload.size())
      dirty.push_back(&c);
  }

  void send_error(connection& c, shared_frame kind, uint64_t id,
                  const caf::error& err) {
    std::string payload;
    encode_to(static_cast<uint32_t>(code_of(err)), payload);
    encode_to(text_of(err), payload);
    send(c, kind, id, false, payload);
  }

  void flush(connection& c) {
    while (c.out_pos < c.out.size()) {
      auto n = ::send(c.fd.get(), c.out.data() + c.out_pos,
                      c.out.size() - c.out_pos, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        c.out_pos += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        if (!c.writable_armed) {
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLOUT;
          ev.data.u64 = c.key;
          ::epoll_ctl(ep.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
          c.writable_armed = true;
        }
        return;
      }
      c.dead = true; // the client went away; its cells are fine
      return;
    }
    c.out.clear();
    c.out_pos = 0;
    if (c.writable_armed) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = c.key;
      ::epoll_ctl(ep.get(), EPOLL_CTL_MOD, c.fd.get(), &ev);
      c.writable_armed = false;
    }
  }

  // -- connections --

  void accept_all() {
    for (;;) {
      int fd = ::accept4(listener.get(), nullptr, nullptr,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR)
          continue;
        return; // EAGAIN, or out of descriptors: the client sees a refusal
      }
      unique_fd guard{fd};
      ucred cred{};
      socklen_t len = sizeof(cred);
      if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0
          || cred.uid != ::geteuid())
        continue; // only processes of this user
      auto c = std::make_unique<connection>();
      c->fd = std::move(guard);
      c->key = next_key++;
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u64 = c->key;
      if (::epoll_ctl(ep.get(), EPOLL_CTL_ADD, fd, &ev) != 0)
        continue;
      conns.emplace(c->key, std::move(c));
    }
  }

  void close(uint64_t key) {
    auto i = conns.find(key);
    if (i == conns.end())
      return;
    ::epoll_ctl(ep.get(), EPOLL_CTL_DEL, i->second->fd.get(), nullptr);
    dirty.erase(std::remove(dirty.begin(), dirty.end(), i->second.get()),
                dirty.end());
    for (auto& kv : cells) {
      auto& subs = kv.second.subscribers;
      subs.erase(std::remove_if(subs.begin(), subs.end(),
                                [key](const subscriber& s) {
                                  return s.conn == key;
                                }),
                 subs.end());
    }
    conns.erase(i);
  }

  /// Reads what the socket has and serves every complete frame. A frame cut
  /// off by the client's death is dropped whole: no cell sees half of it.
  void serve(connection& c) {
    char buf[65536];
    // At most 1 MiB per turn: a client that writes without pause must not
    // keep the others waiting, nor grow this buffer without bound.
    for (int turn = 0; turn < 16; ++turn) {
      auto n = ::recv(c.fd.get(), buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) {
        c.in.append(buf, static_cast<size_t>(n));
        if (static_cast<size_t>(n) < sizeof(buf))
          break;
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        break;
      c.dead = true; // EOF or error
      break;
    }
    for (;;) {
      std::string_view rest{c.in};
      rest.remove_prefix(c.in_pos);
      std::string_view body;
      caf::error err;
      auto used = split_frame(rest, max_frame, body, err);
      if (err) {
        send_error(c, shared_frame::post_error, 0, err);
        c.in.clear();
        c.in_pos = 0;
        flush(c);
        c.dead = true;
        return;
      }
      if (used == 0)
        break;
      handle(c, body);
      c.in_pos += used;
    }
    if (c.in_pos == c.in.size()) {
      c.in.clear();
      c.in_pos = 0;
    } else if (c.in_pos > (size_t{1} << 20)) {
      c.in.erase(0, c.in_pos);
      c.in_pos = 0;
    }
  }

  // -- operations --

  void notify(const std::string& name) {
    auto i = cells.find(name);
    if (i == cells.end() || i->second.subscribers.empty())
      return;
    std::string value;
    i->second.cell->encode(value);
    for (auto& s : i->second.subscribers) {
      auto c = conns.find(s.conn);
      if (c != conns.end())
        send(*c->second, shared_frame::change, s.sub, true, value);
    }
  }

  /// Applies the operation encoded in `op` (header, then arguments).
  outcome apply(std::string_view op, bool in_transaction = false) {
    outcome result;
    std::string cell;
    std::vector<std::string> path;
    std::string type;
    uint8_t code = 0;
    wire_input_archive in{op};
    auto what = [&] {
      return std::string{to_string(static_cast<shared_op>(code))}
             + " on cell '" + cell + "'";
    };
    try {
      in(cell, path, type, code);
      auto kind = static_cast<shared_op>(code);
      if (code < static_cast<uint8_t>(shared_op::load)
          || code > static_cast<uint8_t>(shared_op::list_cells)) {
        result.err = make_error(errc::protocol_error,
                                "unknown operation code "
                                  + std::to_string(code));
        return result;
      }
      if (in_transaction
          && (kind == shared_op::create || kind == shared_op::drop)) {
        result.err = make_error(errc::invalid_argument,
                                what() + " cannot be part of a transaction");
        return result;
      }
      switch (kind) {
        case shared_op::create:
          result.err = create(cell, type, in);
          return result;
        case shared_op::drop: {
          if (cells.erase(cell) == 0)
            result.err = make_error(errc::key_not_found,
                                    "drop: no cell named '" + cell + "'");
          return result;
        }
        case shared_op::list_cells: {
          std::vector<std::string> names;
          names.reserve(cells.size());
          for (auto& kv : cells)
            names.push_back(kv.first);
          std::sort(names.begin(), names.end());
          encode_to(names, result.payload);
          return result;
        }
        default:
          break;
      }
      auto i = cells.find(cell);
      if (i == cells.end()) {
        result.err = make_error(errc::key_not_found,
                                what() + ": no cell named '" + cell
                                  + "' (create it first)");
        return result;
      }
      node_context ctx{cell, type, kind, false};
      i->second.cell->apply(path, ctx, in, result.payload);
      if (mutates(kind))
        result.mutated = &i->first;
    } catch (const shared_failure& e) {
      result.err = make_error(e.code, e.what());
      result.payload.clear();
    } catch (const std::exception& e) {
      result.err = make_error(errc::decode_failed,
                              "cannot decode " + (cell.empty()
                                                    ? std::string{"an operation"}
                                                    : what())
                                + ": " + e.what());
      result.payload.clear();
    }
    return result;
  }

  caf::error create(const std::string& name, const std::string& type,
                    wire_input_archive& in) {
    bool fixed = decode_from<bool>(in);
    auto i = cells.find(name);
    if (i != cells.end()) {
      auto& existing = *i->second.cell;
      if (existing.type() != type)
        return make_error(errc::type_mismatch,
                          "cell '" + name + "' holds a "
                            + readable_type(existing.type()) + ", not a "
                            + readable_type(type));
      if (existing.fixed_length != fixed)
        return make_error(errc::type_mismatch,
                          "cell '" + name + "' is "
                            + (existing.fixed_length ? "an array" : "a list")
                            + ", not " + (fixed ? "an array" : "a list"));
      return caf::none; // it exists: attach, as Python's setdefault
    }
    if (name.empty())
      return make_error(errc::invalid_argument, "a cell needs a name");
    auto factory = find_cell_type(type);
    if (factory == nullptr)
      return make_error(errc::unknown_type,
                        "the owner does not know the cell type "
                          + readable_type(type)
                          + " (is it a different program?)");
    auto cell = factory(in);
    cell->fixed_length = fixed;
    cells.emplace(name, cell_entry{std::move(cell), {}});
    return caf::none;
  }

  void transaction(connection& c, uint64_t id, std::string_view body) {
    std::vector<std::string> ops;
    try {
      wire_input_archive in{body};
      in(ops);
    } catch (const std::exception& e) {
      send_error(c, shared_frame::reply, id,
                 make_error(errc::decode_failed,
                            std::string{"cannot decode a transaction: "}
                              + e.what()));
      return;
    }
    std::map<std::string, std::unique_ptr<shared_cell>> backups;
    std::vector<std::string> results;
    results.reserve(ops.size());
    for (size_t k = 0; k < ops.size(); ++k) {
      // Take the undo copy before the first operation that may change it.
      {
        std::string cell;
        std::vector<std::string> path;
        std::string type;
        uint8_t code = 0;
        try {
          wire_input_archive in{ops[k]};
          in(cell, path, type, code);
        } catch (const std::exception&) {
          // apply() reports it
        }
        auto i = cells.find(cell);
        if (i != cells.end() && mutates(static_cast<shared_op>(code))
            && backups.count(cell) == 0)
          backups.emplace(cell, i->second.cell->clone());
      }
      auto r = apply(ops[k], true);
      if (r.err) {
        for (auto& kv : backups)
          cells[kv.first].cell = std::move(kv.second);
        send_error(c, shared_frame::reply, id,
                   make_error(code_of(r.err),
                              "operation " + std::to_string(k)
                                + " of the transaction failed, none was "
                                  "applied: "
                                + text_of(r.err)));
        return;
      }
      results.push_back(std::move(r.payload));
    }
    std::string payload;
    encode_to(results, payload);
    send(c, shared_frame::reply, id, true, payload);
    for (auto& kv : backups)
      notify(kv.first);
  }

  void subscribe(connection& c, uint64_t id, std::string_view body,
                 bool on) {
    std::string cell;
    uint64_t sub = 0;
    try {
      wire_input_archive in{body};
      in(cell, sub);
    } catch (const std::exception& e) {
      send_error(c, shared_frame::reply, id,
                 make_error(errc::decode_failed,
                            std::string{"cannot decode a subscription: "}
                              + e.what()));
      return;
    }
    auto i = cells.find(cell);
    if (i == cells.end()) {
      send_error(c, shared_frame::reply, id,
                 make_error(errc::key_not_found,
                            "subscribe: no cell named '" + cell + "'"));
      return;
    }
    auto& subs = i->second.subscribers;
    subs.erase(std::remove_if(subs.begin(), subs.end(),
                              [&](const subscriber& s) {
                                return s.conn == c.key && s.sub == sub;
                              }),
               subs.end());
    if (on)
      subs.push_back(subscriber{c.key, sub});
    send(c, shared_frame::reply, id, true, {});
  }

  void handle(connection& c, std::string_view body) {
    if (body.size() < 9) {
      send_error(c, shared_frame::post_error, 0,
                 make_error(errc::protocol_error,
                            "a shared-state frame of "
                              + std::to_string(body.size())
                              + " bytes is shorter than its 9-byte header"));
      return;
    }
    auto kind = static_cast<shared_frame>(body[0]);
    auto id = read_u64(body, 1);
    auto rest = body.substr(9);
    switch (kind) {
      case shared_frame::request:
      case shared_frame::post: {
        auto r = apply(rest);
        if (r.err)
          send_error(c,
                     kind == shared_frame::request ? shared_frame::reply
                                                   : shared_frame::post_error,
                     id, r.err);
        else if (kind == shared_frame::request)
          send(c, shared_frame::reply, id, true, r.payload);
        if (r.mutated != nullptr && !r.err)
          notify(*r.mutated);
        return;
      }
      case shared_frame::sync:
        send(c, shared_frame::reply, id, true, {});
        return;
      case shared_frame::transaction:
        transaction(c, id, rest);
        return;
      case shared_frame::subscribe:
      case shared_frame::unsubscribe:
        subscribe(c, id, rest, kind == shared_frame::subscribe);
        return;
      default:
        send_error(c, shared_frame::post_error, id,
                   make_error(errc::protocol_error,
                              "unknown shared-state frame kind "
                                + std::to_string(static_cast<int>(body[0]))));
        return;
    }
  }
};

shared_owner::shared_owner(std::unique_ptr<impl> p) : impl_(std::move(p)) {
}

shared_owner::~shared_owner() = default;

caf::expected<std::unique_ptr<shared_owner>>
shared_owner::listen(const std::string& address) {
  auto p = std::make_unique<impl>();
  p->address = address;
  sockaddr_un sa;
  auto len = abstract_address(address, &sa);
  if (len == 0)
    return make_error(errc::invalid_argument,
                      "a shared-state address has 1 to 106 bytes, not "
                        + std::to_string(address.size()));
  p->listener.reset(
    ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!p->listener)
    return make_system_error("socket(AF_UNIX)", errno);
  if (::bind(p->listener.get(), reinterpret_cast<sockaddr*>(&sa),
             static_cast<socklen_t>(len))
      != 0) {
    if (errno == EADDRINUSE)
      return make_error(errc::invalid_argument,
                        "the shared-state address '" + address
                          + "' is in use by another owner");
    return make_system_error("bind('" + address + "')", errno);
  }
  if (::listen(p->listener.get(), 512) != 0)
    return make_system_error("listen", errno);
  p->wake.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  p->ep.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!p->wake || !p->ep)
    return make_system_error("eventfd/epoll_create1", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;
  ::epoll_ctl(p->ep.get(), EPOLL_CTL_ADD, p->listener.get(), &ev);
  ev.data.u64 = ~uint64_t{0};
  ::epoll_ctl(p->ep.get(), EPOLL_CTL_ADD, p->wake.get(), &ev);
  return std::unique_ptr<shared_owner>{new shared_owner(std::move(p))};
}

void shared_owner::run() {
  auto& s = *impl_;
  epoll_event events[64];
  std::vector<uint64_t> dead;
  for (;;) {
    int n = ::epoll_wait(s.ep.get(), events, 64, -1);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return;
    }
    for (int i = 0; i < n; ++i) {
      auto key = events[i].data.u64;
      if (key == 0) {
        s.accept_all();
        continue;
      }
      if (key == ~uint64_t{0})
        return;
      auto c = s.conns.find(key);
      if (c == s.conns.end())
        continue;
      if (events[i].events & EPOLLOUT)
        s.flush(*c->second);
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        s.serve(*c->second);
    }
    // Replies go out once per wake-up: one write per connection and batch.
    auto dirty = std::move(s.dirty);
    s.dirty.clear();
    for (auto* c : dirty)
      s.flush(*c);
    for (auto& kv : s.conns)
      if (kv.second->dead)
        dead.push_back(kv.first);
    for (auto key : dead)
      s.close(key);
    dead.clear();
  }
}

void shared_owner::stop() {
  uint64_t one = 1;
  auto r = ::write(impl_->wake.get(), &one, sizeof(one));
  (void) r;
}

} // namespace multiproc::detail
