// TEST DOUBLE, not TensorRT: a stand-in libnvinfer (built as libnvinfer.so.<major>.<minor>.<patch>
// with soname libnvinfer.so.<major> by tests/plugins/cpp/CMakeLists.txt, in the test build folder
// only) that exports `getPluginRegistry` and `getInferLibVersion` like the real library and returns a
// recording IPluginRegistry. It lets registration_harness.cpp and test_plugin_library.py check how
// libdysink_plugins.so and libdysink_plugins_autoreg.so find and use the process's registry when
// libnvinfer was loaded RTLD_LOCAL (as CPython's ctypes and the tensorrt package load it).
//
// What the double does like TensorRT's registry, as far as its documentation says: registerCreator
// refuses a second creator with the same name, version and namespace; getCreator finds one by name,
// version and namespace; loadLibrary dlopens the library, calls its getCreators and registers each
// creator under the creator's own namespace, and fails if one is registered already.
// Stricter than TensorRT is known to be: loadLibrary holds the registry's (non-recursive) lock from
// the dlopen to the end, and ANY registry call made on that thread meanwhile (getPluginRegistry
// included: from a static constructor of the library or from its getCreators) is an error: recorded
// (count "errors", one "registry double: ERROR" line) and answered with failure, never with a
// deadlock, so that no tested path can depend on the registry's re-entrance behaviour.
// What it cannot model: the real registry's logging, and anything else it does.
#include "NvInferRuntime.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#ifndef NV_TENSORRT_VERSION
#error "NvInferRuntime.h should define NV_TENSORRT_VERSION"
#endif

using namespace nvinfer1;

namespace
{
thread_local bool tLoading = false;   // this thread is inside RecordingRegistry::loadLibrary

struct Entry
{
    IPluginCreatorInterface const* creator;
    std::string name;
    std::string version;
    std::string ns;
};

bool nameOf(IPluginCreatorInterface const& creator, std::string& name, std::string& version)
{
    InterfaceInfo info = creator.getInterfaceInfo();
    if (!info.kind || std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") != 0)
    {
        return false;   // the plugins under test only have V3One creators
    }
    auto const& v3 = static_cast<IPluginCreatorV3One const&>(creator);
    name = v3.getPluginName();
    version = v3.getPluginVersion();
    return true;
}

class RecordingRegistry : public IPluginRegistry
{
public:
    // --- what the tests read -------------------------------------------------------------------
    int registerCalls = 0;
    int registerRefused = 0;
    int deregisterCalls = 0;
    int deregisterUnknown = 0;
    int errors = 0;              // registry calls made while loadLibrary was loading a library
    int loadedCreators = 0;      // what the last loadLibrary got from getCreators
    std::vector<Entry> entries;
    std::mutex mutex;            // held by loadLibrary for the whole load, as TensorRT may hold its own

    int active(char const* name, char const* ns)
    {
        std::lock_guard<std::mutex> lock(mutex);
        int n = 0;
        for (Entry const& e : entries)
        {
            n += (e.name == name && e.ns == ns) ? 1 : 0;
        }
        return n;
    }

    // True (and the error recorded) when called on the thread that is inside loadLibrary.
    bool calledWhileLoading(char const* what)
    {
        if (!tLoading)
        {
            return false;
        }
        ++errors;   // this thread holds `mutex`: no lock needed, and taking it would deadlock
        std::printf("registry double: ERROR: %s called while loadLibrary is loading a library (TensorRT's loader "
                    "may hold the registry lock here)\n",
            what);
        std::fflush(stdout);
        return true;
    }

    // --- IPluginRegistry ---------------------------------------------------------------------
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        if (calledWhileLoading("registerCreator"))
        {
            return false;
        }
        std::lock_guard<std::mutex> lock(mutex);
        return add(creator, pluginNamespace);
    }

    // registerCreator's work; `mutex` held.
    bool add(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace)
    {
        ++registerCalls;
        std::string name, version;
        std::string ns = pluginNamespace ? pluginNamespace : "";
        bool ok = nameOf(creator, name, version);
        for (Entry const& e : entries)
        {
            ok = ok && !(e.name == name && e.version == version && e.ns == ns);
        }
        std::printf("registry double: registerCreator(%s, version %s, namespace \"%s\") -> %s\n", name.c_str(),
            version.c_str(), ns.c_str(), ok ? "registered" : "refused");
        std::fflush(stdout);
        if (!ok)
        {
            ++registerRefused;
            return false;
        }
        entries.push_back({&creator, name, version, ns});
        return true;
    }

    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override
    {
        if (calledWhileLoading("deregisterCreator"))
        {
            return false;
        }
        std::lock_guard<std::mutex> lock(mutex);
        ++deregisterCalls;
        for (auto it = entries.begin(); it != entries.end(); ++it)
        {
            if (it->creator == &creator)
            {
                std::printf("registry double: deregisterCreator(%s)\n", it->name.c_str());
                std::fflush(stdout);
                entries.erase(it);
                return true;
            }
        }
        ++deregisterUnknown;
        std::printf("registry double: deregisterCreator of an unregistered creator\n");
        std::fflush(stdout);
        return false;
    }

    // Lock, flag this thread as loading, dlopen, getCreators, register what it returned (refusing
    // the load if one is registered already), clear the flag, unlock.
    PluginLibraryHandle loadLibrary(AsciiChar const* pluginPath) noexcept override
    {
        if (calledWhileLoading("loadLibrary"))
        {
            return nullptr;
        }
        std::lock_guard<std::mutex> lock(mutex);
        tLoading = true;
        void* handle = dlopen(pluginPath, RTLD_NOW | RTLD_LOCAL);
        bool ok = handle != nullptr;
        if (!ok)
        {
            std::printf("registry double: loadLibrary: %s\n", dlerror());
        }
        using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
        auto getCreators = ok ? reinterpret_cast<GetCreators>(dlsym(handle, "getCreators")) : nullptr;
        int32_t n = 0;
        IPluginCreatorInterface* const* creators = getCreators ? getCreators(n) : nullptr;
        loadedCreators = creators ? n : 0;
        std::printf("registry double: loadLibrary: getCreators gave %d creators\n", loadedCreators);
        for (int32_t i = 0; creators && i < n; ++i)
        {
            auto* v3 = static_cast<IPluginCreatorV3One*>(creators[i]);
            ok = add(*creators[i], v3->getPluginNamespace()) && ok;
        }
        std::fflush(stdout);
        tLoading = false;
        return ok ? handle : nullptr;
    }

    void deregisterLibrary(PluginLibraryHandle) noexcept override {}

    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const name, AsciiChar const* const version,
        AsciiChar const* const ns) noexcept override
    {
        if (calledWhileLoading("getCreator"))
        {
            return nullptr;
        }
        std::lock_guard<std::mutex> lock(mutex);
        for (Entry const& e : entries)
        {
            if (e.name == name && e.version == version && e.ns == (ns ? ns : ""))
            {
                return const_cast<IPluginCreatorInterface*>(e.creator);
            }
        }
        return nullptr;
    }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override
    {
        return nullptr;
    }
    bool isParentSearchEnabled() const override
    {
        return false;
    }
    void setParentSearchEnabled(bool const) override {}
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override
    {
        return nullptr;
    }
    int32_t releasePluginResource(AsciiChar const*) noexcept override
    {
        return 0;
    }
#if NV_TENSORRT_MAJOR < 11
    // The IPluginCreator (V2) overloads, still pure virtual in TensorRT 10.
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override
    {
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override
    {
        return false;
    }
#else
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const numCreators) noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
#endif
};

