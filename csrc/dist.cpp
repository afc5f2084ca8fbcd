// A thin C ABI over c10d, PyTorch's collective engine, for src/dist.rs: a TCPStore rendezvous, a
// Gloo process group for CPU tensors and, in a CUDA build (REASONRL_NCCL), an NCCL one for CUDA
// tensors, as torch's "cpu:gloo,cuda:nccl". Every call catches C++ exceptions and returns their
// message, so a dead peer or a timeout becomes a Rust error, never an abort.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef REASONRL_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::Backend> gloo;
  c10::intrusive_ptr<c10d::Backend> nccl;  // null unless asked for in a CUDA build
  std::chrono::milliseconds timeout;

  ~Group() {
    // NCCL's communicators and watchdog thread must be stopped before the group goes, as
    // torch.distributed.destroy_process_group does.
    if (nccl) nccl->shutdown();
  }

  // The backend that moves `tensor`: NCCL for a CUDA tensor, Gloo for the rest.
  c10d::Backend& backend_for(const at::Tensor& tensor) {
    if (!tensor.is_cuda()) return *gloo;
    if (!nccl) throw std::runtime_error("a CUDA tensor reached a group without NCCL");
    return *nccl;
  }
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

// With `nccl` set, CUDA tensors go through NCCL (an error in a build without it).
char* rr_dist_init(const char* host, int port, int rank, int world, int64_t timeout_ms, int nccl, void** out) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(port);
    options.isServer = rank == 0;
    options.numWorkers = world;
    options.waitWorkers = true;
    options.timeout = timeout;
    auto group = new Group{c10::make_intrusive<c10d::TCPStore>(std::string(host), options), {}, {}, timeout};
    try {
      // Each backend keeps its rendezvous keys under its own prefix of the one store.
      auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
      auto gloo_store = c10::make_intrusive<c10d::PrefixStore>("gloo", group->store);
      group->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(gloo_store, rank, world, gloo);
      if (nccl) {
#ifdef REASONRL_NCCL
        // Communicators are made lazily, on the device of the first CUDA tensor reduced.
        auto options = c10d::ProcessGroupNCCL::Options::create();
        options->timeout = timeout;
        auto nccl_store = c10::make_intrusive<c10d::PrefixStore>("nccl", group->store);
        group->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(nccl_store, rank, world, options);
#else
        throw std::runtime_error("NCCL asked for, but this build has no NCCL (build with --features cuda)");
#endif
      }
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
    wait(g, g->backend_for(*tensor).allreduce(tensors, options));
  });
}

char* rr_dist_broadcast(void* group, at::Tensor* tensor, int root) {
  return guarded([&] {
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    options.timeout = g->timeout;
    wait(g, g->backend_for(*tensor).broadcast(tensors, options));
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
    wait(g, g->backend_for(*input).allgather(outputs, inputs, options));
  });
}

char* rr_dist_barrier(void* group) {
  return guarded([&] {
    auto g = static_cast<Group*>(group);
    c10d::BarrierOptions options;
    options.timeout = g->timeout;
    wait(g, g->gloo->barrier(options));
  });
}

}  // extern "C"
