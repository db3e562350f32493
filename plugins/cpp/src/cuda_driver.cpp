#include "cuda_driver.h"

#include <dlfcn.h>

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
        gError = "the CUDA driver (libcuda.so.1) cannot be opened: this machine has no NVIDIA driver";
        return;
    }
    gLoaded = bind(lib, "cuInit", gDriver.cuInit) && bind(lib, "cuCtxGetDevice", gDriver.cuCtxGetDevice)
        && bind(lib, "cuDeviceGetAttribute", gDriver.cuDeviceGetAttribute)
        && bind(lib, "cuModuleLoadData", gDriver.cuModuleLoadData)
        && bind(lib, "cuModuleGetFunction", gDriver.cuModuleGetFunction)
        && bind(lib, "cuFuncSetAttribute", gDriver.cuFuncSetAttribute)
        && bind(lib, "cuLaunchKernel", gDriver.cuLaunchKernel)
        && bind(lib, "cuGetErrorString", gDriver.cuGetErrorString);
    if (gLoaded && gDriver.cuInit(0) != CUDA_SUCCESS)
    {
        gLoaded = false;
        gError = "cuInit failed: no usable NVIDIA GPU";
    }
}
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

int currentDeviceArch(std::string& error)
{
    CudaDriver const* driver = cudaDriver(error);
    if (!driver)
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
