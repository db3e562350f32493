// How libdysink_plugins.so registers itself, against the registry TEST DOUBLE of registry_double.cpp
// (a stand-in libnvinfer, not TensorRT). Driven by tests/plugins/test_plugin_library.py; one
// scenario per process, since what is loaded cannot be unloaded reliably:
//
//   registration_harness local-nvinfer  PLUGIN STANDIN   stand-in loaded RTLD_LOCAL, then the plugin
//   registration_harness load-library   PLUGIN STANDIN   the double's loadLibrary loads the plugin
//   registration_harness no-nvinfer     PLUGIN STANDIN   the plugin first, with no libnvinfer at all
//
// prints one line per check ("ok ..." / "FAIL ...") and exits non-zero if any failed.
#include "NvInferRuntime.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>

using namespace nvinfer1;

namespace
{
int gFailures = 0;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok" : "FAIL", what.c_str());
    std::fflush(stdout);
    gFailures += ok ? 0 : 1;
}

using CountFn = int (*)(char const*);
using ActiveFn = int (*)(char const*, char const*);
using LoadLibraryFn = int (*)(char const*);
using GetCreatorsFn = IPluginCreatorInterface* const* (*) (int32_t&);
using RegisterFn = bool (*)();
using GetRegistryFn = IPluginRegistry* (*) ();

struct Double
{
    void* handle = nullptr;
    CountFn count = nullptr;
    ActiveFn active = nullptr;
    LoadLibraryFn loadLibrary = nullptr;
    GetRegistryFn registry = nullptr;

    bool open(char const* path)
    {
        handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);   // as CPython's ctypes and the tensorrt package do
        if (!handle)
        {
            std::printf("dlopen %s: %s\n", path, dlerror());
            return false;
        }
        count = reinterpret_cast<CountFn>(dlsym(handle, "registryDoubleCount"));
        active = reinterpret_cast<ActiveFn>(dlsym(handle, "registryDoubleActive"));
        loadLibrary = reinterpret_cast<LoadLibraryFn>(dlsym(handle, "registryDoubleLoadLibrary"));
        registry = reinterpret_cast<GetRegistryFn>(dlsym(handle, "getPluginRegistry"));
        return count && active && loadLibrary && registry;
    }

    // "register=2 refused=0 deregister=0 active=2": the counters, for the check lines.
    std::string counters() const
    {
        std::string text;
        for (char const* what : {"register", "refused", "deregister", "deregister_unknown", "active"})
        {
            text += (text.empty() ? "" : " ") + std::string(what) + "=" + std::to_string(count(what));
        }
        return text;
    }

    // Both creators registered exactly once, under "dysink", and nothing else.
    bool bothOnceUnderDysink() const
    {
        return active("GatedSinkAttention", "dysink") == 1 && active("RetrieveSinks", "dysink") == 1
            && count("active") == 2;
    }
};

struct Plugin
{
    void* handle = nullptr;
    GetCreatorsFn getCreators = nullptr;
    RegisterFn registerPlugins = nullptr;

    bool resolve(void* h)
    {
        handle = h;
        getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(handle, "getCreators"));
        registerPlugins = reinterpret_cast<RegisterFn>(dlsym(handle, "dysinkRegisterPlugins"));
        return getCreators && registerPlugins;
    }
};

bool noTensorRTLoaded()
{
    for (char const* name : {"libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so"})
    {
        if (void* h = dlopen(name, RTLD_NOW | RTLD_NOLOAD))
        {
            dlclose(h);
            return false;
        }
    }
    return dlsym(RTLD_DEFAULT, "getPluginRegistry") == nullptr;
}

