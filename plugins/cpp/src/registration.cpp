// Entry points: getCreators / setLoggerFinder (trtexec --dynamicPlugins, IPluginRegistry::loadLibrary,
// ONNX Runtime's trt_extra_plugin_lib_paths) and self-registration at load time (ctypes.CDLL,
// polygraphy --plugins) when TensorRT is already in the process. TensorRT is never linked: its
// registry is looked up at run time (processRegistry).
//
// NOT VERIFIED (no TensorRT library on the machines this is built and tested on; the tests use a
// registry test double standing in for libnvinfer, tests/plugins/cpp/registry_double.cpp):
// - what the real registry does when this library's static constructor calls registerCreator while
//   IPluginRegistry::loadLibrary is loading the library (the loader may hold the registry's lock:
//   the call could deadlock, fail or be accepted), and whether the deregisterCreator calls made from
//   getCreators, still inside loadLibrary, are accepted before the loader registers the creators;
// - that the libnvinfer of the tensorrt wheels and of JetPack has the soname libnvinfer.so.<major>,
//   and that the lean and dispatch runtimes export getPluginRegistry (NvInferRuntime.h, their API,
//   declares it; a library without it is skipped).
#include "plugins.h"

#include <dlfcn.h>

#include <atomic>

using namespace nvinfer1;

namespace dysink
{
namespace
{
GatedSinkAttentionCreator gAttentionCreator;
RetrieveSinksCreator gRetrieveCreator;
IPluginCreatorInterface* const gCreators[] = {&gAttentionCreator, &gRetrieveCreator};
constexpr int32_t kNumCreators = static_cast<int32_t>(sizeof(gCreators) / sizeof(gCreators[0]));

// The TensorRT libraries defining `extern "C" IPluginRegistry* getPluginRegistry()` (NvInferRuntime.h
// of TensorRT 10.x and 11.x), by soname: the full runtime first, then the lean and dispatch runtimes.
char const* const kTensorRTLibraries[] = {"libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so",
    "libnvinfer_lean.so.10", "libnvinfer_lean.so.11", "libnvinfer_lean.so", "libnvinfer_dispatch.so.10",
    "libnvinfer_dispatch.so.11", "libnvinfer_dispatch.so"};

using GetRegistryFn = IPluginRegistry* (*) ();

IPluginRegistry* callRegistryFn(void* symbol)
{
    return symbol ? reinterpret_cast<GetRegistryFn>(symbol)() : nullptr;
}

// The registry of the TensorRT already loaded in this process, or nullptr. Python (the tensorrt
// package, ctypes) loads libnvinfer RTLD_LOCAL, where dlsym(RTLD_DEFAULT) does not see it: ask for
// each library by name with RTLD_NOLOAD (never loads one; the handle only adds a reference, given
// back by dlclose: the library stays loaded by whoever loaded it), then fall back to the global
// scope (a libnvinfer loaded RTLD_GLOBAL, or linked into the executable, under another name).
IPluginRegistry* processRegistry()
{
    for (char const* name : kTensorRTLibraries)
    {
        void* handle = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
        if (!handle)
        {
            dlerror();   // not loaded: leave no pending error for the process's next dlerror()
            continue;
        }
        IPluginRegistry* registry = callRegistryFn(dlsym(handle, "getPluginRegistry"));
        dlclose(handle);
        if (registry)
        {
            return registry;
        }
    }
    IPluginRegistry* registry = callRegistryFn(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
    dlerror();
    return registry;
}

// What the load-time (or dysinkRegisterPlugins) registration put in which registry, so that
// getCreators takes out exactly that and nothing a loader registered.
std::atomic<bool> gClaimed{false};
std::atomic<IPluginRegistry*> gSelfRegistry{nullptr};
bool gSelfRegistered[kNumCreators] = {};

struct SelfRegistration
{
    SelfRegistration()
    {
        registerWithProcessRegistry();
    }

    // false when no TensorRT is loaded in this process.
    static bool registerWithProcessRegistry()
    {
        IPluginRegistry* registry = processRegistry();
        if (!registry)
        {
            return false;
        }
        if (gClaimed.exchange(true))
        {
            return true;   // registered already
        }
        for (int32_t i = 0; i < kNumCreators; ++i)
        {
            gSelfRegistered[i] = registry->registerCreator(*gCreators[i], kPluginNamespace);
        }
        gSelfRegistry.store(registry, std::memory_order_release);
        return true;
    }

    // Called by getCreators: undo the registration above (no lock is held while calling TensorRT).
    static void deregister()
    {
        IPluginRegistry* registry = gSelfRegistry.exchange(nullptr, std::memory_order_acquire);
        if (!registry)
        {
            return;
        }
        for (int32_t i = 0; i < kNumCreators; ++i)
        {
            if (gSelfRegistered[i])
            {
                registry->deregisterCreator(*gCreators[i]);
                gSelfRegistered[i] = false;
            }
        }
        gClaimed.store(false);
    }
} gSelfRegistration;
} // namespace
} // namespace dysink

extern "C"
{

__attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    // TensorRT's loader registers what this returns; if the load-time registration already put the
    // creators in the registry, take them out first so that its registration does not collide.
    dysink::SelfRegistration::deregister();
    nbCreators = dysink::kNumCreators;
    return dysink::gCreators;
}

__attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder)
{
    dysink::setLoggerFinderImpl(finder);
}

// Register with the process's TensorRT registry now (for a library loaded before TensorRT).
// Returns false when no TensorRT is loaded in this process.
__attribute__((visibility("default"))) bool dysinkRegisterPlugins()
{
    return dysink::SelfRegistration::registerWithProcessRegistry();
}

// Diagnostics without TensorRT or a GPU: which cubin would run `kernel` for this key on `arch`.
// Returns the image's architecture, or -1 with the reason in `message`.
__attribute__((visibility("default"))) int dysinkFindKernel(char const* kernel, int dtype, int headDim, int heads,
    int sinkBf16, int arch, char* message, int messageBytes)
{
    std::string error;
    dysink::KernelImage const* image = dysink::findKernelImage({kernel, dtype, headDim, heads, sinkBf16}, arch, error);
    if (message && messageBytes > 0)
    {
        std::string text = image ? std::string(image->symbol) : error;
        text = text.substr(0, static_cast<size_t>(messageBytes - 1));
        std::copy(text.begin(), text.end(), message);
        message[text.size()] = '\0';
    }
    return image ? image->arch : -1;
}

__attribute__((visibility("default"))) char const* dysinkKernelsTritonVersion()
{
    return dysink::kKernelsTritonVersion;
}

} // extern "C"
