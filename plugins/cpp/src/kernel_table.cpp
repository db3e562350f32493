#include "kernel_table.h"

#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <utility>

namespace dysink
{
namespace
{
bool keyMatches(KernelImage const& img, KernelKey const& key)
{
    return std::strcmp(img.kernel, key.kernel) == 0 && (img.dtype == kAnyDtype || img.dtype == key.dtype)
        && (img.headDim == 0 || img.headDim == key.headDim) && (img.heads == 0 || img.heads == key.heads)
        && (img.sinkBf16 < 0 || img.sinkBf16 == key.sinkBf16) && img.pages == key.pages;
}

char const* dtypeName(int32_t dtype)
{
    switch (dtype)
    {
    case kF32: return "float32";
    case kF16: return "float16";
    case kBF16: return "bfloat16";
    default: return "any";
    }
}

std::mutex gLoadMutex;
std::map<std::pair<CUdevice, KernelImage const*>, CUfunction> gLoaded;

std::string archNames(std::set<int32_t> const& archs, char const* separator, char const* prefix)
{
    std::string text;
    for (int32_t a : archs)
    {
        text += (text.empty() ? "" : separator) + std::string(prefix) + std::to_string(a);
    }
    return text;
}

// Every architecture the library embeds (any kernel): what a rebuild must keep.
std::set<int32_t> libraryArchs()
{
    std::set<int32_t> archs;
    for (int32_t i = 0; i < kNumKernelImages; ++i)
    {
        archs.insert(kKernelImages[i].arch);
    }
    return archs;
}

// The page types embedded for this kernel, e.g. "auto" or "int8, fp8".
std::string embeddedPages(char const* kernel)
{
    std::set<int32_t> pages;
    for (int32_t i = 0; i < kNumKernelImages; ++i)
    {
        if (std::strcmp(kKernelImages[i].kernel, kernel) == 0)
        {
            pages.insert(kKernelImages[i].pages);
        }
    }
    std::string text;
    for (int32_t p : pages)
    {
        text += (text.empty() ? "" : ", ") + std::string(pagesName(p));
    }
    return text.empty() ? "no" : text;
}

// What a rebuild for these pages may pass to --arch: fp8 kernels compile for sm_89 and newer only
// (`dysink-export kernels` refuses older ones with fp8).
std::set<int32_t> rebuildArchs(std::set<int32_t> archs, int32_t pages)
{
    if (pages == kPagesFP8)
    {
        archs.erase(archs.begin(), archs.lower_bound(kFP8MinArch));
    }
    return archs;
}

// The option a rebuild command needs for these pages ("" for the model dtype's, a bundle's default).
std::string pagesOption(int32_t pages)
{
    return pages == kPagesAuto ? std::string() : std::string(" --kv-cache-dtype ") + pagesName(pages);
}

bool compilable(int32_t arch)
{
    for (int32_t i = 0; i < kNumCompilableArchs; ++i)
    {
        if (kCompilableArchs[i] == arch)
        {
            return true;
        }
    }
    return false;
}
} // namespace

char const* pagesName(int32_t pages)
{
    switch (pages)
    {
    case kPagesAuto: return "auto";
    case kPagesBF16: return "bf16";
    case kPagesInt8: return "int8";
    case kPagesFP8: return "fp8";
    default: return "unknown";
    }
}

std::string embeddedArchs(char const* kernel, int32_t pages)
{
    std::set<int32_t> archs;
    for (int32_t i = 0; i < kNumKernelImages; ++i)
    {
        if (std::strcmp(kKernelImages[i].kernel, kernel) == 0
            && (pages == kAnyPages || kKernelImages[i].pages == pages))
        {
            archs.insert(kKernelImages[i].arch);
        }
    }
    return archs.empty() ? "none" : archNames(archs, ", ", "sm_");
}

bool cubinRunsOn(int32_t imageArch, int32_t gpuArch)
{
    // Triton 3.7.1 compiles sm_80/86/87/89 to plain cubins, which CUDA runs on any later minor of the
    // same major (an sm_80 cubin on sm_86 / sm_87 / sm_89, an sm_87 one on sm_89). sm_90 and newer it
    // compiles to arch-specific targets (ELF flags sm_90a, sm_100a, sm_110a, sm_120a, as cuobjdump -lelf
    // shows), which run on exactly that compute capability: no sm_120 cubin on sm_121, no sm_100 on sm_103.
    if (imageArch == gpuArch)
    {
        return true;
    }
    return imageArch < 90 && gpuArch / 10 == imageArch / 10 && imageArch < gpuArch;
}

KernelImage const* findKernelImage(KernelKey const& key, int32_t arch, std::string& error)
{
    std::string const pages = pagesName(key.pages);
    std::string const rebuild = " --out DIR --overwrite";
    if (key.pages == kPagesFP8 && arch < kFP8MinArch && compilable(arch))
    {
        std::set<int32_t> archs = libraryArchs();
        archs.insert(arch);
        error = "fp8 K/V pages need sm_89 or newer (Triton's float8e4nv) and this GPU is sm_" + std::to_string(arch)
            + ": use int8 pages here (every architecture): export the bundle with --kv-cache-dtype int8, then "
              "dysink-export plugins --bundle BUNDLE --kv-cache-dtype int8 --arch "
            + archNames(archs, ",", "") + rebuild;
        return nullptr;
    }
    KernelImage const* best = nullptr;
    bool anyArch = false;
    for (int32_t i = 0; i < kNumKernelImages; ++i)
    {
        KernelImage const& img = kKernelImages[i];
        if (!keyMatches(img, key))
        {
            continue;
        }
        anyArch = true;
        if (img.arch == arch)
        {
            return &img;
        }
        if (cubinRunsOn(img.arch, arch) && (!best || img.arch > best->arch))
        {
            best = &img;
        }
    }
    if (best)
    {
        return best;
    }
    std::set<int32_t> archs = rebuildArchs(libraryArchs(), key.pages);
    std::string const what = std::string(key.kernel) + (key.pages == kPagesAuto ? "" : " (" + pages + " pages)");
    if (!anyArch && key.pages != kPagesAuto && embeddedArchs(key.kernel, key.pages) == "none")
    {
        // Kernels are compiled for one page type (kernels.json "kv_cache_dtype"): another needs a rebuild,
        // which must also cover this GPU.
        std::set<int32_t> wanted = archs;
        wanted.insert(arch);
        error = std::string("libdysink_plugins.so has no ") + key.kernel + " kernels for " + pages
            + " K/V pages (it embeds " + embeddedPages(key.kernel) + " pages); dysink-export kernels --kv-cache-dtype "
            + pages + " compiles them; rebuild the library with them: dysink-export plugins --bundle BUNDLE"
            + pagesOption(key.pages) + " --arch " + archNames(wanted, ",", "") + rebuild;
    }
    else if (!anyArch)
    {
        error = std::string("no embedded ") + what + " kernel for dtype " + dtypeName(key.dtype) + ", head dim "
            + std::to_string(key.headDim) + (key.heads ? ", heads " + std::to_string(key.heads) : std::string())
            + (key.sinkBf16 >= 0 ? ", sink_bf16 " + std::to_string(key.sinkBf16) : std::string())
            + "; rebuild the library for this bundle: dysink-export plugins --bundle BUNDLE" + pagesOption(key.pages)
            + " --arch " + archNames(archs, ",", "") + rebuild;
    }
    else if (!compilable(arch))
    {
        std::set<int32_t> accepted(kCompilableArchs, kCompilableArchs + kNumCompilableArchs);
        error = std::string("this GPU is sm_") + std::to_string(arch)
            + ", which the compiled kernels do not support: libdysink_plugins.so embeds " + what + " for "
            + embeddedArchs(key.kernel, key.pages)
            + " (a cubin runs on a newer GPU only within sm_8x; sm_90 and newer cubins are arch-specific) and "
              "dysink-export plugins --arch accepts only "
            + archNames(accepted, ",", "");
    }
    else
    {
        std::set<int32_t> wanted = archs;
        wanted.insert(arch);
        error = std::string("this GPU is sm_") + std::to_string(arch) + " but libdysink_plugins.so embeds " + what
            + " only for " + embeddedArchs(key.kernel, key.pages)
            + (arch >= 100 ? std::string(" (sm_100 and newer cubins from Triton's bundled ptxas-blackwell, CUDA 13, need "
                                         "an R580+ driver; TRITON_PTXAS_BLACKWELL_PATH selects this machine's ptxas)")
                           : std::string())
            + "; rebuild it with this architecture added: dysink-export plugins --bundle BUNDLE" + pagesOption(key.pages)
            + " --arch " + archNames(wanted, ",", "") + rebuild;
    }
    return nullptr;
}

bool loadKernel(KernelImage const* image, LoadedKernel& out, std::string& error)
{
    CudaDriver const* driver = cudaDriver(error);
    if (!driver)
    {
        return false;
    }
    CUresult result = ensureCurrentContext(*driver, nullptr, error);
    if (result != CUDA_SUCCESS)
    {
        return false;
    }
    CUdevice device{};
    result = driver->cuCtxGetDevice(&device);
    if (result != CUDA_SUCCESS)
    {
        error = "no current CUDA context: " + cudaErrorText(*driver, result);
        return false;
    }
    std::lock_guard<std::mutex> lock(gLoadMutex);
    auto found = gLoaded.find({device, image});
    if (found == gLoaded.end())
    {
        CUmodule module{};
        result = driver->cuModuleLoadData(&module, image->cubin);
        if (result != CUDA_SUCCESS)
        {
            error = std::string("loading the ") + image->kernel + " cubin for sm_" + std::to_string(image->arch)
                + " failed: " + cudaErrorText(*driver, result)
                + (image->arch >= 100 ? std::string(" (cubins for sm_100 and newer from Triton's bundled ptxas-blackwell "
                                                    "need an R580+ driver)")
                                      : std::string());
            return false;
        }
        CUfunction function{};
        result = driver->cuModuleGetFunction(&function, module, image->symbol);
        if (result == CUDA_SUCCESS && image->sharedBytes > 48 * 1024)
        {
            result = driver->cuFuncSetAttribute(
                function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, image->sharedBytes);
        }
        if (result != CUDA_SUCCESS)
        {
            error = std::string("preparing ") + image->symbol + " failed: " + cudaErrorText(*driver, result);
            return false;
        }
        found = gLoaded.emplace(std::make_pair(device, image), function).first;
    }
    out.image = image;
    out.function = found->second;
    return true;
}

CUresult launchKernel(LoadedKernel const& kernel, unsigned gridX, unsigned gridY, unsigned gridZ, ArgList& args,
    CUstream stream)
{
    std::string unused;
    CudaDriver const* driver = cudaDriver(unused);
    if (!driver || !kernel.function)
    {
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    KernelImage const& img = *kernel.image;
    if (args.count != img.nArgs)
    {
        return CUDA_ERROR_INVALID_VALUE;   // the plugin and the embedded cubin disagree on the arguments
    }
    // A thread TensorRT enqueues from normally has the stream's context current; if not, make it so.
    CUresult result = ensureCurrentContext(*driver, stream, unused);
    if (result != CUDA_SUCCESS)
    {
        return result;
    }
    static CUdeviceptr const kNull = 0;
    args.add(&kNull).add(&kNull);   // global scratch, profile scratch
    return driver->cuLaunchKernel(kernel.function, gridX, gridY, gridZ, 32 * img.numWarps, 1, 1,
        static_cast<unsigned>(img.sharedBytes), stream, args.ptrs, nullptr);
}

} // namespace dysink