// The stand-in is loaded RTLD_LOCAL, then the plugin as ctypes.CDLL loads it.
void localNvinfer(char const* pluginPath, char const* standinPath)
{
    check(noTensorRTLoaded(), "no TensorRT in the process before the stand-in");
    Double d;
    check(d.open(standinPath), "stand-in libnvinfer loaded RTLD_LOCAL");
    check(dlsym(RTLD_DEFAULT, "getPluginRegistry") == nullptr,
        "the stand-in's getPluginRegistry is not in the global scope (the case the fix is for)");
    Plugin p;
    void* h = dlopen(pluginPath, RTLD_NOW | RTLD_LOCAL);
    check(h && p.resolve(h), std::string("plugin loaded: ") + (h ? "" : dlerror()));
    if (!h)
    {
        return;
    }
    check(d.count("register") == 2 && d.count("refused") == 0 && d.bothOnceUnderDysink(),
        "loading registered both creators exactly once under \"dysink\": " + d.counters());
    check(p.registerPlugins() && d.count("register") == 2 && d.bothOnceUnderDysink(),
        "dysinkRegisterPlugins() finds the registry and does not register twice: " + d.counters());
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = p.getCreators(n);
    check(n == 2 && d.count("deregister") == 2 && d.count("deregister_unknown") == 0 && d.count("active") == 0,
        "getCreators() deregistered the self-registered creators: " + d.counters());
    // What a loader does next with what getCreators returned: no collision.
    bool registered = true;
    for (int32_t i = 0; i < n; ++i)
    {
        registered = d.registry()->registerCreator(*creators[i], "dysink") && registered;
    }
    check(registered && d.count("refused") == 0 && d.bothOnceUnderDysink(),
        "the loader's registration of getCreators()'s creators does not collide: " + d.counters());
    p.getCreators(n);
    check(d.count("deregister") == 2 && d.bothOnceUnderDysink(),
        "a second getCreators() leaves the loader's registrations alone: " + d.counters());
    // A second dlopen of the loaded plugin runs no constructor again.
    void* again = dlopen(pluginPath, RTLD_NOW | RTLD_LOCAL);
    check(again == h && d.count("register") == 4, "dlopen again registers nothing more: " + d.counters());
    dlclose(again);
}

// IPluginRegistry::loadLibrary (as the double models it) with the stand-in loaded RTLD_LOCAL.
void loadLibrary(char const* pluginPath, char const* standinPath)
{
    Double d;
    check(d.open(standinPath), "stand-in libnvinfer loaded RTLD_LOCAL");
    check(d.loadLibrary(pluginPath) == 1, "loadLibrary loaded the plugin");
    check(d.count("refused") == 0 && d.count("deregister_unknown") == 0 && d.bothOnceUnderDysink()
            && d.count("register") == 4 && d.count("deregister") == 2,
        "load-time registration, taken back by getCreators, then the loader's: each creator once, no "
        "collision: "
            + d.counters());
}

// No TensorRT anywhere: loading registers nothing and does not crash; TensorRT loaded later is
// registered with by dysinkRegisterPlugins().
void noNvinfer(char const* pluginPath, char const* standinPath)
{
    check(noTensorRTLoaded(), "no TensorRT in the process");
    Plugin p;
    void* h = dlopen(pluginPath, RTLD_NOW | RTLD_LOCAL);
    check(h && p.resolve(h), std::string("plugin loaded without TensorRT: ") + (h ? "" : dlerror()));
    if (!h)
    {
        return;
    }
    check(!p.registerPlugins(), "dysinkRegisterPlugins() says no TensorRT is loaded");
    int32_t n = 0;
    p.getCreators(n);
    check(n == 2, "getCreators() still returns both creators");
    Double d;
    check(d.open(standinPath), "stand-in libnvinfer loaded afterwards, RTLD_LOCAL");
    check(d.count("register") == 0 && d.count("deregister") == 0,
        "nothing was registered before TensorRT was there: " + d.counters());
    check(p.registerPlugins() && d.count("register") == 2 && d.bothOnceUnderDysink(),
        "dysinkRegisterPlugins() then registers both under \"dysink\": " + d.counters());
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 4)
    {
        std::fprintf(stderr, "usage: %s local-nvinfer|load-library|no-nvinfer PLUGIN STANDIN\n", argv[0]);
        return 2;
    }
    std::string const mode = argv[1];
    if (mode == "local-nvinfer")
    {
        localNvinfer(argv[2], argv[3]);
    }
    else if (mode == "load-library")
    {
        loadLibrary(argv[2], argv[3]);
    }
    else if (mode == "no-nvinfer")
    {
        noNvinfer(argv[2], argv[3]);
    }
    else
    {
        std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
        return 2;
    }
    std::printf("%d failures\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
