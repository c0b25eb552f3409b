#include "multiproc/detail/guarded_behavior.hpp"

#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <typeinfo>

#include <cxxabi.h>
#include <unistd.h>

#include <caf/detail/behavior_impl.hpp>
#include <caf/detail/invoke_result_visitor.hpp>

#include "multiproc/error.hpp"
#include "multiproc/faults.hpp"

namespace multiproc {
const std::string& this_worker_name();
} // namespace multiproc

namespace multiproc::detail {

namespace {

std::string demangle(const char* name) {
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out{
    abi::__cxa_demangle(name, nullptr, nullptr, &status), std::free};
  return status == 0 && out ? std::string{out.get()} : std::string{name};
}

class guarded_behavior_impl : public caf::detail::behavior_impl {
public:
  guarded_behavior_impl(caf::behavior inner, const char* worker_name)
    : caf::detail::behavior_impl(inner.timeout()),
      inner_(inner.as_behavior_impl()),
      worker_name_(worker_name) {
    begin_ = nullptr;
    end_ = nullptr;
  }

  caf::match_case::result invoke(caf::detail::invoke_result_visitor& f,
                                 caf::type_erased_tuple& xs) override {
    try {
      faults::check_throw(faults::point::worker_run_task);
      return inner_->invoke(f, xs);
    } catch (const std::exception& e) {
      auto err = make_error(errc::worker_exception,
                            where() + " threw " + demangle(typeid(e).name())
                              + ": " + e.what());
      f(err);
    } catch (...) {
      auto type = abi::__cxa_current_exception_type();
      auto err = make_error(errc::worker_exception,
                            where() + " threw "
                              + (type ? demangle(type->name())
                                      : std::string{"an unknown exception"}));
      f(err);
    }
    return caf::match_case::match;
  }

  void handle_timeout() override {
    inner_->handle_timeout();
  }

private:
  std::string where() const {
    auto& name = this_worker_name();
    return "worker " + (name.empty() ? std::string{worker_name_} : name) + "["
           + std::to_string(::getpid()) + "]";
  }

  caf::intrusive_ptr<caf::detail::behavior_impl> inner_;
  const char* worker_name_;
};

} // namespace

caf::behavior guard_behavior(caf::behavior inner, const char* worker_name) {
  if (!inner)
    return inner;
  caf::behavior::impl_ptr impl{
    caf::make_counted<guarded_behavior_impl>(std::move(inner), worker_name)};
  return caf::behavior{std::move(impl)};
}

} // namespace multiproc::detail
