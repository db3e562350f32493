// Entry points. Two libraries, two ways in:
// - libdysink_plugins.so (this file): getCreators / setLoggerFinder for trtexec --dynamicPlugins,
//   IPluginRegistry::loadLibrary (dysink-export build, the tensorrt backend, the C++ example) and
//   ONNX Runtime's trt_extra_plugin_lib_paths. It calls no registry function while it is loaded
//   (no static constructor touches TensorRT) nor from getCreators, which only returns the creators:
//   loadLibrary may hold the registry's lock while it dlopens the library and calls getCreators.
// - libdysink_plugins_autoreg.so (autoreg.cpp): for ctypes.CDLL / polygraphy --plugins, its static
//   constructor calls dysinkRegisterPlugins() below, which registers the creators with the process's
//   registry (idempotent). Python may also call dysinkRegisterPlugins() itself through ctypes.
// Both paths refuse a TensorRT of another major than the headers this library was built with (one
// line to TensorRT's logger, else stderr; no creators / false). TensorRT is never linked: it is
// looked up at run time (findTensorRT).
//
// Checked against a registry TEST DOUBLE standing in for libnvinfer (tests/plugins/cpp/
// registry_double.cpp, driven by registration_harness.cpp): the double's loadLibrary flags any
// registry call made while it loads a library and calls getCreators; loading this library through it
// makes none and registers each creator once; the autoreg library registers them with a libnvinfer
// loaded RTLD_LOCAL; dysinkRegisterPlugins twice registers once; another major is refused.
//
// NOT VERIFIED (no TensorRT library on the machines this is built and tested on):
// - what the real loadLibrary does with zero creators (the version refusal): fail, or succeed with
//   nothing registered;
// - what the real registry does if libdysink_plugins_autoreg.so is given to loadLibrary /
//   --dynamicPlugins (its constructor then calls the registry during the load: may deadlock; never
//   do it), or if both ways are used in one process (loadLibrary is documented to fail when a
//   creator is already registered; dysinkRegisterPlugins after loadLibrary finds the creators there);
// - that the libnvinfer of the tensorrt wheels and of JetPack has the soname libnvinfer.so.<major>,
//   and that the lean and dispatch runtimes export getPluginRegistry and getInferLibVersion
//   (NvInferRuntime.h / NvInferRuntimeBase.h declare both; a library without getPluginRegistry is
//   skipped, one without getInferLibVersion is not version-checked).
#include "plugins.h"

#include "NvInferVersion.h"

#include <dlfcn.h>

#include <mutex>

using namespace nvinfer1;

namespace dysink
{
namespace
{
GatedSinkAttentionCreator gAttentionCreator(AttentionOp::kPlain);
RetrieveSinksCreator gRetrieveCreator;
GatedSinkAttentionCreator gAttentionQ8Creator(AttentionOp::kQ8);
IPluginCreatorInterface* const gCreators[] = {&gAttentionCreator, &gRetrieveCreator, &gAttentionQ8Creator};
IPluginCreatorV3One* const gCreatorsV3[] = {&gAttentionCreator, &gRetrieveCreator, &gAttentionQ8Creator};
constexpr int32_t kNumCreators = static_cast<int32_t>(sizeof(gCreators) / sizeof(gCreators[0]));

// The version of the headers this library was built with, as getInferLibVersion() reports one.
constexpr int32_t kBuiltVersion = static_cast<int32_t>(NV_TENSORRT_VERSION);
constexpr int32_t kBuiltMajor = NV_TENSORRT_MAJOR;

// The TensorRT libraries defining `extern "C" IPluginRegistry* getPluginRegistry()` (NvInferRuntime.h
// of TensorRT 10.x and 11.x), by soname: the full runtime first, then the lean and dispatch runtimes.
char const* const kTensorRTLibraries[] = {"libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so",
    "libnvinfer_lean.so.10", "libnvinfer_lean.so.11", "libnvinfer_lean.so", "libnvinfer_dispatch.so.10",
    "libnvinfer_dispatch.so.11", "libnvinfer_dispatch.so"};

using GetRegistryFn = IPluginRegistry* (*) ();
using GetVersionFn = int32_t (*)();

// The TensorRT already loaded in this process. Python (the tensorrt package, ctypes) loads libnvinfer
// RTLD_LOCAL, where dlsym(RTLD_DEFAULT) does not see it: each library is asked for by name with
// RTLD_NOLOAD (never loads one; the handle only adds a reference, given back by the destructor: the
// library stays loaded by whoever loaded it), then the global scope (a libnvinfer loaded RTLD_GLOBAL,
// or linked into the executable, under another name). Finding it calls nothing in TensorRT.
struct LoadedTensorRT
{
    void* handle = nullptr;
    char const* library = nullptr;
    GetRegistryFn getRegistry = nullptr;
    GetVersionFn getVersion = nullptr;

