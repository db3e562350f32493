// How libdysink_plugins.so and libdysink_plugins_autoreg.so register the plugins, against the
// registry TEST DOUBLE of registry_double.cpp (a stand-in libnvinfer, not TensorRT). Driven by
// tests/plugins/test_plugin_library.py; one scenario per process, since what is loaded cannot be
// unloaded reliably:
//
//   registration_harness SCENARIO PLUGIN AUTOREG STANDIN
//     load-library   the double's loadLibrary loads the plugin: no registry call during the load,
//                    all three creators registered once; dysinkRegisterPlugins() afterwards adds nothing
//     local-nvinfer  stand-in loaded RTLD_LOCAL, then the plugin (registers nothing), then the autoreg
//                    library (registers all three once); dysinkRegisterPlugins() twice registers nothing more
//     no-nvinfer     the plugin and the autoreg library first, with no libnvinfer at all; then the
//                    stand-in, then dysinkRegisterPlugins()
//     other-major    the stand-in reports another TensorRT major: no creators, one refusal line each;
//                    then another minor of the same major: all three creators
//     flags-load-time-calls  the double's check itself: loading the AUTOREG library through
//                    loadLibrary (never do this) calls the registry during the load, and is flagged
//
// prints one line per check ("ok ..." / "FAIL ...") and exits non-zero if any failed. Every scenario
// also checks that the double recorded no registry call during a load (count "errors"), except the
// last, which expects some.
#include "NvInferRuntime.h"
#include "harness_common.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{
int gFailures = 0;
// The library's creators: GatedSinkAttention, RetrieveSinks, GatedSinkAttentionQ8.
constexpr int kCreators = 3;

void check(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "ok" : "FAIL", what.c_str());
    std::fflush(stdout);
    gFailures += ok ? 0 : 1;
}

using CountFn = int (*)(char const*);
using ActiveFn = int (*)(char const*, char const*);
using LoadLibraryFn = int (*)(char const*);
using SetVersionFn = void (*)(int32_t);
using GetCreatorsFn = IPluginCreatorInterface* const* (*) (int32_t&);
using RegisterFn = bool (*)();
using VersionFn = int (*)();
using SetFinderFn = void (*)(ILoggerFinder*);

using harness::CapturingLogger;   // harness_common.h, shared with the plugin harnesses
using harness::Finder;

struct Double
{
    void* handle = nullptr;
    CountFn count = nullptr;
    ActiveFn active = nullptr;
    LoadLibraryFn loadLibrary = nullptr;
    SetVersionFn setVersion = nullptr;

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
        setVersion = reinterpret_cast<SetVersionFn>(dlsym(handle, "registryDoubleSetVersion"));
        return count && active && loadLibrary && setVersion && dlsym(handle, "getPluginRegistry")
            && dlsym(handle, "getInferLibVersion");
    }

    std::string counters() const
    {
        std::string text;
        for (char const* what : {"register", "refused", "deregister", "active", "errors"})
        {
            text += (text.empty() ? "" : " ") + std::string(what) + "=" + std::to_string(count(what));
        }
        return text;
    }

    // Every creator registered exactly once, under "dysink", and nothing else.
    bool allOnceUnderDysink() const
    {
        return active("GatedSinkAttention", "dysink") == 1 && active("RetrieveSinks", "dysink") == 1
            && active("GatedSinkAttentionQ8", "dysink") == 1 && count("active") == kCreators;
    }

    void noCallsDuringLoads() const
    {
        check(count("errors") == 0, "no registry call was made while a library was being loaded: " + counters());
    }
};

struct Plugin
{
    void* handle = nullptr;
    GetCreatorsFn getCreators = nullptr;
    RegisterFn registerPlugins = nullptr;
    VersionFn builtVersion = nullptr;
    SetFinderFn setLoggerFinder = nullptr;

    bool resolve(void* h)
    {
        handle = h;
        getCreators = reinterpret_cast<GetCreatorsFn>(dlsym(handle, "getCreators"));
        registerPlugins = reinterpret_cast<RegisterFn>(dlsym(handle, "dysinkRegisterPlugins"));
        builtVersion = reinterpret_cast<VersionFn>(dlsym(handle, "dysinkPluginsTensorRTVersion"));
        setLoggerFinder = reinterpret_cast<SetFinderFn>(dlsym(handle, "setLoggerFinder"));
        return getCreators && registerPlugins && builtVersion && setLoggerFinder;
    }

