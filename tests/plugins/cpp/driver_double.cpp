// TEST DOUBLE, not the CUDA driver: a stand-in libcuda.so.1 (built by tests/plugins/cpp/CMakeLists.txt
// into the test build folder only) with just the entry points libdysink_plugins.so binds, and a
// per-thread current context, so that context_harness.cpp can check how the plugin library makes a
// context current on a thread that has none. Two fake devices: 0 (sm_87) and 1 (sm_90); a context
// is a pointer into a table (primary contexts; "stream" contexts for driverDoubleStream). No GPU
// work is done: modules, functions and launches are recorded only (one function handle per symbol
// name, driverDoubleFunctionName; a test may watch each launch's arguments through
// driverDoubleSetLaunchHook, as q8_harness.cpp does). The plugin harness
// (plugins/harness/) also finds streams and "device" memory here (host memory: copies and fills are
// memcpy / memset, kernels write nothing), so that tests/plugins/test_harness.py runs its enqueue path.
// Deliberately does not include cuda.h (which renames some entry points with macros): the ABI is
// plain ints and pointers.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

namespace
{
struct Context
{
    int device;
    bool primary;
};
Context gPrimary[2] = {{0, true}, {1, true}};
Context gOther[2] = {{0, false}, {1, false}};   // a non-primary context per device (a stream's)
struct Stream
{
    Context* context;
};
Stream gStreams[2] = {{&gOther[0]}, {&gOther[1]}};
thread_local Context* tCurrent = nullptr;
std::mutex gMutex;
std::map<std::string, int> gCounts;
std::string gFail;   // the entry point that fails from now on ("" none)
int gModule = 0;
// Function handles: one per symbol name, each a string allocated once (a stable address).
std::map<std::string, std::string*> gFunctions;
using LaunchHook = void (*)(void* function, unsigned gridX, unsigned gridY, unsigned gridZ, unsigned blockX,
    unsigned sharedBytes, void** params);
LaunchHook gLaunchHook = nullptr;

int count(char const* what)
{
    std::lock_guard<std::mutex> lock(gMutex);
    ++gCounts[what];
    return 0;
}
bool failing(char const* what)
{
    std::lock_guard<std::mutex> lock(gMutex);
    return gFail == what;
}
constexpr int kSuccess = 0;
constexpr int kInvalidValue = 1;
constexpr int kInvalidDevice = 101;
constexpr int kInvalidContext = 201;
} // namespace

#define EXPORT extern "C" __attribute__((visibility("default")))

EXPORT int cuInit(unsigned) { return count("cuInit"); }

EXPORT int cuCtxGetCurrent(void** ctx)
{
    count("cuCtxGetCurrent");
    *ctx = tCurrent;
    return kSuccess;
}

EXPORT int cuCtxSetCurrent(void* ctx)
{
    count("cuCtxSetCurrent");
    if (failing("cuCtxSetCurrent"))
    {
        return kInvalidContext;
    }
    tCurrent = static_cast<Context*>(ctx);
    return kSuccess;
}

EXPORT int cuCtxGetDevice(int* device)
{
    if (!tCurrent)
    {
        return kInvalidContext;
    }
    *device = tCurrent->device;
    return kSuccess;
}

EXPORT int cuDeviceGet(int* device, int ordinal)
{
    count("cuDeviceGet");
    if (ordinal < 0 || ordinal > 1)
    {
        return kInvalidDevice;
    }
    *device = ordinal;
    return kSuccess;
}

EXPORT int cuDevicePrimaryCtxRetain(void** ctx, int device)
{
    count(device == 0 ? "retain0" : "retain1");
    if (failing("cuDevicePrimaryCtxRetain"))
    {
        return kInvalidDevice;
    }
    *ctx = &gPrimary[device];
    return kSuccess;
}

EXPORT int cuStreamGetCtx(void* stream, void** ctx)
{
    count("cuStreamGetCtx");
    if (!stream || reinterpret_cast<uintptr_t>(stream) < 16)
    {
        return kInvalidContext;   // default streams: the current context's, and there is none
    }
    *ctx = static_cast<Stream*>(stream)->context;
    return kSuccess;
}

EXPORT int cuDeviceGetAttribute(int* value, int attribute, int device)
{
    // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    *value = attribute == 75 ? (device == 0 ? 8 : 9) : attribute == 76 ? (device == 0 ? 7 : 0) : 0;
    return kSuccess;
}

EXPORT int cuModuleLoadData(void** module, void const*)
{
    count("cuModuleLoadData");
    *module = &gModule;
    return tCurrent ? kSuccess : kInvalidContext;
}

EXPORT int cuModuleGetFunction(void** function, void*, char const* name)
{
    std::lock_guard<std::mutex> lock(gMutex);
    std::string*& slot = gFunctions[name];
    if (!slot)
    {
        slot = new std::string(name);   // kept for the life of the process, as the driver's would be
    }
    *function = slot;
    return kSuccess;
}

