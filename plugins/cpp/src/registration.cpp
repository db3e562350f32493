// Entry points: getCreators / setLoggerFinder (trtexec --dynamicPlugins, IPluginRegistry::loadLibrary,
// ONNX Runtime's trt_extra_plugin_lib_paths) and self-registration at load time (ctypes.CDLL,
// polygraphy --plugins) when TensorRT is already in the process. TensorRT is never linked: its
// registry is looked up with dlsym.
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
std::atomic<bool> gSelfRegistered{false};

using GetRegistryFn = IPluginRegistry* (*) ();

IPluginRegistry* processRegistry()
{
    auto fn = reinterpret_cast<GetRegistryFn>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
    return fn ? fn() : nullptr;
}

struct SelfRegistration
{
    SelfRegistration()
    {
        registerWithProcessRegistry();
    }

    static void registerWithProcessRegistry()
    {
        IPluginRegistry* registry = processRegistry();
        if (!registry || gSelfRegistered.exchange(true))
        {
            return;
        }
        for (IPluginCreatorInterface* creator : gCreators)
        {
            registry->registerCreator(*creator, kPluginNamespace);
        }
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
    if (dysink::gSelfRegistered.exchange(false))
    {
        if (IPluginRegistry* registry = dysink::processRegistry())
        {
            for (IPluginCreatorInterface* creator : dysink::gCreators)
            {
                registry->deregisterCreator(*creator);
            }
        }
    }
    nbCreators = static_cast<int32_t>(sizeof(dysink::gCreators) / sizeof(dysink::gCreators[0]));
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
    if (!dysink::processRegistry())
    {
        return false;
    }
    dysink::SelfRegistration::registerWithProcessRegistry();
    return true;
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
