#include "cuda_driver.h"

#include <dlfcn.h>

#include <map>
#include <mutex>

namespace dysink
{
namespace
{
CudaDriver gDriver{};
bool gLoaded = false;
std::string gError;
std::once_flag gOnce;

template <typename T>
bool bind(void* lib, char const* name, T& slot)
{
    slot = reinterpret_cast<T>(dlsym(lib, name));
    if (!slot)
    {
        gError = std::string("libcuda.so.1 lacks ") + name + "; update the NVIDIA driver";
        return false;
    }
    return true;
}

void load()
{
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
    {
        dlerror();
        gError = "the CUDA driver (libcuda.so.1) cannot be opened: this machine has no NVIDIA driver";
        return;
    }
    gLoaded = bind(lib, "cuInit", gDriver.cuInit) && bind(lib, "cuCtxGetDevice", gDriver.cuCtxGetDevice)
        && bind(lib, "cuCtxGetCurrent", gDriver.cuCtxGetCurrent) && bind(lib, "cuCtxSetCurrent", gDriver.cuCtxSetCurrent)
        && bind(lib, "cuDeviceGet", gDriver.cuDeviceGet)
        && bind(lib, "cuDevicePrimaryCtxRetain", gDriver.cuDevicePrimaryCtxRetain)
        && bind(lib, "cuDeviceGetAttribute", gDriver.cuDeviceGetAttribute)
        && bind(lib, "cuModuleLoadData", gDriver.cuModuleLoadData)
        && bind(lib, "cuModuleGetFunction", gDriver.cuModuleGetFunction)
        && bind(lib, "cuFuncSetAttribute", gDriver.cuFuncSetAttribute)
        && bind(lib, "cuLaunchKernel", gDriver.cuLaunchKernel)
        && bind(lib, "cuGetErrorString", gDriver.cuGetErrorString);
    // Optional (CUDA 9.2+): without it a context-less thread falls back to the primary context.
    gDriver.cuStreamGetCtx = reinterpret_cast<decltype(gDriver.cuStreamGetCtx)>(dlsym(lib, "cuStreamGetCtx"));
    dlerror();
    if (gLoaded && gDriver.cuInit(0) != CUDA_SUCCESS)
    {
        gLoaded = false;
        gError = "cuInit failed: no usable NVIDIA GPU";
    }
}

// The CUDA runtime's current device on this thread, from a libcudart the process has already loaded
// (RTLD_NOLOAD: a runtime loaded only for this question would answer its default, device 0, anyway);
// 0 when none is loaded or it does not answer. A runtime linked statically into another library (as
// TensorRT may link it) is invisible here.
int runtimeDevice()
{
    using GetDeviceFn = int (*)(int*);   // cudaError_t cudaGetDevice(int*)
    for (char const* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"})
    {
        void* handle = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
        if (!handle)
        {
            dlerror();
            continue;
        }
        auto getDevice = reinterpret_cast<GetDeviceFn>(dlsym(handle, "cudaGetDevice"));
        int device = 0;
        bool ok = getDevice && getDevice(&device) == 0;
        dlclose(handle);
        if (ok)
        {
            return device;
        }
    }
    auto getDevice = reinterpret_cast<GetDeviceFn>(dlsym(RTLD_DEFAULT, "cudaGetDevice"));
    dlerror();
    int device = 0;
    return getDevice && getDevice(&device) == 0 ? device : 0;
}

std::mutex gPrimaryMutex;
std::map<CUdevice, CUcontext> gPrimary;   // retained once per device, never released
} // namespace

CudaDriver const* cudaDriver(std::string& error)
{
    std::call_once(gOnce, load);
    if (!gLoaded)
    {
        error = gError;
        return nullptr;
    }
    return &gDriver;
}

std::string cudaErrorText(CudaDriver const& driver, CUresult result)
{
    char const* text = nullptr;
    driver.cuGetErrorString(result, &text);
    return std::string(text ? text : "unknown CUDA error") + " (" + std::to_string(static_cast<int>(result)) + ")";
}

CUresult ensureCurrentContext(CudaDriver const& driver, CUstream stream, std::string& error)
{
    CUcontext current = nullptr;
    CUresult result = driver.cuCtxGetCurrent(&current);
    if (result == CUDA_SUCCESS && current)
    {
        return CUDA_SUCCESS;
    }
    // The stream's own context: where a launch on it must run.
    if (stream && stream != CU_STREAM_LEGACY && stream != CU_STREAM_PER_THREAD && driver.cuStreamGetCtx)
    {
        CUcontext own = nullptr;
        if (driver.cuStreamGetCtx(stream, &own) == CUDA_SUCCESS && own)
        {
            result = driver.cuCtxSetCurrent(own);
            if (result != CUDA_SUCCESS)
            {
                error = "no current CUDA context, and making the stream's current failed: "
                    + cudaErrorText(driver, result);
            }
            return result;
        }
    }
    int const ordinal = runtimeDevice();
    CUcontext primary = nullptr;
    {
        std::lock_guard<std::mutex> lock(gPrimaryMutex);
        CUdevice device{};
        result = driver.cuDeviceGet(&device, ordinal);
        if (result != CUDA_SUCCESS)
        {
            error = "no current CUDA context, and CUDA device " + std::to_string(ordinal)
                + " cannot be opened: " + cudaErrorText(driver, result);
            return result;
        }
        auto found = gPrimary.find(device);
        if (found == gPrimary.end())
        {
            result = driver.cuDevicePrimaryCtxRetain(&primary, device);
            if (result != CUDA_SUCCESS)
            {
                error = "no current CUDA context, and retaining the primary context of CUDA device "
                    + std::to_string(ordinal) + " failed: " + cudaErrorText(driver, result);
                return result;
            }
            found = gPrimary.emplace(device, primary).first;
        }
        primary = found->second;
    }
    result = driver.cuCtxSetCurrent(primary);
    if (result != CUDA_SUCCESS)
    {
        error = "no current CUDA context, and making the primary context of CUDA device " + std::to_string(ordinal)
            + " current failed: " + cudaErrorText(driver, result);
    }
    return result;
}

int currentDeviceArch(std::string& error)
{
    CudaDriver const* driver = cudaDriver(error);
    if (!driver || ensureCurrentContext(*driver, nullptr, error) != CUDA_SUCCESS)
    {
        return -1;
    }
    CUdevice device{};
    CUresult result = driver->cuCtxGetDevice(&device);
    if (result != CUDA_SUCCESS)
    {
        error = "no current CUDA context: " + cudaErrorText(*driver, result);
        return -1;
    }
    int major = 0;
    int minor = 0;
    driver->cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device);
    driver->cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device);
    return 10 * major + minor;
}

} // namespace dysink