RecordingRegistry gRegistry;
int32_t gVersion = static_cast<int32_t>(NV_TENSORRT_VERSION);   // what getInferLibVersion reports
} // namespace

extern "C"
{
// The symbols the plugin library looks up (declared in NvInferRuntime.h and NvInferRuntimeBase.h).
__attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept
{
    gRegistry.calledWhileLoading("getPluginRegistry");   // recorded; the pointer is still returned
    return &gRegistry;
}

__attribute__((visibility("default"))) int32_t getInferLibVersion() noexcept
{
    return gVersion;
}

// For the tests: the version getInferLibVersion reports from now on ((major * 100 + minor) * 100 + patch).
__attribute__((visibility("default"))) void registryDoubleSetVersion(int32_t version)
{
    gVersion = version;
}

// For the tests: counters by name ("register", "refused", "deregister", "deregister_unknown", "active",
// "errors": registry calls made during a loadLibrary, "loaded": creators the last loadLibrary got).
__attribute__((visibility("default"))) int registryDoubleCount(char const* what)
{
    std::lock_guard<std::mutex> lock(gRegistry.mutex);
    std::string w = what;
    return w == "register"        ? gRegistry.registerCalls
        : w == "refused"          ? gRegistry.registerRefused
        : w == "deregister"       ? gRegistry.deregisterCalls
        : w == "deregister_unknown" ? gRegistry.deregisterUnknown
        : w == "active"           ? static_cast<int>(gRegistry.entries.size())
        : w == "errors"           ? gRegistry.errors
        : w == "loaded"           ? gRegistry.loadedCreators
                                  : -1;
}

// How many registered creators have this plugin name and namespace.
__attribute__((visibility("default"))) int registryDoubleActive(char const* name, char const* ns)
{
    return gRegistry.active(name, ns);
}

// IPluginRegistry::loadLibrary of the double (TensorRT's loader, as modelled here).
__attribute__((visibility("default"))) int registryDoubleLoadLibrary(char const* path)
{
    return gRegistry.loadLibrary(path) != nullptr;
}
} // extern "C"
