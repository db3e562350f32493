// The GPU side of the harness: the CUDA driver opened at run time (dlopen "libcuda.so.1", nothing
// linked), device 0's primary context made current, one stream, device buffers.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <string>
#include <vector>

namespace harness
{

class Device
{
public:
    Device() = default;
    Device(Device const&) = delete;
    Device& operator=(Device const&) = delete;
    ~Device();

    // true when a GPU is usable (its primary context current, a stream made); false with `why`, one
    // line: no driver, cuInit failed (no device, CUDA_VISIBLE_DEVICES hides them all), ...
    bool open(std::string& why);

    // "NVIDIA H200 (sm_90)".
    std::string const& description() const
    {
        return mDescription;
    }
    CUstream stream() const
    {
        return mStream;
    }

    // Each returns false with `error` set to one line (the driver's error name).
    bool alloc(size_t bytes, CUdeviceptr& ptr, std::string& error);   // kept until the Device goes
    bool upload(CUdeviceptr dst, void const* src, size_t bytes, std::string& error);
    bool download(void* dst, CUdeviceptr src, size_t bytes, std::string& error);
    bool fill(CUdeviceptr dst, unsigned char byte, size_t bytes, std::string& error);
    bool synchronize(std::string& error);

private:
    bool check(CUresult result, char const* call, std::string& error) const;

    struct Api
    {
        CUresult (*cuInit)(unsigned int);
        CUresult (*cuDeviceGetCount)(int*);
        CUresult (*cuDeviceGet)(CUdevice*, int);
        CUresult (*cuDeviceGetName)(char*, int, CUdevice);
        CUresult (*cuDeviceGetAttribute)(int*, CUdevice_attribute, CUdevice);
        CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice);
        CUresult (*cuDevicePrimaryCtxRelease)(CUdevice);
        CUresult (*cuCtxSetCurrent)(CUcontext);
        CUresult (*cuStreamCreate)(CUstream*, unsigned int);
        CUresult (*cuStreamDestroy)(CUstream);
        CUresult (*cuStreamSynchronize)(CUstream);
        CUresult (*cuMemAlloc)(CUdeviceptr*, size_t);
        CUresult (*cuMemFree)(CUdeviceptr);
        CUresult (*cuMemcpyHtoD)(CUdeviceptr, void const*, size_t);
        CUresult (*cuMemcpyDtoH)(void*, CUdeviceptr, size_t);
        CUresult (*cuMemsetD8)(CUdeviceptr, unsigned char, size_t);
        CUresult (*cuGetErrorName)(CUresult, char const**);
    };
    Api mApi{};
    void* mLib = nullptr;
    CUdevice mDevice = 0;
    CUcontext mContext = nullptr;
    CUstream mStream = nullptr;
    std::vector<CUdeviceptr> mBuffers;
    std::string mDescription;
};

} // namespace harness
