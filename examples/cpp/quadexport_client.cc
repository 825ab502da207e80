// quadexport_client: run a quadexport ONNX file with the onnxruntime C++ API, no Python.
//
//   quadexport_client MODEL.onnx INPUT.npy OUTPUT.npy [options]
//   quadexport_client --version
//
// Reads a float32 batch from INPUT.npy (e.g. the input.npy written by quadexport.deploy.save_io), runs it and writes
// the first output to OUTPUT.npy (further outputs to OUTPUT_1.npy, ...). Compare it with expected.npy.
//
// Kernel library (custom-op domain "quadexport"): a file exported with mode="fused" (metadata quadexport.runtime=fused)
// or with quadexport nodes that have no function body gets libquadexport_ops.so registered, from --kernel-lib or
// $QUADEXPORT_KERNEL_LIB. A fused file still carries standard-op function bodies: without the library it runs on those
// (with a warning). Function-mode and decomposed files need no library.
//
// Options:
//   --kernel-lib PATH   the fused kernel library (default: $QUADEXPORT_KERNEL_LIB)
//   --kernel MODE       auto (default), always, never
//   --threads N         intra-op threads (default 0: onnxruntime's choice, one per core)
//   --opt-level L       disable, basic, extended, all (default)
//   --spin              let idle worker threads spin (off by default, as in quadexport.make_session)
//   --repeat N          time N runs after --warmup runs (default 3) and print p50/p90/mean latency
//   --warmup N
//
// Prints "key: value" lines (onnxruntime, kernel, input, output, p50_ms, ...) on stdout; errors on stderr, exit 1.

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "npy.h"
#include "onnx_scan.h"

namespace {

const char* kDomain = "quadexport";

struct Options {
  std::string model, input, output, kernel_lib, kernel = "auto", opt_level = "all";
  int threads = 0, repeat = 0, warmup = 3;
  bool spin = false;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "error: " << why << "\nusage: quadexport_client MODEL.onnx INPUT.npy OUTPUT.npy [--kernel-lib PATH] "
            << "[--kernel auto|always|never] [--threads N] [--opt-level L] [--spin] [--repeat N] [--warmup N]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--kernel-lib") o.kernel_lib = value();
    else if (a == "--kernel") o.kernel = value();
    else if (a == "--threads") o.threads = std::stoi(value());
    else if (a == "--opt-level") o.opt_level = value();
    else if (a == "--spin") o.spin = true;
    else if (a == "--repeat") o.repeat = std::stoi(value());
    else if (a == "--warmup") o.warmup = std::stoi(value());
    else if (a.rfind("--", 0) == 0) usage("unknown option " + a);
    else pos.push_back(a);
  }
  if (pos.size() != 3) usage("expected MODEL.onnx INPUT.npy OUTPUT.npy");
  o.model = pos[0], o.input = pos[1], o.output = pos[2];
  if (o.kernel != "auto" && o.kernel != "always" && o.kernel != "never")
    usage("--kernel must be auto, always or never");
  if (o.kernel_lib.empty() && std::getenv("QUADEXPORT_KERNEL_LIB")) o.kernel_lib = std::getenv("QUADEXPORT_KERNEL_LIB");
  return o;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// The kernel library to register, or "" (same policy as quadexport.make_session(kernel_library="auto")).
std::string choose_kernel(const Options& o, const onnx_scan::ModelScan& scan) {
  if (o.kernel == "never") {
    if (scan.needs_kernel())
      throw std::runtime_error("the model has quadexport nodes without function bodies: it needs the kernel library "
                               "(drop --kernel never)");
    return "";
  }
  auto rt = scan.metadata.find("quadexport.runtime");
  bool fused = scan.uses_domain() && rt != scan.metadata.end() && rt->second == "fused";
  if (o.kernel == "auto" && !fused && !scan.needs_kernel()) return "";
  if (!o.kernel_lib.empty() && file_exists(o.kernel_lib)) return o.kernel_lib;
  std::string hint = "pass --kernel-lib build/kernels/libquadexport_ops.so or set QUADEXPORT_KERNEL_LIB (build it with "
                     "`bash tools/build_kernels.sh`)";
  if (!o.kernel_lib.empty()) hint = "kernel library " + o.kernel_lib + " does not exist; " + hint;
  if (scan.needs_kernel() || o.kernel == "always")
    throw std::runtime_error("the model uses custom ops of domain 'quadexport' and needs the kernel library: " + hint);
  std::cerr << "warning: fused model but no kernel library (" << hint << "); running the function bodies\n";
  return "";
}

GraphOptimizationLevel opt_level(const std::string& name) {
  if (name == "disable") return GraphOptimizationLevel::ORT_DISABLE_ALL;
  if (name == "basic") return GraphOptimizationLevel::ORT_ENABLE_BASIC;
  if (name == "extended") return GraphOptimizationLevel::ORT_ENABLE_EXTENDED;
  if (name == "all") return GraphOptimizationLevel::ORT_ENABLE_ALL;
  usage("--opt-level must be disable, basic, extended or all");
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out + "]";
}

