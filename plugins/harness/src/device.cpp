#include "device.h"

#include <dlfcn.h>

namespace harness
{
namespace
{
template <typename T>
bool bind(void* lib, char const* name, T& slot, std::string& why)
{
    slot = reinterpret_cast<T>(dlsym(lib, name));
    if (!slot)
    {
        why = std::string("libcuda.so.1 lacks ") + name;
        return false;
    }
    return true;
}
} // namespace

Device::~Device()
{
    if (!mLib)
    {
        return;
    }
    for (CUdeviceptr p : mBuffers)
    {
        mApi.cuMemFree(p);
    }
    if (mStream)
    {
        mApi.cuStreamDestroy(mStream);
    }
    if (mContext)
    {
        mApi.cuDevicePrimaryCtxRelease(mDevice);
    }
    // libcuda stays loaded: the plugin library holds it too.
}

bool Device::check(CUresult result, char const* call, std::string& error) const
{
    if (result == CUDA_SUCCESS)
    {
        return true;
    }
    char const* name = nullptr;
    if (mApi.cuGetErrorName)
    {
        mApi.cuGetErrorName(result, &name);
    }
    error = std::string(call) + " failed: " + (name ? name : "CUDA error") + " (" + std::to_string(result) + ")";
    return false;
}

bool Device::open(std::string& why)
{
    mLib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!mLib)
    {
        dlerror();
        why = "the CUDA driver (libcuda.so.1) cannot be opened: this machine has no NVIDIA driver";
        return false;
    }
    // The versioned names are what cuda.h's macros map the plain ones to.
    bool bound = bind(mLib, "cuInit", mApi.cuInit, why) && bind(mLib, "cuDeviceGetCount", mApi.cuDeviceGetCount, why)
        && bind(mLib, "cuDeviceGet", mApi.cuDeviceGet, why) && bind(mLib, "cuDeviceGetName", mApi.cuDeviceGetName, why)
        && bind(mLib, "cuDeviceGetAttribute", mApi.cuDeviceGetAttribute, why)
        && bind(mLib, "cuDevicePrimaryCtxRetain", mApi.cuDevicePrimaryCtxRetain, why)
        && bind(mLib, "cuDevicePrimaryCtxRelease_v2", mApi.cuDevicePrimaryCtxRelease, why)
        && bind(mLib, "cuCtxSetCurrent", mApi.cuCtxSetCurrent, why)
        && bind(mLib, "cuStreamCreate", mApi.cuStreamCreate, why)
        && bind(mLib, "cuStreamDestroy_v2", mApi.cuStreamDestroy, why)
        && bind(mLib, "cuStreamSynchronize", mApi.cuStreamSynchronize, why)
        && bind(mLib, "cuMemAlloc_v2", mApi.cuMemAlloc, why) && bind(mLib, "cuMemFree_v2", mApi.cuMemFree, why)
        && bind(mLib, "cuMemcpyHtoD_v2", mApi.cuMemcpyHtoD, why)
        && bind(mLib, "cuMemcpyDtoH_v2", mApi.cuMemcpyDtoH, why) && bind(mLib, "cuMemsetD8_v2", mApi.cuMemsetD8, why)
        && bind(mLib, "cuGetErrorName", mApi.cuGetErrorName, why);
    if (!bound)
    {
        why += "; update the NVIDIA driver";
        mLib = nullptr;   // nothing to release
        return false;
    }
    int count = 0;
    if (!check(mApi.cuInit(0), "cuInit", why) || !check(mApi.cuDeviceGetCount(&count), "cuDeviceGetCount", why))
    {
        why = "no usable NVIDIA GPU: " + why;
        return false;
    }
    if (count < 1)
    {
        why = "no NVIDIA GPU is visible (CUDA_VISIBLE_DEVICES?)";
        return false;
    }
    char name[256] = {};
    int major = 0;
    int minor = 0;
    if (!check(mApi.cuDeviceGet(&mDevice, 0), "cuDeviceGet", why)
        || !check(mApi.cuDeviceGetName(name, sizeof name - 1, mDevice), "cuDeviceGetName", why)
        || !check(mApi.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, mDevice),
            "cuDeviceGetAttribute", why)
        || !check(mApi.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, mDevice),
            "cuDeviceGetAttribute", why)
        || !check(mApi.cuDevicePrimaryCtxRetain(&mContext, mDevice), "cuDevicePrimaryCtxRetain", why)
        || !check(mApi.cuCtxSetCurrent(mContext), "cuCtxSetCurrent", why)
        || !check(mApi.cuStreamCreate(&mStream, CU_STREAM_DEFAULT), "cuStreamCreate", why))
    {
        why = "device 0 is not usable: " + why;
        return false;
    }
    // A blocking stream (CU_STREAM_DEFAULT): the synchronous copies and fills, which run on the legacy
    // default stream, are ordered before the launches and after them.
    mDescription = std::string(name) + " (sm_" + std::to_string(major * 10 + minor) + ")";
    return true;
}

bool Device::alloc(size_t bytes, CUdeviceptr& ptr, std::string& error)
{
    // At least 256 bytes: empty tensors still get a distinct, aligned address.
    if (!check(mApi.cuMemAlloc(&ptr, bytes < 256 ? 256 : bytes), "cuMemAlloc", error))
    {
        return false;
    }
    mBuffers.push_back(ptr);
    return true;
}

bool Device::upload(CUdeviceptr dst, void const* src, size_t bytes, std::string& error)
{
    return bytes == 0 || check(mApi.cuMemcpyHtoD(dst, src, bytes), "cuMemcpyHtoD", error);
}

bool Device::download(void* dst, CUdeviceptr src, size_t bytes, std::string& error)
{
    return bytes == 0 || check(mApi.cuMemcpyDtoH(dst, src, bytes), "cuMemcpyDtoH", error);
}

bool Device::fill(CUdeviceptr dst, unsigned char byte, size_t bytes, std::string& error)
{
    return bytes == 0 || check(mApi.cuMemsetD8(dst, byte, bytes), "cuMemsetD8", error);
}

bool Device::synchronize(std::string& error)
{
    return check(mApi.cuStreamSynchronize(mStream), "cuStreamSynchronize (the kernels' errors show here)", error);
}

} // namespace harness
