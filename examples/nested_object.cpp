// A user's class hosted by name, holding an object of another class: a worker
// process calls its methods, which run inside the owner, so the change to the
// nested child sticks. This is the case that fails with Python's Manager: a
// proxy's nested plain object is a copy, and setting it is silently lost.

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "multiproc/bootstrap.hpp"
#include "multiproc/function.hpp"
#include "multiproc/shared_state.hpp"

using namespace std::chrono_literals;

/// A plain class, nested by value in parent_object.
class child_object {
public:
  void set_value(int x) {
    value_ = x;
  }

  int value() const {
    return value_;
  }

  template <class Archive>
  void serialize(Archive& ar) {
    ar(value_);
  }

private:
  int value_ = 0;
};

/// The hosted class: its methods are registered below, callable from any
/// process that has a handle to the cell.
class parent_object {
public:
  void set_value(int x) {
    value_ = x;
  }

  int value() const {
    return value_;
  }

  void set_child_value(int x) {
    child_.set_value(x);
  }

  /// A copy of the nested object.
  child_object child() const {
    return child_;
  }

  template <class Archive>
  void serialize(Archive& ar) {
    ar(value_, child_);
  }

private:
  int value_ = 0;
  child_object child_;
};

// The counterpart of BaseManager.register(): names for the methods.
MULTIPROC_SHARED_METHOD("set_value", &parent_object::set_value)
MULTIPROC_SHARED_METHOD("value", &parent_object::value)
MULTIPROC_SHARED_METHOD("set_child_value", &parent_object::set_child_value)
MULTIPROC_SHARED_METHOD("child", &parent_object::child)

/// Runs in the worker: sets the parent's value and its child's to `x`.
int set_both(multiproc::value<parent_object> obj, int x) {
  if (auto err = obj.call<void>("set_value", x)) {
    std::cerr << "set_value: " << multiproc::describe(err) << '\n';
    return 2;
  }
  if (auto err = obj.call<void>("set_child_value", x)) {
    std::cerr << "set_child_value: " << multiproc::describe(err)
              << '\n';
    return 3;
  }
  return 0;
}

MULTIPROC_FUNCTION("set_both", set_both)

int main(int argc, char** argv) {
  multiproc::bootstrap(argc, argv);
  auto state = multiproc::shared_state::start();
  if (!state) {
    std::cerr << "cannot start the shared state: "
              << multiproc::describe(state.error()) << '\n';
    return 1;
  }
  auto obj = state->object<parent_object>("parent");
  if (!obj) {
    std::cerr << "cannot create the object: "
              << multiproc::describe(obj.error()) << '\n';
    return 1;
  }
  multiproc::process_options opts;
  opts.name = "setter";
  auto child = multiproc::start_function("set_both", opts, *obj, 100);
  if (!child) {
    std::cerr << "cannot start the worker: "
              << multiproc::describe(child.error()) << '\n';
    return 1;
  }
  auto status = child->join(30s);
  if (!status) {
    std::cerr << "join: " << multiproc::describe(status.error()) << '\n';
    return 1; // the process destructor kills and reaps it
  }
  if (!status->success()) {
    std::cerr << "the worker " << status->to_string() << '\n';
    return 1;
  }
  // Through the methods, inside the owner...
  auto value = obj->call<int>("value");
  auto nested = obj->call<child_object>("child");
  // ...and from a snapshot of the whole object, child included.
  auto copy = obj->load();
  if (!value || !nested || !copy) {
    std::cerr << "reading the object: "
              << multiproc::describe(!value    ? value.error()
                                     : !nested ? nested.error()
                                               : copy.error())
              << '\n';
    return 1;
  }
  if (*value != copy->value() || nested->value() != copy->child().value()) {
    std::cerr << "the methods and the snapshot disagree\n";
    return 1;
  }
  std::cout << "parent: " << copy->value() << '\n'
            << "child: " << copy->child().value() << '\n';
  return copy->value() == 100 && copy->child().value() == 100 ? 0 : 1;
}