    bool open(char const* path, char const* what)
    {
        void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        bool ok = h && resolve(h);
        check(ok, std::string(what) + (h ? "" : std::string(": ") + dlerror()));
        return ok;
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

// IPluginRegistry::loadLibrary (as the double models it) with the stand-in loaded RTLD_LOCAL.
void loadLibrary(char const* pluginPath, char const* /*autoregPath*/, char const* standinPath)
{
    Double d;
    check(d.open(standinPath), "stand-in libnvinfer loaded RTLD_LOCAL");
    check(d.loadLibrary(pluginPath) == 1, "loadLibrary loaded the plugin");
    d.noCallsDuringLoads();
    check(d.count("loaded") == kCreators && d.count("register") == kCreators && d.count("refused") == 0
            && d.count("deregister") == 0 && d.allOnceUnderDysink(),
        "getCreators gave all three creators, the loader registered each once under \"dysink\": " + d.counters());
    Plugin p;
    if (!p.open(pluginPath, "the loaded plugin's entry points"))
    {
        return;
    }
    check(p.registerPlugins() && d.allOnceUnderDysink() && d.count("deregister") == 0,
        "dysinkRegisterPlugins() after loadLibrary: true, the loader's registrations left as they are: "
            + d.counters());
    int32_t n = 0;
    int const before = d.count("register");
    p.getCreators(n);
    check(n == kCreators && d.count("register") == before && d.count("deregister") == 0 && d.allOnceUnderDysink(),
        "getCreators() again: all three creators, no registry call: " + d.counters());
    d.noCallsDuringLoads();
}

// The ctypes.CDLL path: the stand-in RTLD_LOCAL, then the libraries.
void localNvinfer(char const* pluginPath, char const* autoregPath, char const* standinPath)
{
    check(noTensorRTLoaded(), "no TensorRT in the process before the stand-in");
    Double d;
    check(d.open(standinPath), "stand-in libnvinfer loaded RTLD_LOCAL");
    check(dlsym(RTLD_DEFAULT, "getPluginRegistry") == nullptr,
        "the stand-in's getPluginRegistry is not in the global scope (what the RTLD_NOLOAD lookup is for)");
    Plugin p;
    if (!p.open(pluginPath, "libdysink_plugins.so loaded"))
    {
        return;
    }
    check(d.count("register") == 0 && d.count("active") == 0,
        "loading libdysink_plugins.so registers nothing: " + d.counters());
    int32_t n = 0;
    p.getCreators(n);
    check(n == kCreators && d.count("register") == 0 && d.count("deregister") == 0,
        "getCreators() returns all three creators and calls no registry function: " + d.counters());
    void* autoreg = dlopen(autoregPath, RTLD_NOW | RTLD_LOCAL);
    check(autoreg != nullptr, std::string("libdysink_plugins_autoreg.so loaded") + (autoreg ? "" : dlerror()));
    check(d.count("register") == kCreators && d.count("refused") == 0 && d.allOnceUnderDysink(),
        "loading libdysink_plugins_autoreg.so registered all three creators once under \"dysink\": " + d.counters());
    check(p.registerPlugins() && p.registerPlugins() && d.count("register") == kCreators && d.allOnceUnderDysink(),
        "dysinkRegisterPlugins() twice more: true, nothing registered again: " + d.counters());
    void* again = dlopen(autoregPath, RTLD_NOW | RTLD_LOCAL);
    check(again == autoreg && d.count("register") == kCreators, "dlopen of the autoreg library again registers nothing more: "
        + d.counters());
    d.noCallsDuringLoads();
}

// No TensorRT anywhere: loading registers nothing and does not crash; TensorRT loaded later is
// registered with by dysinkRegisterPlugins().
void noNvinfer(char const* pluginPath, char const* autoregPath, char const* standinPath)
{
    check(noTensorRTLoaded(), "no TensorRT in the process");
    Plugin p;
    if (!p.open(pluginPath, "libdysink_plugins.so loaded without TensorRT"))
    {
        return;
    }
    void* autoreg = dlopen(autoregPath, RTLD_NOW | RTLD_LOCAL);
    check(autoreg != nullptr, std::string("libdysink_plugins_autoreg.so loaded without TensorRT, no crash")
        + (autoreg ? "" : dlerror()));
    check(!p.registerPlugins(), "dysinkRegisterPlugins() says no TensorRT is loaded");
    int32_t n = 0;
    p.getCreators(n);
    check(n == kCreators, "getCreators() still returns all three creators");
    Double d;
    check(d.open(standinPath), "stand-in libnvinfer loaded afterwards, RTLD_LOCAL");
    check(d.count("register") == 0 && d.count("deregister") == 0,
        "nothing was registered before TensorRT was there: " + d.counters());
    check(p.registerPlugins() && d.count("register") == kCreators && d.allOnceUnderDysink(),
        "dysinkRegisterPlugins() then registers all three under \"dysink\": " + d.counters());
    check(p.registerPlugins() && d.count("register") == kCreators, "and a second call registers nothing: " + d.counters());
    d.noCallsDuringLoads();
}

std::string versionText(int32_t v)
{
    return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

// The stand-in says it is TensorRT of another major than the plugin's headers.
void otherMajor(char const* pluginPath, char const* autoregPath, char const* standinPath)
{
    Double d;
    check(d.open(standinPath), "stand-in libnvinfer loaded RTLD_LOCAL");
    Plugin p;
    if (!p.open(pluginPath, "libdysink_plugins.so loaded"))
    {
        return;
    }
    int32_t const built = p.builtVersion();
    check(built == static_cast<int32_t>(NV_TENSORRT_VERSION),
        "dysinkPluginsTensorRTVersion() is the headers' version: " + std::to_string(built));
    int32_t const builtMajor = built / 10000;
    int32_t const other = builtMajor == 10 ? 110100 : 100300;   // 11.1.0 for a 10.x build, else 10.3.0
    d.setVersion(other);
    CapturingLogger logger;
    Finder finder(&logger);
    p.setLoggerFinder(&finder);
    std::string const want = "targets TensorRT " + std::to_string(builtMajor) + " (headers " + versionText(built)
        + ") but this process runs TensorRT " + versionText(other);
    auto oneLine = [&](size_t before, std::string const& also) {
        return logger.messages.size() == before + 1 && logger.messages.back().find(want) != std::string::npos
            && logger.messages.back().find(also) != std::string::npos
            && logger.messages.back().find('\n') == std::string::npos;
    };
    size_t before = logger.messages.size();
    // (The double's loadLibrary succeeds with zero creators; what TensorRT's does is not known.)
    check(d.loadLibrary(pluginPath) == 1, "the double's loadLibrary of the plugin returned");
    check(d.count("loaded") == 0 && d.count("register") == 0 && d.count("active") == 0,
        "getCreators gave TensorRT " + versionText(other) + " no creators: " + d.counters());
    check(oneLine(before, "getCreators gives TensorRT no plugins"),
        "one refusal line to TensorRT's logger: '" + (logger.messages.empty() ? "" : logger.messages.back()) + "'");
    int32_t n = -1;
    IPluginCreatorInterface* const* creators = p.getCreators(n);
    check(n == 0 && creators == nullptr, "getCreators() directly: nbCreators = 0, null list");
    before = logger.messages.size();
    check(!p.registerPlugins() && d.count("register") == 0, "dysinkRegisterPlugins() refuses: " + d.counters());
    check(oneLine(before, "no plugins registered"), "and says so in one line: '"
        + (logger.messages.size() > before ? logger.messages.back() : "") + "'");
    // Without a logger: the autoreg library's refusal goes to stderr (checked by the Python test).
    p.setLoggerFinder(nullptr);
    void* autoreg = dlopen(autoregPath, RTLD_NOW | RTLD_LOCAL);
    check(autoreg != nullptr && d.count("register") == 0 && d.count("active") == 0,
        "libdysink_plugins_autoreg.so registers nothing with another major: " + d.counters());
    // The same major, another minor: accepted.
    int32_t const sameMajorOtherMinor = builtMajor * 10000 + 9900 + 1;
    d.setVersion(sameMajorOtherMinor);
    p.getCreators(n);
    check(n == kCreators, "TensorRT " + versionText(sameMajorOtherMinor) + " (same major): getCreators() gives all three");
    check(p.registerPlugins() && d.count("register") == kCreators && d.allOnceUnderDysink(),
        "and dysinkRegisterPlugins() registers all three once: " + d.counters());
    d.noCallsDuringLoads();
}

// The double's own check: the autoreg library's constructor calls the registry; loading it through
// loadLibrary (what a user must not do) is flagged, so the check above is not vacuous.
void flagsLoadTimeCalls(char const* /*pluginPath*/, char const* autoregPath, char const* standinPath)
{
    Double d;
    check(d.open(standinPath), "stand-in libnvinfer loaded RTLD_LOCAL");
    d.loadLibrary(autoregPath);
    check(d.count("errors") > 0, "the double flagged the registry calls made during the load: " + d.counters());
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 5)
    {
        std::fprintf(stderr,
            "usage: %s load-library|local-nvinfer|no-nvinfer|other-major|flags-load-time-calls PLUGIN AUTOREG STANDIN\n",
            argv[0]);
        return 2;
    }
    std::string const mode = argv[1];
    void (*scenario)(char const*, char const*, char const*) = mode == "load-library" ? loadLibrary
        : mode == "local-nvinfer"                                                     ? localNvinfer
        : mode == "no-nvinfer"                                                        ? noNvinfer
        : mode == "other-major"                                                       ? otherMajor
        : mode == "flags-load-time-calls"                                             ? flagsLoadTimeCalls
                                                                                      : nullptr;
    if (!scenario)
    {
        std::fprintf(stderr, "unknown scenario %s\n", mode.c_str());
        return 2;
    }
    scenario(argv[2], argv[3], argv[4]);
    std::printf("%d failures\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}