EXPORT int cuFuncSetAttribute(void*, int, int) { return kSuccess; }

EXPORT int cuLaunchKernel(void* function, unsigned gridX, unsigned gridY, unsigned gridZ, unsigned blockX, unsigned,
    unsigned, unsigned sharedBytes, void*, void** params, void**)
{
    count("cuLaunchKernel");
    if (!tCurrent)
    {
        return kInvalidContext;
    }
    if (gLaunchHook)
    {
        gLaunchHook(function, gridX, gridY, gridZ, blockX, sharedBytes, params);   // params valid only now
    }
    return kSuccess;
}

EXPORT int cuGetErrorString(int result, char const** text)
{
    *text = result == kInvalidContext ? "CUDA_ERROR_INVALID_CONTEXT"
        : result == kInvalidDevice    ? "CUDA_ERROR_INVALID_DEVICE"
        : result == kInvalidValue     ? "CUDA_ERROR_INVALID_VALUE"
                                      : "CUDA_ERROR_UNKNOWN";
    return kSuccess;
}

// --- what the plugin harness binds besides: devices, streams, memory ------------------------------
EXPORT int cuDeviceGetCount(int* count)
{
    *count = 2;
    return kSuccess;
}

EXPORT int cuDeviceGetName(char* name, int length, int device)
{
    std::snprintf(name, static_cast<size_t>(length), "CUDA driver TEST DOUBLE device %d", device);
    return kSuccess;
}

EXPORT int cuDevicePrimaryCtxRelease_v2(int) { return kSuccess; }

EXPORT int cuStreamCreate(void** stream, unsigned)
{
    count("cuStreamCreate");
    if (!tCurrent)
    {
        return kInvalidContext;
    }
    *stream = new Stream{tCurrent};
    return kSuccess;
}

EXPORT int cuStreamDestroy_v2(void* stream)
{
    delete static_cast<Stream*>(stream);
    return kSuccess;
}

EXPORT int cuStreamSynchronize(void*) { return count("cuStreamSynchronize"); }

EXPORT int cuMemAlloc_v2(unsigned long long* ptr, size_t bytes)
{
    count("cuMemAlloc");
    *ptr = reinterpret_cast<uintptr_t>(std::malloc(bytes));
    return *ptr ? kSuccess : kInvalidValue;
}

EXPORT int cuMemFree_v2(unsigned long long ptr)
{
    std::free(reinterpret_cast<void*>(static_cast<uintptr_t>(ptr)));
    return kSuccess;
}

EXPORT int cuMemcpyHtoD_v2(unsigned long long dst, void const* src, size_t bytes)
{
    std::memcpy(reinterpret_cast<void*>(static_cast<uintptr_t>(dst)), src, bytes);
    return kSuccess;
}

EXPORT int cuMemcpyDtoH_v2(void* dst, unsigned long long src, size_t bytes)
{
    std::memcpy(dst, reinterpret_cast<void const*>(static_cast<uintptr_t>(src)), bytes);
    return kSuccess;
}

EXPORT int cuMemsetD8_v2(unsigned long long dst, unsigned char value, size_t bytes)
{
    std::memset(reinterpret_cast<void*>(static_cast<uintptr_t>(dst)), value, bytes);
    return kSuccess;
}

EXPORT int cuGetErrorName(int result, char const** text)
{
    return cuGetErrorString(result, text);
}

// --- for the tests ------------------------------------------------------------------------------
EXPORT int driverDoubleCount(char const* what)
{
    std::lock_guard<std::mutex> lock(gMutex);
    auto found = gCounts.find(what);
    return found == gCounts.end() ? 0 : found->second;
}

// A stream of a non-primary context of `device`.
EXPORT void* driverDoubleStream(int device)
{
    return &gStreams[device];
}

// The device of this thread's current context, -1 for none; 1 when it is a primary context, else 0.
EXPORT int driverDoubleCurrent(int* primary)
{
    *primary = tCurrent && tCurrent->primary ? 1 : 0;
    return tCurrent ? tCurrent->device : -1;
}

// The symbol a function handle of cuModuleGetFunction was made for ("" for another pointer).
EXPORT char const* driverDoubleFunctionName(void* function)
{
    std::lock_guard<std::mutex> lock(gMutex);
    for (auto const& entry : gFunctions)
    {
        if (entry.second == function)
        {
            return entry.second->c_str();
        }
    }
    return "";
}

// Called inside every successful cuLaunchKernel with its function, grid, block x, dynamic shared
// bytes and kernelParams (nullptr: none).
EXPORT void driverDoubleSetLaunchHook(LaunchHook hook)
{
    gLaunchHook = hook;
}

// From now on `what` ("cuDevicePrimaryCtxRetain", "cuCtxSetCurrent", or "" for none) fails.
EXPORT void driverDoubleFail(char const* what)
{
    std::lock_guard<std::mutex> lock(gMutex);
    gFail = what;
}