    LoadedTensorRT()
    {
        for (char const* name : kTensorRTLibraries)
        {
            void* h = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
            if (!h)
            {
                dlerror();   // not loaded: leave no pending error for the process's next dlerror()
                continue;
            }
            getRegistry = reinterpret_cast<GetRegistryFn>(dlsym(h, "getPluginRegistry"));
            getVersion = reinterpret_cast<GetVersionFn>(dlsym(h, "getInferLibVersion"));
            dlerror();
            if (getRegistry)
            {
                handle = h;
                library = name;
                return;
            }
            getVersion = nullptr;
            dlclose(h);
        }
        getRegistry = reinterpret_cast<GetRegistryFn>(dlsym(RTLD_DEFAULT, "getPluginRegistry"));
        getVersion = getRegistry ? reinterpret_cast<GetVersionFn>(dlsym(RTLD_DEFAULT, "getInferLibVersion")) : nullptr;
        dlerror();
        library = "the process's global scope";
    }
    ~LoadedTensorRT()
    {
        if (handle)
        {
            dlclose(handle);
        }
    }
    LoadedTensorRT(LoadedTensorRT const&) = delete;
    LoadedTensorRT& operator=(LoadedTensorRT const&) = delete;

    bool found() const
    {
        return getRegistry != nullptr;
    }
    // getInferLibVersion(): (major * 100 + minor) * 100 + patch; 0 when none is loaded, -1 when the
    // library does not say.
    int32_t version() const
    {
        return !found() ? 0 : getVersion ? getVersion() : -1;
    }
};

int32_t majorOf(int32_t version)
{
    return version >= 100000 ? version / 10000 : version / 1000;   // TensorRT < 10: major * 1000 + ...
}

std::string versionText(int32_t version)
{
    if (version < 100000)   // TensorRT 8 / 9: (major * 10 + minor) * 100 + patch
    {
        return std::to_string(version / 1000) + "." + std::to_string(version / 100 % 10) + "."
            + std::to_string(version % 100);
    }
    return std::to_string(version / 10000) + "." + std::to_string(version / 100 % 100) + "."
        + std::to_string(version % 100);
}

// True when the loaded TensorRT has the major of the headers (or does not tell its version); else
// one line saying what was refused and what to rebuild, and false.
bool sameMajor(LoadedTensorRT const& trt, char const* refused)
{
    int32_t const version = trt.version();
    if (version <= 0 || majorOf(version) == kBuiltMajor)
    {
        return true;
    }
    logError(std::string("libdysink_plugins.so targets TensorRT ") + std::to_string(kBuiltMajor) + " (headers "
        + versionText(kBuiltVersion) + ") but this process runs TensorRT " + versionText(version) + " ("
        + trt.library + "): " + refused + "; rebuild it with that version's headers: dysink-export plugins "
        + "--tensorrt-include <TensorRT " + std::to_string(majorOf(version)) + " include> ...");
    return false;
}

std::mutex gRegisterMutex;
IPluginRegistry* gRegisteredWith = nullptr;   // where dysinkRegisterPlugins put the creators

bool registerWithProcessRegistry()
{
    std::lock_guard<std::mutex> lock(gRegisterMutex);
    LoadedTensorRT trt;
    if (!trt.found() || !sameMajor(trt, "no plugins registered"))
    {
        return false;
    }
    IPluginRegistry* registry = trt.getRegistry();
    if (!registry)
    {
        return false;
    }
    if (registry == gRegisteredWith)
    {
        return true;   // registered already
    }
    bool all = true;
    for (int32_t i = 0; i < kNumCreators; ++i)
    {
        if (registry->registerCreator(*gCreators[i], kPluginNamespace))
        {
            continue;
        }
        // Refused: registered already, by a loadLibrary of this very library?
        char const* name = gCreatorsV3[i]->getPluginName();
        if (registry->getCreator(name, kPluginVersion, kPluginNamespace) == gCreators[i])
        {
            continue;
        }
        logError(std::string("TensorRT refused to register dysink::") + name + " version " + kPluginVersion
            + ": another creator of that name is registered (a second copy of libdysink_plugins.so?)");
        all = false;
    }
    if (all)
    {
        gRegisteredWith = registry;
    }
    return all;
}
} // namespace
} // namespace dysink

