#pragma once

/// \file
/// The whole multiproc API in one include (and <caf/all.hpp>).

#include "multiproc/bootstrap.hpp"
#include "multiproc/envelope.hpp"
#include "multiproc/error.hpp"
#include "multiproc/function.hpp"
#include "multiproc/log.hpp"
#include "multiproc/message_registry.hpp"
#include "multiproc/pipe.hpp"
#include "multiproc/network.hpp"
#include "multiproc/pool.hpp"
#include "multiproc/process.hpp"
#include "multiproc/queue.hpp"
#include "multiproc/remote_queue.hpp"
#include "multiproc/shared_state.hpp"
#include "multiproc/shm_array.hpp"
#include "multiproc/start_method.hpp"
#include "multiproc/supervisor.hpp"
#include "multiproc/worker.hpp"

#include <caf/all.hpp>
