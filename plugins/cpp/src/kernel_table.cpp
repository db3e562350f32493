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
        && (img.sinkBf16 < 0 || img.sinkBf16 == key.sinkBf16);
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
} // namespace

std::string embeddedArchs(char const* kernel)
{
    std::set<int32_t> archs;
    for (int32_t i = 0; i < kNumKernelImages; ++i)
    {
        if (std::strcmp(kKernelImages[i].kernel, kernel) == 0)
        {
            archs.insert(kKernelImages[i].arch);
        }
    }
    std::string text;
    for (int32_t a : archs)
    {
        text += (text.empty() ? "sm_" : ", sm_") + std::to_string(a);
    }
    return text.empty() ? "none" : text;
}

KernelImage const* findKernelImage(KernelKey const& key, int32_t arch, std::string& error)
{
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
        bool forward = (arch / 10 == 8 || arch / 10 == 12) && img.arch / 10 == arch / 10 && img.arch < arch;
        if (forward && (!best || img.arch > best->arch))
        {
            best = &img;
        }
    }
    if (best)
    {
        return best;
    }
    if (!anyArch)
    {
        error = std::string("no embedded ") + key.kernel + " kernel for dtype " + dtypeName(key.dtype) + ", head dim "
            + std::to_string(key.headDim) + (key.heads ? ", heads " + std::to_string(key.heads) : std::string())
            + (key.sinkBf16 >= 0 ? ", sink_bf16 " + std::to_string(key.sinkBf16) : std::string())
            + "; rebuild the library for this bundle: dysink-export plugins --bundle BUNDLE --out DIR";
    }
    else
    {
        error = std::string("this GPU is sm_") + std::to_string(arch) + " but libdysink_plugins.so embeds "
            + key.kernel + " only for " + embeddedArchs(key.kernel)
            + "; rebuild it with dysink-export plugins --arch " + std::to_string(arch) + " --out DIR";
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
    CUdevice device{};
    CUresult result = driver->cuCtxGetDevice(&device);
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
                + " failed: " + cudaErrorText(*driver, result);
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
    static CUdeviceptr const kNull = 0;
    args.add(&kNull).add(&kNull);   // global scratch, profile scratch
    KernelImage const& img = *kernel.image;
    return driver->cuLaunchKernel(kernel.function, gridX, gridY, gridZ, 32 * img.numWarps, 1, 1,
        static_cast<unsigned>(img.sharedBytes), stream, args.ptrs, nullptr);
}

} // namespace dysink
