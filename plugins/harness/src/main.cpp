// dysink_plugin_harness: TensorRT's part around libdysink_plugins.so, without TensorRT.
//
//   dysink_plugin_harness LIBRARY CASE_DIR OUT_DIR
//       dlopens LIBRARY (libdysink_plugins.so), resolves getCreators and setLoggerFinder, reads
//       CASE_DIR/case.json and its .npy inputs (case.h), creates the op's plugin from the node's
//       attributes as the ONNX parser does, walks the IPluginV3 build calls, deserializes it,
//       attachToContext, onShapeChange; with a GPU, enqueue on a CUDA stream (twice: bit-identical)
//       and writes each output to OUT_DIR/<output name>.npy (bfloat16 as raw '<u2' bits).
//   dysink_plugin_harness --npy-roundtrip IN.npy OUT.npy
//       reads IN.npy and writes it back to OUT.npy (the reader's and writer's own check).
//
// stdout: one "ok <check>" line per check passed, then exactly one of
//   "DONE <op>: host half and enqueue on <GPU>; outputs in OUT_DIR (...)"   exit 0
//   "SKIPPED enqueue of <op>: <why there is no GPU>; the host half passed"  exit 77
//   "FAIL <check>: <why>[: the plugin's logged lines]"                      exit 1
// Exit 2: a bad command line. CUDA_VISIBLE_DEVICES= (empty) forces the host half on a GPU machine.
#include "case.h"
#include "device.h"
#include "doubles.h"
#include "walk.h"

#include "NvInferVersion.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>

namespace
{
constexpr int kSkipped = 77;   // the project's skip code: enqueue skipped for lack of a GPU

int failLine(std::string const& check, std::string const& why)
{
    std::printf("FAIL %s: %s\n", check.c_str(), why.c_str());
    return 1;
}

// 100300 -> "10.3.0" (getInferLibVersion's format).
std::string versionText(int v)
{
    return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

int npyRoundTrip(char const* in, char const* out)
{
    harness::NpyArray a;
    std::string error;
    if (!harness::readNpy(in, a, error))
    {
        return failLine("read", error);
    }
    if (!harness::writeNpy(out, a, error))
    {
        return failLine("write", error);
    }
    std::printf("ok %s %s -> %s\n", a.descr.c_str(), harness::shapeText(a.shape).c_str(), out);
    return 0;
}

int usage(char const* self)
{
    std::fprintf(stderr, "usage: %s LIBRARY CASE_DIR OUT_DIR\n       %s --npy-roundtrip IN.npy OUT.npy\n", self, self);
    return 2;
}
} // namespace

int main(int argc, char** argv)
{
    std::setvbuf(stdout, nullptr, _IOLBF, 0);   // every line out before a crash, also into a pipe
    if (argc == 4 && std::strcmp(argv[1], "--npy-roundtrip") == 0)
    {
        return npyRoundTrip(argv[2], argv[3]);
    }
    if (argc != 4 || argv[1][0] == '-')
    {
        return usage(argv[0]);
    }
    std::string const outDir = argv[3];
    harness::Case c;
    std::string error;
    if (!harness::loadCase(argv[2], c, error))
    {
        return failLine("case", error);
    }
    std::printf("ok case %s: %zu inputs, %zu outputs\n", c.op.c_str(), c.inputs.size(), c.outputs.size());

    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib)
    {
        char const* why = dlerror();
        return failLine("dlopen", why ? why : argv[1]);
    }
    harness::Library library;
    library.getCreators = reinterpret_cast<decltype(library.getCreators)>(dlsym(lib, "getCreators"));
    library.setLoggerFinder = reinterpret_cast<decltype(library.setLoggerFinder)>(dlsym(lib, "setLoggerFinder"));
    if (!library.getCreators || !library.setLoggerFinder)
    {
        return failLine("dlsym", std::string(argv[1]) + " does not export getCreators and setLoggerFinder");
    }
    // The plugins' classes must have this harness's TensorRT ABI: one major (as the library itself
    // refuses a libnvinfer of another major, which the harness does not load).
    auto builtWith = reinterpret_cast<int (*)()>(dlsym(lib, "dysinkPluginsTensorRTVersion"));
    int const headers = (NV_TENSORRT_MAJOR * 100 + NV_TENSORRT_MINOR) * 100 + NV_TENSORRT_PATCH;
    if (builtWith && builtWith() / 10000 != NV_TENSORRT_MAJOR)
    {
        return failLine("TensorRT version", std::string(argv[1]) + " was built with TensorRT "
                + versionText(builtWith()) + " headers, this harness with " + versionText(headers)
                + ": build both with headers of one major");
    }
    std::printf("ok dlopen %s: getCreators, setLoggerFinder (TensorRT %s headers, the harness's major)\n", argv[1],
        versionText(builtWith ? builtWith() : headers).c_str());

    harness::CapturingLogger logger;
    harness::Device device;            // declared first: the plugins go before the device's context
    harness::Walk walk(c, logger);
    if (!walk.build(library))
    {
        return 1;
    }
    std::string noGpu;
    bool gpu = device.open(noGpu);
    if (gpu)
    {
        std::error_code ec;
        std::filesystem::create_directories(outDir, ec);
        if (ec)
        {
            return failLine("outputs", outDir + ": " + ec.message());
        }
    }
    if (!walk.runtime(gpu ? &device : nullptr, outDir))
    {
        return 1;
    }
    if (!gpu)
    {
        std::printf("SKIPPED enqueue of %s: %s; the host half passed (%d checks)\n", c.op.c_str(), noGpu.c_str(),
            walk.checks());
        return kSkipped;
    }
    std::printf("DONE %s: host half and enqueue on %s; outputs in %s (compare them with the expected ones)\n",
        c.op.c_str(), device.description().c_str(), outDir.c_str());
    return 0;
}
