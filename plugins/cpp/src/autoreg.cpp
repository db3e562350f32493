// libdysink_plugins_autoreg.so: for loaders that only dlopen a library and expect it to register its
// plugins (ctypes.CDLL after `import tensorrt`, polygraphy --plugins). Its static constructor calls
// dysinkRegisterPlugins() of libdysink_plugins.so (a DT_NEEDED dependency, found beside it through
// RUNPATH $ORIGIN), which registers the creators with the process's TensorRT registry.
//
// Never give this library to IPluginRegistry::loadLibrary or trtexec --dynamicPlugins: its
// constructor would call the registry while the loader may hold the registry's lock. Those loaders
// take libdysink_plugins.so, which touches no registry while it is loaded.
#include <cstdio>

extern "C" bool dysinkRegisterPlugins();
extern "C" int dysinkLoadedTensorRTVersion();

namespace
{
struct RegisterAtLoad
{
    RegisterAtLoad()
    {
        // Another major, or a refusal, was already said in one line by dysinkRegisterPlugins.
        if (!dysinkRegisterPlugins() && dysinkLoadedTensorRTVersion() == 0)
        {
            std::fprintf(stderr,
                "[dysink plugins] libdysink_plugins_autoreg.so: no TensorRT is loaded in this process, so no plugins "
                "were registered: import tensorrt before loading it, or call dysinkRegisterPlugins() of "
                "libdysink_plugins.so once TensorRT is loaded\n");
        }
    }
} gRegisterAtLoad;
} // namespace
