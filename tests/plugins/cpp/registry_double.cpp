// TEST DOUBLE, not TensorRT: a stand-in libnvinfer (built as libnvinfer.so.<major>.<minor>.<patch>
// with soname libnvinfer.so.<major> by tests/plugins/cpp/CMakeLists.txt, in the test build folder
// only) that exports `getPluginRegistry` like the real library and returns a recording
// IPluginRegistry. It lets registration_harness.cpp and test_plugin_library.py check how
// libdysink_plugins.so finds and uses the process's registry when libnvinfer was loaded
// RTLD_LOCAL (as CPython's ctypes and the tensorrt package load it).
//
// What the double does like TensorRT's registry, as far as its documentation says: registerCreator
// refuses a second creator with the same name, version and namespace; loadLibrary dlopens the
// library, calls its getCreators and registers each creator under the creator's own namespace.
// What it cannot model: the real registry's locking while loadLibrary runs the library's static
// constructors, its logging, and anything else it does.
#include "NvInferRuntime.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
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
    std::vector<Entry> entries;
    std::recursive_mutex mutex;   // a recursive lock: see the header comment (real locking not modelled)

    int active(char const* name, char const* ns)
    {
        std::lock_guard<std::recursive_mutex> lock(mutex);
        int n = 0;
        for (Entry const& e : entries)
        {
            n += (e.name == name && e.ns == ns) ? 1 : 0;
        }
        return n;
    }

    // --- IPluginRegistry ---------------------------------------------------------------------
    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const pluginNamespace) noexcept override
    {
        std::lock_guard<std::recursive_mutex> lock(mutex);
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
        std::lock_guard<std::recursive_mutex> lock(mutex);
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

    PluginLibraryHandle loadLibrary(AsciiChar const* pluginPath) noexcept override
    {
        void* handle = dlopen(pluginPath, RTLD_NOW | RTLD_LOCAL);
        if (!handle)
        {
            return nullptr;
        }
        using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
        auto getCreators = reinterpret_cast<GetCreators>(dlsym(handle, "getCreators"));
        int32_t n = 0;
        IPluginCreatorInterface* const* creators = getCreators ? getCreators(n) : nullptr;
        for (int32_t i = 0; creators && i < n; ++i)
        {
            auto* v3 = static_cast<IPluginCreatorV3One*>(creators[i]);
            registerCreator(*creators[i], v3->getPluginNamespace());
        }
        return handle;
    }

    void deregisterLibrary(PluginLibraryHandle) noexcept override {}

    IPluginCreatorInterface* const* getAllCreators(int32_t* const numCreators) const noexcept override
    {
        *numCreators = 0;
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const, AsciiChar const* const) noexcept override
    {
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
} // namespace

extern "C"
{
// The symbol the plugin library looks up (declared in NvInferRuntime.h).
__attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept
{
    return &gRegistry;
}

// For the tests: counters by name ("register", "refused", "deregister", "deregister_unknown", "active").
__attribute__((visibility("default"))) int registryDoubleCount(char const* what)
{
    std::lock_guard<std::recursive_mutex> lock(gRegistry.mutex);
    std::string w = what;
    return w == "register"        ? gRegistry.registerCalls
        : w == "refused"          ? gRegistry.registerRefused
        : w == "deregister"       ? gRegistry.deregisterCalls
        : w == "deregister_unknown" ? gRegistry.deregisterUnknown
        : w == "active"           ? static_cast<int>(gRegistry.entries.size())
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