std::string output_path(const std::string& base, size_t i) {
  if (i == 0) return base;
  size_t dot = base.rfind(".npy");
  return (dot == std::string::npos ? base : base.substr(0, dot)) + "_" + std::to_string(i) + ".npy";
}

void print_latency(std::vector<double> ms, const Options& o) {
  std::sort(ms.begin(), ms.end());
  double mean = 0;
  for (double v : ms) mean += v / ms.size();
  auto q = [&](double p) { return ms[std::min(ms.size() - 1, static_cast<size_t>(p * (ms.size() - 1) + 0.5))]; };
  std::printf("runs: %zu (after %d warm-up, threads %d)\np50_ms: %.4f\np90_ms: %.4f\nmean_ms: %.4f\nmin_ms: %.4f\n",
              ms.size(), o.warmup, o.threads, q(0.5), q(0.9), mean, ms.front());
}

int run(const Options& o) {
  // The scan reads the .onnx itself (graph and metadata; with external data the weights are not in it) and drops
  // the bytes; the session opens the file by path, so onnxruntime finds an external data file (model.onnx.data,
  // relative to the .onnx's folder) and never holds a second copy of an embedded model.
  onnx_scan::ModelScan scan = onnx_scan::scan(read_file(o.model), kDomain);
  std::string kernel = choose_kernel(o, scan);

  Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "quadexport_client");
  Ort::SessionOptions so;
  so.SetGraphOptimizationLevel(opt_level(o.opt_level));
  so.SetIntraOpNumThreads(o.threads);
  so.SetInterOpNumThreads(1);
  so.AddConfigEntry("session.intra_op.allow_spinning", o.spin ? "1" : "0");
  so.AddConfigEntry("session.inter_op.allow_spinning", o.spin ? "1" : "0");
  if (!kernel.empty()) so.RegisterCustomOpsLibrary(kernel.c_str());
  Ort::Session session(env, o.model.c_str(), so);

  auto mode = scan.metadata.count("quadexport.export_mode") ? scan.metadata.at("quadexport.export_mode") : "?";
  std::cout << "model: " << o.model << " (mode " << mode << ", quadexport nodes " << scan.used_ops.size()
            << " op types)\nkernel: " << (kernel.empty() ? "none" : kernel) << "\n";

  npy::Array x = npy::load(o.input);
  Ort::AllocatorWithDefaultOptions alloc;
  if (session.GetInputCount() != 1) throw std::runtime_error("expected a model with one input");
  std::string in_name = session.GetInputNameAllocated(0, alloc).get();
  std::vector<std::string> out_names;
  for (size_t i = 0; i < session.GetOutputCount(); ++i)
    out_names.push_back(session.GetOutputNameAllocated(i, alloc).get());
  std::vector<const char*> out_ptrs;
  for (auto& n : out_names) out_ptrs.push_back(n.c_str());
  const char* in_ptr = in_name.c_str();

  Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Ort::Value input = Ort::Value::CreateTensor<float>(mem, x.data.data(), x.data.size(), x.shape.data(), x.shape.size());
  std::cout << "input: " << in_name << " " << shape_str(x.shape) << " float32\n";
  auto once = [&]() {
    return session.Run(Ort::RunOptions{nullptr}, &in_ptr, &input, 1, out_ptrs.data(), out_ptrs.size());
  };

  std::vector<Ort::Value> outs = once();
  for (size_t i = 0; i < outs.size(); ++i) {
    auto info = outs[i].GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw std::runtime_error("output " + out_names[i] + " is not float32");
    std::string path = output_path(o.output, i);
    npy::save(path, outs[i].GetTensorData<float>(), info.GetShape());
    std::cout << "output: " << out_names[i] << " " << shape_str(info.GetShape()) << " -> " << path << "\n";
  }
  if (o.repeat > 0) {
    for (int i = 0; i < o.warmup; ++i) once();
    std::vector<double> ms;
    for (int i = 0; i < o.repeat; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      once();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    print_latency(ms, o);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Manual API init: a runtime older than the headers has no table for ORT_API_VERSION (nullptr), reported here
  // instead of crashing in a static initialiser.
  const OrtApiBase* base = OrtGetApiBase();
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api) {
    std::cerr << "error: onnxruntime " << base->GetVersionString() << " does not provide C API " << ORT_API_VERSION
              << " (the headers' version); use a runtime at least as new as the headers\n";
    return 1;
  }
  Ort::InitApi(api);
  if (argc == 2 && std::string(argv[1]) == "--version") {
    std::cout << "onnxruntime: " << base->GetVersionString() << "\napi: " << ORT_API_VERSION << "\n";
    return 0;
  }
  Options o = parse(argc, argv);
  try {
    return run(o);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
