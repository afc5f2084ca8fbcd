// A thin C ABI over c10d, PyTorch's collective engine, for src/dist.rs: a TCPStore rendezvous and
// a Gloo (CPU) process group. Every call catches C++ exceptions and returns their message, so a
// dead peer or a timeout becomes a Rust error, never an abort.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

char* copy_message(const char* what) {
  char* out = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (out) std::strcpy(out, what);
  return out;
}

// Runs `body`; on an exception returns its message (malloc'd, freed by rr_dist_free_error).
template <typename F>
char* guarded(F body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

void wait(Group* g, c10::intrusive_ptr<c10d::Work> work) {
  if (!work->wait(g->timeout)) throw std::runtime_error("collective did not complete");
}

}  // namespace

extern "C" {

char* rr_dist_init(const char* host, int port, int rank, int world, int64_t timeout_ms, void** out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = rank == 0;
    options.numWorkers = world;
    options.waitWorkers = true;
    options.timeout = timeout;
    auto group = new Group{c10::make_intrusive<c10d::TCPStore>(std::string(host), options), {}, timeout};
    try {
      auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
      group->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(group->store, rank, world, gloo);
    } catch (...) {
      delete group;
      throw;
    }
    *out = group;
  });
}

void rr_dist_free(void* group) { delete static_cast<Group*>(group); }

void rr_dist_free_error(char* message) { std::free(message); }

// op: 0 sum, 1 max.
char* rr_dist_all_reduce(void* group, at::Tensor* tensor, int op) {
  return guarded([&] {
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = op == 1 ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    options.timeout = g->timeout;
    wait(g, g->backend->allreduce(tensors, options));
  });
}

char* rr_dist_broadcast(void* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = g->timeout;
    wait(g, g->backend->broadcast(tensors, options));
  });
}

// `output` is [world, ...input's shape]; row r receives rank r's `input`.
char* rr_dist_all_gather(void* group, at::Tensor* output, at::Tensor* input) {
  return guarded([&] {
    auto g = static_cast<Group*>(group);
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int64_t r = 0; r < output->size(0); ++r) outputs[0].push_back(output->select(0, r));
    std::vector<at::Tensor> inputs{*input};
    c10d::AllgatherOptions options;
    options.timeout = g->timeout;
    wait(g, g->backend->allgather(outputs, inputs, options));
  });
}

char* rr_dist_barrier(void* group) {
  return guarded([&] {
    auto g = static_cast<Group*>(group);
    c10d::BarrierOptions options;
    options.timeout = g->timeout;
    wait(g, g->backend->barrier(options));
  });
}

}  // extern "C"