extern "C"
{

// For TensorRT's loader: the creators, and nothing else (no registry call here). A loaded TensorRT of
// another major gets none (nbCreators = 0, nullptr) and one logged line.
__attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    nbCreators = 0;
    dysink::LoadedTensorRT trt;
    if (trt.found() && !dysink::sameMajor(trt, "getCreators gives TensorRT no plugins"))
    {
        return nullptr;
    }
    nbCreators = dysink::kNumCreators;
    return dysink::gCreators;
}

__attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder)
{
    dysink::setLoggerFinderImpl(finder);
}

// Register the creators with the TensorRT loaded in this process (what libdysink_plugins_autoreg.so
// does when it is loaded; callable through ctypes, e.g. for a library loaded before TensorRT). True
// when they are registered (also when they were already: calling it again registers nothing more);
// false when no TensorRT is loaded, or it is of another major (one line logged), or TensorRT refused.
// Never call it from inside IPluginRegistry::loadLibrary.
__attribute__((visibility("default"))) bool dysinkRegisterPlugins()
{
    return dysink::registerWithProcessRegistry();
}

// The version of the TensorRT headers the library was built with: (major * 100 + minor) * 100 + patch,
// the format of getInferLibVersion() (100300 for 10.3.0).
__attribute__((visibility("default"))) int dysinkPluginsTensorRTVersion()
{
    return dysink::kBuiltVersion;
}

// getInferLibVersion() of the TensorRT loaded in this process: 0 when none is loaded, -1 when it does
// not say.
__attribute__((visibility("default"))) int dysinkLoadedTensorRTVersion()
{
    dysink::LoadedTensorRT trt;
    return trt.version();
}

// Diagnostics without TensorRT or a GPU: which cubin would run `kernel` for this key on `arch`
// (`pages`: KPages, 0 auto / 1 bf16 / 2 int8 / 3 fp8). Returns the image's architecture, or -1 with
// the reason in `message` (the symbol when found).
__attribute__((visibility("default"))) int dysinkFindKernelPages(char const* kernel, int dtype, int headDim,
    int heads, int sinkBf16, int pages, int arch, char* message, int messageBytes)
{
    std::string error;
    dysink::KernelImage const* image
        = dysink::findKernelImage({kernel, dtype, headDim, heads, sinkBf16, pages}, arch, error);
    if (message && messageBytes > 0)
    {
        std::string text = image ? std::string(image->symbol) : error;
        text = text.substr(0, static_cast<size_t>(messageBytes - 1));
        std::copy(text.begin(), text.end(), message);
        message[text.size()] = '\0';
    }
    return image ? image->arch : -1;
}

// dysinkFindKernelPages for the model dtype's pages (auto).
__attribute__((visibility("default"))) int dysinkFindKernel(char const* kernel, int dtype, int headDim, int heads,
    int sinkBf16, int arch, char* message, int messageBytes)
{
    return dysinkFindKernelPages(kernel, dtype, headDim, heads, sinkBf16, 0, arch, message, messageBytes);
}

// The compute capability (x 10) of the GPU the plugins would load their kernels for on this thread,
// making a context current as the plugins do (ensureCurrentContext), or -1 with the reason in
// `message` (e.g. no CUDA driver).
__attribute__((visibility("default"))) int dysinkDeviceArch(char* message, int messageBytes)
{
    std::string error;
    int arch = dysink::currentDeviceArch(error);
    if (message && messageBytes > 0)
    {
        std::string text = error.substr(0, static_cast<size_t>(messageBytes - 1));
        std::copy(text.begin(), text.end(), message);
        message[text.size()] = '\0';
    }
    return arch;
}

__attribute__((visibility("default"))) char const* dysinkKernelsTritonVersion()
{
    return dysink::kKernelsTritonVersion;
}

} // extern "C"
