// How libdysink_plugins.so's lazy CUDA driver (plugins/cpp/src/cuda_driver.cpp, compiled in here)
// makes a context current on a thread that has none, against the driver TEST DOUBLE of
// driver_double.cpp (a stand-in libcuda.so.1, found through LD_LIBRARY_PATH) and the runtime double
// of runtime_double.cpp. Driven by tests/plugins/test_plugin_library.py:
//
//   context_harness no-driver                 no libcuda.so.1 at all: one clear line, no crash
//   context_harness stand-in RUNTIME_DOUBLE   LD_LIBRARY_PATH holds the stand-in libcuda.so.1
//
// prints one line per check ("ok ..." / "FAIL ...") and exits non-zero if any failed.
#include "cuda_driver.h"

#include <dlfcn.h>

#include <cstdio>
#include <string>
#include <thread>

namespace
{
int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok" : "FAIL", what.c_str());
    std::fflush(stdout);
    gFailures += ok ? 0 : 1;
}

template <typename F>
void onFreshThread(F f)
{
    std::thread t(f);
    t.join();
}

void noDriver()
{
    std::string error;
    check(dysink::cudaDriver(error) == nullptr, "no driver: cudaDriver() is null, no crash");
    check(error.find("libcuda.so.1") != std::string::npos && error.find('\n') == std::string::npos,
        "one line naming libcuda.so.1: '" + error + "'");
    std::string archError;
    check(dysink::currentDeviceArch(archError) == -1 && archError == error,
        "currentDeviceArch() gives -1 and the same line");
}

void standIn(char const* runtimeDouble)
{
    std::string error;
    dysink::CudaDriver const* driver = dysink::cudaDriver(error);
    check(driver != nullptr, "the stand-in libcuda.so.1 was opened: " + error);
    if (!driver)
    {
        return;
    }
    void* d = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    auto count = reinterpret_cast<int (*)(char const*)>(dlsym(d, "driverDoubleCount"));
    auto stream = reinterpret_cast<void* (*) (int)>(dlsym(d, "driverDoubleStream"));
    auto current = reinterpret_cast<int (*)(int*)>(dlsym(d, "driverDoubleCurrent"));
    auto fail = reinterpret_cast<void (*)(char const*)>(dlsym(d, "driverDoubleFail"));
    check(count && stream && current && fail, "it is the stand-in (driverDouble* entry points)");
    if (!(count && stream && current && fail))
    {
        return;
    }
    int primary = 0;
    check(current(&primary) == -1, "no context is current on the main thread to begin with");
    std::string e;
    int arch = dysink::currentDeviceArch(e);
    check(arch == 87 && current(&primary) == 0 && primary == 1 && count("retain0") == 1,
        "no current context, no CUDA runtime loaded: device 0's primary context retained and made current (sm_"
            + std::to_string(arch) + ") " + e);
    arch = dysink::currentDeviceArch(e);
    check(arch == 87 && count("retain0") == 1 && count("cuCtxSetCurrent") == 1,
        "with a current context nothing is retained or set again");
    onFreshThread([&] {
        std::string te;
        int a = dysink::currentDeviceArch(te);
        int p = 0;
        check(a == 87 && current(&p) == 0 && p == 1 && count("retain0") == 1 && count("cuCtxSetCurrent") == 2,
            "another thread without a context: the primary context retained before is made current there");
    });
    onFreshThread([&] {
        std::string te;
        CUresult r = dysink::ensureCurrentContext(*driver, static_cast<CUstream>(stream(1)), te);
        int p = 1;
        check(r == CUDA_SUCCESS && current(&p) == 1 && p == 0 && count("retain1") == 0,
            "a launch on a stream, no current context: the stream's own context is made current " + te);
    });
    onFreshThread([&] {
        std::string te;
        CUresult r = dysink::ensureCurrentContext(*driver, CU_STREAM_LEGACY, te);
        int p = 0;
        check(r == CUDA_SUCCESS && current(&p) == 0 && p == 1,
            "the legacy default stream: the primary context of the runtime's device (0) " + te);
    });
    // A CUDA runtime in the process, whose current device is 1.
    void* rt = dlopen(runtimeDouble, RTLD_NOW | RTLD_LOCAL);
    auto setDevice = rt ? reinterpret_cast<void (*)(int)>(dlsym(rt, "runtimeDoubleSetDevice")) : nullptr;
    check(setDevice != nullptr, std::string("runtime double (libcudart.so.13) loaded RTLD_LOCAL ") + (rt ? "" : dlerror()));
    if (!setDevice)
    {
        return;
    }
    setDevice(1);
    onFreshThread([&] {
        std::string te;
        int a = dysink::currentDeviceArch(te);
        int p = 0;
        check(a == 90 && current(&p) == 1 && p == 1 && count("retain1") == 1,
            "the runtime's current device is 1: device 1's primary context (sm_" + std::to_string(a) + ") " + te);
    });
    fail("cuCtxSetCurrent");
    onFreshThread([&] {
        std::string te;
        int a = dysink::currentDeviceArch(te);
        check(a == -1 && te.find("making the primary context of CUDA device 1 current failed") != std::string::npos
                && te.find('\n') == std::string::npos,
            "a failing cuCtxSetCurrent: -1 and one line: '" + te + "'");
    });
    fail("");
}
} // namespace

int main(int argc, char** argv)
{
    std::string const mode = argc > 1 ? argv[1] : "";
    if (mode == "no-driver" && argc == 2)
    {
        noDriver();
    }
    else if (mode == "stand-in" && argc == 3)
    {
        standIn(argv[2]);
    }
    else
    {
        std::fprintf(stderr, "usage: %s no-driver | stand-in RUNTIME_DOUBLE\n", argv[0]);
        return 2;
    }
    std::printf("%d failures\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
